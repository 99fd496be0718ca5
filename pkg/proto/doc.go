// Package proto is luod's socket protocol, version 1, shared by the daemon
// and pkg/client. docs/protocol.md is the reference; this package is its
// executable form.
//
// # Transport
//
// luod listens on a unix socket of type SOCK_SEQPACKET (DefaultSocket,
// or one handed over by systemd socket activation). The kernel keeps
// packet boundaries, so one packet is exactly one JSON object of at most
// MaxMessageSize bytes: there is no framing and a reader never sees half a
// message. Conn sends and receives such packets.
//
// File descriptors ride as SCM_RIGHTS ancillary data of the packet that
// names them, at most MaxFDs (the kernel's SCM_MAX_FD) per packet. The
// receiver gets new descriptors for the same open files, close-on-exec.
// An operation's fds are positional: the request's or result's fields say
// which attached fd is which (see the *Args and *Result types).
//
// The server enables SO_PASSCRED, so every packet it reads carries the
// sender's pid, uid and gid (SCM_CREDENTIALS) as the kernel saw them when
// that packet was sent: luod authorizes each request with the credentials
// of the process that sent that very packet, not those of whoever
// connected. (A sender may only claim its own pid and its real, effective
// or saved ids unless it has CAP_SYS_ADMIN or CAP_SETUID/CAP_SETGID.)
//
// # Messages
//
// A Request {"v":1,"id":N,"op":…,"args":{…}} gets exactly one Response
// {"v":1,"id":N,"ok":…} with the same id, carrying either a result or an
// *Error. Responses may come out of order when a client has several
// requests in flight. Events {"v":1,"id":0,"event":…,"data":{…}} are
// unsolicited, may come between responses, and go only to connections
// that asked with OpSubscribe, or to the connection running OpUpgrade.
//
// DecodeRequest is how luod reads a request: strict (unknown or
// duplicate fields are refused with CodeBadRequest naming them, so a typo
// never silently drops an option) and never panicking on any input.
// DecodeServerMessage is how a client reads what luod sends: it ignores
// unknown fields.
//
// # Numbers
//
// Tokens, ids and counters are unsigned 64-bit integers sent as plain JSON
// numbers. encoding/json reads and writes them exactly; a client written
// in a language whose JSON numbers are doubles (JavaScript) must parse
// them as big integers, or tokens above 2^53 are corrupted.
//
// # Platform
//
// Conn and Listener are Linux-only (SOCK_SEQPACKET with SCM_CREDENTIALS);
// the message types, decoding and name rules build everywhere.
package proto
