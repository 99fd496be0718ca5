package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/internal/mmsg"
)

// oobSize holds MaxFDs descriptors and one SCM_CREDENTIALS message, the
// most a luod socket can legitimately carry in one packet.
var oobSize = unix.CmsgSpace(MaxFDs*4) + unix.CmsgSpace(unix.SizeofUcred)

// Conn is one end of a protocol connection: a connected SOCK_SEQPACKET
// unix socket on which every packet is one JSON message with its fds.
//
// Send and Recv may be called from several goroutines at once; each packet
// goes out or comes in whole. Deadlines (SetDeadline and friends) apply
// to both, as on a net.Conn, so a server can keep a stalled peer from
// blocking it; a call that times out fails with an error matching
// os.ErrDeadlineExceeded and leaves the connection in step, since no
// packet was half sent or half read.
type Conn struct {
	c  *net.UnixConn
	rc syscall.RawConn

	mu  sync.Mutex // serializes Recv; guards buf and oob
	buf []byte
	oob []byte
}

func newConn(c *net.UnixConn) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Conn{c: c, rc: rc, buf: make([]byte, MaxMessageSize+1), oob: make([]byte, oobSize)}, nil
}

// Dial connects to luod's socket at path (DefaultSocket if empty).
func Dial(path string) (*Conn, error) {
	if path == "" {
		path = DefaultSocket
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	return newConn(c)
}

// FileConn makes a Conn of a connected SOCK_SEQPACKET unix socket, such as
// one end of socketpair(2) or a socket inherited from a parent. As with
// net.FileConn, f is duplicated: the caller still closes f.
func FileConn(f *os.File) (*Conn, error) {
	if err := checkSocket(f, false); err != nil {
		return nil, err
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("proto: %s is a %T, not a unix socket", f.Name(), c)
	}
	return newConn(uc)
}

// checkSocket makes sure f is an AF_UNIX SOCK_SEQPACKET socket, and
// listening if listening is set, with an error saying what it is instead.
func checkSocket(f *os.File, listening bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("proto: %s: %w", f.Name(), err)
	}
	var typ, domain, acc int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); serr != nil {
			return
		}
		if typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); serr != nil {
			return
		}
		acc, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	}); err != nil {
		return fmt.Errorf("proto: %s: %w", f.Name(), err)
	}
	switch {
	case errors.Is(serr, unix.ENOTSOCK):
		return fmt.Errorf("proto: %s is not a socket", f.Name())
	case serr != nil:
		return fmt.Errorf("proto: %s: %w", f.Name(), serr)
	case domain != unix.AF_UNIX:
		return fmt.Errorf("proto: %s is not a unix socket (domain %d)", f.Name(), domain)
	case typ != unix.SOCK_SEQPACKET:
		return fmt.Errorf("proto: %s is a unix socket of type %d, want SOCK_SEQPACKET (systemd: ListenSequentialPacket=)", f.Name(), typ)
	case listening && acc == 0:
		return fmt.Errorf("proto: %s is not listening", f.Name())
	case !listening && acc != 0:
		return fmt.Errorf("proto: %s is a listening socket, not a connection", f.Name())
	}
	return nil
}

// Close closes the connection. Blocked Send and Recv calls return errors
// matching net.ErrClosed.
func (c *Conn) Close() error { return c.c.Close() }

// SetDeadline sets the read and write deadlines, as net.Conn does.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// SetReadDeadline sets the deadline for Recv.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.c.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for Send. A send blocks only while
// the peer's receive queue is full.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }

// PeerCred returns the credentials of the peer as of connect(2)
// (SO_PEERCRED). luod authorizes with the per-packet credentials of Recv
// instead; this is for logging.
func (c *Conn) PeerCred() (*unix.Ucred, error) {
	var cred *unix.Ucred
	var serr error
	if err := c.rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, serr
}

func (c *Conn) setPassCred() error {
	var serr error
	if err := c.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("proto: setsockopt SO_PASSCRED: %w", serr)
	}
	return nil
}

