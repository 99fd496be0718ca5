//go:build linux

package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/ioctl"
	"github.com/luod/luod/pkg/proto"
)

// Errors of the connection. A call that fails with one of these got no
// answer from luod.
var (
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("luod client closed")
	// ErrDisconnected: the connection to luod is gone (luod exited,
	// restarted, or the machine is rebooting). Dial again.
	ErrDisconnected = errors.New("connection to luod lost")
	// ErrProtocol: luod sent a packet this client cannot read (too
	// large, not JSON, of another version) or an answer that breaks the
	// protocol.
	ErrProtocol = errors.New("protocol violation by luod")
	// ErrRebooting: luod sent proto.EventCommitted and the connection
	// closed: the machine is kexec'ing into the new kernel. It comes
	// joined with ErrDisconnected.
	ErrRebooting = errors.New("luod committed the upgrade and is rebooting into the new kernel")
	// ErrNotFinished: Reclaim with finish got every file, but the kernel
	// refused to finish the session yet (see proto.ReclaimResult).
	ErrNotFinished = errors.New("session reclaimed but not finished")
)

// Event is an event from luod, as delivered by Events.
type Event = proto.Event

// Client is a connection to luod.
type Client struct {
	conn    *proto.Conn
	backend ioctl.Backend // for Session ioctls; a fake in tests
	nextID  atomic.Uint64
	sendSem chan struct{} // cap 1: one send at a time, each with its own deadline

	mu         sync.Mutex
	pending    map[uint64]*call // nil once down
	down       error            // why the connection is gone
	subscribed bool
	committed  bool  // EventCommitted seen: a disconnect means a reboot
	upgrade    *call // the running Upgrade, which gets progress events
	evq        []Event
	evWake     chan struct{} // cap 1: evq grew or the connection is down

	events    chan Event
	closing   chan struct{}
	closeOnce sync.Once
	readDone  chan struct{}
	pumpDone  chan struct{}
}

type call struct {
	op        string
	id        uint64
	done      chan reply // cap 1: exactly one reply is ever sent
	subscribe bool
	// Upgrade calls only; evs is guarded by Client.mu.
	evs  []Event
	wake chan struct{} // cap 1
}

type reply struct {
	resp  *proto.Response
	files []*os.File
	err   error
}

// Dial connects to luod at path (proto.DefaultSocket if empty).
func Dial(path string) (*Client, error) {
	conn, err := proto.Dial(path)
	if err != nil {
		return nil, fmt.Errorf("luod: %w", err)
	}
	return New(conn), nil
}

// New makes a Client of an established connection, such as one inherited
// from a parent process. The Client owns conn from now on.
func New(conn *proto.Conn) *Client {
	c := &Client{
		conn:     conn,
		backend:  ioctl.System,
		sendSem:  make(chan struct{}, 1),
		pending:  make(map[uint64]*call),
		evWake:   make(chan struct{}, 1),
		events:   make(chan Event),
		closing:  make(chan struct{}),
		readDone: make(chan struct{}),
		pumpDone: make(chan struct{}),
	}
	go c.read()
	go c.pump()
	return c
}

// UseBackend makes the Sessions this Client hands out issue their kernel
// ioctls through b instead of the real kernel: for tests of a workload on
// pkg/ioctl/ioctltest's fake. Call it before any session is created.
func (c *Client) UseBackend(b ioctl.Backend) { c.backend = b }

// Close closes the connection. Calls in flight fail with ErrClosed, the
// Events channel is closed, and by the time Close returns the Client's
// goroutines have exited. Sessions and files already handed out stay
// open. Closing twice is harmless.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closing)
		err = c.conn.Close()
	})
	<-c.readDone
	<-c.pumpDone
	return err
}

