// Package metrics is what luod counts and reports about itself, without
// Prometheus: the wire shape of luod's "metrics" operation (Snapshot) and
// the event counters luod keeps for it (Metrics).
//
// luod does not link client_golang. Its start after a live update runs
// inside the workloads' pause, and linking client_golang (with protobuf,
// net/http and expvar behind it) costs a luod start its package init and a
// binary twice the size: about 50 ms of a 220 ms start under QEMU's TCG
// here, several ms on hardware (docs/performance.md, sixth round). luod
// answers the admin operation "metrics" with a Snapshot instead, and
// cmd/luod-exporter, which luod starts at the first scrape with a connection of its
// own, serves it to Prometheus (package exporter, one registry).
//
// A Snapshot holds two kinds of figures:
//
//   - Live state (sessions, files, preserved bytes, clients, continuity,
//     upgrade phase, loaded kernel), read from luod's state when asked:
//     luod keeps no second copy that could drift.
//   - Events (kexec loads, upgrade phases and outcomes, recovery time,
//     errors), counted by the daemon through the methods of *Metrics.
//     Every method is safe on a nil *Metrics.
//
// A live update kexecs into a new kernel and a new luod process: every
// counter starts again at 0 in the new boot. What must survive the kexec
// (the liveupdate number, continuity, lost sessions) is re-derived by
// recovery and reported as live state.
package metrics

import (
	"slices"
	"sync"
	"time"

	"github.com/luod/luod/pkg/proto"
)

// Results of a kexec load (Events.KexecLoads).
const (
	// LoadSuccess: kexec_file_load accepted the kernel.
	LoadSuccess = "success"
	// LoadFailure: kexec_file_load refused it (bad image, signature,
	// memory), or the call failed otherwise.
	LoadFailure = "failure"
)

// Results of an upgrade (Events.Upgrades), passed to Upgrade.
const (
	// UpgradeCommitted: the barrier passed, the manifest was written,
	// the workloads were told "committed" and luod is calling
	// reboot(LINUX_REBOOT_CMD_KEXEC). The process ends with the old
	// kernel, so this is seen only by a scrape in the last instant; count
	// successful updates across boots with the liveupdate number instead.
	// A reboot(2) that then fails is counted once more, as UpgradeFailed:
	// the workloads were told it was going, and it did not.
	UpgradeCommitted = "committed"
	// UpgradeAborted: the barrier failed (a subscriber did not answer
	// ready in time or went away); every session is intact.
	UpgradeAborted = "aborted"
	// UpgradeFailed: writing the manifest or reboot(2) failed after the
	// barrier; every session is intact. A failed reboot(2) was counted
	// as UpgradeCommitted first.
	UpgradeFailed = "failed"
	// UpgradeDryRun: a dry run did everything but the reboot.
	UpgradeDryRun = "dry_run"
)

var (
	// UpgradeResults are the results Events.Upgrades starts with, at 0.
	UpgradeResults = []string{UpgradeCommitted, UpgradeAborted, UpgradeFailed, UpgradeDryRun}
	// Phases are the upgrade phases, in order.
	Phases = []string{proto.PhaseBarrier, proto.PhaseManifest, proto.PhaseReboot}
)

// Bucket upper bounds, in seconds.
var (
	// PhaseBuckets span an upgrade phase: a manifest written in a few
	// milliseconds, a barrier that waits up to its timeout (30 s by
	// default, minutes if an admin asks).
	PhaseBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	// KexecLoadBuckets span kexec_file_load: reading, decompressing and
	// verifying a kernel and initrd takes tens of milliseconds to seconds.
	KexecLoadBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
)

// BuildInfo says which luod runs.
type BuildInfo struct {
	// Version is luod's version, e.g. "0.1.0".
	Version string `json:"version"`
	// Revision is the VCS revision luod was built from.
	Revision string `json:"revision"`
	// GoVersion is the Go toolchain luod was built with.
	GoVersion string `json:"goversion"`
}

