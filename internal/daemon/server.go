package daemon

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// conn is one client connection. Requests on it are handled in order;
// events to it may be sent from other goroutines, so every write holds wmu.
type conn struct {
	d    *Daemon
	c    *proto.Conn
	id   uint64
	peer unix.Ucred
	// internal: luod's own exporter (exporter.go), not a client; left
	// out of the connected clients luod reports.
	internal bool

	wmu    sync.Mutex
	closed atomic.Bool
}

var connIDs atomic.Uint64

// Serve accepts clients until ctx is done. It returns after every
// connection has been closed.
func (d *Daemon) Serve(ctx context.Context) error {
	l := d.cfg.Listener
	if l == nil {
		var err error
		if err = os.MkdirAll(filepath.Dir(d.cfg.SocketPath), 0o755); err != nil {
			return err
		}
		if l, err = proto.Listen(d.cfg.SocketPath, d.cfg.SocketMode, d.cfg.SocketGID); err != nil {
			return err
		}
	}
	go func() {
		<-ctx.Done()
		close(d.stopping)
		l.Close()
	}()
	go d.diskWriter(ctx)
	go d.watchOverdue(ctx)
	go d.heartbeat(ctx)

	d.log.Info("serving", "socket", l.Addr().String(), "status", d.statusLine())
	if d.cfg.Ready != nil {
		d.cfg.Ready(d.statusLine())
	}
	var wg sync.WaitGroup
	if len(d.cfg.Exporter) > 0 && d.cfg.MetricsAddress != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.runExporter(ctx)
		}()
	}
	sem := make(chan struct{}, d.cfg.MaxConnections)
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				break
			}
			d.log.Warn("accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			cc := &conn{d: d, c: c}
			cc.send(proto.ErrorResponse(0, proto.Errorf(proto.CodeLimit,
				"luod serves at most %d connections at once", d.cfg.MaxConnections)))
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			d.serveConn(ctx, c, false)
		}()
	}
	d.mu.Lock()
	for c := range d.conns {
		c.c.Close()
	}
	d.mu.Unlock()
	wg.Wait()
	// The disk copy must name what this instance held, so that the next
	// one can report it if it dies with us.
	d.saveDisk()
	if st := d.custody.Snapshot(); st.Open+st.Incoming+st.Claimed > 0 {
		d.log.Warn("luod stopping: sessions held only by luod end with it unless systemd's fd store keeps them",
			"open", st.Open, "incoming", st.Incoming, "claimed", st.Claimed)
	}
	return nil
}

func (d *Daemon) serveConn(ctx context.Context, pc *proto.Conn, internal bool) {
	c := &conn{d: d, c: pc, id: connIDs.Add(1), internal: internal}
	if cred, err := pc.PeerCred(); err == nil {
		c.peer = *cred
	}
	d.mu.Lock()
	d.conns[c] = true
	d.mu.Unlock()
	d.log.Debug("client connected", "conn", c.id, "pid", c.peer.Pid, "uid", c.peer.Uid)
	defer func() {
		c.closed.Store(true)
		d.mu.Lock()
		delete(d.conns, c)
		delete(d.subs, c)
		b := d.barrier
		d.mu.Unlock()
		if b != nil {
			b.gone(c)
		}
		pc.Close()
		d.log.Debug("client disconnected", "conn", c.id)
	}()
	for ctx.Err() == nil {
		raw, fds, cred, err := pc.RecvFDs()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || c.closed.Load() {
				return
			}
			var perr *proto.Error
			if errors.As(err, &perr) || errors.Is(err, proto.ErrMessageTooLarge) ||
				errors.Is(err, proto.ErrTooManyFDs) || errors.Is(err, proto.ErrControlTruncated) {
				// A bad packet: answer it and go on reading.
				c.send(proto.ErrorResponse(0, err))
				continue
			}
			d.log.Debug("read failed, closing", "conn", c.id, "err", err)
			return
		}
		c.handle(raw, fds, cred)
	}
}

