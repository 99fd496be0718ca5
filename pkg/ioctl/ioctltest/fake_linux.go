//go:build linux

package ioctltest

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/luod/luod/pkg/ioctl"
	"golang.org/x/sys/unix"
)

// ReqOpen and ReqReboot stand for Open and Reboot in FailNext; no real
// ioctl request has these numbers.
const (
	ReqOpen   uint = 0xffff_ffff
	ReqReboot uint = 0xffff_fffe
)

var ne = binary.NativeEndian

var _ ioctl.Backend = (*Fake)(nil)

// Fake is a Live Update Orchestrator kernel in memory. The zero value is
// not usable; call New. It is safe for concurrent use.
type Fake struct {
	mu     sync.Mutex
	path   string
	ep     int // epoll fd watching every object's read end; -1 until needed
	closed bool
	num    uint64

	objs   map[fileKey]*object // by the inode of the fds handed out
	byRead map[int]*object     // by the fake's read end

	device *object // the open device, nil when free
	holder ioctl.Holder

	outgoing []*session // luo_session_global.outgoing, in creation order
	incoming []*session // luo_session_global.incoming

	// preserved is luo_preserved_files: the inodes LUO holds, from
	// PRESERVE_FD until unpreserve, and from RETRIEVE_FD until finish.
	preserved map[fileKey]*pfile

	fail map[uint][]unix.Errno
}

type fileKey struct{ dev, ino uint64 }

type object struct {
	key   fileKey
	rfd   int
	sess  *session // nil for the device
	stale bool     // handed out before the last Reboot
}

type session struct {
	name      string
	incoming  bool
	retrieved bool
	files     []*pfile
}

// pfile is a struct luo_file: one preserved file of a session.
type pfile struct {
	token     uint64
	fd        int // the fake's reference to the file
	key       fileKey
	retrieved bool       // retrieve_status > 0
	failErr   unix.Errno // retrieve_status < 0
}

// New returns a fake kernel with LUO enabled, its device at
// ioctl.DevicePath, no sessions, and live update number 0 (a cold boot).
func New() *Fake {
	return &Fake{
		path:      ioctl.DevicePath,
		ep:        -1,
		objs:      make(map[fileKey]*object),
		byRead:    make(map[int]*object),
		preserved: make(map[fileKey]*pfile),
		fail:      make(map[uint][]unix.Errno),
	}
}

// Path is where the fake device is; Open of any other path gives ENOENT.
func (f *Fake) Path() string { return f.path }

// LiveUpdateNum is the kernel's liveupdate number: how many live updates
// led to the running (fake) kernel. Each Reboot adds one.
func (f *Fake) LiveUpdateNum() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.num
}

// FailNext makes the next call for request req (an ioctl.Req* number,
// ReqOpen or ReqReboot) fail with errno, before any check and with no
// effect. Calls queue up per request.
func (f *Fake) FailNext(req uint, errno unix.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[req] = append(f.fail[req], errno)
}

// FailRetrieve makes every RETRIEVE_FD of token in the incoming session
// name fail with errno, as when the file handler cannot restore the file;
// FINISH still succeeds. The token must not have been retrieved yet.
func (f *Fake) FailRetrieve(name string, token uint64, errno unix.Errno) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.incoming {
		if s.name != name {
			continue
		}
		for _, p := range s.files {
			if p.token == token {
				if p.retrieved {
					return fmt.Errorf("ioctltest: token %#x of session %q already retrieved", token, name)
				}
				p.failErr = errno
				return nil
			}
		}
		return fmt.Errorf("ioctltest: no token %#x in incoming session %q", token, name)
	}
	return fmt.Errorf("ioctltest: no incoming session %q", name)
}

// SessionState describes one session the fake kernel knows.
type SessionState struct {
	Name string
	// Incoming is set for a session handed over by the previous kernel.
	Incoming bool
	// Retrieved is set for an incoming session an fd was handed out for.
	Retrieved bool
	// Tokens are the session's files in preservation order; empty once an
	// incoming session is finished.
	Tokens []uint64
}