// Snapshot is luod's state and event counts at one instant, as plain
// values: the result of the "metrics" operation (docs/protocol.md).
type Snapshot struct {
	// Build says which luod answered.
	Build BuildInfo `json:"build"`

	// LiveUpdateNumber is the liveupdate number this boot's kernel
	// reported: how many live updates led to this boot since the last cold
	// boot; 0 after a cold boot.
	LiveUpdateNumber uint64 `json:"liveupdate_number"`
	// Continuity is recovery's verdict on this boot (proto.ContinuityOK,
	// …); "" while recovery has not finished.
	Continuity string `json:"continuity"`
	// SessionsByState counts the sessions luod holds by state
	// (proto.StateOpen, StateIncoming, StateClaimed, StateFinished).
	// Missing states count 0.
	SessionsByState map[string]int `json:"sessions_by_state"`
	// FilesByState counts the preserved files of those sessions, by the
	// state of their session.
	FilesByState map[string]int `json:"files_by_state"`
	// PreservedBytes is the sum of the sizes of the files of open,
	// incoming and claimed sessions: the memory a live update carries or
	// carried over.
	PreservedBytes int64 `json:"preserved_bytes"`
	// ConnectedClients counts the client connections open now, admin ones
	// included, the exporter's own not.
	ConnectedClients int `json:"connected_clients"`
	// SubscribedClients counts the connections subscribed to upgrade
	// events: the clients the next barrier waits for.
	SubscribedClients int `json:"subscribed_clients"`
	// LostTotal counts the sessions the previous boot held that this
	// boot could not give back (Status.LostSessions); Lost names the
	// first MaxLostNamed of them, with their owners' uids, so that the
	// answer fits one message however many were lost.
	LostTotal int           `json:"lost_total"`
	Lost      []LostSession `json:"lost,omitempty"`
	// UnclaimedOverdue counts incoming sessions still unclaimed after
	// --reclaim.grace (Status.UnclaimedOverdue).
	UnclaimedOverdue int `json:"unclaimed_overdue"`
	// UpgradePhase is the phase of the upgrade in progress
	// (proto.PhaseBarrier, …), "" when none runs.
	UpgradePhase string `json:"upgrade_phase,omitempty"`
	// KernelLoaded is set while a kernel is loaded for the next live
	// update (luoctl load, until unload or reboot).
	KernelLoaded bool `json:"kernel_loaded"`

	// Events are what luod counted since it started.
	Events Events `json:"events"`
}

// MaxLostNamed is the most lost sessions a Snapshot names.
const MaxLostNamed = 256

// LostSession is one session of Snapshot.Lost.
type LostSession struct {
	Name string `json:"name"`
	UID  uint32 `json:"uid"`
}

// Events are luod's event counts since it started (a *Metrics' Events).
type Events struct {
	// KexecLoads counts calls of kexec_file_load by result (LoadSuccess,
	// LoadFailure), and KexecLoadSeconds how long each took.
	KexecLoads       map[string]uint64 `json:"kexec_loads"`
	KexecLoadSeconds Histogram         `json:"kexec_load_seconds"`
	// PhaseSeconds is how long each upgrade phase (Phases) took.
	PhaseSeconds map[string]Histogram `json:"phase_seconds"`
	// Upgrades counts upgrades by result (UpgradeResults).
	Upgrades map[string]uint64 `json:"upgrades"`
	// Errors counts failed operations by operation.
	Errors map[string]uint64 `json:"errors"`
	// RecoverySeconds is how long this boot's recovery took; 0 until it
	// finished.
	RecoverySeconds float64 `json:"recovery_seconds"`
}

// Histogram is a distribution of observations in seconds, Prometheus
// style: Counts[i] is how many were at most Bounds[i] (cumulative), Count
// how many in all, Sum their sum.
type Histogram struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
	Count  uint64    `json:"count"`
	Sum    float64   `json:"sum"`
}

func newHistogram(bounds []float64) Histogram {
	return Histogram{Bounds: bounds, Counts: make([]uint64, len(bounds))}
}

