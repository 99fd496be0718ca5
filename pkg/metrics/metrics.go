// Package metrics is luod's Prometheus instrumentation.
//
// cmd/luod makes one private registry (prometheus.NewRegistry), hands it
// to New as a prometheus.Registerer and serves it with Serve or Handler;
// nothing is registered in the global default registry. Metrics come in
// two kinds:
//
//   - Live state (sessions, files, preserved bytes, clients, continuity,
//     upgrade phase, loaded kernel) is read from a Source at scrape time
//     and emitted as const metrics, node_exporter style: luod keeps no
//     second copy of its state that could drift.
//   - Events (kexec loads, upgrade phases and outcomes, recovery time,
//     errors) are counted by the daemon through the methods of *Metrics.
//     Every method is safe on a nil *Metrics, so the daemon runs unchanged
//     without metrics.
//
// Names follow luod_<subsystem>_<name>_<unit>: base units (seconds, bytes)
// in the name, _total on counters, and label values known in advance are
// exported from the start, at 0, so that rate() and absent() work before
// the first event. docs/metrics.md lists every metric with alerts.
//
// A live update kexecs into a new kernel and a new luod process: every
// counter starts again at 0 in the new boot. What must survive the kexec
// (the liveupdate number, continuity, lost sessions) is re-derived by
// recovery and exported as live state.
package metrics

import (
	"errors"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/luod/luod/pkg/proto"
)

// Namespace is the first part of every metric name.
const Namespace = "luod"

// Results of luod_kexec_loads_total.
const (
	// LoadSuccess: kexec_file_load accepted the kernel.
	LoadSuccess = "success"
	// LoadFailure: kexec_file_load refused it (bad image, signature,
	// memory), or the call failed otherwise.
	LoadFailure = "failure"
)

// Results of luod_upgrades_total, passed to Upgrade.
const (
	// UpgradeCommitted: the barrier passed, the manifest was written,
	// the workloads were told "committed" and luod is calling
	// reboot(LINUX_REBOOT_CMD_KEXEC). The process ends with the old
	// kernel, so this is seen only by a scrape in the last instant; count
	// successful updates across boots with luod_boot_liveupdate_number
	// instead. A reboot(2) that then fails is counted once more, as
	// UpgradeFailed: the workloads were told it was going, and it did not.
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
	// upgradeResults are the results luod_upgrades_total starts with.
	upgradeResults = []string{UpgradeCommitted, UpgradeAborted, UpgradeFailed, UpgradeDryRun}
	// phases are the upgrade phases, in order.
	phases = []string{proto.PhaseBarrier, proto.PhaseManifest, proto.PhaseReboot}
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

// BuildInfo labels luod_build_info.
type BuildInfo struct {
	// Version is luod's version, e.g. "0.1.0".
	Version string
	// Revision is the VCS revision luod was built from.
	Revision string
	// GoVersion is the Go toolchain; empty means runtime.Version().
	GoVersion string
}

// Metrics is luod's instrumentation. A nil *Metrics is valid: every
// method then does nothing.
type Metrics struct {
	c *collector

	kexecLoadDuration prometheus.Histogram
	kexecLoads        *prometheus.CounterVec
	phaseDuration     *prometheus.HistogramVec
	recoveryDuration  prometheus.Gauge
	upgrades          *prometheus.CounterVec
	errors            *prometheus.CounterVec
}

// New makes luod's metrics and registers them with reg, all at once: on
// error nothing is registered. src is read at every scrape (see Source).
// reg and src must not be nil; a daemon without metrics keeps a nil
// *Metrics instead.
func New(reg prometheus.Registerer, src Source, build BuildInfo) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: nil Registerer")
	}
	if src == nil {
		return nil, errors.New("metrics: nil Source")
	}
	if build.GoVersion == "" {
		build.GoVersion = runtime.Version()
	}
	m := &Metrics{
		kexecLoadDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "kexec", Name: "load_duration_seconds",
			Help:    "Time kexec_file_load took to load the next kernel, whatever its outcome.",
			Buckets: KexecLoadBuckets,
		}),
		kexecLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "kexec", Name: "loads_total",
			Help: "Calls of kexec_file_load to load the next kernel, by result (success or failure).",
		}, []string{"result"}),
		phaseDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "upgrade", Name: "phase_duration_seconds",
			Help:    "Time each upgrade phase (barrier, manifest, reboot) took; a reboot is observed only when it failed.",
			Buckets: PhaseBuckets,
		}, []string{"phase"}),
		recoveryDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "recovery", Name: "duration_seconds",
			Help: "Time this boot's recovery took, from reading the handover to holding every session; 0 until it finished.",
		}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "upgrades_total",
			Help: "Upgrades run since luod started, by result (committed, aborted, failed, dry_run).",
		}, []string{"result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "errors_total",
			Help: "Operations of luod that failed, by operation.",
		}, []string{"op"}),
	}
	for _, r := range []string{LoadSuccess, LoadFailure} {
		m.kexecLoads.WithLabelValues(r)
	}
	for _, p := range phases {
		m.phaseDuration.WithLabelValues(p)
	}
	for _, r := range upgradeResults {
		m.upgrades.WithLabelValues(r)
	}
	m.c = newCollector(src, build, []prometheus.Collector{
		m.kexecLoadDuration, m.kexecLoads, m.phaseDuration, m.recoveryDuration, m.upgrades, m.errors,
	})
	if err := reg.Register(m.c); err != nil {
		return nil, err
	}
	return m, nil
}

