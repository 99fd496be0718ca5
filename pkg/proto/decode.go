package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// member is one "key": value of a JSON object.
type member struct {
	key string
	val json.RawMessage
}

// members splits the JSON object b into its members, in order. what names
// the object in errors ("request", "args"). Duplicate keys are refused:
// encoding/json would silently keep the last one.
//
// A well-formed request takes splitObject (valid: b is known to be valid
// JSON); anything else, and every error, the checked path
// (membersChecked), which walks b with encoding/json's tokenizer and names
// each problem: the two give the same members (FuzzMembers).
func members(b []byte, what string, valid bool) ([]member, *Error) {
	if ms, ok := splitObject(b, valid); ok {
		return ms, nil
	}
	return membersChecked(b, what)
}

// maxSplitMembers bounds splitObject's linear check for a key given twice;
// an object of more members goes the checked way, which keeps a set.
const maxSplitMembers = 16

// splitObject is members for b valid JSON (known valid, or json.Valid:
// one scan, nothing allocated), one object of at most maxSplitMembers members, no key twice
// and every key plain ASCII without escapes, as luod's own keys are: then
// the members are found by their delimiters alone, each value copied as
// it is written. It reports false for anything else, and never panics:
// every index is checked though validity makes each check true.
// encoding/json's tokenizer costs about a third of decoding a
// create_sessions request of 253 sessions, and it ran over the request
// twice (the envelope, then its args).
func splitObject(b []byte, valid bool) ([]member, bool) {
	if !valid && !json.Valid(b) {
		return nil, false
	}
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	var ms []member
	for i = skipSpace(b, i+1); i < len(b) && b[i] != '}'; i = skipSpace(b, i) {
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
		end := endOfValue(b, i)
		if end < 0 || b[i] != '"' || len(ms) == maxSplitMembers {
			return nil, false
		}
		key := b[i+1 : end-1]
		for _, c := range key {
			if c == '\\' || c >= 0x80 {
				return nil, false
			}
		}
		for _, m := range ms {
			if m.key == string(key) {
				return nil, false
			}
		}
		if i = skipSpace(b, end); i >= len(b) || b[i] != ':' {
			return nil, false
		}
		i = skipSpace(b, i+1)
		if end = endOfValue(b, i); end < 0 {
			return nil, false
		}
		ms = append(ms, member{string(key), append(json.RawMessage(nil), b[i:end]...)})
		i = end
	}
	return ms, i < len(b)
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// endOfValue is the index just past the JSON value starting at b[i], or -1
// if b ends first. b is valid JSON: a string ends at its first unescaped
// quote, an object or array where its brackets balance (strings skipped),
// a literal or number at the first delimiter.
func endOfValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	depth := 0
	for k := i; k < len(b); k++ {
		switch c := b[k]; {
		case c == '"':
			for k++; k < len(b) && b[k] != '"'; k++ {
				if b[k] == '\\' {
					k++
				}
			}
			if k >= len(b) {
				return -1
			}
			if depth == 0 {
				return k + 1
			}
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			if depth--; depth == 0 {
				return k + 1
			}
			if depth < 0 { // a literal's end, at its container's close
				return k
			}
		case depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			return k
		}
	}
	if depth == 0 {
		return len(b) // a literal at the very end
	}
	return -1
}

// membersChecked is members by encoding/json's tokenizer, naming every
// problem of b.
func membersChecked(b []byte, what string) ([]member, *Error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, Errorf(CodeBadRequest, "%s is empty, want a JSON object", what)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, syntaxError(what, dec, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, Errorf(CodeBadRequest, "%s is %s, want a JSON object", what, kindOfToken(tok))
	}
	var ms []member
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, syntaxError(what, dec, err)
		}
		key, _ := tok.(string) // inside an object the decoder yields only string keys
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, syntaxError(what, dec, err)
		}
		if seen[key] {
			return nil, Errorf(CodeBadRequest, "%s has field %.64q twice", what, key)
		}
		seen[key] = true
		ms = append(ms, member{key, val})
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, syntaxError(what, dec, err)
	}
	off := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		return nil, Errorf(CodeBadRequest, "%s has data after its closing brace at offset %d", what, off)
	}
	return ms, nil
}

