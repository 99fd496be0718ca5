// Command luoctl talks to luod: admin operations (status, load, upgrade,
// …) and, for scripts, the workload operations of pkg/client.
//
// Exit codes: 0 success; 1 luod refused the operation (the error's code is
// printed); 2 usage error; 3 luod cannot be reached; 4 the upgrade barrier
// was aborted (nothing changed); 5 the kernel refused kexec (nothing
// lost).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/kexec"
	"github.com/luod/luod/pkg/kho"
	"github.com/luod/luod/pkg/proto"
)

const usage = `usage: luoctl [--socket PATH] [--json] [--timeout D] COMMAND [ARGS]

admin commands (root or luod's admin group):
  status                          daemon, continuity and upgrade state
  sessions                        every user's sessions
  inspect [DIR]                   decoded KHO handover of this boot, or of a saved copy
  load KERNEL [--initrd F] [--cmdline S | --reuse-cmdline] [--append S] [--force]
  unload                          drop the loaded kernel
  upgrade [--timeout D] [--dry-run] [--force]

workload commands (own sessions):
  list                            own sessions
  create NAME [--label K=V]...    create a session luod holds
  preserve SESSION TOKEN=FILE...  copy each FILE into a memfd and have luod preserve it
  reclaim SESSION [--out DIR] [--finish]
  finish SESSION
  delete SESSION

exit codes: 0 ok, 1 refused by luod, 2 usage, 3 luod unreachable, 4 upgrade aborted, 5 kexec failed
`

type cli struct {
	c       *client.Client
	json    bool
	timeout time.Duration
	out     io.Writer
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("luoctl", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	sock := fs.String("socket", proto.DefaultSocket, "luod's socket")
	asJSON := fs.Bool("json", false, "print machine-readable JSON")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for luod")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	c, err := client.Dial(*sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "luoctl: cannot reach luod at %s: %v\n", *sock, err)
		return 3
	}
	defer c.Close()
	l := &cli{c: c, json: *asJSON, timeout: *timeout, out: os.Stdout}
	err = l.dispatch(cmd, rest)
	return exitCode(err)
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "luoctl: %v\n", err)
	var ue usageError
	var pe *proto.Error
	switch {
	case errors.As(err, &ue):
		fmt.Fprint(os.Stderr, usage)
		return 2
	case errors.Is(err, client.ErrDisconnected), errors.Is(err, client.ErrClosed):
		return 3
	case errors.As(err, &pe) && pe.Code == proto.CodeAborted:
		return 4
	case errors.As(err, &pe) && pe.Code == proto.CodeKexecFailed:
		return 5
	}
	return 1
}

func (l *cli) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), l.timeout)
}

func (l *cli) print(v any, human func(w io.Writer)) error {
	if l.json {
		e := json.NewEncoder(l.out)
		e.SetIndent("", "  ")
		return e.Encode(v)
	}
	human(l.out)
	return nil
}