// Sessions lists the live sessions: outgoing ones first, in creation
// order, then incoming ones.
func (f *Fake) Sessions() []SessionState {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.reap()
	var out []SessionState
	for _, l := range [][]*session{f.outgoing, f.incoming} {
		for _, s := range l {
			st := SessionState{Name: s.name, Incoming: s.incoming, Retrieved: s.retrieved}
			for _, p := range s.files {
				st.Tokens = append(st.Tokens, p.token)
			}
			out = append(out, st)
		}
	}
	return out
}

// Close releases every fd the fake holds. The fake must not be used
// afterwards; fds it handed out stay open until their owners close them.
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	for _, o := range f.byRead {
		unix.Close(o.rfd)
	}
	for _, l := range [][]*session{f.outgoing, f.incoming} {
		for _, s := range l {
			dropFiles(s)
		}
	}
	if f.ep >= 0 {
		unix.Close(f.ep)
		f.ep = -1
	}
	f.objs, f.byRead, f.preserved = nil, nil, nil
	f.outgoing, f.incoming, f.device = nil, nil, nil
	return nil
}

func (f *Fake) popFail(req uint) (unix.Errno, bool) {
	q := f.fail[req]
	if len(q) == 0 {
		return 0, false
	}
	f.fail[req] = q[1:]
	return q[0], true
}

// Open opens the fake device. It is exclusive, like luo_open: EBUSY while
// any fd of a previous Open is alive.
func (f *Fake) Open(path string) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, unix.ENODEV
	}
	f.reap()
	if errno, ok := f.popFail(ReqOpen); ok {
		return nil, errno
	}
	if path != f.path {
		return nil, unix.ENOENT
	}
	if f.device != nil {
		return nil, unix.EBUSY
	}
	o, w, err := f.newObject(nil)
	if err != nil {
		return nil, err
	}
	f.device = o
	f.holder = ioctl.Holder{PID: os.Getpid(), Comm: comm()}
	return os.NewFile(uintptr(w), path), nil
}

// Holders reports this process while it holds the device open.
func (f *Fake) Holders(path string) []ioctl.Holder {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || path != f.path {
		return nil
	}
	f.reap()
	if f.device == nil {
		return nil
	}
	return []ioctl.Holder{f.holder}
}

func comm() string {
	if b, err := os.ReadFile("/proc/self/comm"); err == nil {
		return strings.TrimSpace(string(b))
	}
	c := filepath.Base(os.Args[0])
	if len(c) > 15 { // TASK_COMM_LEN - 1
		c = c[:15]
	}
	return c
}

// newObject makes a pipe, keeps its read end under watch, and returns the
// write end to hand out. Like get_unused_fd_flags, it fails with EMFILE
// when the process has no fd left.
func (f *Fake) newObject(s *session) (*object, int, error) {
	if f.ep < 0 {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return nil, -1, err
		}
		f.ep = ep
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(p[1], &st); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, -1, err
	}
	// Events 0: epoll always reports EPOLLHUP, which a pipe's read end
	// raises once no writer is left.
	if err := unix.EpollCtl(f.ep, unix.EPOLL_CTL_ADD, p[0], &unix.EpollEvent{Fd: int32(p[0])}); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, -1, err
	}
	o := &object{key: fileKey{uint64(st.Dev), st.Ino}, rfd: p[0], sess: s}
	f.objs[o.key] = o
	f.byRead[o.rfd] = o
	return o, p[1], nil
}

// discard undoes newObject for an fd never handed out.
func (f *Fake) discard(o *object, w int) {
	unix.Close(w)
	f.forget(o)
}

func (f *Fake) forget(o *object) {
	unix.EpollCtl(f.ep, unix.EPOLL_CTL_DEL, o.rfd, nil)
	unix.Close(o.rfd)
	delete(f.byRead, o.rfd)
	if f.objs[o.key] == o {
		delete(f.objs, o.key)
	}
}

