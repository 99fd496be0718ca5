package systemd

import (
	"errors"
	"os"

	"github.com/coreos/go-systemd/v22/activation"
)

// Inherited is what systemd passed luod at start: the listening socket of
// luod.socket and whatever luod had put into the fd store before it was
// restarted.
//
// All files are luod's to keep or close; each one's Name() is its FDNAME.
// Closing a file here does not remove it from the store: systemd still
// holds its own duplicate until RemoveFD.
type Inherited struct {
	// Listeners are the sockets named ListenerName: luod.socket's
	// ListenSequentialPacket= socket (use proto.FileListener). Normally
	// one; none without socket activation.
	Listeners []*os.File
	// Sessions maps a session name to its stored session fd
	// (KindSession); wrap it with ioctl.NewSession. Within one boot, after
	// a restart of luod, it is the very session luod held, open, incoming
	// or claimed alike (which one, and its owner and tokens, only luod's
	// manifest says). After a kexec through kexec.target on systemd 261 or
	// later it is the session as PID 1 retrieved it in the new kernel
	// (docs/kernel-contract.md), so luod uses it instead of retrieving it,
	// which the kernel would refuse. Compare GetName with the key before
	// trusting it. luod's reserved session, when stored, is
	// Sessions["luod"].
	Sessions map[string]*os.File
	// Manifest is the stored KindManifest memfd, nil if none.
	Manifest *os.File
	// Other holds every fd luod does not recognise: a name ParseFDName
	// rejects (left by another version of luod, or unnamed:
	// "LISTEN_FD_<n>"), or a second fd under a name already taken. luod
	// should RemoveFD(f.Name()) and close them, so the store does not keep
	// them forever; a second fd of a session name is removed by that too,
	// so store the kept one again afterwards.
	Other []*os.File
}

// TakeInherited takes over the fds systemd passed to luod, with go-systemd's
// activation.Files: only when $LISTEN_PID is luod's pid, fds 3 to
// 3+$LISTEN_FDS-1, named from $LISTEN_FDNAMES, each made close-on-exec.
// It unsets $LISTEN_PID, $LISTEN_FDS and $LISTEN_FDNAMES, so that children
// do not believe the fds are theirs — and so a second call returns nothing:
// call it once, early, before anything else opens files.
//
// Without socket activation and an empty store, or when the variables are
// absent or not for this process, the result is empty and the error nil.
// An fd that $LISTEN_FDS counts but that is not open is left out and
// reported in the error (a *Error with Op "LISTEN_FDS"); the rest is
// returned all the same.
func TakeInherited() (Inherited, error) {
	var bad []error
	var files []*os.File
	for _, f := range activation.Files(true) {
		if _, err := f.Stat(); err != nil {
			bad = append(bad, &Error{Op: "LISTEN_FDS", FDName: f.Name(), Err: err})
			continue
		}
		files = append(files, f)
	}
	return classify(files), errors.Join(bad...)
}

// classify sorts inherited files by their FDNAME.
func classify(files []*os.File) Inherited {
	in := Inherited{Sessions: map[string]*os.File{}}
	for _, f := range files {
		if f.Name() == ListenerName {
			in.Listeners = append(in.Listeners, f)
			continue
		}
		kind, name, err := ParseFDName(f.Name())
		switch {
		case err != nil:
			in.Other = append(in.Other, f)
		case kind == KindManifest && in.Manifest == nil:
			in.Manifest = f
		case kind == KindSession && in.Sessions[name] == nil:
			in.Sessions[name] = f
		default:
			in.Other = append(in.Other, f)
		}
	}
	return in
}
