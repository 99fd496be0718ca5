package exporter

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHandler(t *testing.T) {
	_, reg := newTest(t, busy)
	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s: %s", resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	for _, want := range []string{
		"# TYPE luod_boot_continuity gauge\n",
		`luod_boot_continuity{continuity="ok"} 1` + "\n",
		`luod_sessions{state="open"} 3` + "\n",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("body lacks %q", want)
		}
	}
}

func TestServeDisabled(t *testing.T) {
	_, reg := newTest(t, busy)
	done := make(chan error, 1)
	// ctx is never done: "" must return on its own.
	go func() { done <- Serve(context.Background(), "", "/metrics", reg) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal(`Serve("") did not return`)
	}
}

func TestServeErrors(t *testing.T) {
	_, reg := newTest(t, busy)
	if err := Serve(context.Background(), "127.0.0.1:0", "metrics", reg); err == nil {
		t.Error("a path without / was accepted")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := Serve(context.Background(), l.Addr().String(), "", reg); err == nil {
		t.Error("listening on a port in use did not fail")
	}
}

// TestServe serves at a path, then shuts down when ctx is done.
func TestServe(t *testing.T) {
	_, reg := newTest(t, busy)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, l, "/m", reg) }()

	url := "http://" + l.Addr().String()
	resp, err := http.Get(url + "/m")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "luod_build_info{") {
		t.Errorf("GET /m: %s\n%s", resp.Status, body)
	}
	if resp, err := http.Get(url + "/metrics"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /metrics: %v %v, want 404", resp, err)
	} else {
		resp.Body.Close()
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
	if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Error("still listening after shutdown")
	}
}

// TestServeCancel runs the exported Serve until its context ends.
func TestServeCancel(t *testing.T) {
	_, reg := newTest(t, busy)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, "127.0.0.1:0", "", reg) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}
