package bench

import (
	"strings"
	"testing"
	"time"
)

// TestVerdicts: each target is judged from its own rows, and a target with
// no rows is not met.
func TestVerdicts(t *testing.T) {
	ms := time.Millisecond
	r := &Results{
		Preserve: []Preserve{
			{Sessions: 10, Files: 1, FileSize: 1 << 20, Direct: 10 * ms, Luod: 11 * ms, RSSKiB: 9000},
			{Sessions: 1000, Files: 1, FileSize: 1 << 20, Direct: 1000 * ms, Luod: 1200 * ms, OneByOne: 3000 * ms, DirectAfter: 1100 * ms, RSSKiB: 15000},
		},
		Retrieve: []Retrieve{
			{Sessions: 10, Files: 10, Minimal: 12 * ms, Direct: 10 * ms, Ready: 5 * ms, Reclaim: 5 * ms},
			{Sessions: 100, Files: 10, MinimalStart: 40 * ms, Minimal: 100 * ms, Direct: 50 * ms, Ready: 160 * ms, Reclaim: 60 * ms},
			{Sessions: 1000, Files: 10, Minimal: 1000 * ms, Direct: 900 * ms, Ready: 500 * ms, Reclaim: 600 * ms, RSSKiB: 30000},
		},
		Blackout: []Blackout{{SinceReady: 5 * ms, Sync: 4 * ms}},
	}
	want := map[string]bool{"(a)": true, "(b)": false, "(c) last": true, "(c) luod exec": false, "(d)": false, "(e)": true}
	got := r.Verdicts()
	if len(got) != len(want) {
		t.Fatalf("%d verdicts, want %d", len(got), len(want))
	}
	for _, v := range got {
		for prefix, met := range want {
			if strings.HasPrefix(v.Target, prefix) && v.Met != met {
				t.Errorf("%s: met = %v (%s), want %v", v.Target, v.Met, v.Measured, met)
			}
		}
	}
	md := r.Markdown()
	for _, s := range []string{"| 1000 × 1 | 1 MiB | 1000.00 | 1200.00 | 1.20× | 3000.00 | 3.00× | 1100.00 | 1200 | 14.6 | 0.0 |", "| 10 × 1 | 1 MiB | 10.00 | 11.00 | 1.10× | – | – | 0.00 |",
		"| 100 × 10 | 0 B | 40.00 | 100.00 | 50.00 | 160.00 | 1.60× | 60.00 | 220.00 | 2.20× |",
		"2.20× (luod's exec → READY alone, its files not yet retrieved: 1.60×)", "a Go program's start alone: up to 40.00 ms"} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q:\n%s", s, md)
		}
	}
	if v := (&Results{}).Verdicts(); v[0].Met {
		t.Error("a target with nothing measured is met")
	}
	// (b) is judged end to end: a READY within the target does not make
	// it when the reclaim that retrieves the files takes it past.
	r.Retrieve[1].Ready = 100 * ms // READY alone 1.00×, end to end 1.60×
	for _, v := range r.Verdicts() {
		if strings.HasPrefix(v.Target, "(b)") && v.Met {
			t.Errorf("%s met on READY alone (%s)", v.Target, v.Measured)
		}
	}
	// (b) without the direct program's figure is not met, however fast
	// luod was.
	r.Retrieve[1].Minimal, r.Retrieve[1].Ready = 0, ms
	for _, v := range r.Verdicts() {
		if strings.HasPrefix(v.Target, "(b)") && v.Met {
			t.Errorf("%s met with no direct figure (%s)", v.Target, v.Measured)
		}
	}
	// (d) counts the exporter luod runs: luod alone within the target
	// does not make it, nor does a row that lacks the exporter's figure.
	r.Retrieve[2].RSSKiB, r.Retrieve[2].ExporterRSSKiB = 10000, 3000
	for _, c := range []struct {
		exporter int64
		met      bool
	}{{6000, false}, {4000, true}, {0, false}} {
		r.Preserve[1].ExporterRSSKiB = c.exporter // luod 15000 KiB
		for _, v := range r.Verdicts() {
			if strings.HasPrefix(v.Target, "(d)") && v.Met != c.met {
				t.Errorf("luod 15000 KiB + exporter %d KiB: %s met = %v (%s), want %v", c.exporter, v.Target, v.Met, v.Measured, c.met)
			}
		}
	}
	// The worst row's file-backed part is shown beside it, and does not
	// change the judgement.
	r.Preserve[1].ExporterRSSKiB, r.Preserve[1].RSSFileKiB, r.Preserve[1].ExporterRSSFileKiB = 6000, 4096, 5120
	for _, v := range r.Verdicts() {
		if strings.HasPrefix(v.Target, "(d)") && (v.Met || !strings.Contains(v.Measured, "file-backed, the two binaries' pages: 9.0 MiB; anonymous: 11.5 MiB")) {
			t.Errorf("luod 15000 KiB (4096 file) + exporter 6000 KiB (5120 file): %s met = %v, %q", v.Target, v.Met, v.Measured)
		}
	}
	// (d) is judged on luod settled; its peak is shown beside, the worst
	// of the rows at 1000 sessions, and does not change the judgement.
	r.Preserve[1].ExporterRSSKiB = 4000
	r.Preserve[1].PeakKiB, r.Retrieve[2].PeakKiB = 25600, 30720
	for _, v := range r.Verdicts() {
		if strings.HasPrefix(v.Target, "(d)") && (!v.Met || !strings.Contains(v.Measured, "luod's own peak (VmHWM) up to 30.0 MiB")) {
			t.Errorf("luod 15000 KiB settled, peaks 25600 and 30720 KiB: %s met = %v, %q", v.Target, v.Met, v.Measured)
		}
	}
}
