// Command guestram is the demo workload: a stand-in for a VMM that keeps a
// VM's RAM in a memfd and wants it to survive a kernel live update.
//
//	guestram run --session vm-demo --size 256M
//	    fills a memfd with a pattern derived from a seed, has luod preserve
//	    it in a new session (labels carry the seed and SHA-256), subscribes
//	    to upgrade events and answers "ready" when luod prepares a live
//	    update; exits when luod commits it (--detach: exits at once, like a
//	    VMM that checkpoints and quits; luod keeps the session).
//	guestram verify --session vm-demo [--finish]
//	    after the update: reclaims the memfd from luod and checks it
//	    byte for byte against the pattern and the recorded SHA-256.
//
// With --own-ioctls the workload does the kernel ioctls itself on its
// duplicate of the session fd, as a VMM with VFIO or iommufd state must:
// PRESERVE_FD then "declare" before the update; after it,
// retrieve_session, RETRIEVE_FD and FINISH.
//
// Exit status 0 means the memory is exactly what was preserved.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/proto"
)

const token = 0x6d656d // "mem"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: guestram run|verify [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	sock := fs.String("socket", proto.DefaultSocket, "luod's socket")
	name := fs.String("session", "vm-demo", "session name")
	size := fs.String("size", "256M", "guest RAM size (K, M, G suffixes)")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "pattern seed")
	detach := fs.Bool("detach", false, "run: exit once preserved instead of waiting for the upgrade")
	finish := fs.Bool("finish", false, "verify: finish the session afterwards")
	own := fs.Bool("own-ioctls", false, "do PRESERVE_FD / RETRIEVE_FD / FINISH on the session fd ourselves")
	fs.Parse(os.Args[2:])

	var err error
	switch os.Args[1] {
	case "run":
		var n int64
		if n, err = parseSize(*size); err == nil {
			err = run(*sock, *name, n, *seed, *detach, *own)
		}
	case "verify":
		err = verify(*sock, *name, *finish, *own)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "guestram: %v\n", err)
		os.Exit(1)
	}
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number with K, M or G", s)
	}
	return n * mult, nil
}

// fill writes the pattern of seed into b, 8 bytes at a time (xorshift64).
func fill(b []byte, seed uint64) {
	x := seed | 1
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Minute)
}

func run(sock, name string, size int64, seed uint64, detach, own bool) error {
	ram := make([]byte, size)
	fill(ram, seed)
	sum := sha256.Sum256(ram)
	fd, err := unix.MemfdCreate("guest-ram:"+name, unix.MFD_CLOEXEC)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "guest-ram")
	defer f.Close()
	if _, err := f.Write(ram); err != nil {
		return err
	}
	ram = nil

	c, err := client.Dial(sock)
	if err != nil {
		return err
	}
	defer c.Close()
	cx, cancel := ctx()
	defer cancel()
	labels := map[string]string{"seed": strconv.FormatUint(seed, 10), "sha256": hex.EncodeToString(sum[:]), "size": strconv.FormatInt(size, 10)}
	s, err := c.CreateSession(cx, name, labels)
	if err != nil {
		return err
	}
	how := "through luod"
	if own {
		// Our own PRESERVE_FD on our duplicate of the session fd, then
		// tell luod the token so it is in the manifest.
		if err := s.PreserveFD(int(f.Fd()), token); err != nil {
			return err
		}
		if err := c.Declare(cx, name, []proto.FileSpec{{Token: token, Label: "guest-ram"}}); err != nil {
			return err
		}
		how = "by our own PRESERVE_FD"
	} else if _, err := c.Preserve(cx, name, []client.FileToPreserve{{File: f, Token: token, Label: "guest-ram"}}); err != nil {
		return err
	}
	s.Close() // luod holds the session
	fmt.Printf("guestram: %s: %d MiB of guest RAM preserved %s (sha256 %s…)\n", name, size>>20, how, hex.EncodeToString(sum[:8]))
	if detach {
		return nil
	}
	if err := c.Subscribe(cx); err != nil {
		return err
	}
	fmt.Printf("guestram: %s: subscribed; waiting for luod to prepare a live update\n", name)
	for ev := range c.Events() {
		switch ev.Event {
		case proto.EventPrepare:
			var p proto.PrepareEvent
			ev.Decode(&p)
			// A real VMM would pause its vCPUs and flush device state here.
			fmt.Printf("guestram: %s: upgrade %s: pausing the guest, ready\n", name, p.Upgrade)
			rc, rcancel := ctx()
			err := c.Ready(rc, p.Upgrade)
			rcancel()
			if err != nil {
				return err
			}
		case proto.EventAborted:
			var a proto.AbortedEvent
			ev.Decode(&a)
			fmt.Printf("guestram: %s: upgrade %s aborted (%s): resuming the guest\n", name, a.Upgrade, a.Reason)
		case proto.EventCommitted:
			fmt.Printf("guestram: %s: upgrade committed; see you in the new kernel\n", name)
			return nil
		}
	}
	return errors.New("connection to luod lost before the upgrade")
}

