package proto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	req, perr := DecodeRequest([]byte(` {"v": 1, "id": 7, "op": "create_session", "args": {"name": "vm-42"}} `))
	if perr != nil {
		t.Fatal(perr)
	}
	if req.V != 1 || req.ID != 7 || req.Op != OpCreateSession || string(req.Args) != `{"name": "vm-42"}` {
		t.Errorf("got %+v", req)
	}
	var args CreateSessionArgs
	if perr := req.DecodeArgs(&args); perr != nil || args.Name != "vm-42" {
		t.Errorf("DecodeArgs: %+v, %v", args, perr)
	}

	for _, in := range []string{
		`{"v":1,"id":1,"op":"hello"}`,
		`{"v":1,"id":1,"op":"hello","args":null}`,
		`{"op":"hello","id":18446744073709551615,"v":1,"args":{}}`,
	} {
		if _, perr := DecodeRequest([]byte(in)); perr != nil {
			t.Errorf("DecodeRequest(%s): %v", in, perr)
		}
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		in     string
		code   Code
		id     uint64
		substr string
	}{
		{``, CodeBadRequest, 0, "empty"},
		{`  `, CodeBadRequest, 0, "empty"},
		{`{"v":1,"id":3,`, CodeBadRequest, 0, "ends early"},
		{`{"v":1,"id":3 "op":"hello"}`, CodeBadRequest, 0, "offset 14"},
		{`[1,2]`, CodeBadRequest, 0, "is an array, want a JSON object"},
		{`"hello"`, CodeBadRequest, 0, "is a string"},
		{`null`, CodeBadRequest, 0, "is null"},
		{`{"v":1,"id":3,"op":"hello"} {}`, CodeBadRequest, 0, "after its closing brace at offset 27"},
		{`{"v":1,"id":3,"op":"hello"}x`, CodeBadRequest, 0, "after its closing brace"},
		{`{"v":1,"id":3,"id":4,"op":"hello"}`, CodeBadRequest, 0, `field "id" twice`},
		{`{"id":3,"op":"hello"}`, CodeBadRequest, 3, `no "v"`},
		{`{"v":"1","id":3,"op":"hello"}`, CodeBadRequest, 3, `"v" is a string`},
		{`{"v":2,"id":3,"op":"hello","new":true}`, CodeUnsupportedVersion, 3, "version 2 is not supported"},
		{`{"v":0,"id":3,"op":"hello"}`, CodeUnsupportedVersion, 3, "version 0"},
		{`{"v":1,"id":3,"op":"hello","arg":{}}`, CodeBadRequest, 3, `unknown field "arg"`},
		{`{"v":1,"id":3,"op":"hello","ok":true}`, CodeBadRequest, 3, `unknown field "ok"`},
		{`{"v":1,"op":"hello"}`, CodeBadRequest, 0, `no "id"`},
		{`{"v":1,"id":0,"op":"hello"}`, CodeBadRequest, 0, `"id" is 0`},
		{`{"v":1,"id":-1,"op":"hello"}`, CodeBadRequest, 0, `"id" is -1`},
		{`{"v":1,"id":1.5,"op":"hello"}`, CodeBadRequest, 0, `"id" is 1.5`},
		{`{"v":1,"id":18446744073709551616,"op":"hello"}`, CodeBadRequest, 0, "18446744073709551616"},
		{`{"v":1,"id":"3","op":"hello"}`, CodeBadRequest, 0, `"id" is a string`},
		{`{"v":1,"id":3}`, CodeBadRequest, 3, `no "op"`},
		{`{"v":1,"id":3,"op":7}`, CodeBadRequest, 3, `"op" is the number 7`},
		{`{"v":1,"id":3,"op":""}`, CodeBadRequest, 3, `"op" is empty`},
		{`{"v":1,"id":3,"op":"reboot_now"}`, CodeUnknownOp, 3, `"reboot_now"`},
		{`{"v":1,"id":3,"op":"hello","args":[]}`, CodeBadRequest, 3, `"args" of hello is an array`},
		{`{"v":1,"id":3,"op":"hello","args":"x"}`, CodeBadRequest, 3, `is a string`},
		{"{\"v\":1,\"id\":3,\"op\":\"hello\xff\"}", CodeUnknownOp, 3, "hello"},
		{`{"v":1,"id":3,"op":"hello"` + strings.Repeat(" ", MaxMessageSize) + `}`, CodeBadRequest, 0, "at most 65536"},
	} {
		req, perr := DecodeRequest([]byte(tc.in))
		if perr == nil {
			t.Errorf("DecodeRequest(%.60q) = %+v, want error", tc.in, req)
			continue
		}
		if req == nil {
			t.Errorf("DecodeRequest(%.60q) returned a nil request", tc.in)
			continue
		}
		if perr.Code != tc.code || req.ID != tc.id || !strings.Contains(perr.Message, tc.substr) {
			t.Errorf("DecodeRequest(%.60q) = id %d, %v; want id %d, code %s, message containing %q", tc.in, req.ID, perr, tc.id, tc.code, tc.substr)
		}
	}
}

