package klog

import "testing"

func TestParse(t *testing.T) {
	log := []byte("<6>[    0.000000] Linux version 7.3.4\n" +
		"<6>[    0.010000] KHO: exec from: 7.2.13 (count 1)\n" +
		"<6>[    0.020000] luo: Retrieved live update data, liveupdate number: 1\n")
	h := Parse(log)
	if !h.HasLiveUpdate || h.LiveUpdateNumber != 1 {
		t.Errorf("liveupdate number = %d (found %v), want 1", h.LiveUpdateNumber, h.HasLiveUpdate)
	}
	if !h.HasExecFrom || h.PreviousRelease != "7.2.13" || h.KexecCount != 1 {
		t.Errorf("exec from = %q count %d (found %v), want 7.2.13 count 1", h.PreviousRelease, h.KexecCount, h.HasExecFrom)
	}
	if h := Parse([]byte("<6>[ 0.0] Linux version 7.2.13\n")); h.HasLiveUpdate || h.HasExecFrom {
		t.Errorf("cold boot log parsed as a handover: %+v", h)
	}
}