func (l *cli) dispatch(cmd string, args []string) error {
	switch cmd {
	case "status":
		return l.status(args)
	case "sessions", "list":
		return l.sessions(cmd, args)
	case "inspect":
		return l.inspect(args)
	case "load":
		return l.load(args)
	case "unload":
		ctx, cancel := l.ctx()
		defer cancel()
		if err := l.c.Unload(ctx); err != nil {
			return err
		}
		return l.print(map[string]bool{"unloaded": true}, func(w io.Writer) { fmt.Fprintln(w, "kernel unloaded") })
	case "upgrade":
		return l.upgrade(args)
	case "create":
		return l.create(args)
	case "preserve":
		return l.preserve(args)
	case "reclaim":
		return l.reclaim(args)
	case "finish", "delete":
		if len(args) != 1 {
			return usageError{cmd + " takes one session name"}
		}
		ctx, cancel := l.ctx()
		defer cancel()
		var err error
		if cmd == "finish" {
			err = l.c.FinishSession(ctx, args[0])
		} else {
			err = l.c.DeleteSession(ctx, args[0])
		}
		if err != nil {
			return err
		}
		return l.print(map[string]string{cmd: args[0]}, func(w io.Writer) { fmt.Fprintf(w, "session %s: %s done\n", args[0], cmd) })
	}
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

func (l *cli) status(args []string) error {
	if len(args) != 0 {
		return usageError{"status takes no arguments"}
	}
	ctx, cancel := l.ctx()
	defer cancel()
	st, err := l.c.Status(ctx)
	if err != nil {
		return err
	}
	return l.print(st, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "kernel:\t%s\n", st.Release)
		fmt.Fprintf(tw, "liveupdate number:\t%d\n", st.LiveUpdateNumber)
		fmt.Fprintf(tw, "continuity:\t%s", st.Continuity)
		if st.Continuity == proto.ContinuityMismatch {
			fmt.Fprintf(tw, " (expected %d)", st.ExpectedLiveUpdateNumber)
		}
		fmt.Fprintln(tw)
		if st.PreviousRelease != "" {
			fmt.Fprintf(tw, "previous kernel:\t%s\n", st.PreviousRelease)
		}
		fmt.Fprintf(tw, "sessions:\t%d open, %d incoming, %d claimed\n", st.Sessions.Open, st.Sessions.Incoming, st.Sessions.Claimed)
		if len(st.LostSessions) > 0 {
			fmt.Fprintf(tw, "LOST sessions:\t%s\n", strings.Join(st.LostSessions, ", "))
		}
		if len(st.UnclaimedOverdue) > 0 {
			fmt.Fprintf(tw, "unclaimed past grace:\t%s\n", strings.Join(st.UnclaimedOverdue, ", "))
		}
		if st.Loaded != nil {
			fmt.Fprintf(tw, "loaded kernel:\t%s (%s)\n", st.Loaded.Release, st.Loaded.Kernel)
			fmt.Fprintf(tw, "loaded cmdline:\t%s\n", st.Loaded.Cmdline)
		} else {
			fmt.Fprintf(tw, "loaded kernel:\tnone\n")
		}
		if st.UpgradePhase != "" {
			fmt.Fprintf(tw, "upgrade phase:\t%s\n", st.UpgradePhase)
		}
		tw.Flush()
	})
}

func (l *cli) sessions(cmd string, args []string) error {
	if len(args) != 0 {
		return usageError{cmd + " takes no arguments"}
	}
	ctx, cancel := l.ctx()
	defer cancel()
	var ss []proto.SessionInfo
	var err error
	if cmd == "sessions" {
		ss, err = l.c.Sessions(ctx)
	} else {
		ss, err = l.c.ListSessions(ctx)
	}
	if err != nil {
		return err
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].Name < ss[j].Name })
	return l.print(ss, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tUID\tSTATE\tFILES\tBYTES\tLABELS")
		for _, s := range ss {
			var bytes int64
			for _, f := range s.Files {
				bytes += f.Size
			}
			var labels []string
			for k, v := range s.Labels {
				labels = append(labels, k+"="+v)
			}
			sort.Strings(labels)
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\n", s.Name, s.UID, s.State, len(s.Files), bytes, strings.Join(labels, ","))
		}
		tw.Flush()
	})
}

func (l *cli) inspect(args []string) error {
	if len(args) > 1 {
		return usageError{"inspect takes at most one directory"}
	}
	dir := ""
	if len(args) == 1 {
		abs, err := filepath.Abs(args[0])
		if err != nil {
			return err
		}
		dir = abs
	}
	ctx, cancel := l.ctx()
	defer cancel()
	raw, err := l.c.Inspect(ctx, dir)
	if err != nil {
		return err
	}
	if l.json {
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return err
		}
		return l.print(v, nil)
	}
	var h kho.HandoverJSON
	if err := json.Unmarshal(raw, &h); err != nil {
		return err
	}
	w := tabwriter.NewWriter(l.out, 0, 4, 2, ' ', 0)
	switch {
	case h.Root != nil:
		fmt.Fprintf(w, "KHO root:\t%s, preserved memory map at %s\n", h.Root.Compatible, h.Root.PreservedMemoryMap)
		for _, st := range h.Root.Subtrees {
			fmt.Fprintf(w, "  subtree %s:\t%d bytes at %s\n", st.Name, st.BlobSize, st.PreservedData)
		}
	default:
		fmt.Fprintf(w, "KHO root:\tnot decoded: %s\n", h.RootError)
	}
	switch {
	case h.LUO != nil:
		fmt.Fprintf(w, "LUO:\t%s, liveupdate number %d\n", h.LUO.ABI, h.LUO.LiveUpdateNumber)
	case h.LUOError != "":
		fmt.Fprintf(w, "LUO:\tnot decoded: %s\n", h.LUOError)
		fmt.Fprintf(w, "\t(on 7.2/7.3 the kernel frees this blob after boot; luoctl status has the number from the kernel log)\n")
	default:
		fmt.Fprintf(w, "LUO:\tnot handed over\n")
	}
	switch {
	case h.KexecMetadata != nil:
		fmt.Fprintf(w, "kexec metadata:\tfrom %s, kexec #%d since the cold boot\n", h.KexecMetadata.PreviousRelease, h.KexecMetadata.KexecCount)
	case h.KexecMetadataError != "":
		fmt.Fprintf(w, "kexec metadata:\tnot decoded: %s\n", h.KexecMetadataError)
	default:
		fmt.Fprintf(w, "kexec metadata:\tnot handed over\n")
	}
	return w.Flush()
}