func TestDecodeArgs(t *testing.T) {
	decode := func(op, args string, v any) *Error {
		req, perr := DecodeRequest([]byte(`{"v":1,"id":1,"op":"` + op + `","args":` + args + `}`))
		if perr != nil {
			t.Fatalf("DecodeRequest: %v", perr)
		}
		return req.DecodeArgs(v)
	}
	var pa PreserveArgs
	if perr := decode(OpPreserve, `{"session":"s","files":[{"token":18446744073709551615,"label":"ram"},{"token":1}]}`, &pa); perr != nil {
		t.Fatal(perr)
	}
	want := PreserveArgs{Session: "s", Files: []FileSpec{{Token: math.MaxUint64, Label: "ram"}, {Token: 1}}}
	if !reflect.DeepEqual(pa, want) {
		t.Errorf("got %+v, want %+v", pa, want)
	}

	for _, tc := range []struct {
		op, args string
		v        any
		substr   string
	}{
		{OpCreateSession, `{"nmae":"x"}`, &CreateSessionArgs{}, `no argument "nmae" (known: name, labels, files)`},
		{OpCreateSession, `{"Name":"x"}`, &CreateSessionArgs{}, `no argument "Name"`},
		{OpCreateSession, `{"name":"x","name":"y"}`, &CreateSessionArgs{}, `field "name" twice`},
		{OpCreateSession, `{"name":5}`, &CreateSessionArgs{}, `argument "name" of create_session: got number, want string`},
		{OpPreserve, `{"session":"s","files":[{"token":-1}]}`, &PreserveArgs{}, `"files.token"`},
		{OpPreserve, `{"session":"s","files":[{"token":18446744073709551616}]}`, &PreserveArgs{}, `"files.token"`},
		{OpPreserve, `{"session":"s","files":[{"token":1,"lable":"x"}]}`, &PreserveArgs{}, `unknown field "lable"`},
		{OpHello, `{"x":1}`, &struct{}{}, `hello takes no args`},
		{OpLoad, `{"cmdline":"a","initrd":true,"config":1}`, &LoadArgs{}, `argument "config"`},
	} {
		perr := decode(tc.op, tc.args, tc.v)
		if perr == nil || perr.Code != CodeBadRequest || !strings.Contains(perr.Message, tc.substr) {
			t.Errorf("DecodeArgs(%s, %s) = %v, want bad_request containing %q", tc.op, tc.args, perr, tc.substr)
		}
	}
}

// Tokens are uint64 and must survive JSON both ways exactly, above 2^53.
func TestTokenRoundTrip(t *testing.T) {
	for _, tok := range []uint64{0, 1, 1<<53 + 1, math.MaxUint64 - 1, math.MaxUint64} {
		in := ReclaimResult{Files: []FileInfo{{Token: tok, Label: "l", Size: 4096}}}
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		var out ReclaimResult
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		if out.Files[0].Token != tok {
			t.Errorf("token %d came back as %d (%s)", tok, out.Files[0].Token, b)
		}
	}
}

func TestDecodeServerMessage(t *testing.T) {
	resp, ev, err := DecodeServerMessage([]byte(`{"v":1,"id":7,"ok":false,"error":{"code":"exists","message":"m"},"future":1}`))
	if err != nil || ev != nil || resp.ID != 7 || resp.OK || resp.Error.Code != CodeExists {
		t.Errorf("got %+v, %+v, %v", resp, ev, err)
	}
	resp, ev, err = DecodeServerMessage([]byte(`{"v":1,"id":0,"event":"progress","data":{"upgrade":"u","phase":"barrier"}}`))
	if err != nil || resp != nil || ev.Event != EventProgress {
		t.Fatalf("got %+v, %+v, %v", resp, ev, err)
	}
	var pe ProgressEvent
	if err := ev.Decode(&pe); err != nil || pe.Phase != PhaseBarrier {
		t.Errorf("Decode: %+v, %v", pe, err)
	}
	for _, in := range []string{
		``, `[]`, `{"id":1,"ok":true}`, `{"v":2,"id":1,"ok":true}`, `{"v":1,"ok":true}`,
		`{"v":1,"id":1,"ok":false}`, `{"v":1,"id":1,"ok":true,"error":{"code":"x"}}`,
		`{"v":1,"id":3,"event":"prepare"}`,
	} {
		if _, _, err := DecodeServerMessage([]byte(in)); err == nil {
			t.Errorf("DecodeServerMessage(%s) = nil error", in)
		}
	}
}

// FuzzDecodeRequest checks that DecodeRequest never panics, always returns
// a request, and that what it accepts survives encode → decode unchanged.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":7,"op":"create_session","args":{"name":"vm-42"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, perr := DecodeRequest(b)
		if req == nil {
			t.Fatal("nil request")
		}
		if perr != nil {
			if perr.Code == "" || perr.Message == "" {
				t.Fatalf("error without code or message: %+v", perr)
			}
			return
		}
		if req.V != Version || req.ID == 0 || !KnownOp(req.Op) {
			t.Fatalf("accepted a bad envelope: %+v", req)
		}
		var args map[string]any
		_ = req.DecodeArgs(&args)
		_ = req.DecodeArgs(&PreserveArgs{})
		out, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", req, err)
		}
		again, perr := DecodeRequest(out)
		if perr != nil {
			t.Fatalf("re-decode %s: %v", out, perr)
		}
		if again.ID != req.ID || again.Op != req.Op {
			t.Fatalf("round trip changed %+v into %+v", req, again)
		}
	})
}

