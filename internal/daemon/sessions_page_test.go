//go:build linux

package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/luod/luod/pkg/ioctl/ioctltest"
	"github.com/luod/luod/pkg/proto"
	"github.com/luod/luod/pkg/session"
)

// TestSessionsPaged: 1000 sessions do not fit one message; the listing
// comes in pages that each fit, and the client joins them, every session
// once and in name order.
func TestSessionsPaged(t *testing.T) {
	h := boot(t, t.TempDir(), ioctltest.New(), false, quiet)
	c := h.dial()
	const n = 1000
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("vm-%04d", i)
		labels := map[string]string{"vm": want[i], "host": strings.Repeat("h", 40)}
		if _, err := c.CreateSession(ctx(t), want[i], labels); err != nil {
			t.Fatal(err)
		}
	}
	for name, list := range map[string]func() ([]proto.SessionInfo, error){
		"sessions":      func() ([]proto.SessionInfo, error) { return c.Sessions(ctx(t)) },
		"list_sessions": func() ([]proto.SessionInfo, error) { return c.ListSessions(ctx(t)) },
	} {
		ss, err := list()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := make([]string, len(ss))
		for i, s := range ss {
			got[i] = s.Name
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s lists %d sessions (first %v), want the %d created in order", name, len(got), got[:min(3, len(got))], n)
		}
	}

	// The first page is as full as one message allows, and says more follow.
	first, err := c.SessionsPage(ctx(t), proto.OpSessions, proto.SessionsArgs{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(first)
	if len(first.Sessions) == 0 || len(first.Sessions) == n || first.Next != first.Sessions[len(first.Sessions)-1].Name ||
		len(b) > proto.MaxMessageSize || len(b) < proto.MaxMessageSize/2 {
		t.Fatalf("first page: %d sessions, next %q, %d bytes", len(first.Sessions), first.Next, len(b))
	}
	// After and Limit pick any page; the last one has no Next.
	p, err := c.SessionsPage(ctx(t), proto.OpSessions, proto.SessionsArgs{After: "vm-0005", Limit: 3})
	if err != nil || len(p.Sessions) != 3 || p.Sessions[0].Name != "vm-0006" || p.Next != "vm-0008" {
		t.Fatalf("page after vm-0005 of 3 = %+v, %v", p, err)
	}
	p, err = c.SessionsPage(ctx(t), proto.OpSessions, proto.SessionsArgs{After: "vm-0997", Limit: 2})
	if err != nil || len(p.Sessions) != 2 || p.Next != "" {
		t.Fatalf("last page = %+v, %v", p, err)
	}
	// A name that is not there still places the page.
	p, err = c.SessionsPage(ctx(t), proto.OpListSessions, proto.SessionsArgs{After: "vm-0010x", Limit: 1})
	if err != nil || len(p.Sessions) != 1 || p.Sessions[0].Name != "vm-0011" {
		t.Fatalf("page after vm-0010x = %+v, %v", p, err)
	}
	p, err = c.SessionsPage(ctx(t), proto.OpSessions, proto.SessionsArgs{After: "zz"})
	if err != nil || len(p.Sessions) != 0 || p.Next != "" {
		t.Fatalf("page after the end = %+v, %v", p, err)
	}
	var pe *proto.Error
	if _, err := c.SessionsPage(ctx(t), proto.OpSessions, proto.SessionsArgs{Limit: -1}); !errors.As(err, &pe) || pe.Code != proto.CodeBadRequest {
		t.Fatalf("negative limit = %v, want bad_request", err)
	}
}

// TestSessionsPageTooLarge: a session that alone overflows a message is a
// limit error naming it, not a page that cannot be sent.
func TestSessionsPageTooLarge(t *testing.T) {
	big := session.Session{Name: "vm-big", State: session.StateOpen, Files: make([]session.File, 4000)}
	for i := range big.Files {
		big.Files[i] = session.File{Token: uint64(i + 1), Label: fmt.Sprintf("guest-ram-%d", i), Size: 1 << 30}
	}
	small := session.Session{Name: "vm-a", State: session.StateOpen}
	res, err := sessionsPage([]session.Session{small, big}, proto.SessionsArgs{})
	if err != nil || len(res.Sessions) != 1 || res.Next != "vm-a" {
		t.Fatalf("page before the big session = %+v, %v", res, err)
	}
	_, err = sessionsPage([]session.Session{small, big}, proto.SessionsArgs{After: "vm-a"})
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeLimit || !strings.Contains(pe.Message, "vm-big") {
		t.Fatalf("page of the big session = %v, want limit naming it", err)
	}
}
