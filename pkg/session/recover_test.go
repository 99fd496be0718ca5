//go:build linux

package session

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRecover(t *testing.T) {
	for _, tc := range []struct {
		name string
		// run sets up the previous boot on h and returns the booted next
		// one, its RecoverInput, and the sessions expected back.
		run       func(t *testing.T, h *host) (*host, RecoverInput)
		want      Continuity
		expected  uint64
		got       uint64
		recovered []string
		lost      []string
		errText   string
	}{{
		name: "ok",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			h2, m := h.kexec(t.TempDir(), 1, Config{})
			return h2, h2.handover(m)
		},
		want: ContinuityOK, expected: 1, got: 1, recovered: []string{"vm-a", "vm-b"},
	}, {
		name: "second update",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			h2, _ := h.kexec("", 1, Config{})
			if _, err := h2.c.Recover(h2.handover(nil)); err != nil {
				t.Fatal(err)
			}
			for _, who := range []Caller{alice, bob} {
				for _, s := range h2.c.List(who) {
					if err := h2.c.Delete(who, s.Name); err != nil {
						t.Fatal(err)
					}
				}
			}
			mustCreate(t, h2.c, alice, "vm-a")
			mustCreate(t, h2.c, bob, "vm-b")
			h3, _ := h2.kexec("", 2, Config{})
			return h3, h3.handover(nil)
		},
		want: ContinuityOK, expected: 2, got: 2, recovered: []string{"vm-a", "vm-b"},
	}, {
		name: "mismatch",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			h2, _ := h.kexec("", 5, Config{})
			return h2, h2.handover(nil)
		},
		want: ContinuityMismatch, expected: 5, got: 1, recovered: []string{"vm-a", "vm-b"},
	}, {
		name: "cold boot",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			u := h.c.Freeze()
			defer u()
			w, err := h.c.WriteManifest(1)
			m := w.Manifest
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := saveFile(dir, m); err != nil {
				t.Fatal(err)
			}
			disk, err := LoadFile(dir)
			if err != nil {
				t.Fatal(err)
			}
			// A cold boot: a new machine, nothing handed over.
			h2 := newHost(t, Config{})
			return h2, RecoverInput{Disk: func() *Manifest { return disk }}
		},
		want: ContinuityColdBoot, expected: 1, got: 0, lost: []string{"vm-a", "vm-b"}, errText: "cold boot",
	}, {
		name: "fresh",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			return newHost(t, Config{}), RecoverInput{}
		},
		want: ContinuityFresh,
	}, {
		name: "fresh with empty disk manifest",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			h2 := newHost(t, Config{})
			return h2, RecoverInput{Disk: func() *Manifest { return h2.c.Manifest(3) }}
		},
		want: ContinuityFresh, expected: 3,
	}, {
		name: "no manifest",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			disk := h.c.Manifest(1)
			h2 := h.reboot(Config{}) // kexec without luod's manifest
			return h2, h2.handover(disk)
		},
		want: ContinuityNoManifest, expected: 1, got: 1, lost: []string{"vm-a", "vm-b"}, errText: `"luod" did not come over`,
	}, {
		name: "unreadable manifest",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			rs, err := h.dev.CreateSession(ReservedName)
			if err != nil {
				t.Fatal(err)
			}
			defer rs.Close()
			if err := rs.PreserveFD(int(memfd(t, []byte(`{"format":"luod-manifest-v9"}`)).Fd()), ManifestToken); err != nil {
				t.Fatal(err)
			}
			h2 := h.reboot(Config{})
			return h2, h2.handover(nil)
		},
		want: ContinuityNoManifest, got: 1, errText: `"luod-manifest-v9" is unknown`,
	}, {
		name: "manifest memfd lost",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			h2, _ := h.kexec("", 1, Config{})
			if err := h2.fake.FailRetrieve(ReservedName, ManifestToken, unix.EIO); err != nil {
				t.Fatal(err)
			}
			return h2, h2.handover(nil)
		},
		want: ContinuityNoManifest, got: 1, errText: "RETRIEVE_FD",
	}, {
		name: "session fails to retrieve",
		run: func(t *testing.T, h *host) (*host, RecoverInput) {
			h2, _ := h.kexec("", 1, Config{})
			// Someone else holding the device took vm-b first.
			s, err := h2.dev.RetrieveSession("vm-b")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return h2, h2.handover(nil)
		},
		want: ContinuityOK, expected: 1, got: 1, recovered: []string{"vm-a"}, lost: []string{"vm-b"}, errText: "EINVAL",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, Config{Release: "7.1.0"})
			mustCreate(t, h.c, alice, "vm-a")
			mustCreate(t, h.c, bob, "vm-b")
			if _, err := h.c.Preserve(alice, "vm-a", []PreserveFile{{FD: fdOf(memfd(t, []byte("a"))), Token: 1}}); err != nil {
				t.Fatal(err)
			}
			h2, in := tc.run(t, h)
			r, err := h2.c.Recover(in)
			if err != nil {
				t.Fatal(err)
			}
			var lost []string
			for _, l := range r.Lost {
				lost = append(lost, l.Name)
				want := map[string]uint32{"vm-a": alice.UID, "vm-b": bob.UID}[l.Name]
				if l.UID != want || !strings.Contains(l.Reason+r.ManifestError, tc.errText) {
					t.Errorf("lost %+v (manifest error %q), want uid %d and %q", l, r.ManifestError, want, tc.errText)
				}
			}
			if tc.errText != "" && len(tc.lost) == 0 && !strings.Contains(r.ManifestError, tc.errText) {
				t.Errorf("manifest error %q, want %q", r.ManifestError, tc.errText)
			}
			if r.Continuity != tc.want || r.Expected != tc.expected || r.Got != tc.got ||
				!slices.Equal(r.Recovered, nonNil(tc.recovered)) || !slices.Equal(lost, tc.lost) {
				t.Fatalf("report %+v\nwant %s expected %d got %d recovered %v lost %v", r, tc.want, tc.expected, tc.got, tc.recovered, tc.lost)
			}
			if len(r.Recovered) > 0 && r.PreviousRelease != "7.1.0" && tc.name != "second update" {
				t.Errorf("previous release %q", r.PreviousRelease)
			}
			if got := names(h2.c.List(admin)); !slices.Equal(got, tc.recovered) {
				t.Fatalf("custody holds %v", got)
			}
			for _, name := range r.Recovered {
				s, _ := h2.c.Get(admin, name)
				if s.State != StateIncoming || !s.Incoming {
					t.Errorf("%+v", s)
				}
			}
			if _, ok := h2.kernelSession(ReservedName); ok && tc.want != ContinuityFresh && tc.want != ContinuityColdBoot {
				t.Error("reserved session left in the kernel")
			}
			// Whatever happened, the custody works afterwards.
			mustCreate(t, h2.c, alice, "after")
		})
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// TestThousandSessions: 1000 sessions of 10 uids, each with a memfd,
// through a live update; lookups stay cheap.
func TestThousandSessions(t *testing.T) {
	if testing.Short() {
		t.Skip("1000 sessions")
	}
	const n = 1000
	h := newHost(t, Config{})
	c := h.c
	for i := range n {
		who := Caller{UID: uint32(1000 + i%10), GID: 100}
		name := fmt.Sprintf("vm-%04d", i)
		_, dup, err := c.Create(who, name, map[string]string{"i": fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		dup.Close()
		fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), name)
		f.WriteString(name)
		if _, err := c.Preserve(who, name, []PreserveFile{{FD: fdOf(f), Token: uint64(i), Label: "ram"}}); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if got := len(c.List(Caller{UID: 1003})); got != n/10 {
		t.Fatalf("uid 1003 lists %d", got)
	}
	if st := c.Snapshot(); st.Open != n {
		t.Fatalf("snapshot %+v", st)
	}
	h2, m := h.kexec("", 1, Config{})
	if len(m.Sessions) != n {
		t.Fatalf("manifest has %d sessions", len(m.Sessions))
	}
	r, err := h2.c.Recover(h2.handover(nil))
	if err != nil {
		t.Fatal(err)
	}
	if r.Continuity != ContinuityOK || len(r.Recovered) != n || len(r.Lost) != 0 {
		t.Fatalf("continuity %s, %d recovered, lost %v", r.Continuity, len(r.Recovered), r.Lost)
	}
	who := Caller{UID: 1000 + 777%10}
	rc, err := h2.c.Reclaim(who, "vm-0777", true)
	if err != nil {
		t.Fatal(err)
	}
	got := asFiles(rc.FDs)
	equalBytes(t, "vm-0777", readAll(t, got[0]), []byte("vm-0777"))
	closeAll(got)
	if got := len(h2.c.Overdue(t0.Add(2), 1)); got != n-1 {
		t.Fatalf("%d overdue", got)
	}
}

// TestPauseNote: what NotePause writes into the reserved session's pause
// page after the manifest crosses the kexec with it and is the next
// Report's LastPause, cut at its first NUL and kept to printable ASCII. An
// older luod's reserved session, with no page, gives no note and no
// warning; a page that fails to retrieve gives a warning and loses
// nothing.
func TestPauseNote(t *testing.T) {
	for _, tc := range []struct {
		name, note, want string
	}{
		{"carried", "upgrade=u-1 since_ready=2.5ms woke=700µs", "upgrade=u-1 since_ready=2.5ms woke=700µs"},
		{"cut at NUL", "since_ready=1ms\x00junk", "since_ready=1ms"},
		{"control bytes", "a\nb\x1b[31m\xff", "a?b?[31m?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, Config{})
			mustCreate(t, h.c, alice, "vm-a")
			if err := h.c.NotePause([]byte("x")); CodeOf(err) != CodeInternal {
				t.Fatalf("NotePause with no manifest written = %v, want internal", err)
			}
			h.c.Freeze()
			if _, err := h.c.WriteManifest(1); err != nil {
				t.Fatal(err)
			}
			if err := h.c.NotePause([]byte(tc.note)); err != nil {
				t.Fatal(err)
			}
			h2 := h.reboot(Config{})
			r, err := h2.c.Recover(h2.handover(nil))
			if err != nil {
				t.Fatal(err)
			}
			if r.LastPause != tc.want || len(r.Warnings) != 0 || r.Continuity != ContinuityOK {
				t.Fatalf("report %+v, want last pause %q and no warning", r, tc.want)
			}
		})
	}

	t.Run("older luod", func(t *testing.T) {
		h := newHost(t, Config{})
		mustCreate(t, h.c, alice, "vm-a")
		b, err := h.c.Manifest(1).Encode()
		if err != nil {
			t.Fatal(err)
		}
		f, err := sealedMemfd(b)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := h.dev.CreateSession(ReservedName)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		if err := rs.PreserveFD(int(f.Fd()), ManifestToken); err != nil {
			t.Fatal(err)
		}
		h2 := h.reboot(Config{})
		r, err := h2.c.Recover(h2.handover(nil))
		if err != nil {
			t.Fatal(err)
		}
		if r.LastPause != "" || len(r.Warnings) != 0 || r.Continuity != ContinuityOK || !slices.Equal(r.Recovered, []string{"vm-a"}) {
			t.Fatalf("report %+v, want vm-a recovered, no note, no warning", r)
		}
	})

	t.Run("page lost", func(t *testing.T) {
		h := newHost(t, Config{})
		mustCreate(t, h.c, alice, "vm-a")
		h2, _ := h.kexec("", 1, Config{})
		if err := h2.fake.FailRetrieve(ReservedName, PauseToken, unix.EIO); err != nil {
			t.Fatal(err)
		}
		r, err := h2.c.Recover(h2.handover(nil))
		if err != nil {
			t.Fatal(err)
		}
		if r.LastPause != "" || r.Continuity != ContinuityOK || !slices.Equal(r.Recovered, []string{"vm-a"}) ||
			len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "RETRIEVE_FD") {
			t.Fatalf("report %+v, want vm-a recovered and one RETRIEVE_FD warning", r)
		}
	})
}
