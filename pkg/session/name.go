package session

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/luod/luod/pkg/proto"
)

// ReservedPrefix starts the names reserved for luod itself; no client may
// create or name a session starting with it.
const ReservedPrefix = proto.ReservedPrefix

// ReservedName is luod's own session, which carries the manifest across
// the kexec under ManifestToken.
const ReservedName = "luod"

// ManifestToken is the token of the manifest memfd in ReservedName.
const ManifestToken uint64 = 1

// PauseToken is the token, in ReservedName, of a page luod writes its
// share of the workloads' pause into right before reboot(2) (NotePause).
// Written after its preservation, it crosses the kexec as guest RAM does,
// and the next luod reports it (Report.LastPause). An older luod's
// reserved session has none; an older luod given one leaves it to FINISH,
// which takes back the files not retrieved.
const PauseToken uint64 = 2

// pauseNoteSize is the pause page's size: one page of memory.
const pauseNoteSize = 4096

// ValidateName checks a client's session name against the protocol rule
// (proto.ValidateSessionName: 1 to 63 bytes of A-Z a-z 0-9 . _ : -, the
// first a letter or digit, not starting with ReservedPrefix). The error is
// an *Error with CodeInvalidName saying which part of the rule the name
// breaks.
func ValidateName(name string) error {
	if err := proto.ValidateSessionName(name); err != nil {
		msg := err.Error()
		var pe *proto.Error
		if errors.As(err, &pe) {
			msg = pe.Message
		}
		return &Error{Code: CodeInvalidName, Session: name, Err: errors.New(msg)}
	}
	return nil
}

// Limits on labels. They are part of manifest format luod-manifest-v1
// (DecodeManifest enforces them too), so they may grow but never shrink.
const (
	// MaxLabels is the number of labels a session may carry.
	MaxLabels = 32
	// MaxLabelKeyLen is the longest label key in bytes; keys are non-empty.
	MaxLabelKeyLen = 63
	// MaxLabelValueLen is the longest label value, and the longest file
	// label, in bytes.
	MaxLabelValueLen = 255
)

// labelsProblem returns the code and sentence of what is wrong with a
// session's labels, or "" if nothing is.
func labelsProblem(labels map[string]string) (code, why string) {
	if len(labels) > MaxLabels {
		return CodeLimit, fmt.Sprintf("%d labels, at most %d", len(labels), MaxLabels)
	}
	for k, v := range labels {
		switch {
		case k == "":
			return CodeBadRequest, "empty label key"
		case len(k) > MaxLabelKeyLen:
			return CodeLimit, fmt.Sprintf("label key %.16q… is %d bytes, at most %d", k, len(k), MaxLabelKeyLen)
		case len(v) > MaxLabelValueLen:
			return CodeLimit, fmt.Sprintf("label %q value is %d bytes, at most %d", k, len(v), MaxLabelValueLen)
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			return CodeBadRequest, fmt.Sprintf("label %q is not valid UTF-8", k)
		}
	}
	return "", ""
}

// fileLabelProblem is labelsProblem for the label of one file.
func fileLabelProblem(label string) (code, why string) {
	switch {
	case len(label) > MaxLabelValueLen:
		return CodeLimit, fmt.Sprintf("file label is %d bytes, at most %d", len(label), MaxLabelValueLen)
	case !utf8.ValidString(label):
		return CodeBadRequest, "file label is not valid UTF-8"
	}
	return "", ""
}
