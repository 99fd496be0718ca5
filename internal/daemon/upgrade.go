package daemon

import (
	"fmt"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/nice"
	"github.com/luod/luod/pkg/metrics"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// barrier waits for every subscribed client to answer "ready".
type barrier struct {
	id      string
	mu      sync.Mutex
	waiting map[*conn]bool
	failed  string
	done    chan struct{}
	once    sync.Once
	// passed is when the last waiting client answered ready: where the
	// workloads' pause, and luod's share of the blackout, begins.
	passed time.Time
}

func (b *barrier) finish() { b.once.Do(func() { close(b.done) }) }

func (b *barrier) ready(c *conn) {
	b.mu.Lock()
	delete(b.waiting, c)
	n := len(b.waiting)
	if n == 0 && b.passed.IsZero() {
		b.passed = time.Now()
	}
	b.mu.Unlock()
	if n == 0 {
		b.finish()
		// The workloads' pause has begun: let the upgrade goroutine,
		// just woken on this P, run now instead of after this one has
		// answered its client and gone back to reading (1.8 ms under
		// TCG in the VM bench, most of luod's share of the pause).
		runtime.Gosched()
	}
}

// gone is called when a connection closes during the barrier: a waiting
// client that goes away fails the barrier.
func (b *barrier) gone(c *conn) {
	b.mu.Lock()
	if b.waiting[c] && b.failed == "" {
		b.failed = fmt.Sprintf("client pid %d (uid %d) disconnected before answering ready", c.peer.Pid, c.peer.Uid)
	}
	delete(b.waiting, c)
	b.mu.Unlock()
	b.finish()
}

func (d *Daemon) currentPhase() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.phase
}

// setPhase records the upgrade phase p ("" once over) for status. The
// manifest and reboot phases run in the workloads' pause, where a log
// line and a STATUS= datagram are each a write luod's share of it waits
// for: they are logged at debug (the "manifest written" and reboot lines
// say as much) and systemd's status line is left at the barrier, which
// can last seconds, until the upgrade is over.
func (d *Daemon) setPhase(p string) {
	d.mu.Lock()
	d.phase = p
	d.mu.Unlock()
	inPause := p == proto.PhaseManifest || p == proto.PhaseReboot
	switch {
	case inPause:
		d.log.Debug("upgrade phase", "phase", p)
	case p != "":
		d.log.Info("upgrade phase", "phase", p)
	}
	if !inPause {
		d.notifyStatus()
	}
}