func syntaxError(what string, dec *json.Decoder, err error) *Error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return Errorf(CodeBadRequest, "%s is not valid JSON at offset %d: %v", what, se.Offset, se)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(CodeBadRequest, "%s is not valid JSON: it ends early, at offset %d", what, dec.InputOffset())
	}
	return Errorf(CodeBadRequest, "%s is not valid JSON near offset %d: %v", what, dec.InputOffset(), err)
}

func kindOfToken(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			return "an array"
		}
	case string:
		return "a string"
	case float64, json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%v", tok)
}

// kindOf describes the JSON value v for error messages.
func kindOf(v json.RawMessage) string {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return "nothing"
	}
	switch v[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "the number " + string(v)
}

// isNumber reports whether v is a JSON number (it is valid JSON already).
func isNumber(v json.RawMessage) bool {
	return len(v) > 0 && (v[0] == '-' || '0' <= v[0] && v[0] <= '9')
}

// DecodeRequest reads a request as luod receives it, checking in this
// order, each failure an *Error naming the problem:
//
//   - b is one JSON object with no field twice and nothing after it
//     (CodeBadRequest, with the offset of a syntax error);
//   - "v" is present and a number (CodeBadRequest), equal to Version
//     (CodeUnsupportedVersion: checked before anything else, so a request
//     of a later version is told so rather than about its new fields);
//   - no field but v, id, op and args (CodeBadRequest);
//   - "id" is an integer from 1 to 2^64-1 (CodeBadRequest);
//   - "op" is a non-empty string (CodeBadRequest) naming a known
//     operation (CodeUnknownOp);
//   - "args", if present and not null, is an object (CodeBadRequest).
//
// The returned *Request is never nil: on error it holds what was read, in
// particular the id when it could be, so the error response can carry it
// (or 0). Args are checked later, by DecodeArgs. DecodeRequest never
// panics, whatever b holds.
func DecodeRequest(b []byte) (*Request, *Error) {
	req := &Request{}
	if len(b) > MaxMessageSize {
		return req, Errorf(CodeBadRequest, "request is %d bytes, at most %d", len(b), MaxMessageSize)
	}
	ms, perr := members(b, "request", false)
	if perr != nil {
		return req, perr
	}
	field := func(k string) (json.RawMessage, bool) {
		for _, m := range ms {
			if m.key == k {
				return m.val, true
			}
		}
		return nil, false
	}
	// Learn the id first, leniently, so that any error can echo it.
	if raw, ok := field("id"); ok {
		if id, err := strconv.ParseUint(string(raw), 10, 64); err == nil {
			req.ID = id
		}
	}

	raw, ok := field("v")
	switch {
	case !ok:
		return req, Errorf(CodeBadRequest, `request has no "v" (the protocol version, %d)`, Version)
	case !isNumber(raw):
		return req, Errorf(CodeBadRequest, `"v" is %s, want the number %d`, kindOf(raw), Version)
	case string(raw) != strconv.Itoa(Version):
		return req, Errorf(CodeUnsupportedVersion, "protocol version %s is not supported; luod speaks version %d", raw, Version)
	}
	req.V = Version

	for _, m := range ms {
		switch m.key {
		case "v", "id", "op", "args":
		default:
			return req, Errorf(CodeBadRequest, "request has unknown field %.64q (known: v, id, op, args)", m.key)
		}
	}

	raw, ok = field("id")
	switch {
	case !ok:
		return req, Errorf(CodeBadRequest, `request has no "id"`)
	case !isNumber(raw):
		return req, Errorf(CodeBadRequest, `"id" is %s, want an integer from 1 to %d`, kindOf(raw), uint64(1<<64-1))
	case req.ID == 0:
		return req, Errorf(CodeBadRequest, `"id" is %s, want an integer from 1 to %d`, raw, uint64(1<<64-1))
	}

	raw, ok = field("op")
	if !ok {
		return req, Errorf(CodeBadRequest, `request has no "op"`)
	}
	if err := json.Unmarshal(raw, &req.Op); err != nil {
		return req, Errorf(CodeBadRequest, `"op" is %s, want a string`, kindOf(raw))
	}
	switch {
	case req.Op == "":
		return req, Errorf(CodeBadRequest, `"op" is empty`)
	case !KnownOp(req.Op):
		return req, Errorf(CodeUnknownOp, "unknown operation %.64q", req.Op)
	}

	if raw, ok = field("args"); ok && string(raw) != "null" {
		if raw[0] != '{' {
			return req, Errorf(CodeBadRequest, `"args" of %s is %s, want an object`, req.Op, kindOf(raw))
		}
		req.Args, req.checked = raw, raw
	}
	return req, nil
}