// reap releases every object whose fds are all closed.
func (f *Fake) reap() {
	if f.ep < 0 {
		return
	}
	var evs [64]unix.EpollEvent
	for {
		n, err := unix.EpollWait(f.ep, evs[:], 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range evs[:n] {
			if o := f.byRead[int(ev.Fd)]; o != nil && ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				f.release(o)
			}
		}
		if n < len(evs) {
			return
		}
	}
}

// release is luo_release for the device and luo_session_release for a
// session.
func (f *Fake) release(o *object) {
	f.forget(o)
	if o.stale {
		return
	}
	s := o.sess
	if s == nil {
		if f.device == o {
			f.device = nil
		}
		return
	}
	if s.incoming {
		f.finish(s)
		f.incoming = remove(f.incoming, s)
	} else {
		f.unpreserveAll(s)
		f.outgoing = remove(f.outgoing, s)
	}
}

func remove(l []*session, s *session) []*session {
	for i, x := range l {
		if x == s {
			return append(l[:i:i], l[i+1:]...)
		}
	}
	return l
}

func (f *Fake) unpreserveAll(s *session) {
	for _, p := range s.files {
		if f.preserved[p.key] == p {
			delete(f.preserved, p.key)
		}
	}
	dropFiles(s)
}

// finish is luo_file_finish: LUO gives up every file of the session.
func (f *Fake) finish(s *session) {
	f.unpreserveAll(s)
}

func dropFiles(s *session) {
	for _, p := range s.files {
		if p.fd >= 0 {
			unix.Close(p.fd)
			p.fd = -1
		}
	}
	s.files = nil
}

// Ioctl issues req on file as the kernel would.
func (f *Fake) Ioctl(file *os.File, req uint, arg []byte) error {
	key, err := keyOf(file)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return unix.ENODEV
	}
	f.reap()
	if errno, ok := f.popFail(req); ok {
		return errno
	}
	o := f.objs[key]
	if o == nil {
		// Not a LUO file: vfs_ioctl gives ENOTTY.
		return unix.ENOTTY
	}
	if o.stale {
		return unix.EBADF
	}
	// ioctl(2) takes cmd as an unsigned int.
	cmd := uint32(req)
	if o.sess == nil {
		return f.deviceIoctl(cmd, arg)
	}
	return f.sessionIoctl(o.sess, cmd, arg)
}

// keyOf identifies the file behind f the way System reaches its fd.
func keyOf(file *os.File) (fileKey, error) {
	rc, err := file.SyscallConn()
	if err != nil {
		return fileKey{}, err
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		return fileKey{}, err
	}
	if serr != nil {
		return fileKey{}, serr
	}
	return fileKey{uint64(st.Dev), st.Ino}, nil
}

// An op is a struct luo_ioctl_op.
type op struct {
	num  uint32 // the full request number
	size uint32 // sizeof the struct
	min  uint32 // offsetofend of its last field the kernel needs
	typ  sessType
}

type sessType int

const (
	typeAll sessType = iota
	typeIncoming
	typeOutgoing
)

var deviceOps = [...]op{
	ioctl.CmdCreateSession:   {uint32(ioctl.ReqCreateSession), ioctl.SessionArgSize, ioctl.SessionArgSize, typeAll},
	ioctl.CmdRetrieveSession: {uint32(ioctl.ReqRetrieveSession), ioctl.SessionArgSize, ioctl.SessionArgSize, typeAll},
}