// handle answers one request. Every fd that came with it is closed when
// it returns, whatever happened: luod keeps what it needs by dup. The fds
// are plain numbers (RecvFDs): luod only passes them to the kernel, and
// an os.File would cost an fcntl(2) each. So is every fd the answer
// carries (attached): sent with it, or not, then closed.
func (c *conn) handle(raw []byte, fds []int, cred *unix.Ucred) {
	defer proto.CloseFDs(fds)
	req, perr := proto.DecodeRequest(raw)
	if perr != nil {
		id := uint64(0)
		if req != nil {
			id = req.ID
		}
		c.send(proto.ErrorResponse(id, perr))
		return
	}
	if cred == nil {
		c.send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodePermissionDenied,
			"the request carried no credentials")))
		return
	}
	// luod's exporter parses HTTP from the network: its connection may
	// ask for metrics and nothing else, whatever its credentials.
	if c.internal && req.Op != proto.OpMetrics && req.Op != proto.OpHello {
		c.d.log.Warn("operation refused on the exporter's connection", "op", req.Op)
		c.d.metrics.Error(req.Op)
		c.send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodePermissionDenied,
			"%s is refused on the metrics exporter's connection: it may only ask for metrics", req.Op)))
		return
	}
	caller := session.Caller{UID: cred.Uid, GID: cred.Gid, Admin: c.d.isAdmin(cred)}
	if proto.AdminOp(req.Op) && !caller.Admin {
		c.d.log.Warn("admin operation refused", "op", req.Op, "uid", cred.Uid, "pid", cred.Pid)
		c.d.metrics.Error(req.Op)
		c.send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodePermissionDenied,
			"%s is an admin operation: uid %d is neither root nor in luod's admin group", req.Op, cred.Uid)))
		return
	}
	result, out, err := c.d.dispatch(c, req, caller, cred, fds)
	if out != nil {
		defer out.close()
	}
	if err != nil {
		c.d.metrics.Error(req.Op) // a known op: DecodeRequest refused unknown ones
		c.send(proto.ErrorResponse(req.ID, toProto(err)))
		return
	}
	resp, err := proto.NewResponse(req.ID, result)
	if err != nil {
		resp = proto.ErrorResponse(req.ID, err)
	}
	if err := c.sendWith(resp, out); errors.Is(err, proto.ErrMessageTooLarge) {
		// The answer does not fit one packet (e.g. sessions of over a
		// thousand sessions): say so rather than leave the client waiting.
		c.d.log.Warn("response too large for one packet", "op", req.Op, "err", err)
		c.send(proto.ErrorResponse(req.ID, proto.Errorf(proto.CodeLimit,
			"the answer to %s does not fit the protocol's %d-byte message: %v", req.Op, proto.MaxMessageSize, err)))
	}
}

// attached is what an answer carries over SCM_RIGHTS, owned by the
// answer: handle sends it with the answer, or not (the op failed, the
// answer does not fit a packet, the send failed), and closes it once in
// every case.
type attached interface {
	send(c *proto.Conn, msg any) error
	close()
}

// fileList is attached files: the client's duplicate of a session fd, an
// *os.File as session.Custody makes it.
type fileList []*os.File

func (fs fileList) send(c *proto.Conn, msg any) error { return c.Send(msg, fs...) }

func (fs fileList) close() {
	for _, f := range fs {
		f.Close()
	}
}

// fdList is attached plain fds: the files reclaim retrieves
// (session.Reclaimed.FDs) go from RETRIEVE_FD to the client and the
// close as numbers, since luod only passes them on and an os.File would
// cost an fcntl(2) each.
type fdList []int

func (fds fdList) send(c *proto.Conn, msg any) error { return c.SendFDs(msg, fds...) }

func (fds fdList) close() { proto.CloseFDs(fds) }

// toProto turns any error into the protocol's, keeping its code.
func toProto(err error) error {
	var pe *proto.Error
	if errors.As(err, &pe) {
		return pe
	}
	var se *session.Error
	if errors.As(err, &se) {
		return &proto.Error{Code: proto.Code(se.Code), Message: se.Error()}
	}
	return &proto.Error{Code: proto.CodeInternal, Message: err.Error()}
}

// send writes one message with a write deadline, so that a client that
// does not read cannot block luod.
func (c *conn) send(msg any) error { return c.sendWith(msg, nil) }

// sendWith is send with out's fds attached, if out is not nil; closing
// them is the caller's.
func (c *conn) sendWith(msg any, out attached) error {
	return c.write(func(pc *proto.Conn) error {
		if out != nil {
			return out.send(pc, msg)
		}
		return pc.Send(msg)
	})
}

// write runs fn, which sends on the connection, under wmu with the write
// deadline.
func (c *conn) write(fn func(*proto.Conn) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.c.SetWriteDeadline(time.Now().Add(c.d.cfg.WriteTimeout))
	err := fn(c.c)
	if err != nil {
		c.d.log.Debug("send failed", "conn", c.id, "err", err)
	}
	return err
}