func verify(sock, name string, finish, own bool) error {
	c, err := client.Dial(sock)
	if err != nil {
		return err
	}
	defer c.Close()
	cx, cancel := ctx()
	defer cancel()
	ss, err := c.ListSessions(cx)
	if err != nil {
		return err
	}
	var info *proto.SessionInfo
	for i := range ss {
		if ss[i].Name == name {
			info = &ss[i]
		}
	}
	if info == nil {
		return fmt.Errorf("luod holds no session %q of ours", name)
	}
	seed, err := strconv.ParseUint(info.Labels["seed"], 10, 64)
	if err != nil {
		return fmt.Errorf("session %s: label seed %q: %v", name, info.Labels["seed"], err)
	}
	var ramf *os.File
	how := "reclaimed through luod"
	if own {
		// luod hands us the retrieved session fd; the ioctls are ours.
		s, err := c.RetrieveSession(cx, name)
		if err != nil {
			return err
		}
		defer s.Close()
		if ramf, err = s.RetrieveFD(token); err != nil {
			return err
		}
		defer ramf.Close()
		if finish {
			defer func() {
				if err := s.Finish(); err != nil {
					fmt.Fprintf(os.Stderr, "guestram: %s: FINISH: %v\n", name, err)
					os.Exit(1)
				}
			}()
		}
		how = "retrieved by our own RETRIEVE_FD"
	} else {
		files, err := c.Reclaim(cx, name, finish)
		if err != nil && !errors.Is(err, client.ErrNotFinished) {
			return err
		}
		defer func() {
			for _, f := range files {
				f.File.Close()
			}
		}()
		if len(files) != 1 || files[0].Token != token {
			return fmt.Errorf("session %s: reclaimed %d files, want the guest RAM", name, len(files))
		}
		ramf = files[0].File
	}
	size, _ := strconv.ParseInt(info.Labels["size"], 10, 64)
	got := make([]byte, size+1)
	n, err := io.ReadFull(io.NewSectionReader(ramf, 0, size+1), got)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	got = got[:n]
	if int64(n) != size {
		return fmt.Errorf("session %s: %d bytes came back, %d were preserved", name, n, size)
	}
	want := make([]byte, size)
	fill(want, seed)
	for i := range want {
		if got[i] != want[i] {
			return fmt.Errorf("session %s: byte %d differs: got %#x, preserved %#x", name, i, got[i], want[i])
		}
	}
	sum := sha256.Sum256(got)
	if hex.EncodeToString(sum[:]) != info.Labels["sha256"] {
		return fmt.Errorf("session %s: sha256 %x, recorded %s", name, sum, info.Labels["sha256"])
	}
	fmt.Printf("guestram: %s: %d MiB of guest RAM %s, byte-exact (sha256 %s…)%s\n", name, size>>20, how,
		hex.EncodeToString(sum[:8]), map[bool]string{true: ", session finished"}[finish])
	return nil
}