func (h *Histogram) observe(v float64) {
	for i, b := range h.Bounds {
		if v <= b {
			h.Counts[i]++
		}
	}
	h.Count++
	h.Sum += v
}

func (h Histogram) clone() Histogram {
	h.Counts = slices.Clone(h.Counts)
	return h
}

// Metrics counts luod's events. A nil *Metrics is valid: every method
// then does nothing. Methods are safe for concurrent use.
type Metrics struct {
	mu sync.Mutex
	ev Events
}

// New returns counters with every label value known in advance present
// at 0 (both load results, every phase, every upgrade result), so that
// rate() and absent() work before the first event.
func New() *Metrics {
	ev := Events{
		KexecLoads:       map[string]uint64{LoadSuccess: 0, LoadFailure: 0},
		KexecLoadSeconds: newHistogram(KexecLoadBuckets),
		PhaseSeconds:     map[string]Histogram{},
		Upgrades:         map[string]uint64{},
		Errors:           map[string]uint64{},
	}
	for _, p := range Phases {
		ev.PhaseSeconds[p] = newHistogram(PhaseBuckets)
	}
	for _, r := range UpgradeResults {
		ev.Upgrades[r] = 0
	}
	return &Metrics{ev: ev}
}

// Events returns a copy of the counts so far; nil *Metrics: the zero
// Events.
func (m *Metrics) Events() Events {
	if m == nil {
		return Events{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ev := m.ev
	ev.KexecLoads = cloneMap(ev.KexecLoads)
	ev.KexecLoadSeconds = ev.KexecLoadSeconds.clone()
	ev.PhaseSeconds = make(map[string]Histogram, len(m.ev.PhaseSeconds))
	for p, h := range m.ev.PhaseSeconds {
		ev.PhaseSeconds[p] = h.clone()
	}
	ev.Upgrades = cloneMap(ev.Upgrades)
	ev.Errors = cloneMap(ev.Errors)
	return ev
}

func cloneMap(m map[string]uint64) map[string]uint64 {
	c := make(map[string]uint64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// ObserveKexecLoad records one call of kexec_file_load that took d and
// returned err. Preflight refusals never reach the kernel and are not
// loads; every failed load request, preflight or kernel, is Error("load").
func (m *Metrics) ObserveKexecLoad(d time.Duration, err error) {
	if m == nil {
		return
	}
	r := LoadSuccess
	if err != nil {
		r = LoadFailure
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ev.KexecLoadSeconds.observe(d.Seconds())
	m.ev.KexecLoads[r]++
}

// ObservePhase records that the upgrade phase (proto.PhaseBarrier,
// PhaseManifest, PhaseReboot) took d. Call it when the phase ends,
// whether it passed or failed.
func (m *Metrics) ObservePhase(phase string, d time.Duration) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.ev.PhaseSeconds[phase]
	if !ok {
		h = newHistogram(PhaseBuckets)
	}
	h.observe(d.Seconds())
	m.ev.PhaseSeconds[phase] = h
}

// ObserveRecovery records d, the time this boot's recovery took. Call it
// once, when recovery finished.
func (m *Metrics) ObserveRecovery(d time.Duration) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ev.RecoverySeconds = d.Seconds()
}

// Error counts one failed operation. op is a protocol operation
// (docs/protocol.md: "preserve", "load", "upgrade", …) or one of luod's
// own ("accept", "save_manifest", …), "" counting as "unknown". It must
// come from a fixed set in luod's code, never from a client's request:
// every distinct op is a time series kept until luod exits.
func (m *Metrics) Error(op string) {
	if m == nil {
		return
	}
	if op == "" {
		op = "unknown"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ev.Errors[op]++
}

// Upgrade counts one upgrade that ended with result (UpgradeCommitted,
// UpgradeAborted, UpgradeFailed, UpgradeDryRun). Requests refused before
// the barrier (busy, no kernel loaded) are not upgrades: count them with
// Error("upgrade").
func (m *Metrics) Upgrade(result string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ev.Upgrades[result]++
}