// DecodeArgs unmarshals the request's args into v, a pointer to the
// operation's *Args struct, strictly: a field of v's struct not in the
// args keeps its zero value (absent args leave all of v alone), and any
// field the struct lacks, at any depth, is refused with CodeBadRequest, as
// is a value of the wrong type. Top-level field names must match exactly;
// nested ones follow encoding/json's case-insensitive matching. For an
// operation that takes no arguments pass &struct{}{}: any field is then
// refused.
func (r *Request) DecodeArgs(v any) *Error {
	if len(r.Args) == 0 {
		return nil
	}
	// Args still as DecodeRequest found them are valid JSON already.
	valid := len(r.checked) == len(r.Args) && &r.checked[0] == &r.Args[0]
	ms, perr := members(r.Args, `"args" of `+r.Op, valid)
	if perr != nil {
		return perr
	}
	if known := jsonFields(reflect.TypeOf(v)); known != nil {
		for _, m := range ms {
			if !slices.Contains(known, m.key) {
				if len(known) == 0 {
					return Errorf(CodeBadRequest, "%s takes no args, got field %.64q", r.Op, m.key)
				}
				return Errorf(CodeBadRequest, "%s has no argument %.64q (known: %s)", r.Op, m.key, strings.Join(known, ", "))
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(r.Args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field == "" {
				return Errorf(CodeBadRequest, "args of %s: got %s, want %s", r.Op, te.Value, te.Type)
			}
			return Errorf(CodeBadRequest, "argument %q of %s: got %s, want %s", te.Field, r.Op, te.Value, te.Type)
		}
		return Errorf(CodeBadRequest, "args of %s: %v", r.Op, err)
	}
	return nil
}

// jsonFields lists the JSON names of the fields of the struct t points to,
// or nil when t is not a pointer to a struct.
func jsonFields(t reflect.Type) []string {
	if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil
	}
	names := []string{}
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, _, _ := strings.Cut(tag, ",")
			switch {
			case name == "-" && tag == "-":
				continue
			case f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct:
				walk(f.Type)
				continue
			case !f.IsExported():
				continue
			case name == "":
				name = f.Name
			}
			names = append(names, name)
		}
	}
	walk(t.Elem())
	return names
}

// DecodeServerMessage reads a packet sent by luod: a response (resp set)
// or an event (ev set). It is lenient about fields it does not know, so
// that a client keeps working with a newer luod, but insists on the
// version and on a well-formed envelope: a response with an id, ok with a
// result or not ok with an error.
func DecodeServerMessage(b []byte) (resp *Response, ev *Event, err error) {
	var m struct {
		V      *int            `json:"v"`
		ID     *uint64         `json:"id"`
		OK     bool            `json:"ok"`
		Result json.RawMessage `json:"result"`
		Error  *Error          `json:"error"`
		Event  string          `json:"event"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, nil, fmt.Errorf("proto: message from luod is not a valid JSON object: %w", err)
	}
	switch {
	case m.V == nil:
		return nil, nil, errors.New(`proto: message from luod has no "v"`)
	case *m.V != Version:
		return nil, nil, fmt.Errorf("proto: message from luod is of protocol version %d, want %d", *m.V, Version)
	case m.ID == nil:
		return nil, nil, errors.New(`proto: message from luod has no "id"`)
	case m.Event != "":
		if *m.ID != 0 {
			return nil, nil, fmt.Errorf("proto: %s event from luod has id %d, want 0", m.Event, *m.ID)
		}
		return nil, &Event{V: Version, Event: m.Event, Data: m.Data}, nil
	case m.OK && m.Error != nil:
		return nil, nil, fmt.Errorf("proto: response %d from luod is ok and has an error", *m.ID)
	case !m.OK && m.Error == nil:
		return nil, nil, fmt.Errorf("proto: response %d from luod is not ok and has no error", *m.ID)
	}
	return &Response{V: Version, ID: *m.ID, OK: m.OK, Result: m.Result, Error: m.Error}, nil, nil
}