var sessionOps = [...]op{
	ioctl.CmdPreserveFD - ioctl.CmdPreserveFD: {uint32(ioctl.ReqPreserveFD), ioctl.FDArgSize, ioctl.FDArgSize, typeOutgoing},
	ioctl.CmdRetrieveFD - ioctl.CmdPreserveFD: {uint32(ioctl.ReqRetrieveFD), ioctl.FDArgSize, ioctl.FDArgSize, typeIncoming},
	ioctl.CmdFinish - ioctl.CmdPreserveFD:     {uint32(ioctl.ReqFinish), ioctl.FinishArgSize, ioctl.FinishArgSize, typeIncoming},
	ioctl.CmdGetName - ioctl.CmdPreserveFD:    {uint32(ioctl.ReqGetName), ioctl.GetNameArgSize, ioctl.GetNameArgSize, typeAll},
}

// userSize is get_user(ucmd.user_size). System gives the kernel a zero
// u32 for an empty arg; a shorter one would fault.
func userSize(arg []byte) (uint32, error) {
	switch {
	case len(arg) == 0:
		return 0, nil
	case len(arg) < 4:
		return 0, unix.EFAULT
	}
	return ne.Uint32(arg), nil
}

// copyStruct is copy_struct_from_user: trailing bytes the kernel does not
// know must be zero. Bytes past the end of arg are unmapped memory.
func copyStruct(arg []byte, usize, ksize uint32) ([]byte, error) {
	buf := make([]byte, ksize)
	if usize > ksize {
		end := min(uint64(usize), uint64(len(arg)))
		if uint64(ksize) < end {
			for _, c := range arg[ksize:end] {
				if c != 0 {
					return nil, unix.E2BIG
				}
			}
		}
	}
	if uint64(usize) > uint64(len(arg)) {
		return nil, unix.EFAULT
	}
	copy(buf, arg[:min(usize, ksize)])
	return buf, nil
}

// respond is luo_ucmd_respond: write back what both sides know.
func respond(arg, buf []byte, usize uint32) {
	copy(arg[:min(int(usize), len(buf))], buf)
}

// luo_ioctl.
func (f *Fake) deviceIoctl(cmd uint32, arg []byte) error {
	nr := cmd & 0xff
	if nr >= uint32(len(deviceOps)) {
		return unix.EINVAL
	}
	usize, err := userSize(arg)
	if err != nil {
		return err
	}
	op := deviceOps[nr]
	if op.num != cmd {
		return unix.ENOTTY // -ENOIOCTLCMD, turned into ENOTTY by vfs_ioctl
	}
	if usize < op.min {
		return unix.EINVAL
	}
	buf, err := copyStruct(arg, usize, op.size)
	if err != nil {
		return err
	}
	var name [ioctl.NameLen]byte
	copy(name[:], buf[8:])

	// get_unused_fd_flags comes first in both.
	s := &session{}
	o, w, err := f.newObject(s)
	if err != nil {
		return err
	}
	if nr == ioctl.CmdCreateSession {
		err = f.createSession(s, name)
	} else {
		err = f.retrieveSession(o, name)
	}
	if err != nil {
		f.discard(o, w)
		return err
	}
	ne.PutUint32(buf[4:], uint32(int32(w)))
	respond(arg, buf, usize)
	return nil
}

// luo_session_create.
func (f *Fake) createSession(s *session, name [ioctl.NameLen]byte) error {
	n := strnlen(name[:])
	if n == 0 || n > ioctl.MaxNameLen {
		return unix.EINVAL
	}
	s.name = string(name[:n])
	for _, x := range f.outgoing {
		if x.name == s.name {
			return unix.EEXIST
		}
	}
	f.outgoing = append(f.outgoing, s)
	return nil
}

// luo_session_retrieve: no length check; a name without a NUL in 64 bytes
// matches nothing, as strncmp against a stored name would.
func (f *Fake) retrieveSession(o *object, name [ioctl.NameLen]byte) error {
	n := strnlen(name[:])
	if n == ioctl.NameLen {
		return unix.ENOENT
	}
	want := string(name[:n])
	for _, s := range f.incoming {
		if s.name != want {
			continue
		}
		if s.retrieved {
			return unix.EINVAL
		}
		s.retrieved = true
		o.sess = s
		return nil
	}
	return unix.ENOENT
}