// upgrade runs the live update: barrier, manifest, reboot. It returns only
// for a dry run or a failure; then every session is as it was.
func (d *Daemon) upgrade(req *conn, a proto.UpgradeArgs) (*proto.UpgradeResult, error) {
	if !d.upgradeMu.TryLock() {
		return nil, proto.Errorf(proto.CodeBusy, "upgrade in progress")
	}
	defer d.upgradeMu.Unlock()
	// The disk writer waits until the upgrade ends (a write under way is
	// waited for here): its fsync and collection stay out of the pause.
	d.diskMu.Lock()
	defer d.diskMu.Unlock()
	defer d.setPhase("")

	d.mu.Lock()
	loaded := d.loaded
	d.upgrades++
	id := fmt.Sprintf("u-%d", d.upgrades)
	d.mu.Unlock()
	if loaded == nil {
		return nil, proto.Errorf(proto.CodeNoKernelLoaded, "no kernel is loaded: run luoctl load first")
	}
	path, why, err := d.choosePath()
	if err != nil {
		return nil, proto.Errorf(proto.CodeKexecFailed, "%v", err)
	}
	timeout := time.Duration(a.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = d.cfg.UpgradeTimeout
	}
	res := &proto.UpgradeResult{Upgrade: id, DryRun: a.DryRun, Phases: map[string]int64{}}
	// The workloads' pause (from the barrier passed to the reboot) runs
	// once an upgrade, and a first run pays for itself: under TCG the
	// translation of the code, natively the encoders encoding/json builds
	// for a type at its first use. So what the pause sends is encoded
	// before it, and its phase times (took) go into the result and the
	// metrics when the upgrade returns (a reboot loses them anyway).
	progressOf := map[string]*proto.Event{}
	for _, ph := range []string{proto.PhaseBarrier, proto.PhaseManifest, proto.PhaseReboot} {
		progressOf[ph], _ = proto.NewEvent(proto.EventProgress, proto.ProgressEvent{Upgrade: id, Phase: ph})
	}
	committed, _ := proto.NewEvent(proto.EventCommitted, proto.CommittedEvent{Upgrade: id})
	took := map[string]time.Duration{}
	defer func() {
		for phase, t := range took {
			res.Phases[phase] = t.Milliseconds()
			d.metrics.ObservePhase(phase, t)
		}
	}()
	// In the pause the requester's progress events are held and go with
	// committed in one batch (commit): each message sent alone is a
	// system call and may wake the requester onto a vCPU luod needs.
	// However else the upgrade ends, the deferred flush sends them first,
	// before the answer. The barrier's goes by the same path (events), so
	// that path has run once before the pause.
	var held []*proto.Event
	pausing := false
	progress := func(phase string) {
		d.setPhase(phase)
		if pausing {
			held = append(held, progressOf[phase])
		} else {
			req.events([]*proto.Event{progressOf[phase]})
		}
	}
	flush := func(more ...*proto.Event) {
		if evs := append(held, more...); len(evs) > 0 {
			req.events(evs)
		}
		held = nil
	}
	defer flush()
	d.log.Info("upgrade requested", "upgrade", id, "release", loaded.Release, "dry_run", a.DryRun, "timeout", timeout,
		"path", path, "why", why)
	if d.cfg.BeforeUpgrade != nil {
		d.cfg.BeforeUpgrade()
	}

	// The manifest is written while the workloads still run; the manifest
	// phase, in their pause, only checks that no session changed since.
	d.prewriteManifest(id)

	// Barrier: every subscriber must answer ready in time. From here to
	// the reboot luod's threads run at Config.PauseNice, and no garbage
	// collection runs.
	defer d.raisePriority(id)()
	defer holdGC()()
	progress(proto.PhaseBarrier)
	t0 := time.Now()
	subs, passed, why := d.runBarrier(id, req, timeout)
	woke := time.Since(passed) // the last ready's arrival to this goroutine running on
	pausing = true
	// commit tells the subscribers, then the requester with its held
	// progress events, that luod reboots.
	commit := func() {
		for _, c := range subs {
			c.events([]*proto.Event{committed})
		}
		flush(committed)
	}
	took[proto.PhaseBarrier] = time.Since(t0)
	abort := func(reason string) {
		d.custody.DiscardManifest()
		for _, c := range subs {
			c.event(proto.EventAborted, proto.AbortedEvent{Upgrade: id, Reason: reason})
		}
		d.log.Warn("upgrade aborted; every session is intact", "upgrade", id, "reason", reason)
	}
	if why != "" {
		d.metrics.Upgrade(metrics.UpgradeAborted)
		abort(why)
		return nil, proto.Errorf(proto.CodeAborted, "upgrade %s aborted: %s", id, why)
	}

	// Manifest: freeze the custody and keep the manifest written before
	// the barrier if no session changed since, else write it (luod's own
	// session and the readable copy) anew; sync.
	progress(proto.PhaseManifest)
	t0 = time.Now()
	w, unfreeze, err := d.writeManifest()
	if err != nil {
		took[proto.PhaseManifest] = time.Since(t0)
		d.metrics.Upgrade(metrics.UpgradeFailed)
		abort("writing the manifest failed: " + err.Error())
		return nil, err
	}
	tSync := time.Now()
	unix.Sync()
	syncTime := time.Since(tSync)
	manifestTime := time.Since(t0)
	took[proto.PhaseManifest] = manifestTime
	// What the pause did goes into one line at its end (reboot, dry run,
	// kexec.target), not a line a step: each is a write luod's share of
	// the pause waits for.
	written := []any{"upgrade", id, "clients", len(subs), "sessions", len(w.Sessions),
		"expected_liveupdate_number", w.ExpectedLiveUpdateNumber, "manifest_prewritten", w.Reused}
	d.log.Debug("manifest written", written...)

	if a.DryRun {
		d.metrics.Upgrade(metrics.UpgradeDryRun)
		unfreeze()
		for _, c := range subs {
			c.event(proto.EventAborted, proto.AbortedEvent{Upgrade: id, Reason: "dry run: no reboot"})
		}
		d.saveDisk()
		d.log.Info("dry run finished: everything but the reboot", written...)
		return res, nil
	}

	// Reboot. Either path returns only on failure (the orderly one also
	// when systemd stops luod for the kexec); a failure leaves every
	// session as it was.
	progress(proto.PhaseReboot)
	fail := func(what string, err error) (*proto.UpgradeResult, error) {
		d.metrics.Upgrade(metrics.UpgradeFailed)
		unfreeze()
		d.saveDisk()
		abort(what + " failed: " + err.Error())
		d.log.Error(what+" failed; back to normal with every session intact", "upgrade", id, "err", err)
		return nil, proto.Errorf(proto.CodeKexecFailed, "%s into %s failed: %v; every session is intact", what, loaded.Release, err)
	}
	if path == PathOrderly {
		if err := d.orderlyCommit(id, req, commit, loaded.Release, written); err != nil {
			return fail("starting kexec.target", err)
		}
		// As on the direct path the requester sees its connection end,
		// not an answer.
		return nil, proto.Errorf(proto.CodeKexecFailed, "luod stopped for the kexec")
	}
	tCommit := time.Now()
	commit()
	sent := time.Since(tCommit)
	d.metrics.Upgrade(metrics.UpgradeCommitted)
	// luod's share of the workloads' pause: from the last ready to here,
	// with the sync(2) of the manifest phase (the kernel's flush of every
	// dirty page, not luod's work) shown apart, and two parts of the rest:
	// woke, until luod's upgrade went on after the last ready, and events,
	// the committed events (with the requester's progress).
	pause := append(written, "release", loaded.Release,
		"since_ready", time.Since(passed), "manifest", manifestTime, "sync", syncTime, "woke", woke, "events", sent)
	// The same line goes into the reserved session's pause page, which
	// the kernel carries and the next luod reports: the log line, luod's
	// last write before reboot(2), may not be read before the kexec.
	d.custody.NotePause(keyValues(pause))
	d.log.Info("calling reboot(LINUX_REBOOT_CMD_KEXEC)", pause...)
	t0 = time.Now()
	if err = d.faultReboot("kexec reboot: EIO"); err == nil {
		err = d.cfg.Kexec.Reboot()
	}
	took[proto.PhaseReboot] = time.Since(t0)
	return fail("reboot", err)
}

