package proto

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

func TestErrorIs(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", Errorf(CodeExists, "session %q already exists", "vm-42"))
	if !errors.Is(err, ErrExists) || !errors.Is(err, &Error{Code: CodeExists}) {
		t.Errorf("errors.Is(%v, exists) = false", err)
	}
	if errors.Is(err, ErrNotFound) {
		t.Errorf("errors.Is(%v, not_found) = true", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Message != `session "vm-42" already exists` {
		t.Errorf("errors.As: %+v", e)
	}
	if got, want := e.Error(), `luod: exists: session "vm-42" already exists`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestAsError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Code
	}{
		{Errorf(CodeBusy, "x"), CodeBusy},
		{fmt.Errorf("ctx: %w", Errorf(CodeLimit, "x")), CodeLimit},
		{fmt.Errorf("recv: %w: 70000 bytes", ErrMessageTooLarge), CodeBadRequest},
		{ErrTooManyFDs, CodeBadRequest},
		{errors.New("disk on fire"), CodeInternal},
	} {
		if got := AsError(tc.err); got.Code != tc.want {
			t.Errorf("AsError(%v) = %v, want code %s", tc.err, got, tc.want)
		}
	}
	if m := AsError(errors.New("secret detail")).Message; m != "internal error; see luod's log" {
		t.Errorf("internal error leaks its detail: %q", m)
	}
}

func TestResponseJSON(t *testing.T) {
	r, err := NewResponse(7, CreateSessionResult{Name: "vm-42"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(r)
	if want := `{"v":1,"id":7,"ok":true,"result":{"name":"vm-42"}}`; string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
	b, _ = json.Marshal(ErrorResponse(7, Errorf(CodeExists, "session %q already exists", "vm-42")))
	if want := `{"v":1,"id":7,"ok":false,"error":{"code":"exists","message":"session \"vm-42\" already exists"}}`; string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
	ev, _ := NewEvent(EventPrepare, PrepareEvent{Upgrade: "u-3", DeadlineMS: 30000})
	b, _ = json.Marshal(ev)
	if want := `{"v":1,"id":0,"event":"prepare","data":{"upgrade":"u-3","deadline_ms":30000}}`; string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
}
