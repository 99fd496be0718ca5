//go:build linux

package vmtest

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// reliability prints, when t ends, the case's line for docs/reliability.md
// (deploy/qemu/reliability.sh collects them from the console):
//
//	LUOD-RELIABILITY: case=… | kernel=… | how=… | result=pass|fail | verified=…
//
// The result is t's own: a case that failed says so in the table.
func reliability(t *testing.T, name, how, verified string) {
	t.Helper()
	t.Cleanup(func() {
		result := "pass"
		if t.Failed() {
			result = "fail"
		}
		clean := func(s string) string { return strings.ReplaceAll(s, " | ", ", ") }
		fmt.Fprintf(os.Stdout, "\nLUOD-RELIABILITY: case=%s | kernel=%s | how=%s | result=%s | verified=%s\n",
			clean(name), release(t), clean(how), result, clean(verified))
	})
}