func strnlen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}

// luo_session_ioctl.
func (f *Fake) sessionIoctl(s *session, cmd uint32, arg []byte) error {
	nr := cmd & 0xff
	if nr < ioctl.CmdPreserveFD || nr-ioctl.CmdPreserveFD >= uint32(len(sessionOps)) {
		return unix.EINVAL
	}
	usize, err := userSize(arg)
	if err != nil {
		return err
	}
	op := sessionOps[nr-ioctl.CmdPreserveFD]
	if op.num != cmd {
		return unix.ENOTTY
	}
	switch op.typ {
	case typeIncoming:
		if !s.retrieved {
			return unix.EINVAL
		}
	case typeOutgoing:
		if s.retrieved {
			return unix.EINVAL
		}
	}
	if usize < op.min {
		return unix.EINVAL
	}
	buf, err := copyStruct(arg, usize, op.size)
	if err != nil {
		return err
	}
	switch nr {
	case ioctl.CmdPreserveFD:
		err = f.preserveFD(s, int32(ne.Uint32(buf[4:])), ne.Uint64(buf[8:]))
	case ioctl.CmdRetrieveFD:
		var fd int
		fd, err = f.retrieveFD(s, ne.Uint64(buf[8:]))
		if err == nil {
			ne.PutUint32(buf[4:], uint32(int32(fd)))
		}
	case ioctl.CmdFinish:
		if ne.Uint32(buf[4:]) != 0 {
			return unix.EINVAL
		}
		f.finish(s)
	case ioctl.CmdGetName:
		if ne.Uint32(buf[4:]) != 0 {
			return unix.EINVAL
		}
		strscpy(buf[8:], s.name)
	}
	if err != nil {
		return err
	}
	respond(arg, buf, usize)
	return nil
}

// strscpy copies s and its NUL into dst. Like the kernel's word-at-a-time
// copy on 64-bit machines, it zeroes the rest of the 8-byte word holding
// the NUL and leaves later bytes alone.
func strscpy(dst []byte, s string) {
	n := copy(dst[:len(dst)-1], s)
	end := min((n/8+1)*8, len(dst))
	clear(dst[n:end])
}

// luo_preserve_file with the memfd handler.
func (f *Fake) preserveFD(s *session, fd int32, token uint64) error {
	for _, p := range s.files {
		if p.token == token {
			return unix.EEXIST
		}
	}
	// fget: the fd must be open in this process, and not O_PATH.
	if fd < 0 {
		return unix.EBADF
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err // EBADF, or EMFILE: the fake's own dup found no fd
	}
	keep := false
	defer func() {
		if !keep {
			unix.Close(dup)
		}
	}()
	if fl, err := unix.FcntlInt(uintptr(dup), unix.F_GETFL, 0); err != nil || fl&unix.O_PATH != 0 {
		return unix.EBADF
	}
	var st unix.Stat_t
	if !canPreserve(dup, &st) {
		return unix.ENOENT
	}
	key := fileKey{uint64(st.Dev), st.Ino}
	if f.preserved[key] != nil {
		return unix.EBUSY
	}
	// memfd_luo_preserve: memfd_pin_folios takes at most UINT_MAX folios.
	pg := int64(os.Getpagesize())
	if (st.Size+pg-1)/pg > 0xffff_ffff {
		return unix.EFBIG
	}
	p := &pfile{token: token, fd: dup, key: key}
	s.files = append(s.files, p)
	f.preserved[key] = p
	keep = true
	return nil
}