func (l *cli) load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	initrd := fs.String("initrd", "", "initrd for the new kernel")
	cmdline := fs.String("cmdline", "", "command line for the new kernel")
	reuse := fs.Bool("reuse-cmdline", false, "start from the running kernel's command line")
	appendS := fs.String("append", "", "append to the command line")
	force := fs.Bool("force", false, "load although the target's config lacks live update support")
	config := fs.String("config", "", "the new kernel's config (default: config-RELEASE or config beside it)")
	kernel, rest := "", args
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		kernel, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return usageError{"load: " + err.Error()}
	}
	if kernel == "" && fs.NArg() == 1 {
		kernel = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return usageError{"load takes one kernel image"}
	}
	if kernel == "" {
		return usageError{"load needs a kernel image"}
	}
	if *cmdline != "" && *reuse {
		return usageError{"--cmdline and --reuse-cmdline exclude each other"}
	}
	// Each file is opened once here and handed to luod by fd.
	kf, err := os.Open(kernel)
	if err != nil {
		return err
	}
	defer kf.Close()
	var inf, cf *os.File
	if *initrd != "" {
		if inf, err = os.Open(*initrd); err != nil {
			return err
		}
		defer inf.Close()
	}
	cpath := *config
	if cpath == "" {
		// The release only helps find the config: luod gives the verdict
		// on the image, and only luod reads it whole for its digest.
		release := ""
		if img, err := kexec.InspectFileNoHash(kf); err == nil {
			release = img.Release
		}
		cpath = kexec.FindConfig(kernel, release)
	}
	if cpath != "" {
		if cf, err = os.Open(cpath); err != nil {
			return err
		}
		defer cf.Close()
	}
	ctx, cancel := l.ctx()
	defer cancel()
	res, err := l.c.Load(ctx, kf, inf, cf, proto.LoadArgs{Cmdline: *cmdline, ReuseCmdline: *reuse, Append: *appendS, Force: *force})
	if err != nil {
		return err
	}
	return l.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "loaded %s (%s)\n", res.Release, res.Kernel)
		if res.Initrd != "" {
			fmt.Fprintf(w, "initrd  %s\n", res.Initrd)
		}
		fmt.Fprintf(w, "cmdline %s\n", res.Cmdline)
		for _, x := range res.Warnings {
			fmt.Fprintf(w, "warning: %s\n", x)
		}
	})
}

func (l *cli) upgrade(args []string) error {
	fs := flag.NewFlagSet("upgrade", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	timeout := fs.Duration("timeout", 0, "how long clients have to get ready (default: luod's)")
	dry := fs.Bool("dry-run", false, "do everything but the reboot")
	force := fs.Bool("force", false, "go on despite preflight warnings")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return usageError{"upgrade [--timeout D] [--dry-run] [--force]"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout+*timeout)
	defer cancel()
	res, err := l.c.Upgrade(ctx, proto.UpgradeArgs{TimeoutMS: timeout.Milliseconds(), DryRun: *dry, Force: *force},
		func(p proto.ProgressEvent) {
			if !l.json {
				fmt.Fprintf(l.out, "upgrade %s: %s\n", p.Upgrade, p.Phase)
			}
		})
	if errors.Is(err, client.ErrRebooting) {
		return l.print(map[string]any{"upgrade": res.Upgrade, "committed": true}, func(w io.Writer) {
			fmt.Fprintf(w, "upgrade %s committed: rebooting into the new kernel\n", res.Upgrade)
		})
	}
	if err != nil {
		return err
	}
	return l.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "upgrade %s: dry run complete, no reboot (barrier %dms, manifest %dms)\n",
			res.Upgrade, res.Phases[proto.PhaseBarrier], res.Phases[proto.PhaseManifest])
	})
}

