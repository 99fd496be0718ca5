package proto

import (
	"encoding/json"
	"fmt"
)

// Version is the protocol version this package speaks. luod answers a
// request of any other version with CodeUnsupportedVersion.
const Version = 1

// MaxMessageSize is the largest JSON message, in bytes, one packet may
// hold. A larger packet is refused whole (see ErrMessageTooLarge).
const MaxMessageSize = 64 << 10

// MaxFDs is the most file descriptors one packet may carry: the kernel's
// SCM_MAX_FD. Operations that take more files split them over several
// requests (see pkg/client's Preserve).
const MaxFDs = 253

// MaxCreateSessions is the most sessions one create_sessions request may
// create; with at most MaxFDs files in all, every answer fits a message.
const MaxCreateSessions = 256

// DefaultSocket is where luod listens unless told otherwise.
const DefaultSocket = "/run/luod/liveupdate.sock"

// Operations, the "op" of a Request. The *Args and *Result types next to
// each describe its arguments, result and file descriptors.
const (
	// Workload operations: any user who can open the socket, acting on
	// the sessions of its own uid.
	OpHello           = "hello"            // no args; HelloResult
	OpCreateSession   = "create_session"   // CreateSessionArgs + 1 fd per file; CreateSessionResult + 1 fd
	OpCreateSessions  = "create_sessions"  // CreateSessionsArgs + 1 fd per file; CreateSessionsResult
	OpPreserve        = "preserve"         // PreserveArgs + 1 fd per file; PreserveResult
	OpDeclare         = "declare"          // DeclareArgs; empty result
	OpListSessions    = "list_sessions"    // SessionsArgs (optional); SessionsResult, one page
	OpDeleteSession   = "delete_session"   // DeleteSessionArgs; empty result
	OpSubscribe       = "subscribe"        // no args; empty result, then events
	OpReady           = "ready"            // ReadyArgs; empty result
	OpRetrieveSession = "retrieve_session" // RetrieveSessionArgs; RetrieveSessionResult + 1 fd
	OpReclaim         = "reclaim"          // ReclaimArgs; ReclaimResult + 1 fd per file
	OpReclaimSessions = "reclaim_sessions" // ReclaimSessionsArgs; ReclaimSessionsResult + 1 fd per file
	OpFinishSession   = "finish_session"   // FinishSessionArgs; empty result

	// Admin operations: uid 0 or members of luod's admin group.
	OpStatus   = "status"   // no args; Status
	OpSessions = "sessions" // SessionsArgs (optional); SessionsResult, one page (every user's)
	OpInspect  = "inspect"  // InspectArgs; the decoded handover (JSON)
	OpLoad     = "load"     // LoadArgs + kernel [, initrd][, config] fds; LoadResult
	OpUnload   = "unload"   // no args; empty result
	OpUpgrade  = "upgrade"  // UpgradeArgs; progress events, then UpgradeResult or EOF
	OpMetrics  = "metrics"  // no args; metrics.Snapshot (luod-exporter asks it at each scrape)
)

var ops = map[string]bool{ // op → admin only
	OpHello: false, OpCreateSession: false, OpCreateSessions: false, OpPreserve: false,
	OpDeclare: false, OpListSessions: false, OpDeleteSession: false,
	OpSubscribe: false, OpReady: false, OpRetrieveSession: false,
	OpReclaim: false, OpReclaimSessions: false, OpFinishSession: false,
	OpStatus: true, OpSessions: true, OpInspect: true, OpLoad: true,
	OpUnload: true, OpUpgrade: true, OpMetrics: true,
}

// KnownOp reports whether op is an operation of this protocol version.
func KnownOp(op string) bool { _, ok := ops[op]; return ok }

// AdminOp reports whether op is reserved to administrators (uid 0 or the
// admin group); luod answers others with CodePermissionDenied.
func AdminOp(op string) bool { return ops[op] }

// Events, the "event" of an Event.
const (
	// EventPrepare: an upgrade is about to start; data is PrepareEvent.
	// Every subscribed connection must answer with OpReady before the
	// deadline, or the upgrade is aborted.
	EventPrepare = "prepare"
	// EventAborted: the upgrade was called off and nothing changed; data
	// is AbortedEvent.
	EventAborted = "aborted"
	// EventCommitted: luod is about to reboot into the new kernel; data
	// is CommittedEvent. The connection closes right after.
	EventCommitted = "committed"
	// EventProgress: the upgrade entered a phase; data is ProgressEvent.
	// Sent only to the connection that runs OpUpgrade.
	EventProgress = "progress"
)

// Request is a client's message to luod.
type Request struct {
	// V is the protocol version, Version.
	V int `json:"v"`
	// ID is chosen by the client, > 0, and echoed in the response. A
	// client keeps ids unique among its requests in flight.
	ID uint64 `json:"id"`
	// Op is the operation, one of the Op constants.
	Op string `json:"op"`
	// Args are the operation's arguments, a JSON object; omitted when the
	// operation takes none.
	Args json.RawMessage `json:"args,omitempty"`

	// checked is Args as DecodeRequest found it, valid JSON: DecodeArgs
	// does not check again what it still holds.
	checked json.RawMessage
}

// NewRequest builds a request for op with args marshaled to JSON (nil
// for none).
func NewRequest(id uint64, op string, args any) (*Request, error) {
	r := &Request{V: Version, ID: id, Op: op}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("proto: encode args of %s: %w", op, err)
		}
		r.Args = b
	}
	return r, nil
}

// Response is luod's answer to one request.
type Response struct {
	// V is the protocol version, Version.
	V int `json:"v"`
	// ID is the request's id, or 0 when luod could not read the request
	// far enough to learn it (then OK is false).
	ID uint64 `json:"id"`
	// OK tells which of Result and Error is set.
	OK bool `json:"ok"`
	// Result is the operation's result, a JSON object, when OK.
	Result json.RawMessage `json:"result,omitempty"`
	// Error says why the request failed, when not OK.
	Error *Error `json:"error,omitempty"`
}

// NewResponse builds a successful response with result marshaled to JSON;
// a nil result is sent as {}.
func NewResponse(id uint64, result any) (*Response, error) {
	r := &Response{V: Version, ID: id, OK: true, Result: json.RawMessage("{}")}
	if result != nil {
		b, err := json.Marshal(result)
		if err != nil {
			return nil, fmt.Errorf("proto: encode result of request %d: %w", id, err)
		}
		r.Result = b
	}
	return r, nil
}

// ErrorResponse builds a failed response. err is converted with AsError.
func ErrorResponse(id uint64, err error) *Response {
	return &Response{V: Version, ID: id, Error: AsError(err)}
}

// Event is an unsolicited message from luod.
type Event struct {
	// V is the protocol version, Version.
	V int `json:"v"`
	// ID is always 0: events answer no request.
	ID uint64 `json:"id"`
	// Event is the event's name, one of the Event constants.
	Event string `json:"event"`
	// Data is the event's payload, a JSON object (PrepareEvent, …).
	Data json.RawMessage `json:"data,omitempty"`
}

// NewEvent builds an event with data marshaled to JSON.
func NewEvent(name string, data any) (*Event, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("proto: encode %s event: %w", name, err)
	}
	return &Event{V: Version, Event: name, Data: b}, nil
}

// Decode unmarshals the event's data into v, e.g. a *PrepareEvent.
func (e *Event) Decode(v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("proto: %s event has no data", e.Event)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("proto: decode %s event: %w", e.Event, err)
	}
	return nil
}
