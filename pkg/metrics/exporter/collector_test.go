package exporter

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/luod/luod/pkg/metrics"
	"github.com/luod/luod/pkg/proto"
)

var testBuild = metrics.BuildInfo{Version: "0.1.0", Revision: "abc123", GoVersion: "go1.26.8"}

// busy is a host in the middle of an upgrade, one boot after a live update.
var busy = metrics.Snapshot{
	LiveUpdateNumber: 2,
	Continuity:       proto.ContinuityOK,
	SessionsByState: map[string]int{
		proto.StateOpen: 3, proto.StateIncoming: 1, proto.StateClaimed: 2,
	},
	FilesByState: map[string]int{
		proto.StateOpen: 5, proto.StateIncoming: 1, proto.StateClaimed: 4, proto.StateFinished: 7,
	},
	PreservedBytes:    268435456,
	ConnectedClients:  4,
	SubscribedClients: 3,
	UnclaimedOverdue:  1,
	UpgradePhase:      proto.PhaseBarrier,
	KernelLoaded:      true,
}

// testLuod is luod's side: its event counters, and the collector that
// reads them with the state s at every scrape, as the exporter would.
type testLuod struct {
	*metrics.Metrics
	c *Collector
}

func newTest(t *testing.T, s metrics.Snapshot) (*testLuod, *prometheus.Registry) {
	t.Helper()
	m := metrics.New()
	c, err := NewCollector(func() (metrics.Snapshot, error) {
		s := s
		s.Build = testBuild
		s.Events = m.Events()
		return s, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	return &testLuod{Metrics: m, c: c}, reg
}

// compare runs CollectAndCompare on names, first checking that expected
// has every one of them: names filter both sides, so a family missing
// from both would pass unnoticed (client_golang issue 1351).
func compare(t *testing.T, c prometheus.Collector, expected string, names ...string) {
	t.Helper()
	for _, n := range names {
		if !strings.Contains(expected, "# TYPE "+n+" ") {
			t.Fatalf("expected text lacks %s", n)
		}
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(expected), names...); err != nil {
		t.Error(err)
	}
}

var stateNames = []string{
	"luod_build_info", "luod_boot_continuity", "luod_boot_liveupdate_number",
	"luod_sessions", "luod_session_files", "luod_preserved_bytes",
	"luod_clients_connected", "luod_clients_subscribed", "luod_sessions_lost",
	"luod_sessions_unclaimed_overdue", "luod_upgrade_phase", "luod_kexec_kernel_loaded",
}

const stateHelp = `
# HELP luod_build_info A metric with a constant value of 1 labeled by the version, Go version and revision luod was built from.
# TYPE luod_build_info gauge
# HELP luod_boot_continuity Whether this boot continues the last one as recovery found: 1 for the current verdict (ok, mismatch, cold_boot, no_manifest, fresh), 0 for the others and for all while recovery runs.
# TYPE luod_boot_continuity gauge
# HELP luod_boot_liveupdate_number The liveupdate number this boot's kernel reported: live updates since the last cold boot.
# TYPE luod_boot_liveupdate_number gauge
# HELP luod_sessions Sessions luod holds, by state (open, incoming, claimed, finished).
# TYPE luod_sessions gauge
# HELP luod_session_files Preserved files of the sessions luod holds, by the state of their session.
# TYPE luod_session_files gauge
# HELP luod_preserved_bytes Total size of the files of open, incoming and claimed sessions: the memory a live update carries.
# TYPE luod_preserved_bytes gauge
# HELP luod_clients_connected Client connections open on luod's socket.
# TYPE luod_clients_connected gauge
# HELP luod_clients_subscribed Client connections subscribed to upgrade events, which the next barrier waits for.
# TYPE luod_clients_subscribed gauge
# HELP luod_sessions_lost Sessions of the previous boot that this boot could not give back.
# TYPE luod_sessions_lost gauge
# HELP luod_sessions_unclaimed_overdue Sessions handed over by the live update and still unclaimed by their owners after the reclaim grace period.
# TYPE luod_sessions_unclaimed_overdue gauge
# HELP luod_upgrade_phase The phase of the upgrade in progress: 1 for the current phase (barrier, manifest, reboot), 0 for the others and for all when no upgrade runs.
# TYPE luod_upgrade_phase gauge
# HELP luod_kexec_kernel_loaded Whether a kernel is loaded for the next live update (1) or not (0).
# TYPE luod_kexec_kernel_loaded gauge
`

func TestLiveState(t *testing.T) {
	m, _ := newTest(t, busy)
	compare(t, m.c, stateHelp+`
luod_build_info{goversion="go1.26.8",revision="abc123",version="0.1.0"} 1
luod_boot_continuity{continuity="ok"} 1
luod_boot_continuity{continuity="mismatch"} 0
luod_boot_continuity{continuity="cold_boot"} 0
luod_boot_continuity{continuity="no_manifest"} 0
luod_boot_continuity{continuity="fresh"} 0
luod_boot_liveupdate_number 2
luod_sessions{state="open"} 3
luod_sessions{state="incoming"} 1
luod_sessions{state="claimed"} 2
luod_sessions{state="finished"} 0
luod_session_files{state="open"} 5
luod_session_files{state="incoming"} 1
luod_session_files{state="claimed"} 4
luod_session_files{state="finished"} 7
luod_preserved_bytes 2.68435456e+08
luod_clients_connected 4
luod_clients_subscribed 3
luod_sessions_lost 0
luod_sessions_unclaimed_overdue 1
luod_upgrade_phase{phase="barrier"} 1
luod_upgrade_phase{phase="manifest"} 0
luod_upgrade_phase{phase="reboot"} 0
luod_kexec_kernel_loaded 1
`, stateNames...)
}

// TestLiveStateEdges: a zero Snapshot (recovery still running) exports
// every series at 0, and values luod may add later are not hidden.
func TestLiveStateEdges(t *testing.T) {
	m, _ := newTest(t, metrics.Snapshot{})
	compare(t, m.c, stateHelp+`
luod_build_info{goversion="go1.26.8",revision="abc123",version="0.1.0"} 1
luod_boot_continuity{continuity="ok"} 0
luod_boot_continuity{continuity="mismatch"} 0
luod_boot_continuity{continuity="cold_boot"} 0
luod_boot_continuity{continuity="no_manifest"} 0
luod_boot_continuity{continuity="fresh"} 0
luod_boot_liveupdate_number 0
luod_sessions{state="open"} 0
luod_sessions{state="incoming"} 0
luod_sessions{state="claimed"} 0
luod_sessions{state="finished"} 0
luod_session_files{state="open"} 0
luod_session_files{state="incoming"} 0
luod_session_files{state="claimed"} 0
luod_session_files{state="finished"} 0
luod_preserved_bytes 0
luod_clients_connected 0
luod_clients_subscribed 0
luod_sessions_lost 0
luod_sessions_unclaimed_overdue 0
luod_upgrade_phase{phase="barrier"} 0
luod_upgrade_phase{phase="manifest"} 0
luod_upgrade_phase{phase="reboot"} 0
luod_kexec_kernel_loaded 0
`, stateNames...)

	m, _ = newTest(t, metrics.Snapshot{
		Continuity:      "partial",
		SessionsByState: map[string]int{"frozen": 2},
		UpgradePhase:    "verify",
		Lost:            []metrics.LostSession{{Name: "vm-a"}, {Name: "vm-b"}},
	})
	names := []string{"luod_boot_continuity", "luod_sessions", "luod_upgrade_phase", "luod_sessions_lost"}
	compare(t, m.c, stateHelp+`
luod_boot_continuity{continuity="ok"} 0
luod_boot_continuity{continuity="mismatch"} 0
luod_boot_continuity{continuity="cold_boot"} 0
luod_boot_continuity{continuity="no_manifest"} 0
luod_boot_continuity{continuity="fresh"} 0
luod_boot_continuity{continuity="partial"} 1
luod_sessions{state="open"} 0
luod_sessions{state="incoming"} 0
luod_sessions{state="claimed"} 0
luod_sessions{state="finished"} 0
luod_sessions{state="frozen"} 2
luod_sessions_lost 2
luod_upgrade_phase{phase="barrier"} 0
luod_upgrade_phase{phase="manifest"} 0
luod_upgrade_phase{phase="reboot"} 0
luod_upgrade_phase{phase="verify"} 1
`, names...)
}

func TestLostSessionsNamed(t *testing.T) {
	m, _ := newTest(t, metrics.Snapshot{Lost: []metrics.LostSession{{Name: "vm-a", UID: 0}, {Name: "vm-b", UID: 1000}}})
	compare(t, m.c, `
# HELP luod_session_lost_info A metric with a constant value of 1 per session of the previous boot that this boot could not give back (the first 256), labeled by its name and owner's uid (luoctl status lists them all).
# TYPE luod_session_lost_info gauge
luod_session_lost_info{session="vm-a",uid="0"} 1
luod_session_lost_info{session="vm-b",uid="1000"} 1
`, "luod_session_lost_info")
}

func TestEvents(t *testing.T) {
	m, _ := newTest(t, busy)
	m.ObserveKexecLoad(30*time.Millisecond, nil)
	m.ObserveKexecLoad(2*time.Second, errors.New("EKEYREJECTED"))
	m.ObservePhase(proto.PhaseBarrier, 1500*time.Millisecond)
	m.ObservePhase(proto.PhaseManifest, 3*time.Millisecond)
	m.ObserveRecovery(250 * time.Millisecond)
	m.Upgrade(metrics.UpgradeAborted)
	m.Upgrade(metrics.UpgradeDryRun)
	m.Upgrade(metrics.UpgradeDryRun)
	m.Error("preserve")
	m.Error("preserve")
	m.Error("")

	compare(t, m.c, `
# HELP luod_kexec_loads_total Calls of kexec_file_load to load the next kernel, by result (success or failure).
# TYPE luod_kexec_loads_total counter
luod_kexec_loads_total{result="failure"} 1
luod_kexec_loads_total{result="success"} 1
# HELP luod_kexec_load_duration_seconds Time kexec_file_load took to load the next kernel, whatever its outcome.
# TYPE luod_kexec_load_duration_seconds histogram
luod_kexec_load_duration_seconds_bucket{le="0.01"} 0
luod_kexec_load_duration_seconds_bucket{le="0.025"} 0
luod_kexec_load_duration_seconds_bucket{le="0.05"} 1
luod_kexec_load_duration_seconds_bucket{le="0.1"} 1
luod_kexec_load_duration_seconds_bucket{le="0.25"} 1
luod_kexec_load_duration_seconds_bucket{le="0.5"} 1
luod_kexec_load_duration_seconds_bucket{le="1"} 1
luod_kexec_load_duration_seconds_bucket{le="2.5"} 2
luod_kexec_load_duration_seconds_bucket{le="5"} 2
luod_kexec_load_duration_seconds_bucket{le="10"} 2
luod_kexec_load_duration_seconds_bucket{le="30"} 2
luod_kexec_load_duration_seconds_bucket{le="+Inf"} 2
luod_kexec_load_duration_seconds_sum 2.03
luod_kexec_load_duration_seconds_count 2
# HELP luod_recovery_duration_seconds Time this boot's recovery took, from reading the handover to holding every session; 0 until it finished.
# TYPE luod_recovery_duration_seconds gauge
luod_recovery_duration_seconds 0.25
# HELP luod_upgrades_total Upgrades run since luod started, by result (committed, aborted, failed, dry_run).
# TYPE luod_upgrades_total counter
luod_upgrades_total{result="aborted"} 1
luod_upgrades_total{result="committed"} 0
luod_upgrades_total{result="dry_run"} 2
luod_upgrades_total{result="failed"} 0
# HELP luod_errors_total Operations of luod that failed, by operation.
# TYPE luod_errors_total counter
luod_errors_total{op="preserve"} 2
luod_errors_total{op="unknown"} 1
`, "luod_kexec_loads_total", "luod_kexec_load_duration_seconds", "luod_recovery_duration_seconds",
		"luod_upgrades_total", "luod_errors_total")

	// One phase in full; the others only by their count.
	h := func(phase string) string {
		return `luod_upgrade_phase_duration_seconds_count{phase="` + phase + `"}`
	}
	got, err := testutil.CollectAndFormat(m.c, expfmt.TypeTextPlain, "luod_upgrade_phase_duration_seconds")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`luod_upgrade_phase_duration_seconds_bucket{phase="barrier",le="1"} 0`,
		`luod_upgrade_phase_duration_seconds_bucket{phase="barrier",le="2.5"} 1`,
		`luod_upgrade_phase_duration_seconds_sum{phase="barrier"} 1.5`,
		h("barrier") + " 1",
		`luod_upgrade_phase_duration_seconds_bucket{phase="manifest",le="0.001"} 0`,
		`luod_upgrade_phase_duration_seconds_bucket{phase="manifest",le="0.005"} 1`,
		h("manifest") + " 1",
		h("reboot") + " 0", // exported before the first reboot
	} {
		if !strings.Contains(string(got), want+"\n") {
			t.Errorf("no %s in\n%s", want, got)
		}
	}
}

// TestFreshEvents: every label value known in advance is exported at 0
// before its first event, so rate() and increase() see the first one.
func TestFreshEvents(t *testing.T) {
	m, _ := newTest(t, metrics.Snapshot{})
	for name, want := range map[string]int{
		"luod_kexec_loads_total":              2,
		"luod_kexec_load_duration_seconds":    1,
		"luod_upgrade_phase_duration_seconds": 3,
		"luod_recovery_duration_seconds":      1,
		"luod_upgrades_total":                 4,
		"luod_errors_total":                   0, // ops are not known in advance
	} {
		if got := testutil.CollectAndCount(m.c, name); got != want {
			t.Errorf("%s: %d series, want %d", name, got, want)
		}
	}
}

func TestLint(t *testing.T) {
	for _, s := range []metrics.Snapshot{{}, busy} {
		m, reg := newTest(t, s)
		m.ObserveKexecLoad(time.Second, nil)
		m.ObservePhase(proto.PhaseReboot, time.Millisecond)
		m.ObserveRecovery(time.Second)
		m.Upgrade(metrics.UpgradeFailed)
		m.Error("load")

		problems, err := testutil.CollectAndLint(m.c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
		// And as served, from the registry.
		if problems, err = testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
			t.Errorf("GatherAndLint: %v %v", problems, err)
		}
	}
}

// TestHelp: every help string is a sentence.
func TestHelp(t *testing.T) {
	m, reg := newTest(t, busy)
	m.Error("load")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != len(stateNames)+7 {
		t.Errorf("%d metric families, want %d", len(mfs), len(stateNames)+7)
	}
	for _, mf := range mfs {
		h := mf.GetHelp()
		if h == "" || h[0] < 'A' || h[0] > 'Z' || !strings.HasSuffix(h, ".") {
			t.Errorf("%s: help %q is not a sentence", mf.GetName(), h)
		}
	}
}

func TestNewCollector(t *testing.T) {
	if _, err := NewCollector(nil); err == nil {
		t.Error("NewCollector(nil) did not fail")
	}
	_, reg := newTest(t, metrics.Snapshot{})
	if n, err := testutil.GatherAndCount(reg, "luod_build_info"); err != nil || n != 1 {
		t.Errorf("luod_build_info: %d series, %v", n, err)
	}
	// A second collector on the same registry is refused.
	c, err := NewCollector(func() (metrics.Snapshot, error) { return metrics.Snapshot{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(c); err == nil {
		t.Error("a second collector on one registry was accepted")
	}
}

// TestLuodDown: when luod does not answer, luod_up is 0 and nothing else
// of luod's is exported (no stale or zero figures that look real).
func TestLuodDown(t *testing.T) {
	c, err := NewCollector(func() (metrics.Snapshot, error) { return metrics.Snapshot{}, errors.New("EOF") })
	if err != nil {
		t.Fatal(err)
	}
	compare(t, c, `
# HELP luod_up Whether luod answered the exporter's last request for its metrics (1) or not (0); without it no other luod metric is exported.
# TYPE luod_up gauge
luod_up 0
`, "luod_up")
	if n := testutil.CollectAndCount(c); n != 1 {
		t.Errorf("%d series with luod down, want luod_up alone", n)
	}
	m, _ := newTest(t, busy)
	if got := testutil.ToFloat64(prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		all := make(chan prometheus.Metric, 1000)
		m.c.Collect(all)
		close(all)
		ch <- <-all // the first is luod_up
	})); got != 1 {
		t.Errorf("luod_up = %v with luod answering, want 1", got)
	}
}

// TestBadHistogram: a histogram whose bounds and counts disagree (another
// luod's answer) makes a scrape error for that metric, not a panic, and
// the rest is still exported.
func TestBadHistogram(t *testing.T) {
	c, err := NewCollector(func() (metrics.Snapshot, error) {
		s := busy
		s.Events = metrics.New().Events()
		s.Events.KexecLoadSeconds.Counts = s.Events.KexecLoadSeconds.Counts[1:]
		return s, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err == nil || !strings.Contains(err.Error(), "bounds") {
		t.Errorf("Gather: %v, want the histogram named", err)
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "luod_sessions" {
			n = len(mf.GetMetric())
		}
	}
	if n != 4 {
		t.Errorf("luod_sessions: %d series beside the bad histogram, want 4", n)
	}
}