func (l *cli) create(args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usageError{"create NAME [--label K=V]..."}
	}
	name := args[0]
	labels := map[string]string{}
	fs := flag.NewFlagSet("create", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Func("label", "K=V", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("label %q is not K=V", s)
		}
		labels[k] = v
		return nil
	})
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		return usageError{"create NAME [--label K=V]..."}
	}
	ctx, cancel := l.ctx()
	defer cancel()
	s, err := l.c.CreateSession(ctx, name, labels)
	if err != nil {
		return err
	}
	s.Close() // luod holds the session
	return l.print(map[string]string{"created": name}, func(w io.Writer) { fmt.Fprintf(w, "session %s created\n", name) })
}

// preserve copies files into memfds (only memfds can be preserved) and has
// luod preserve them, creating the session if needed.
func (l *cli) preserve(args []string) error {
	if len(args) < 2 {
		return usageError{"preserve SESSION TOKEN=FILE..."}
	}
	name := args[0]
	var files []client.FileToPreserve
	defer func() {
		for _, f := range files {
			f.File.Close()
		}
	}()
	for _, a := range args[1:] {
		ts, path, ok := strings.Cut(a, "=")
		if !ok {
			return usageError{fmt.Sprintf("%q is not TOKEN=FILE", a)}
		}
		tok, err := strconv.ParseUint(ts, 0, 64)
		if err != nil {
			return usageError{fmt.Sprintf("token %q: %v", ts, err)}
		}
		mf, err := copyToMemfd(path)
		if err != nil {
			return err
		}
		files = append(files, client.FileToPreserve{File: mf, Token: tok, Label: filepath.Base(path)})
	}
	ctx, cancel := l.ctx()
	defer cancel()
	if s, err := l.c.CreateSession(ctx, name, map[string]string{"by": "luoctl"}); err == nil {
		s.Close()
	} else if !errors.Is(err, &proto.Error{Code: proto.CodeExists}) {
		return err
	}
	done, err := l.c.Preserve(ctx, name, files)
	if err != nil {
		return err
	}
	return l.print(done, func(w io.Writer) {
		for _, f := range done {
			fmt.Fprintf(w, "session %s: token %#x preserved (%d bytes)\n", name, f.Token, f.Size)
		}
	})
}

func copyToMemfd(path string) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("luoctl:"+filepath.Base(path), unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	mf := os.NewFile(uintptr(fd), path)
	if _, err := io.Copy(mf, src); err != nil {
		mf.Close()
		return nil, fmt.Errorf("copying %s into a memfd: %w", path, err)
	}
	return mf, nil
}

func (l *cli) reclaim(args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usageError{"reclaim SESSION [--out DIR] [--finish]"}
	}
	name := args[0]
	fs := flag.NewFlagSet("reclaim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	out := fs.String("out", "", "write each file to DIR/TOKEN")
	finish := fs.Bool("finish", false, "finish the session after reclaiming")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		return usageError{"reclaim SESSION [--out DIR] [--finish]"}
	}
	ctx, cancel := l.ctx()
	defer cancel()
	files, err := l.c.Reclaim(ctx, name, *finish)
	if err != nil && !errors.Is(err, client.ErrNotFinished) {
		return err
	}
	defer func() {
		for _, f := range files {
			f.File.Close()
		}
	}()
	type row struct {
		Token uint64 `json:"token"`
		Label string `json:"label"`
		Size  int64  `json:"size"`
		Path  string `json:"path,omitempty"`
	}
	var rows []row
	for _, f := range files {
		r := row{Token: f.Token, Label: f.Label, Size: f.Size}
		if *out != "" {
			r.Path = filepath.Join(*out, fmt.Sprintf("%#x", f.Token))
			dst, err := os.Create(r.Path)
			if err != nil {
				return err
			}
			_, cerr := io.Copy(dst, io.NewSectionReader(f.File, 0, 1<<62))
			if err := errors.Join(cerr, dst.Close()); err != nil {
				return err
			}
		}
		rows = append(rows, r)
	}
	return l.print(rows, func(w io.Writer) {
		for _, r := range rows {
			fmt.Fprintf(w, "session %s: token %#x (%s) reclaimed, %d bytes %s\n", name, r.Token, r.Label, r.Size, r.Path)
		}
	})
}
