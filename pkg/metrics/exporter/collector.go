// Package exporter serves luod's metrics to Prometheus: it turns the
// metrics.Snapshot luod answers to the "metrics" operation into
// Prometheus metrics, from one private registry (nothing in
// client_golang's global one), over HTTP.
//
// cmd/luod-exporter uses it. luod itself never links client_golang (see
// package metrics for why): it starts luod-exporter at the first scrape, with a
// connection of its own, and the exporter asks luod for a Snapshot at
// every scrape. Every figure is read from luod when scraped, node_exporter
// style, so nothing here can drift from luod's state.
//
// Names follow luod_<subsystem>_<name>_<unit>: base units (seconds, bytes)
// in the name, _total on counters, and label values known in advance are
// exported from the start, at 0, so that rate() and absent() work before
// the first event. docs/metrics.md lists every metric with alerts.
package exporter

import (
	"errors"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/luod/luod/pkg/metrics"
	"github.com/luod/luod/pkg/proto"
)

// Namespace is the first part of every metric name.
const Namespace = "luod"

// Source gives luod's Snapshot, asked at every scrape: cmd/luod-exporter
// asks luod over its connection (client.Metrics). An error means luod did
// not answer: luod_up is 0 and no other luod_ metric is exported.
//
// Snapshot is called from the HTTP server's goroutines, concurrently with
// other scrapes.
type Source func() (metrics.Snapshot, error)

var (
	// continuities are the values of Snapshot.Continuity.
	continuities = []string{proto.ContinuityOK, proto.ContinuityMismatch, proto.ContinuityColdBoot,
		proto.ContinuityNoManifest, proto.ContinuityFresh}
	// states are the session states.
	states = []string{proto.StateOpen, proto.StateIncoming, proto.StateClaimed, proto.StateFinished}
)

func fqName(subsystem, name string) string { return prometheus.BuildFQName(Namespace, subsystem, name) }

// descs describe every luod metric.
type descs struct {
	upDesc                                                      *prometheus.Desc
	buildInfoDesc, continuityDesc, liveUpdateNumberDesc         *prometheus.Desc
	sessionsDesc, sessionFilesDesc, preservedBytesDesc          *prometheus.Desc
	clientsConnectedDesc, clientsSubscribedDesc                 *prometheus.Desc
	sessionsLostDesc, sessionLostInfoDesc, unclaimedOverdueDesc *prometheus.Desc
	upgradePhaseDesc, kernelLoadedDesc                          *prometheus.Desc

	kexecLoadsDesc, kexecLoadDurationDesc, phaseDurationDesc *prometheus.Desc
	recoveryDurationDesc, upgradesDesc, errorsDesc           *prometheus.Desc
}