// Events delivers, in order, the events luod sends this connection after a
// successful Subscribe: proto.EventPrepare, proto.EventAborted,
// proto.EventCommitted (and proto.EventProgress of an Upgrade run on this
// connection). Events wait in an unbounded queue until read, so a slow
// reader never stalls responses. The channel is closed once the
// connection is gone and the queue is drained, or at Close.
func (c *Client) Events() <-chan Event { return c.events }

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// read is the one goroutine that reads the connection.
func (c *Client) read() {
	defer close(c.readDone)
	for {
		raw, files, _, err := c.conn.Recv()
		if err != nil {
			c.shutdown(c.recvError(err))
			return
		}
		resp, ev, err := proto.DecodeServerMessage(raw)
		switch {
		case err != nil:
			closeFiles(files)
			c.shutdown(fmt.Errorf("%w: %w", ErrProtocol, err))
			return
		case ev != nil:
			closeFiles(files) // events carry no fds
			c.event(ev)
		case resp.ID == 0:
			// luod could not read one of our requests; which one is
			// unknown, so no pending call can be answered reliably.
			closeFiles(files)
			c.shutdown(fmt.Errorf("%w: luod could not read a request: %v", ErrProtocol, resp.Error))
			return
		default:
			c.mu.Lock()
			cl := c.pending[resp.ID]
			delete(c.pending, resp.ID)
			if cl != nil && cl.subscribe && resp.OK {
				c.subscribed = true
			}
			c.mu.Unlock()
			if cl == nil { // the caller gave up (context), or a stray id
				closeFiles(files)
				continue
			}
			cl.done <- reply{resp: resp, files: files}
		}
	}
}

