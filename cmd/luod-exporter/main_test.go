package main

import (
	"io"
	"net"
	"testing"
)

// TestListenerFromFD: the listener luod passes serves first the scrape
// luod accepted, then accepts the next ones itself.
func TestListenerFromFD(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	first, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	lf, _ := ln.(*net.TCPListener).File()
	cf, _ := accepted.(*net.TCPConn).File()
	accepted.Close() // luod closes its copy once the exporter runs

	l, err := listenerFromFD(int(lf.Fd()), int(cf.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("first"))
	c.Close()
	if b, _ := io.ReadAll(first); string(b) != "first" {
		t.Errorf("the scrape luod accepted read %q, want what the first Accept's connection wrote", b)
	}

	second, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	c, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("second"))
	c.Close()
	if b, _ := io.ReadAll(second); string(b) != "second" {
		t.Errorf("the next scrape read %q", b)
	}

	if _, err := listenerFromFD(-5, -1); err == nil {
		t.Error("a bad fd was accepted")
	}
}