// ObserveKexecLoad records one call of kexec_file_load that took d and
// returned err: luod_kexec_load_duration_seconds and
// luod_kexec_loads_total{result}. Preflight refusals never reach the
// kernel and are not loads; every failed load request, preflight or
// kernel, is Error("load").
func (m *Metrics) ObserveKexecLoad(d time.Duration, err error) {
	if m == nil {
		return
	}
	m.kexecLoadDuration.Observe(d.Seconds())
	r := LoadSuccess
	if err != nil {
		r = LoadFailure
	}
	m.kexecLoads.WithLabelValues(r).Inc()
}

// ObservePhase records that the upgrade phase (proto.PhaseBarrier,
// PhaseManifest, PhaseReboot) took d, in
// luod_upgrade_phase_duration_seconds{phase}. Call it when the phase ends,
// whether it passed or failed.
func (m *Metrics) ObservePhase(phase string, d time.Duration) {
	if m == nil {
		return
	}
	m.phaseDuration.WithLabelValues(phase).Observe(d.Seconds())
}

// ObserveRecovery sets luod_recovery_duration_seconds to d, the time this
// boot's recovery took. Call it once, when recovery finished.
func (m *Metrics) ObserveRecovery(d time.Duration) {
	if m == nil {
		return
	}
	m.recoveryDuration.Set(d.Seconds())
}

// Error counts one failed operation in luod_errors_total{op}. op is a
// protocol operation (docs/protocol.md: "preserve", "load", "upgrade", …)
// or one of luod's own ("accept", "save_manifest", …). It must come from a
// fixed set in luod's code, never from a client's request: every distinct
// op is a time series kept until luod exits.
func (m *Metrics) Error(op string) {
	if m == nil {
		return
	}
	if op == "" {
		op = "unknown"
	}
	m.errors.WithLabelValues(op).Inc()
}

// Upgrade counts one upgrade that ended with result (UpgradeCommitted,
// UpgradeAborted, UpgradeFailed, UpgradeDryRun) in
// luod_upgrades_total{result}. Requests refused before the barrier (busy,
// no kernel loaded) are not upgrades: count them with Error("upgrade").
func (m *Metrics) Upgrade(result string) {
	if m == nil {
		return
	}
	m.upgrades.WithLabelValues(result).Inc()
}
