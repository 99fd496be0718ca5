package klog

import (
	"regexp"
	"strconv"
	"testing"
)

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

// TestParseLikeRegexp: Parse finds what the regular expressions it
// replaced found, on lines that nearly match too.
func TestParseLikeRegexp(t *testing.T) {
	reLUO := regexp.MustCompile(`liveupdate number: (\d+)`)
	reExec := regexp.MustCompile(`KHO: exec from: (\S+) \(count (\d+)\)`)
	ref := func(log []byte) Handover {
		var h Handover
		if m := reLUO.FindSubmatch(log); m != nil {
			if n, err := strconv.ParseUint(string(m[1]), 10, 64); err == nil {
				h.LiveUpdateNumber, h.HasLiveUpdate = n, true
			}
		}
		if m := reExec.FindSubmatch(log); m != nil {
			if n, err := strconv.ParseUint(string(m[2]), 10, 32); err == nil {
				h.PreviousRelease, h.KexecCount, h.HasExecFrom = string(m[1]), uint32(n), true
			}
		}
		return h
	}
	for _, log := range []string{
		"",
		"liveupdate number: ",
		"liveupdate number: x\nliveupdate number: 7\n",
		"liveupdate number: liveupdate number: 12",
		"liveupdate number: 99999999999999999999999 then liveupdate number: 3",
		"liveupdate number: 42",
		"KHO: exec from:  (count 1)\nKHO: exec from: 7.2.13 (count 2)",
		"KHO: exec from: 7.2.13 (count )\nKHO: exec from: 7.3 (count 5)",
		"KHO: exec from: 7.2.13 (count 3",
		"KHO: exec from: 7.2.13 (count 3)",
		"KHO: exec from: a\tb (count 3)\nKHO: exec from: a\xffb (count 4)",
		"KHO: exec from: KHO: exec from: r (count 9)",
		"KHO: exec from: 7.2 (count 4294967296)\nKHO: exec from: 7.3 (count 1)",
		"KHO: exec from: 7.2 (count 12x)",
	} {
		if got, want := Parse([]byte(log)), ref([]byte(log)); got != want {
			t.Errorf("Parse(%q) = %+v, the regular expressions found %+v", log, got, want)
		}
	}
}
