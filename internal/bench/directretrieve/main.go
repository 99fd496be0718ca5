//go:build linux

// Command directretrieve is the direct baseline of the bench's retrieve
// after a live update: a minimal program that makes the ioctls itself,
// the kernel selftests' way (pkg/ioctl used raw), and nothing else.
//
//	directretrieve PREFIX SESSIONS FILES
//
// It opens /dev/liveupdate and, for each session PREFIX0000,
// PREFIX0001, …, makes RETRIEVE_SESSION, RETRIEVE_FD of tokens 1..FILES
// and FINISH; then it closes the device and sends READY=1 to
// $NOTIFY_SOCKET, as luod does once it has recovered. The bench starts it
// the way it starts luod and times both alike, from exec to READY=1.
// SESSIONS 0 measures the program's own start: the device opened and
// closed, nothing retrieved.
//
// After READY=1 it hands every retrieved file to the bench over the same
// socket (one datagram a session, "BENCH-FDS=i" with its FILES fds in
// token order), so that the bench checks each byte-exact: a fast wrong
// answer cannot pass. LOOP_NS= on the READY=1 line is the loop alone,
// from the first RETRIEVE_SESSION to the last session's close.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/luod/luod/pkg/ioctl"
)

func main() {
	if len(os.Args) != 4 {
		fail(fmt.Errorf("usage: directretrieve PREFIX SESSIONS FILES"))
	}
	prefix := os.Args[1]
	n, err1 := strconv.Atoi(os.Args[2])
	nf, err2 := strconv.Atoi(os.Args[3])
	if err1 != nil || err2 != nil || n < 0 || nf < 0 {
		fail(fmt.Errorf("SESSIONS and FILES: want counts, got %q %q", os.Args[2], os.Args[3]))
	}
	dev, err := ioctl.Open(ioctl.DevicePath)
	if err != nil {
		fail(err)
	}
	files := make([]*os.File, 0, n*nf)
	t0 := time.Now()
	for i := range n {
		s, err := dev.RetrieveSession(fmt.Sprintf("%s%04d", prefix, i))
		if err != nil {
			fail(err)
		}
		for j := range nf {
			f, err := s.RetrieveFD(uint64(j + 1))
			if err != nil {
				fail(err)
			}
			files = append(files, f)
		}
		if err := s.Finish(); err != nil {
			fail(err)
		}
		s.Close()
	}
	loop := time.Since(t0)
	dev.Close()

	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail(err)
	}
	to := &unix.SockaddrUnix{Name: os.Getenv("NOTIFY_SOCKET")}
	if err := unix.Sendto(sock, fmt.Appendf(nil, "READY=1\nLOOP_NS=%d", loop.Nanoseconds()), 0, to); err != nil {
		fail(err)
	}
	fds := make([]int, nf)
	for i := range n {
		for j := range nf {
			fds[j] = int(files[i*nf+j].Fd())
		}
		if err := unix.Sendmsg(sock, fmt.Appendf(nil, "BENCH-FDS=%d", i), unix.UnixRights(fds...), to, 0); err != nil {
			fail(err)
		}
	}
	if err := unix.Sendto(sock, []byte("BENCH-DONE=1"), 0, to); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "directretrieve:", err)
	os.Exit(1)
}