// canPreserve is memfd_luo_can_preserve: shmem_file(file) && !i_nlink.
func canPreserve(fd int, st *unix.Stat_t) bool {
	if unix.Fstat(fd, st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 0 {
		return false
	}
	var fs unix.Statfs_t
	return unix.Fstatfs(fd, &fs) == nil && int64(fs.Type) == unix.TMPFS_MAGIC
}

// luo_session_retrieve_fd and luo_retrieve_file.
func (f *Fake) retrieveFD(s *session, token uint64) (int, error) {
	// get_unused_fd_flags first: hold the lowest free fd number with a
	// placeholder (a dup of the epoll fd, which exists since s does).
	slot, err := unix.FcntlInt(uintptr(f.ep), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	var pf *pfile
	for _, x := range s.files {
		if x.token == token {
			pf = x
			break
		}
	}
	switch {
	case pf == nil:
		unix.Close(slot)
		return -1, unix.ENOENT
	case pf.failErr != 0:
		unix.Close(slot)
		return -1, pf.failErr
	}
	if err := unix.Dup3(pf.fd, slot, unix.O_CLOEXEC); err != nil {
		unix.Close(slot)
		return -1, err
	}
	if !pf.retrieved {
		pf.retrieved = true
		f.preserved[pf.key] = pf
	}
	return slot, nil
}

// Reboot simulates reboot(LINUX_REBOOT_CMD_KEXEC) into the next kernel:
// live outgoing sessions become its incoming sessions, everything else is
// gone, and every fd handed out so far is dead. See the package doc.
func (f *Fake) Reboot() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return unix.ENODEV
	}
	f.reap()
	if errno, ok := f.popFail(ReqReboot); ok {
		return errno
	}

	// Copy every preserved file first, so a failure changes nothing.
	next := make([]*session, 0, len(f.outgoing))
	var err error
	for _, s := range f.outgoing {
		ns := &session{name: s.name, incoming: true}
		next = append(next, ns)
		for _, p := range s.files {
			var fd int
			fd, err = restoreMemfd(p.fd)
			if err != nil {
				break
			}
			var st unix.Stat_t
			if err = unix.Fstat(fd, &st); err != nil {
				unix.Close(fd)
				break
			}
			ns.files = append(ns.files, &pfile{token: p.token, fd: fd, key: fileKey{uint64(st.Dev), st.Ino}})
		}
		if err != nil {
			break
		}
	}
	if err != nil {
		for _, s := range next {
			dropFiles(s)
		}
		return err
	}

	for _, l := range [][]*session{f.outgoing, f.incoming} {
		for _, s := range l {
			dropFiles(s)
		}
	}
	clear(f.preserved)
	for _, o := range f.objs {
		o.stale = true
	}
	f.outgoing = nil
	f.incoming = next
	f.device = nil
	f.num++
	return nil
}

// restoreMemfd does what memfd_luo preserve and retrieve do together: a
// new memfd with the same contents, size, file position and seals.
func restoreMemfd(src int) (int, error) {
	var st unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return -1, err
	}
	pos, err := unix.Seek(src, 0, unix.SEEK_CUR)
	if err != nil {
		return -1, err
	}
	seals, err := unix.FcntlInt(uintptr(src), unix.F_GET_SEALS, 0)
	if err != nil {
		seals = 0
	}
	dst, err := unix.MemfdCreate("", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, err
	}
	if err := copyData(dst, src, st.Size); err != nil {
		unix.Close(dst)
		return -1, err
	}
	if _, err := unix.Seek(dst, pos, unix.SEEK_SET); err != nil {
		unix.Close(dst)
		return -1, err
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(dst), unix.F_ADD_SEALS, seals); err != nil {
			unix.Close(dst)
			return -1, err
		}
	}
	return dst, nil
}

// copyData copies size bytes with pread/pwrite, which leave the source's
// file position alone, skipping blocks of zeros.
func copyData(dst, src int, size int64) error {
	if err := unix.Ftruncate(dst, size); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	for off := int64(0); off < size; {
		n, err := unix.Pread(src, buf[:min(int64(len(buf)), size-off)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if !zero(buf[:n]) {
			for w := 0; w < n; {
				m, err := unix.Pwrite(dst, buf[w:n], off+int64(w))
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					return err
				}
				w += m
			}
		}
		off += int64(n)
	}
	return nil
}

func zero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