func (c *conn) event(name string, data any) error {
	ev, err := proto.NewEvent(name, data)
	if err != nil {
		return err
	}
	return c.send(ev)
}

// events sends evs in order with one system call (proto.Conn.SendBatch).
func (c *conn) events(evs []*proto.Event) error {
	msgs := make([]any, len(evs))
	for i, ev := range evs {
		msgs[i] = ev
	}
	return c.write(func(pc *proto.Conn) error { return pc.SendBatch(msgs...) })
}

// isAdmin: uid 0, or the admin group as primary or supplementary group of
// the sending process.
func (d *Daemon) isAdmin(cred *unix.Ucred) bool {
	if cred.Uid == 0 {
		return true
	}
	if d.cfg.AdminGID < 0 {
		return false
	}
	if cred.Gid == uint32(d.cfg.AdminGID) {
		return true
	}
	for _, g := range supplementaryGroups(int(cred.Pid)) {
		if g == d.cfg.AdminGID {
			return true
		}
	}
	return false
}

func supplementaryGroups(pid int) []int {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Groups:"); ok {
			var gs []int
			for _, s := range strings.Fields(rest) {
				if g, err := strconv.Atoi(s); err == nil {
					gs = append(gs, g)
				}
			}
			return gs
		}
	}
	return nil
}

// The disk copy is refreshed once changes pause for diskQuiet, or
// diskMaxDelay after the first unsaved change while they keep coming. It
// encodes every open session: at 5 writes a second, as it was, 1000 VMs
// starting one after another kept a CPU busy re-encoding them. What a
// killed luod lost comes from the custody record, appended to before each
// answer (in systemd's fd store, or else record.log in the state
// directory); the copy is the durable one for a power loss, so a few
// seconds late is fine.
const (
	diskQuiet    = 500 * time.Millisecond
	diskMaxDelay = 5 * time.Second
)

func (d *Daemon) diskWriter(ctx context.Context) {
	t := time.NewTimer(diskQuiet)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.diskDirty:
		}
		overdue := time.Since(d.epoch) + diskMaxDelay
		for {
			// Changes meanwhile only moved lastChange (markDirty): wait
			// until diskQuiet after the last one, or the overdue time.
			until := min(time.Duration(d.lastChange.Load())+diskQuiet, overdue)
			wait := until - time.Since(d.epoch)
			if wait <= 0 {
				break
			}
			t.Reset(wait)
			select {
			case <-ctx.Done():
				return // Serve writes the last copy
			case <-t.C:
			}
		}
		// Cleared before the write, which reads the sessions: a change
		// after this point wakes the writer again.
		d.dirty.Store(false)
		d.diskMu.Lock() // not while an upgrade runs: it waits for the upgrade's end
		d.saveDisk()
		d.trimMemory()
		d.diskMu.Unlock()
		d.notifyStatus()
	}
}

// trimMemory gives the kernel back the heap pages a burst of work left
// free: recovery's decoding of the manifest and handover, a batch of
// requests, the disk copy just encoded. Go's own scavenger returns them
// a little at a time, minutes after, and keeps a margin above the heap
// goal; luod then idles, for days, holding its sessions, so the burst's
// peak would stay its resident size (in the VM bench, at 1000 sessions of
// 10 files after recovery: 14 MiB, 9.4 once given back, 5.3 of either the
// binary's pages). The disk writer runs once
// changes have paused, so this is where a burst has ended; a full
// collection costs a few ms at 1000 sessions, once a burst. Never in an
// upgrade (diskMu): its pause is the workloads' downtime.
func (d *Daemon) trimMemory() { debug.FreeOSMemory() }

// watchOverdue reports incoming sessions unclaimed past the grace period,
// once each. They are never finished on luod's own initiative.
func (d *Daemon) watchOverdue(ctx context.Context) {
	period := d.cfg.ReclaimGrace / 4
	if period < time.Second {
		period = time.Second
	}
	if period > time.Minute {
		period = time.Minute
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, name := range d.custody.Overdue(now, d.cfg.ReclaimGrace) {
				d.mu.Lock()
				seen := d.overdue[name]
				d.overdue[name] = true
				d.mu.Unlock()
				if !seen {
					d.log.Warn("session unclaimed past the grace period; luod keeps holding it",
						"session", name, "grace", d.cfg.ReclaimGrace)
				}
			}
		}
	}
}