func (c *Client) recvError(err error) error {
	select {
	case <-c.closing:
		return ErrClosed
	default:
	}
	if errors.Is(err, proto.ErrMessageTooLarge) || errors.Is(err, proto.ErrTooManyFDs) || errors.Is(err, proto.ErrControlTruncated) {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if err == io.EOF {
		err = errors.New("luod closed the connection")
	}
	c.mu.Lock()
	committed := c.committed
	c.mu.Unlock()
	if committed {
		return fmt.Errorf("%w: %w", ErrDisconnected, ErrRebooting)
	}
	return fmt.Errorf("%w: %w", ErrDisconnected, err)
}

// shutdown fails every pending call with err and stops the Client taking
// new ones.
func (c *Client) shutdown(err error) {
	c.conn.Close()
	c.mu.Lock()
	c.down = err
	pend := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, cl := range pend {
		cl.done <- reply{err: err}
	}
	wake(c.evWake)
}

func (c *Client) event(ev *Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch ev.Event {
	case proto.EventCommitted:
		c.committed = true
		fallthrough
	case proto.EventProgress, proto.EventAborted:
		if up := c.upgrade; up != nil {
			up.evs = append(up.evs, *ev)
			wake(up.wake)
		}
	}
	if c.subscribed {
		c.evq = append(c.evq, *ev)
		wake(c.evWake)
	}
}

// pump moves queued events to the Events channel.
func (c *Client) pump() {
	defer close(c.pumpDone)
	defer close(c.events)
	for {
		c.mu.Lock()
		if len(c.evq) == 0 {
			down := c.down != nil
			c.mu.Unlock()
			if down {
				return
			}
			select {
			case <-c.evWake:
			case <-c.closing:
				return
			}
			continue
		}
		ev := c.evq[0]
		c.evq[0] = Event{}
		c.evq = c.evq[1:]
		c.mu.Unlock()
		select {
		case c.events <- ev:
		case <-c.closing:
			return
		}
	}
}

// opError adds the operation to a connection or context error.
func opError(cl *call, err error) error {
	return fmt.Errorf("luod %s: %w", cl.op, err)
}

// start registers cl and sends its request.
func (c *Client) start(ctx context.Context, cl *call, args any, files []*os.File) error {
	if err := ctx.Err(); err != nil {
		return opError(cl, err)
	}
	cl.id = c.nextID.Add(1)
	cl.done = make(chan reply, 1)
	req, err := proto.NewRequest(cl.id, cl.op, args)
	if err != nil {
		return err
	}
	c.mu.Lock()
	switch {
	case c.down != nil:
		err = c.down
	case cl.wake != nil && c.upgrade != nil:
		err = errors.New("another Upgrade is running on this Client")
	default:
		c.pending[cl.id] = cl
		if cl.wake != nil {
			c.upgrade = cl
		}
	}
	c.mu.Unlock()
	if err != nil {
		return opError(cl, err)
	}
	if err := c.send(ctx, req, files); err != nil {
		c.abandon(cl)
		c.mu.Lock()
		down := c.down
		c.mu.Unlock()
		switch {
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		case down != nil:
			err = down
		case errors.Is(err, unix.EPIPE), errors.Is(err, unix.ECONNRESET):
			err = fmt.Errorf("%w: %w", ErrDisconnected, err)
		case errors.Is(err, net.ErrClosed):
			err = ErrClosed
		}
		return opError(cl, err)
	}
	return nil
}

// send sends one request, giving up when ctx is done. SOCK_SEQPACKET sends
// a packet whole or not at all, so giving up leaves the connection in step.
func (c *Client) send(ctx context.Context, req *proto.Request, files []*os.File) error {
	select {
	case c.sendSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.sendSem }()
	deadline, _ := ctx.Deadline()
	c.conn.SetWriteDeadline(deadline)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	err := c.conn.Send(req, files...)
	if !stop() {
		<-fired // don't let it touch the next send's deadline
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// Only ctx sets deadlines; the poller may see one pass before
		// ctx's own timer fires.
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return context.DeadlineExceeded
	}
	return err
}

// abandon unregisters cl; if the reply was already taken for it, that
// reply's fds are closed.
func (c *Client) abandon(cl *call) {
	c.mu.Lock()
	_, ok := c.pending[cl.id]
	delete(c.pending, cl.id)
	if c.upgrade == cl {
		c.upgrade = nil
	}
	c.mu.Unlock()
	if !ok {
		r := <-cl.done
		closeFiles(r.files)
	}
}

// wait waits for cl's reply.
func (c *Client) wait(ctx context.Context, cl *call) (reply, error) {
	select {
	case r := <-cl.done:
		if r.err != nil {
			return r, opError(cl, r.err)
		}
		return r, nil
	case <-ctx.Done():
		c.abandon(cl)
		return reply{}, fmt.Errorf("luod %s (request %d): %w; the request was sent and may still take effect", cl.op, cl.id, ctx.Err())
	}
}

// result turns a reply into the call's result: luod's *proto.Error, or
// the result unmarshaled into out (if not nil) and the fds, checked to
// number nfd unless nfd is -1. The caller owns the fds returned.
func result(cl *call, r reply, out any, nfd int) ([]*os.File, error) {
	if !r.resp.OK {
		closeFiles(r.files)
		return nil, r.resp.Error
	}
	if nfd >= 0 && len(r.files) != nfd {
		closeFiles(r.files)
		return nil, opError(cl, fmt.Errorf("%w: response has %d fds, want %d", ErrProtocol, len(r.files), nfd))
	}
	if out != nil {
		if err := json.Unmarshal(r.resp.Result, out); err != nil {
			closeFiles(r.files)
			return nil, opError(cl, fmt.Errorf("%w: result: %w", ErrProtocol, err))
		}
	}
	return r.files, nil
}

// do runs one request to completion.
func (c *Client) do(ctx context.Context, op string, args any, files []*os.File, out any, nfd int) ([]*os.File, error) {
	cl := &call{op: op, subscribe: op == proto.OpSubscribe}
	if err := c.start(ctx, cl, args, files); err != nil {
		return nil, err
	}
	r, err := c.wait(ctx, cl)
	if err != nil {
		return nil, err
	}
	return result(cl, r, out, nfd)
}