// Send marshals msg (a *Request, *Response, *Event, or any value that
// encodes to a JSON object) and sends it as one packet with files attached
// as SCM_RIGHTS, in order. The peer gets its own descriptors for the same
// open files; the caller keeps and still closes files. A message over
// MaxMessageSize bytes is refused with ErrMessageTooLarge, and more than
// MaxFDs files with ErrTooManyFDs, before anything is sent.
func (c *Conn) Send(msg any, files ...*os.File) error {
	b, err := encode(msg)
	if err != nil {
		return err
	}
	return c.SendRaw(b, files...)
}

// SendFDs is Send with the descriptors as plain numbers, which the caller
// keeps open until SendFDs returns and then closes with close(2): for a
// sender that holds them so (luod sends the files it retrieves from the
// kernel without making an os.File of each, which costs an fcntl(2)).
func (c *Conn) SendFDs(msg any, fds ...int) error {
	b, err := encode(msg)
	if err != nil {
		return err
	}
	if err := c.sendmsg(b, fds); err != nil {
		return fmt.Errorf("proto: send: %w", err)
	}
	return nil
}

// SendBatch is Send of each of msgs, without files, in order, with as few
// system calls as the kernel takes (sendmmsg(2)): luod's events in an
// upgrade's pause, where each system call and each wake-up of the reader
// counts. Every message is encoded and checked before any is sent.
func (c *Conn) SendBatch(msgs ...any) error {
	bs := make([][]byte, len(msgs))
	for i, m := range msgs {
		b, err := encode(m)
		if err != nil {
			return err
		}
		bs[i] = b
	}
	if err := c.sendPackets(bs, nil); err != nil {
		return fmt.Errorf("proto: send: %w", err)
	}
	return nil
}

// encode marshals msg for Send and SendFDs, refusing a message over
// MaxMessageSize bytes.
func encode(msg any) ([]byte, error) {
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("proto: encode message: %w", err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("proto: send: %w: %d bytes, at most %d", ErrMessageTooLarge, len(b), MaxMessageSize)
	}
	return b, nil
}

// SendRaw sends b as one packet with files, unchecked except for the
// MaxFDs limit. It is for tests and tools that must produce malformed or
// oversized packets; use Send.
func (c *Conn) SendRaw(b []byte, files ...*os.File) error {
	if err := withFDs(files, nil, func(fds []int) error { return c.sendmsg(b, fds) }); err != nil {
		return fmt.Errorf("proto: send: %w", err)
	}
	return nil
}

// sendmsg sends b as one packet with fds attached as SCM_RIGHTS, or
// nothing if there are more than MaxFDs.
func (c *Conn) sendmsg(b []byte, fds []int) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("%w: %d, at most %d per packet", ErrTooManyFDs, len(fds), MaxFDs)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	return c.sendPackets([][]byte{b}, [][]byte{oob})
}