func newDescs() descs {
	return descs{
		upDesc: prometheus.NewDesc(fqName("", "up"),
			"Whether luod answered the exporter's last request for its metrics (1) or not (0); without it no other luod metric is exported.",
			nil, nil),
		buildInfoDesc: prometheus.NewDesc(fqName("", "build_info"),
			"A metric with a constant value of 1 labeled by the version, Go version and revision luod was built from.",
			[]string{"version", "goversion", "revision"}, nil),
		continuityDesc: prometheus.NewDesc(fqName("boot", "continuity"),
			"Whether this boot continues the last one as recovery found: 1 for the current verdict (ok, mismatch, cold_boot, no_manifest, fresh), 0 for the others and for all while recovery runs.",
			[]string{"continuity"}, nil),
		liveUpdateNumberDesc: prometheus.NewDesc(fqName("boot", "liveupdate_number"),
			"The liveupdate number this boot's kernel reported: live updates since the last cold boot.",
			nil, nil),
		sessionsDesc: prometheus.NewDesc(fqName("", "sessions"),
			"Sessions luod holds, by state (open, incoming, claimed, finished).",
			[]string{"state"}, nil),
		sessionFilesDesc: prometheus.NewDesc(fqName("session", "files"),
			"Preserved files of the sessions luod holds, by the state of their session.",
			[]string{"state"}, nil),
		preservedBytesDesc: prometheus.NewDesc(fqName("", "preserved_bytes"),
			"Total size of the files of open, incoming and claimed sessions: the memory a live update carries.",
			nil, nil),
		clientsConnectedDesc: prometheus.NewDesc(fqName("clients", "connected"),
			"Client connections open on luod's socket.",
			nil, nil),
		clientsSubscribedDesc: prometheus.NewDesc(fqName("clients", "subscribed"),
			"Client connections subscribed to upgrade events, which the next barrier waits for.",
			nil, nil),
		sessionsLostDesc: prometheus.NewDesc(fqName("sessions", "lost"),
			"Sessions of the previous boot that this boot could not give back.",
			nil, nil),
		sessionLostInfoDesc: prometheus.NewDesc(fqName("session", "lost_info"),
			"A metric with a constant value of 1 per session of the previous boot that this boot could not give back (the first "+
				strconv.Itoa(metrics.MaxLostNamed)+"), labeled by its name and owner's uid (luoctl status lists them all).",
			[]string{"session", "uid"}, nil),
		unclaimedOverdueDesc: prometheus.NewDesc(fqName("sessions", "unclaimed_overdue"),
			"Sessions handed over by the live update and still unclaimed by their owners after the reclaim grace period.",
			nil, nil),
		upgradePhaseDesc: prometheus.NewDesc(fqName("upgrade", "phase"),
			"The phase of the upgrade in progress: 1 for the current phase (barrier, manifest, reboot), 0 for the others and for all when no upgrade runs.",
			[]string{"phase"}, nil),
		kernelLoadedDesc: prometheus.NewDesc(fqName("kexec", "kernel_loaded"),
			"Whether a kernel is loaded for the next live update (1) or not (0).",
			nil, nil),

		kexecLoadsDesc: prometheus.NewDesc(fqName("kexec", "loads_total"),
			"Calls of kexec_file_load to load the next kernel, by result (success or failure).",
			[]string{"result"}, nil),
		kexecLoadDurationDesc: prometheus.NewDesc(fqName("kexec", "load_duration_seconds"),
			"Time kexec_file_load took to load the next kernel, whatever its outcome.",
			nil, nil),
		phaseDurationDesc: prometheus.NewDesc(fqName("upgrade", "phase_duration_seconds"),
			"Time each upgrade phase (barrier, manifest, reboot) took; a reboot is observed only when it failed.",
			[]string{"phase"}, nil),
		recoveryDurationDesc: prometheus.NewDesc(fqName("recovery", "duration_seconds"),
			"Time this boot's recovery took, from reading the handover to holding every session; 0 until it finished.",
			nil, nil),
		upgradesDesc: prometheus.NewDesc(fqName("", "upgrades_total"),
			"Upgrades run since luod started, by result (committed, aborted, failed, dry_run).",
			[]string{"result"}, nil),
		errorsDesc: prometheus.NewDesc(fqName("", "errors_total"),
			"Operations of luod that failed, by operation.",
			[]string{"op"}, nil),
	}
}

// Collector is every luod metric, as one prometheus.Collector reading a
// Source at each scrape.
type Collector struct {
	descs
	src Source
}

