package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/luod/luod/pkg/client"
	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/metrics"
	"github.com/luod/luod/pkg/metrics/exporter"
	"github.com/luod/luod/pkg/proto"
)

// fakeExporterEnv, when set to a directory, makes this test binary act as
// luod's exporter (TestMain): see fakeExporter.
const fakeExporterEnv = "LUOD_TEST_FAKE_EXPORTER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(fakeExporterEnv); dir != "" {
		os.Exit(fakeExporter(dir))
	}
	os.Exit(m.Run())
}

// fakeExporter is what luod-exporter does with what luod passes: on the
// connection to luod (fd 3) it asks "metrics" once and writes the answer
// to dir/metrics-PID.json. The first one started (no dir/crashed yet) then
// exits with status 3, as a crash; the others close the scrape luod
// accepted (fd 5), as if answered, and wait until the connection to luod
// ends (luod gone) or SIGTERM.
func fakeExporter(dir string) int {
	pc, err := proto.FileConn(os.NewFile(3, "luod"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake exporter:", err)
		return 1
	}
	c := client.New(pc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.Metrics(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake exporter:", err)
		return 1
	}
	// Anything else is refused on this connection, though it is root's.
	if _, err := c.Sessions(ctx); err != nil {
		s.Events.Errors["fake-exporter-refused: "+err.Error()] = 1
	}
	b, _ := json.Marshal(s)
	os.WriteFile(filepath.Join(dir, fmt.Sprintf("metrics-%d.json.tmp", os.Getpid())), b, 0o644)
	os.Rename(filepath.Join(dir, fmt.Sprintf("metrics-%d.json.tmp", os.Getpid())), filepath.Join(dir, fmt.Sprintf("metrics-%d.json", os.Getpid())))
	if _, err := os.Stat(filepath.Join(dir, "crashed")); os.IsNotExist(err) {
		os.WriteFile(filepath.Join(dir, "crashed"), nil, 0o644)
		return 3
	}
	os.NewFile(5, "scrape").Close()
	for range c.Events() {
	}
	return 0
}

// TestMetricsFollowState: the "metrics" operation reports luod's state
// and events, and the exporter's collector turns them into the metrics
// docs/metrics.md lists.
func TestMetricsFollowState(t *testing.T) {
	dir := t.TempDir()
	h := boot(t, dir, ioctltest.New(), false, nil)
	c := h.dial()
	if _, err := c.CreateSession(ctx(t), "vm-m", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Preserve(ctx(t), "vm-m", []client.FileToPreserve{{File: memfd(t, make([]byte, 4096)), Token: 1}}); err != nil {
		t.Fatal(err)
	}
	c.Upgrade(ctx(t), proto.UpgradeArgs{}, nil) // no kernel: an error by op

	reg := prometheus.NewRegistry()
	col, err := exporter.NewCollector(func() (metrics.Snapshot, error) {
		s, err := c.Metrics(ctx(t))
		if err != nil {
			return metrics.Snapshot{}, err
		}
		return *s, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(col)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"luod_up", nil, 1},
		{"luod_boot_continuity", map[string]string{"continuity": "fresh"}, 1},
		{"luod_boot_continuity", map[string]string{"continuity": "ok"}, 0},
		{"luod_sessions", map[string]string{"state": "open"}, 1},
		{"luod_preserved_bytes", nil, 4096},
		{"luod_clients_connected", nil, 1},
		{"luod_errors_total", map[string]string{"op": "upgrade"}, 1},
		{"luod_upgrades_total", map[string]string{"result": "aborted"}, 0},
	} {
		if got, ok := sample(t, reg, tc.name, tc.labels); !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
	s, err := c.Metrics(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Build.Version == "" || s.Build.GoVersion == "" || s.Events.RecoverySeconds <= 0 {
		t.Errorf("build %+v, recovery %v s: want a version, a Go version and the recovery time", s.Build, s.Events.RecoverySeconds)
	}
}

// TestExporterProcess: once READY luod listens on the metrics address and
// starts its exporter at the first connection, not before, with a
// connection of its own, which is an admin's and not counted as a client;
// starts it again when it exits and a scrape waits; and stops it when
// luod stops.
func TestExporterProcess(t *testing.T) {
	out := t.TempDir()
	t.Setenv(fakeExporterEnv, out)
	h := boot(t, t.TempDir(), ioctltest.New(), false, func(c *Config) {
		c.MetricsAddress = "127.0.0.1:0"
		c.Exporter = []string{os.Args[0], "-test.run=^$"}
	})
	addr := metricsAddress(t, h)
	time.Sleep(300 * time.Millisecond)
	if files, _ := filepath.Glob(filepath.Join(out, "metrics-*.json")); len(files) > 0 || strings.Contains(h.logText(), "metrics exporter started") {
		t.Fatalf("an exporter started before anyone scraped (%v)", files)
	}

	// A scrape starts the first exporter, which answers, then "crashes";
	// the scrape's connection ends with it. The next scrape starts a
	// second one, after a second.
	for i := 1; i <= 2; i++ {
		scrape, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("scrape %d: %v\n%s", i, err, h.logText())
		}
		scrape.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := scrape.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Errorf("scrape %d: %v, want EOF (its exporter closed it)", i, err)
		}
		scrape.Close()
		waitSnapshots(t, out, i)
	}
	snaps := waitSnapshots(t, out, 2)
	first, second := snaps[0], snaps[1]
	if first.s.ConnectedClients != 0 {
		t.Errorf("first exporter saw %d connected clients, want 0 (its own connection is not a client's)", first.s.ConnectedClients)
	}
	if first.s.Continuity != proto.ContinuityFresh {
		t.Errorf("first exporter saw continuity %q, want %q", first.s.Continuity, proto.ContinuityFresh)
	}
	refused := false
	for op := range first.s.Events.Errors {
		refused = refused || strings.Contains(op, "fake-exporter-refused: ") && strings.Contains(op, string(proto.CodePermissionDenied))
	}
	if !refused {
		t.Errorf("sessions on the exporter's connection was not refused with %s: %v", proto.CodePermissionDenied, first.s.Events.Errors)
	}
	if got := second.s.Events.Errors["exporter"]; got != 1 {
		t.Errorf("errors{op=exporter} = %d after one exporter exit, want 1", got)
	}
	if !strings.Contains(h.logText(), "metrics exporter exited; starting it again at the next scrape") {
		t.Errorf("the exporter's exit was not logged:\n%s", h.logText())
	}

	h.stop()
	// luod stopped and waited for it: the second exporter is gone (reaped).
	if err := syscall.Kill(second.pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("exporter %d still there after luod stopped: kill(0) = %v", second.pid, err)
	}
}

type exporterSnapshot struct {
	pid int
	s   metrics.Snapshot
}

// waitSnapshots waits for n answers written by fake exporters in dir, in
// the order they were written.
func waitSnapshots(t *testing.T, dir string, n int) []exporterSnapshot {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(dir, "metrics-*.json"))
		if len(files) >= n {
			var out []exporterSnapshot
			var mtimes []time.Time
			for _, f := range files {
				var e exporterSnapshot
				fmt.Sscanf(filepath.Base(f), "metrics-%d.json", &e.pid)
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(b, &e.s); err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				fi, _ := os.Stat(f)
				out, mtimes = append(out, e), append(mtimes, fi.ModTime())
			}
			if mtimes[0].After(mtimes[len(mtimes)-1]) {
				out[0], out[len(out)-1] = out[len(out)-1], out[0]
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d exporter answers after 20 s, want %d", len(files), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sample finds one gauge or counter value in what reg exposes.
func sample(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// TestExporterDiesEarly: an exporter that exits before it takes the
// listening socket over (a failed exec, a bad flag) must not leave luod's
// listener blocking: luod stops at once, without another scrape.
func TestExporterDiesEarly(t *testing.T) {
	h := boot(t, t.TempDir(), ioctltest.New(), false, func(c *Config) {
		c.MetricsAddress = "127.0.0.1:0"
		c.Exporter = []string{"/bin/false"}
	})
	addr := metricsAddress(t, h)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(h.logText(), "metrics exporter exited"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the exporter's exit was not logged:\n%s", h.logText())
		}
	}
	time.Sleep(1500 * time.Millisecond) // past the backoff: luod accepts again
	stopped := make(chan struct{})
	go func() { h.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		// A scrape releases the blocked accept, so that the test ends.
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
		}
		<-stopped
		t.Fatal("luod did not stop within 5 s after its exporter died early: its listener blocks")
	}
}

// metricsAddress is where luod listens for metrics, from its log.
func metricsAddress(t *testing.T, h *host) string {
	t.Helper()
	re := regexp.MustCompile(`metrics endpoint listening.* address=(\S+)`)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if m := re.FindStringSubmatch(h.logText()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("luod does not listen for metrics:\n%s", h.logText())
		}
	}
}