// sendPackets sends each of bs as one packet, with oobs[i] (when oobs is
// not nil) as its ancillary data, in order, with as few sendmmsg(2) as
// the socket takes, waiting for room when it is full: the one path of
// every send.
func (c *Conn) sendPackets(bs, oobs [][]byte) error {
	for sent := 0; sent < len(bs); {
		var n int
		var serr error
		err := c.rc.Write(func(fd uintptr) bool {
			var o [][]byte
			if oobs != nil {
				o = oobs[sent:]
			}
			n, serr = mmsg.Send(int(fd), bs[sent:], o, unix.MSG_NOSIGNAL)
			return serr != unix.EAGAIN
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			if len(bs) > 1 {
				return fmt.Errorf("%d of %d messages sent: %w", sent, len(bs), err)
			}
			return err
		}
		sent += n
	}
	return nil
}

// withFDs calls fn with the descriptors of files, holding each file open
// (SyscallConn.Control) until fn returns, so that a concurrent Close cannot
// make the number refer to another file. Unlike File.Fd it leaves the
// files' blocking mode alone.
func withFDs(files []*os.File, fds []int, fn func([]int) error) error {
	if len(files) == 0 {
		return fn(fds)
	}
	f := files[0]
	if f == nil {
		return fmt.Errorf("file %d is nil", len(fds))
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("file %d (%s): %w", len(fds), f.Name(), err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = withFDs(files[1:], append(fds, int(fd)), fn)
	}); err != nil {
		return fmt.Errorf("file %d (%s): %w", len(fds), f.Name(), err)
	}
	return ferr
}

// Recv reads the next packet: its bytes (at most MaxMessageSize), the
// files attached to it, close-on-exec (MSG_CMSG_CLOEXEC), which the
// caller owns and must close, and the sender's credentials when the
// socket has SO_PASSCRED (as the ones Listener accepts do), else nil.
//
// At the peer's orderly close Recv returns io.EOF. (SOCK_SEQPACKET cannot
// tell an empty packet without credentials from EOF: both read as zero
// bytes; an empty packet is no valid message anyway.)
//
// A packet over MaxMessageSize bytes (ErrMessageTooLarge), with more than
// MaxFDs descriptors (ErrTooManyFDs) or with ancillary data the kernel had
// to cut (ErrControlTruncated) is an error; it is consumed whole, every
// descriptor that came with it is closed, and cred is still returned, so
// the caller can answer it and go on. Other errors (a deadline, a closed
// connection) leave nothing behind.
func (c *Conn) Recv() (raw []byte, files []*os.File, cred *unix.Ucred, err error) {
	raw, fds, cred, err := c.RecvFDs()
	if len(fds) > 0 {
		files = make([]*os.File, len(fds))
		for i, fd := range fds {
			files[i] = os.NewFile(uintptr(fd), fmt.Sprintf("scm_rights[%d]", i))
		}
	}
	return raw, files, cred, err
}

// RecvFDs is Recv with the descriptors as plain numbers, which the caller
// owns and closes with close(2): for a receiver that only passes them on
// (luod hands them to the kernel's PRESERVE_FD), it saves the fcntl(2)
// os.NewFile makes for each.
func (c *Conn) RecvFDs() (raw []byte, fds []int, cred *unix.Ucred, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n, oobn, flags int
	var rerr error
	err = c.rc.Read(func(fd uintptr) bool {
		// MSG_TRUNC makes recvmsg return the packet's real length.
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), c.buf, c.oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_TRUNC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("proto: recv: %w", err)
	}
	fds, cred = parseControl(c.oob[:oobn])
	fail := func(err error) ([]byte, []int, *unix.Ucred, error) {
		CloseFDs(fds)
		return nil, nil, cred, fmt.Errorf("proto: recv: %w", err)
	}
	switch {
	case flags&unix.MSG_CTRUNC != 0:
		return fail(fmt.Errorf("%w: descriptors were lost (%d arrived)", ErrControlTruncated, len(fds)))
	case n > MaxMessageSize:
		return fail(fmt.Errorf("%w: %d bytes, at most %d", ErrMessageTooLarge, n, MaxMessageSize))
	case flags&unix.MSG_TRUNC != 0:
		return fail(fmt.Errorf("%w: more than %d bytes", ErrMessageTooLarge, MaxMessageSize))
	case len(fds) > MaxFDs:
		return fail(fmt.Errorf("%w: %d, at most %d", ErrTooManyFDs, len(fds), MaxFDs))
	case n == 0 && oobn == 0:
		return nil, nil, nil, io.EOF
	}
	return bytes.Clone(c.buf[:n]), fds, cred, nil
}

// CloseFDs closes descriptors RecvFDs returned, skipping negative
// entries (taken over by someone else).
func CloseFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// parseControl takes the descriptors and credentials out of ancillary
// data. It reads as far as the data is well formed, so no descriptor the
// kernel installed is dropped unseen.
func parseControl(oob []byte) (fds []int, cred *unix.Ucred) {
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		oob = rest
		if h.Level != unix.SOL_SOCKET {
			continue
		}
		switch h.Type {
		case unix.SCM_RIGHTS:
			m := unix.SocketControlMessage{Header: h, Data: data}
			got, _ := unix.ParseUnixRights(&m)
			fds = append(fds, got...)
		case unix.SCM_CREDENTIALS:
			m := unix.SocketControlMessage{Header: h, Data: data}
			if uc, err := unix.ParseUnixCredentials(&m); err == nil {
				cred = uc
			}
		}
	}
	return fds, cred
}