// NewCollector returns the collector of src's snapshots; register it
// with a registry of its own (prometheus.NewRegistry).
func NewCollector(src Source) (*Collector, error) {
	if src == nil {
		return nil, errors.New("exporter: nil Source")
	}
	return &Collector{descs: newDescs(), src: src}, nil
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.upDesc, c.buildInfoDesc, c.continuityDesc, c.liveUpdateNumberDesc, c.sessionsDesc, c.sessionFilesDesc,
		c.preservedBytesDesc, c.clientsConnectedDesc, c.clientsSubscribedDesc, c.sessionsLostDesc,
		c.sessionLostInfoDesc, c.unclaimedOverdueDesc, c.upgradePhaseDesc, c.kernelLoadedDesc,
		c.kexecLoadsDesc, c.kexecLoadDurationDesc, c.phaseDurationDesc, c.recoveryDurationDesc,
		c.upgradesDesc, c.errorsDesc,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	s, err := c.src()
	if err != nil {
		gauge(c.upDesc, 0)
		return
	}
	gauge(c.upDesc, 1)
	b := s.Build
	gauge(c.buildInfoDesc, 1, b.Version, b.GoVersion, b.Revision)
	stateSet(ch, c.continuityDesc, continuities, s.Continuity)
	gauge(c.liveUpdateNumberDesc, float64(s.LiveUpdateNumber))
	byState(ch, c.sessionsDesc, s.SessionsByState)
	byState(ch, c.sessionFilesDesc, s.FilesByState)
	gauge(c.preservedBytesDesc, float64(s.PreservedBytes))
	gauge(c.clientsConnectedDesc, float64(s.ConnectedClients))
	gauge(c.clientsSubscribedDesc, float64(s.SubscribedClients))
	gauge(c.sessionsLostDesc, float64(max(s.LostTotal, len(s.Lost))))
	for _, l := range s.Lost {
		gauge(c.sessionLostInfoDesc, 1, l.Name, strconv.FormatUint(uint64(l.UID), 10))
	}
	gauge(c.unclaimedOverdueDesc, float64(s.UnclaimedOverdue))
	stateSet(ch, c.upgradePhaseDesc, metrics.Phases, s.UpgradePhase)
	gauge(c.kernelLoadedDesc, boolValue(s.KernelLoaded))

	ev := s.Events
	counters(ch, c.kexecLoadsDesc, ev.KexecLoads)
	histogram(ch, c.kexecLoadDurationDesc, ev.KexecLoadSeconds)
	for p, h := range ev.PhaseSeconds {
		histogram(ch, c.phaseDurationDesc, h, p)
	}
	gauge(c.recoveryDurationDesc, ev.RecoverySeconds)
	counters(ch, c.upgradesDesc, ev.Upgrades)
	counters(ch, c.errorsDesc, ev.Errors)
}

// stateSet emits one series per known value, 1 for cur and 0 for the
// others. A cur not among them gets a series of its own, so that a value
// added to luod is never hidden; "" sets none.
func stateSet(ch chan<- prometheus.Metric, d *prometheus.Desc, known []string, cur string) {
	for _, k := range known {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, boolValue(k == cur), k)
	}
	if cur != "" && !slices.Contains(known, cur) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 1, cur)
	}
}

// byState emits one series per session state, 0 when n lacks it, and one
// for any other key of n.
func byState(ch chan<- prometheus.Metric, d *prometheus.Desc, n map[string]int) {
	for _, st := range states {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(n[st]), st)
	}
	for st, v := range n {
		if !slices.Contains(states, st) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), st)
		}
	}
}

// counters emits one counter per key of n, the key its label.
func counters(ch chan<- prometheus.Metric, d *prometheus.Desc, n map[string]uint64) {
	for k, v := range n {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), k)
	}
}

// histogram emits h; a histogram whose bounds and counts disagree (an
// answer of another luod version, or a broken one) is reported as an
// invalid metric instead of panicking.
func histogram(ch chan<- prometheus.Metric, d *prometheus.Desc, h metrics.Histogram, labels ...string) {
	if h.Bounds == nil {
		return // luod counts none of this kind
	}
	if len(h.Bounds) != len(h.Counts) {
		ch <- prometheus.NewInvalidMetric(d, errors.New("histogram with "+strconv.Itoa(len(h.Bounds))+
			" bounds and "+strconv.Itoa(len(h.Counts))+" counts"))
		return
	}
	buckets := make(map[float64]uint64, len(h.Bounds))
	for i, b := range h.Bounds {
		buckets[b] = h.Counts[i]
	}
	m, err := prometheus.NewConstHistogram(d, h.Count, h.Sum, buckets, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