// runBarrier sends prepare to every subscriber and waits until all answer
// ready, one fails, or the timeout passes. It returns the subscribers,
// when the barrier passed (the last ready's arrival; now if nobody was
// subscribed) and, on failure, why.
func (d *Daemon) runBarrier(id string, req *conn, timeout time.Duration) ([]*conn, time.Time, string) {
	b := &barrier{id: id, waiting: map[*conn]bool{}, done: make(chan struct{})}
	d.mu.Lock()
	var subs []*conn
	for c := range d.subs {
		if c != req {
			subs = append(subs, c)
			b.waiting[c] = true
		}
	}
	d.barrier = b
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.barrier = nil
		d.mu.Unlock()
	}()
	if len(subs) == 0 {
		return nil, time.Now(), ""
	}
	for _, c := range subs {
		if err := c.event(proto.EventPrepare, proto.PrepareEvent{Upgrade: id, DeadlineMS: timeout.Milliseconds()}); err != nil {
			b.mu.Lock()
			if b.failed == "" {
				b.failed = fmt.Sprintf("client pid %d (uid %d) could not be told to prepare: %v", c.peer.Pid, c.peer.Uid, err)
			}
			b.mu.Unlock()
			b.finish()
		}
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-b.done:
	case <-t.C:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failed != "" {
		return subs, time.Time{}, b.failed
	}
	if len(b.waiting) > 0 {
		var who []string
		for c := range b.waiting {
			who = append(who, fmt.Sprintf("pid %d (uid %d)", c.peer.Pid, c.peer.Uid))
		}
		return subs, time.Time{}, fmt.Sprintf("%d client(s) did not answer ready within %v: %v", len(who), timeout, who)
	}
	d.log.Debug("barrier passed: every subscriber is ready", "upgrade", id, "clients", len(subs))
	return subs, b.passed, ""
}

// raisePriority gives every luod thread Config.PauseNice if that is
// below luod's own nice value, and returns what gives the old value
// back. Refused (no CAP_SYS_NICE), luod goes on as it is.
func (d *Daemon) raisePriority(id string) (restore func()) {
	base, err := nice.Get()
	if err != nil || d.cfg.PauseNice >= base {
		return func() {}
	}
	if err := nice.Set(d.cfg.PauseNice); err != nil {
		d.log.Warn("cannot raise luod's priority for the upgrade; going on without", "upgrade", id,
			"nice", d.cfg.PauseNice, "err", err)
		nice.Set(base)
		return func() {}
	}
	return func() {
		if err := nice.Set(base); err != nil {
			d.log.Warn("cannot give luod's priority back after the upgrade", "upgrade", id, "nice", base, "err", err)
		}
	}
}

// keyValues writes slog's key/value pairs kv as "k=v k=v", as slog's
// text handler writes values that need no quoting (numbers, durations,
// booleans, releases).
func keyValues(kv []any) []byte {
	var b []byte
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b = append(b, ' ')
		}
		b = fmt.Appendf(b, "%s=%v", kv[i], kv[i+1])
	}
	return b
}