// Listener accepts protocol connections with SO_PASSCRED enabled, so that
// every packet read from them carries its sender's credentials.
type Listener struct {
	l *net.UnixListener
	// path is the socket file to remove at Close, "" when not ours.
	path     string
	dev, ino uint64
}

// Listen creates luod's socket at path and listens on it. A socket file
// left at path by a luod that is gone (connecting to it is refused) is
// removed first; a live one, or a file that is not a socket, is an error.
// The socket gets mode (permission bits) and, unless gid is -1, group
// gid, before it accepts any connection. Close removes the socket file.
func Listen(path string, mode fs.FileMode, gid int) (*Listener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("proto: listen %s: socket: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // net.FileListener dups it
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("proto: listen %s: bind: %w", path, err)
	}
	// Nobody can connect before listen(2), so the mode and group are in
	// place before the first client.
	var st unix.Stat_t
	err = os.Chmod(path, mode.Perm())
	if err == nil && gid != -1 {
		err = os.Lchown(path, -1, gid)
	}
	if err == nil {
		err = unix.Lstat(path, &st)
	}
	if err == nil {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}
	if err == nil {
		err = unix.Listen(fd, unix.SOMAXCONN)
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("proto: listen %s: %w", path, err)
	}
	nl, err := net.FileListener(f)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("proto: listen %s: %w", path, err)
	}
	return &Listener{l: nl.(*net.UnixListener), path: path, dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil
}

// removeStale removes a socket file at path nobody listens on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("proto: listen %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("proto: listen %s: a %s is in the way, not a stale socket; not removing it", path, fi.Mode().Type())
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("proto: listen %s: socket: %w", path, err)
	}
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	unix.Close(fd)
	switch {
	case err == nil:
		return fmt.Errorf("proto: listen %s: another process listens on it (is luod already running?)", path)
	case errors.Is(err, unix.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("proto: listen %s: remove stale socket: %w", path, err)
		}
		return nil
	}
	return fmt.Errorf("proto: listen %s: probing the existing socket: %w", path, err)
}

// FileListener makes a Listener of a listening SOCK_SEQPACKET unix socket,
// as systemd socket activation hands over (go-systemd's activation.Files).
// f is duplicated: the caller still closes f. The socket file belongs to
// whoever created it and is left alone at Close.
func FileListener(f *os.File) (*Listener, error) {
	if err := checkSocket(f, true); err != nil {
		return nil, err
	}
	nl, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	return NewListener(nl)
}

// NewListener wraps l, which must be a *net.UnixListener of network
// "unixpacket" (as go-systemd's activation.Listeners returns for a
// ListenSequentialPacket= socket). Close closes l; l's own setting decides
// whether the socket file is removed.
func NewListener(l net.Listener) (*Listener, error) {
	ul, ok := l.(*net.UnixListener)
	if !ok || ul.Addr().Network() != "unixpacket" {
		return nil, fmt.Errorf("proto: listener on %s %s is not a unix SOCK_SEQPACKET listener", l.Addr().Network(), l.Addr())
	}
	rc, err := ul.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("proto: setsockopt SO_PASSCRED: %w", serr)
	}
	return &Listener{l: ul}, nil
}

// Accept waits for the next connection. After Close it fails with an
// error matching net.ErrClosed.
func (l *Listener) Accept() (*Conn, error) {
	uc, err := l.l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	c, err := newConn(uc)
	if err != nil {
		return nil, err
	}
	// Inherited from the listener already; set it in case the listener
	// was made elsewhere without it before NewListener ran.
	if err := c.setPassCred(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Addr is the listener's address.
func (l *Listener) Addr() net.Addr { return l.l.Addr() }

// Close stops listening; open connections are not affected. A socket file
// made by Listen is removed, unless another has replaced it since.
func (l *Listener) Close() error {
	err := l.l.Close()
	if l.path != "" {
		var st unix.Stat_t
		if unix.Lstat(l.path, &st) == nil && uint64(st.Dev) == l.dev && uint64(st.Ino) == l.ino {
			os.Remove(l.path)
		}
		l.path = ""
	}
	return err
}
