package daemon

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/kexec"
	"github.com/luod/luod/pkg/proto"
)

func (d *Daemon) status() proto.Status {
	st := d.custody.Snapshot()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := proto.Status{
		Version:                  proto.Version,
		Release:                  d.boot.release,
		BootID:                   d.boot.bootID,
		LiveUpdateNumber:         d.rec.got,
		Continuity:               d.rec.continuity,
		ExpectedLiveUpdateNumber: d.rec.expected,
		PreviousRelease:          d.rec.previousRelease,
		LostSessions:             []string{},
		Sessions:                 proto.SessionCounts{Open: st.Open, Incoming: st.Incoming, Claimed: st.Claimed},
		UpgradePhase:             d.phase,
		UnclaimedOverdue:         []string{},
	}
	for _, l := range d.rec.lost {
		s.LostSessions = append(s.LostSessions, l.Name)
	}
	for name := range d.overdue {
		s.UnclaimedOverdue = append(s.UnclaimedOverdue, name)
	}
	sort.Strings(s.UnclaimedOverdue)
	if d.loaded != nil {
		l := *d.loaded
		s.Loaded = &l
	}
	return s
}

// namedByPath returns duplicates of received files named by the paths
// they were opened at (from /proc/self/fd), for messages; the caller
// closes them.
func namedByPath(files []*os.File) ([]*os.File, error) {
	out := make([]*os.File, 0, len(files))
	for _, f := range files {
		name := f.Name()
		if p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); err == nil {
			name = p
		}
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			for _, g := range out {
				g.Close()
			}
			return nil, err
		}
		out = append(out, os.NewFile(uintptr(fd), name))
	}
	return out, nil
}

// load checks the kernel image (and initrd, config) it was handed by fd
// and loads it with kexec_file_load. Files are used as received: nothing
// is opened again by path.
func (d *Daemon) load(a proto.LoadArgs, files []*os.File) (*proto.LoadResult, error) {
	want := 1
	if a.Initrd {
		want++
	}
	if a.Config {
		want++
	}
	if len(files) != want {
		return nil, proto.Errorf(proto.CodeBadRequest,
			"load expects %d file descriptors (kernel%s%s), got %d", want,
			map[bool]string{true: ", initrd"}[a.Initrd], map[bool]string{true: ", config"}[a.Config], len(files))
	}
	if d.currentPhase() != "" {
		return nil, proto.Errorf(proto.CodeBusy, "upgrade in progress")
	}
	// Name the received files by the paths they were opened at, so that
	// every message below (and pkg/kexec's) says which file.
	named, err := namedByPath(files)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range named {
			f.Close()
		}
	}()
	kernel := named[0]
	var initrd, config *os.File
	if a.Initrd {
		initrd = named[1]
	}
	if a.Config {
		config = named[len(named)-1]
	}
	kpath := kernel.Name()
	img, err := kexec.InspectFile(kernel)
	if err != nil {
		return nil, proto.Errorf(proto.CodePreflightFailed, "%v", err)
	}
	if err := img.CheckArch(runtime.GOARCH); err != nil {
		return nil, proto.Errorf(proto.CodePreflightFailed, "kernel %s: %v", kpath, err)
	}
	res := &proto.LoadResult{Warnings: []string{}}
	if initrd != nil {
		in, err := kexec.CheckInitrd(initrd)
		if err != nil {
			return nil, proto.Errorf(proto.CodePreflightFailed, "%v", err)
		}
		if in.Note != "" {
			res.Warnings = append(res.Warnings, in.Note)
		}
		res.Initrd = initrd.Name() + " sha256:" + in.SHA256
	}
	if config != nil {
		if err := kexec.CheckConfig(io.NewSectionReader(config, 0, 1<<30)); err != nil {
			if !a.Force || !errors.Is(err, kexec.ErrNoLiveUpdate) {
				return nil, proto.Errorf(proto.CodePreflightFailed, "kernel %s (config %s): %v; --force loads it anyway",
					kpath, config.Name(), err)
			}
			res.Warnings = append(res.Warnings, fmt.Sprintf("forced: %v", err))
		}
	} else {
		res.Warnings = append(res.Warnings, "no kernel config found beside the image: CONFIG_LIVEUPDATE of the new kernel not verified")
	}

	cmdline := a.Cmdline
	if a.ReuseCmdline {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return nil, err
		}
		cmdline = strings.TrimSpace(string(b))
	}
	if a.Append != "" {
		cmdline = strings.TrimSpace(cmdline + " " + a.Append)
	}
	if !strings.Contains(" "+cmdline+" ", " liveupdate=on ") && !strings.Contains(" "+cmdline+" ", " liveupdate=1 ") {
		res.Warnings = append(res.Warnings, "the new command line lacks liveupdate=on: the new kernel will not take sessions over unless its config enables it by default")
	}

	t0 := time.Now()
	err = d.cfg.Kexec.Load(kernel, initrd, cmdline)
	d.metrics.ObserveKexecLoad(time.Since(t0), err)
	if err != nil {
		d.log.Error("kexec load refused", "kernel", kpath, "err", err)
		return nil, proto.Errorf(proto.CodeKexecFailed, "%v", err)
	}
	res.LoadedKernel = proto.LoadedKernel{Release: img.Release, Kernel: kpath + " sha256:" + img.SHA256, Cmdline: cmdline}
	d.mu.Lock()
	l := res.LoadedKernel
	d.loaded = &l
	d.mu.Unlock()
	d.log.Info("kernel loaded for the next live update", "kernel", kpath, "release", img.Release,
		"initrd", res.Initrd, "cmdline", cmdline, "warnings", len(res.Warnings))
	return res, nil
}

func (d *Daemon) unload() error {
	if d.currentPhase() != "" {
		return proto.Errorf(proto.CodeBusy, "upgrade in progress")
	}
	if err := d.cfg.Kexec.Unload(); err != nil {
		return proto.Errorf(proto.CodeKexecFailed, "%v", err)
	}
	d.mu.Lock()
	d.loaded = nil
	d.mu.Unlock()
	d.log.Info("kernel unloaded")
	return nil
}
