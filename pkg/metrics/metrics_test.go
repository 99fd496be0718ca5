package metrics

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/luod/luod/pkg/proto"
)

func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.ObserveKexecLoad(time.Second, errors.New("x"))
	m.ObservePhase(proto.PhaseBarrier, time.Second)
	m.ObserveRecovery(time.Second)
	m.Error("load")
	m.Upgrade(UpgradeCommitted)
	if ev := m.Events(); ev.KexecLoads != nil || ev.Errors != nil {
		t.Errorf("nil Metrics' Events = %+v, want zero", ev)
	}
}

// TestFresh: every label value known in advance is there at 0 before its
// first event.
func TestFresh(t *testing.T) {
	ev := New().Events()
	if len(ev.KexecLoads) != 2 || len(ev.Upgrades) != len(UpgradeResults) || len(ev.PhaseSeconds) != len(Phases) {
		t.Errorf("fresh events = %+v", ev)
	}
	if len(ev.Errors) != 0 {
		t.Errorf("fresh errors = %v, want none (ops are not known in advance)", ev.Errors)
	}
	h := ev.PhaseSeconds[proto.PhaseManifest]
	if !reflect.DeepEqual(h.Bounds, PhaseBuckets) || len(h.Counts) != len(PhaseBuckets) || h.Count != 0 {
		t.Errorf("fresh manifest histogram = %+v", h)
	}
}

// TestHistogram: counts are cumulative, as Prometheus buckets are.
func TestHistogram(t *testing.T) {
	m := New()
	m.ObserveKexecLoad(30*time.Millisecond, nil)
	m.ObserveKexecLoad(2*time.Second, errors.New("EKEYREJECTED"))
	m.ObserveKexecLoad(time.Minute, nil) // above every bound: only in Count
	h := m.Events().KexecLoadSeconds
	want := []uint64{0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2}
	if !reflect.DeepEqual(h.Counts, want) || h.Count != 3 || h.Sum != 62.03 {
		t.Errorf("histogram = %+v, want counts %v, count 3, sum 62.03", h, want)
	}
	if ev := m.Events(); ev.KexecLoads[LoadSuccess] != 2 || ev.KexecLoads[LoadFailure] != 1 {
		t.Errorf("loads = %v", ev.KexecLoads)
	}
}

// TestEventsCopied: what Events returns is the caller's; changing it
// changes nothing in luod's counts.
func TestEventsCopied(t *testing.T) {
	m := New()
	m.Error("preserve")
	m.ObservePhase(proto.PhaseBarrier, time.Second)
	ev := m.Events()
	ev.Errors["preserve"] = 100
	ev.Upgrades[UpgradeFailed] = 100
	ev.KexecLoads[LoadSuccess] = 100
	ev.PhaseSeconds[proto.PhaseBarrier].Counts[len(PhaseBuckets)-1] = 100
	ev.KexecLoadSeconds.Counts[0] = 100
	again := m.Events()
	if again.Errors["preserve"] != 1 || again.Upgrades[UpgradeFailed] != 0 || again.KexecLoads[LoadSuccess] != 0 ||
		again.PhaseSeconds[proto.PhaseBarrier].Counts[len(PhaseBuckets)-1] != 1 || again.KexecLoadSeconds.Counts[0] != 0 {
		t.Errorf("a change to a returned Events reached the counts: %+v", again)
	}
}

// TestSnapshotJSON: a Snapshot crosses luod's socket as JSON unchanged.
func TestSnapshotJSON(t *testing.T) {
	m := New()
	m.ObservePhase(proto.PhaseManifest, 3*time.Millisecond)
	m.Upgrade(UpgradeDryRun)
	m.Error("")
	m.ObserveRecovery(250 * time.Millisecond)
	s := Snapshot{
		Build:            BuildInfo{Version: "0.1.0", GoVersion: "go1.26.8"},
		LiveUpdateNumber: 2, Continuity: proto.ContinuityOK,
		SessionsByState: map[string]int{proto.StateOpen: 3}, FilesByState: map[string]int{proto.StateOpen: 5},
		PreservedBytes: 1 << 30, ConnectedClients: 4, SubscribedClients: 3,
		Lost: []LostSession{{Name: "vm-a", UID: 1000}}, UnclaimedOverdue: 1,
		UpgradePhase: proto.PhaseBarrier, KernelLoaded: true,
		Events: m.Events(),
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got Snapshot
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("after JSON:\n%+v\nwant\n%+v", got, s)
	}
	if got.Events.Errors["unknown"] != 1 {
		t.Errorf(`Error("") not counted as unknown: %v`, got.Events.Errors)
	}
}
