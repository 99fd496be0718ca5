// Package nice reads and sets the nice value of every thread of this
// process. On Linux nice is a thread's, not a process's: setpriority(2)
// with PRIO_PROCESS and a thread id changes that thread only, and a new
// thread inherits its creator's. A Go program has started threads before
// main and starts more as it runs, so a change must reach each.
package nice

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Get returns the calling thread's nice value. The raw getpriority(2)
// returns 20 - nice, so that no value is negative.
func Get() (int, error) {
	p, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return 0, fmt.Errorf("getpriority: %w", err)
	}
	return 20 - p, nil
}

// Set gives every thread of this process the nice value n; threads made
// later inherit it from whichever thread makes them. Lowering it (a
// higher priority) takes CAP_SYS_NICE or RLIMIT_NICE. A thread made while
// Set runs, by a thread not yet changed, would keep the old value, so
// Set goes over the threads again until a pass finds none new. A thread
// that exits meanwhile is passed over.
func Set(n int) error {
	done := map[int]bool{}
	var errs []error
	for pass := 0; pass < 16; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		fresh := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			done[tid], fresh = true, true
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("thread %d: %w", tid, err))
			}
		}
		if !fresh {
			break
		}
	}
	return errors.Join(errs...)
}

// Threads returns the nice value of each thread of this process by
// thread id, from /proc/self/task/TID/stat (its 19th field).
func Threads() (map[int]int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	out := make(map[int]int, len(tasks))
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid …: comm may hold spaces and parentheses.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 17 {
			return nil, fmt.Errorf("thread %d: short stat %q", tid, s)
		}
		n, err := strconv.Atoi(fields[19-3])
		if err != nil {
			return nil, fmt.Errorf("thread %d: nice field: %w", tid, err)
		}
		out[tid] = n
	}
	return out, nil
}