// FuzzMembers checks members' fast way against its checked one: whatever
// splitObject accepts, membersChecked accepts too, with the same members
// in the same order; neither panics.
func FuzzMembers(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"v":1,"id":7,"op":"create_session","args":{"name":"vm-42"}}`,
		`{"a":"x\"}","b":[1,{"c":"]"}],"d":-1.5e3,"e":true,"f":null}`,
		"{\"a\"\t:\n1 ,\r\"b\":{}}", `{"a":1,"a":2}`, `{"\u0061":1}`, `{"é":1}`, `{"a":"\\"}`,
		`{"a":1}{}`, `[1]`, `"x"`, `{"a":`, `{"a":1,}`, ``, `{"a":"\xff"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checked, perr := membersChecked(b, "request")
		fast, ok := splitObject(b, false)
		if json.Valid(b) {
			// Known valid, the same without the check.
			if again, aok := splitObject(b, true); aok != ok || len(again) != len(fast) {
				t.Fatalf("%q: splitObject = %d members, %v checked; %d, %v known valid", b, len(fast), ok, len(again), aok)
			}
		}
		if !ok {
			return
		}
		if perr != nil {
			t.Fatalf("splitObject accepted %q (%d members) where the checked way says %v", b, len(fast), perr)
		}
		if len(fast) != len(checked) {
			t.Fatalf("%q: %d members the fast way, %d the checked way", b, len(fast), len(checked))
		}
		for i := range fast {
			if fast[i].key != checked[i].key || !bytes.Equal(fast[i].val, checked[i].val) {
				t.Fatalf("%q: member %d is %q: %s the fast way, %q: %s the checked way",
					b, i, fast[i].key, fast[i].val, checked[i].key, checked[i].val)
			}
		}
	})
}

// TestSplitObjectTakesWellFormedRequests: the fast way is the one a
// request as pkg/client writes it takes, envelope and args; a key given
// twice, escaped or not ASCII, or too many members, go the checked way.
func TestSplitObjectTakesWellFormedRequests(t *testing.T) {
	raw := bigCreateSessions(t)
	ms, ok := splitObject(raw, false)
	if !ok || len(ms) != 4 {
		t.Fatalf("splitObject(create_sessions request) = %d members, %v; want 4, true", len(ms), ok)
	}
	for _, m := range ms {
		if m.key == "args" {
			if args, ok := splitObject(m.val, true); !ok || len(args) != 1 || args[0].key != "sessions" {
				t.Fatalf("splitObject(args) = %+v, %v", args, ok)
			}
		}
	}
	many := "{"
	for i := range maxSplitMembers + 1 {
		many += fmt.Sprintf(`"k%d":%d,`, i, i)
	}
	many = strings.TrimSuffix(many, ",") + "}"
	for _, in := range []string{`{"a":1,"a":2}`, `{"\u0061":1}`, `{"é":1}`, many, `{"a":1} x`} {
		if _, ok := splitObject([]byte(in), false); ok {
			t.Errorf("splitObject(%q) took the fast way", in)
		}
	}
	if ms, perr := members([]byte(many), "request", false); perr != nil || len(ms) != maxSplitMembers+1 {
		t.Errorf("members of %d keys = %d, %v", maxSplitMembers+1, len(ms), perr)
	}
	if _, perr := members([]byte(`{"a":1,"a":2}`), "request", false); perr == nil || !strings.Contains(perr.Message, `field "a" twice`) {
		t.Errorf("members with a key twice = %v, want it named", perr)
	}
}

// bigCreateSessions is a create_sessions request as pkg/client writes one
// for 253 VMs of one memfd each: the largest kind luod decodes.
func bigCreateSessions(tb testing.TB) []byte {
	tb.Helper()
	args := CreateSessionsArgs{}
	for i := range MaxFDs {
		name := fmt.Sprintf("vm-%04d", i)
		args.Sessions = append(args.Sessions, SessionToCreate{Name: name, Labels: map[string]string{"vm": name},
			Files: []FileSpec{{Token: 1, Label: "ram"}}})
	}
	req, err := NewRequest(7, OpCreateSessions, args)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// BenchmarkDecodeCreateSessions is luod's decoding of one create_sessions
// request of 253 sessions: the envelope, then the args.
func BenchmarkDecodeCreateSessions(b *testing.B) {
	raw := bigCreateSessions(b)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		req, perr := DecodeRequest(raw)
		if perr != nil {
			b.Fatal(perr)
		}
		var args CreateSessionsArgs
		if perr := req.DecodeArgs(&args); perr != nil {
			b.Fatal(perr)
		}
		if len(args.Sessions) != MaxFDs {
			b.Fatalf("%d sessions decoded, want %d", len(args.Sessions), MaxFDs)
		}
	}
}
