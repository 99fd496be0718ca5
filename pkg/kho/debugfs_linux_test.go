//go:build linux

package kho

import "testing"

func TestIsDebugFS(t *testing.T) {
	if ok, err := isDebugFS(t.TempDir()); ok || err != nil {
		t.Errorf("isDebugFS(tempdir) = %v, %v", ok, err)
	}
	if _, err := isDebugFS("/nonexistent/kho"); err == nil {
		t.Error("isDebugFS(/nonexistent) succeeded")
	}
}
