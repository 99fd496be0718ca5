package metrics

import (
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/luod/luod/pkg/proto"
)

// Source is luod's live state, read at every scrape. The daemon implements
// it.
//
// Snapshot is called from the HTTP server's goroutines, concurrently with
// everything else luod does and with other scrapes: it must read every
// field under the lock that guards it, must not block on an upgrade in
// progress, and must return maps of its own (metrics does not keep them).
// It is called about once per scrape interval, so walking every session
// is fine.
type Source interface {
	Snapshot() Snapshot
}

// SourceFunc is a func used as a Source.
type SourceFunc func() Snapshot

// Snapshot calls f.
func (f SourceFunc) Snapshot() Snapshot { return f() }

// Snapshot is luod's state at one instant, as plain values.
type Snapshot struct {
	// LiveUpdateNumber is the liveupdate number this boot's kernel
	// reported: how many live updates led to this boot since the last cold
	// boot; 0 after a cold boot.
	LiveUpdateNumber uint64
	// Continuity is recovery's verdict on this boot (proto.ContinuityOK,
	// …); "" while recovery has not finished.
	Continuity string
	// SessionsByState counts the sessions luod holds by state
	// (proto.StateOpen, StateIncoming, StateClaimed, StateFinished).
	// Missing states count 0.
	SessionsByState map[string]int
	// FilesByState counts the preserved files of those sessions, by the
	// state of their session.
	FilesByState map[string]int
	// PreservedBytes is the sum of the sizes of the files of open,
	// incoming and claimed sessions: the memory a live update carries or
	// carried over.
	PreservedBytes int64
	// ConnectedClients counts the client connections open now, admin ones
	// included.
	ConnectedClients int
	// SubscribedClients counts the connections subscribed to upgrade
	// events: the clients the next barrier waits for.
	SubscribedClients int
	// Lost names the sessions the previous boot held that this boot
	// could not give back (Status.LostSessions), with their owners' uids:
	// luod_sessions_lost counts them, luod_session_lost_info names them.
	Lost []LostSession
	// UnclaimedOverdue counts incoming sessions still unclaimed after
	// --reclaim.grace (Status.UnclaimedOverdue).
	UnclaimedOverdue int
	// UpgradePhase is the phase of the upgrade in progress
	// (proto.PhaseBarrier, …), "" when none runs.
	UpgradePhase string
	// KernelLoaded is set while a kernel is loaded for the next live
	// update (luoctl load, until unload or reboot).
	KernelLoaded bool
}

// LostSession is one session of Snapshot.Lost.
type LostSession struct {
	Name string
	UID  uint32
}

var (
	// continuities are the values of Snapshot.Continuity.
	continuities = []string{proto.ContinuityOK, proto.ContinuityMismatch, proto.ContinuityColdBoot,
		proto.ContinuityNoManifest, proto.ContinuityFresh}
	// states are the session states.
	states = []string{proto.StateOpen, proto.StateIncoming, proto.StateClaimed, proto.StateFinished}
)

func fqName(subsystem, name string) string { return prometheus.BuildFQName(Namespace, subsystem, name) }

// descs describe the live-state metrics. They are built by New, not at
// package init: luod's start runs every package's init before main, in
// the pause of a live update, and nothing here is needed to recover.
type descs struct {
	buildInfoDesc, continuityDesc, liveUpdateNumberDesc         *prometheus.Desc
	sessionsDesc, sessionFilesDesc, preservedBytesDesc          *prometheus.Desc
	clientsConnectedDesc, clientsSubscribedDesc                 *prometheus.Desc
	sessionsLostDesc, sessionLostInfoDesc, unclaimedOverdueDesc *prometheus.Desc
	upgradePhaseDesc, kernelLoadedDesc                          *prometheus.Desc
}

func newDescs() descs {
	return descs{
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
			"A metric with a constant value of 1 per session of the previous boot that this boot could not give back, labeled by its name and owner's uid (luoctl status lists them too).",
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
	}
}

// collector is everything New registers, as one prometheus.Collector: the
// live state read from src at scrape time, and the event metrics.
type collector struct {
	descs
	src    Source
	build  BuildInfo
	events []prometheus.Collector
}

func newCollector(src Source, build BuildInfo, events []prometheus.Collector) *collector {
	return &collector{descs: newDescs(), src: src, build: build, events: events}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.buildInfoDesc, c.continuityDesc, c.liveUpdateNumberDesc, c.sessionsDesc, c.sessionFilesDesc,
		c.preservedBytesDesc, c.clientsConnectedDesc, c.clientsSubscribedDesc, c.sessionsLostDesc,
		c.sessionLostInfoDesc, c.unclaimedOverdueDesc, c.upgradePhaseDesc, c.kernelLoadedDesc,
	} {
		ch <- d
	}
	for _, e := range c.events {
		e.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	b := c.build
	ch <- prometheus.MustNewConstMetric(c.buildInfoDesc, prometheus.GaugeValue, 1, b.Version, b.GoVersion, b.Revision)

	s := c.src.Snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	stateSet(ch, c.continuityDesc, continuities, s.Continuity)
	gauge(c.liveUpdateNumberDesc, float64(s.LiveUpdateNumber))
	byState(ch, c.sessionsDesc, s.SessionsByState)
	byState(ch, c.sessionFilesDesc, s.FilesByState)
	gauge(c.preservedBytesDesc, float64(s.PreservedBytes))
	gauge(c.clientsConnectedDesc, float64(s.ConnectedClients))
	gauge(c.clientsSubscribedDesc, float64(s.SubscribedClients))
	gauge(c.sessionsLostDesc, float64(len(s.Lost)))
	for _, l := range s.Lost {
		gauge(c.sessionLostInfoDesc, 1, l.Name, strconv.FormatUint(uint64(l.UID), 10))
	}
	gauge(c.unclaimedOverdueDesc, float64(s.UnclaimedOverdue))
	stateSet(ch, c.upgradePhaseDesc, phases, s.UpgradePhase)
	gauge(c.kernelLoadedDesc, boolValue(s.KernelLoaded))

	for _, e := range c.events {
		e.Collect(ch)
	}
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

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