// pauseHeadroom is how much luod's memory may grow while an upgrade holds
// its collector off (holdGC) before a collection runs after all: far more
// than the pause allocates (its events are encoded before it; a manifest
// written anew for 1000 sessions is a few MiB), bounded against a barrier
// flooded with requests.
const pauseHeadroom = 64 << 20

// holdGC turns the garbage collector off, waiting for a cycle under way
// to end, and returns what turns it back on as it was. An upgrade calls it
// before its barrier: a cycle that began with the manifest written just
// before (MiBs at 1000 sessions) would otherwise still be marking, its
// assists taking the upgrade's time, in the workloads' pause (20 ms under
// TCG in one VM bench run at 1000 sessions, a ms or so natively). A soft
// memory limit of pauseHeadroom above what luod holds stands in for it
// meanwhile.
func holdGC() (restore func()) {
	s := []rtmetrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	rtmetrics.Read(s)
	limit := debug.SetMemoryLimit(int64(s[0].Value.Uint64()-s[1].Value.Uint64()) + pauseHeadroom)
	percent := debug.SetGCPercent(-1) // waits for a cycle under way
	return func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	}
}

// faultReboot is the test-only switch --test.fault-reboot: it fails the
// first FaultRebootFails reboot attempts (either path) with an error
// starting with what, and lets the later ones through (nil). Called with
// upgradeMu held.
func (d *Daemon) faultReboot(what string) error {
	if d.rebootsFailed >= d.cfg.FaultRebootFails {
		return nil
	}
	d.rebootsFailed++
	return fmt.Errorf("%s: test fault switch --test.fault-reboot (%d of %d)", what, d.rebootsFailed, d.cfg.FaultRebootFails)
}

// orderlyCommit commits an upgrade on the orderly path: luod hands its
// sessions to systemd's fd store and starts kexec.target
// (handOverToSystemd), tells the requester and the subscribers (commit),
// and stays frozen, with the manifest written, until systemd stops it;
// then it closes the requester's connection and returns nil. An error means
// nothing was queued and the caller fails the upgrade.
func (d *Daemon) orderlyCommit(id string, req *conn, commit func(), release string, written []any) error {
	d.log.Info("starting kexec.target: systemd stops every service, luod too, and kexecs with the fd stores",
		append(written, "release", release)...)
	t0 := time.Now()
	err := d.faultReboot("kexec.target")
	if err == nil {
		err = d.handOverToSystemd()
	}
	d.metrics.ObservePhase(proto.PhaseReboot, time.Since(t0))
	if err != nil {
		return err
	}
	d.metrics.Upgrade(metrics.UpgradeCommitted)
	commit()
	d.log.Info("kexec.target queued: waiting for systemd to stop luod", "upgrade", id)
	<-d.stopping
	req.closed.Store(true)
	req.c.Close()
	return nil
}

// prewriteManifest writes the manifest into luod's reserved session, its
// readable copy and a sync(2) before the barrier, while the workloads
// still run (Custody.PrewriteManifest): the manifest phase in their pause
// then writes nothing unless a session changed during the barrier, and
// its sync(2) finds little left to flush. A failure here costs only that:
// the manifest phase writes the manifest again and reports its own error.
func (d *Daemon) prewriteManifest(id string) {
	w, err := d.custody.PrewriteManifest(d.expectedNext())
	if err != nil {
		d.log.Debug("manifest not prewritten; the manifest phase writes it", "upgrade", id, "err", err)
		return
	}
	d.writeManifestCopy(w.Bytes)
	unix.Sync()
}

// writeManifest freezes the custody and writes the manifest into luod's
// reserved session, with its readable copy on disk: the manifest phase
// but for the sync(2), which the caller runs to make the copy durable.
// A manifest prewritten and still true is kept as it is, copy included.
// On success the custody stays frozen until unfreeze.
func (d *Daemon) writeManifest() (session.Written, func(), error) {
	unfreeze := d.custody.Freeze()
	w, err := d.custody.WriteManifest(d.expectedNext())
	if err != nil {
		unfreeze()
		return session.Written{}, nil, err
	}
	if !w.Reused {
		d.writeManifestCopy(w.Bytes)
	}
	return w, unfreeze, nil
}

// writeManifestCopy writes the manifest copy on disk from the bytes in the
// reserved session, not fsynced: a sync(2) follows. Failing is a warning.
func (d *Daemon) writeManifestCopy(b []byte) {
	if err := session.WriteFile(d.cfg.StateDir, b, false); err != nil {
		d.log.Warn("cannot write the manifest copy; the in-memory manifest still crosses the kexec",
			"dir", d.cfg.StateDir, "err", err)
	}
}
