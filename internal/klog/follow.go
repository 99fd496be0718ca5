package klog

import (
	"bytes"
	"strconv"
)

// parseRecord reads one /dev/kmsg record (Documentation/ABI/testing/
// dev-kmsg): "PRI,SEQ,USEC,FLAGS[,...];MESSAGE\n" then continuation lines
// starting with a space. It returns the message if its level (PRI & 7)
// is at most maxLevel (0 emerg … 4 warning … 7 debug).
func parseRecord(rec []byte, maxLevel int) (string, bool) {
	head, msg, ok := bytes.Cut(rec, []byte{';'})
	if !ok {
		return "", false
	}
	pri, _, _ := bytes.Cut(head, []byte{','})
	p, err := strconv.Atoi(string(pri))
	if err != nil || p < 0 || p&7 > maxLevel {
		return "", false
	}
	msg, _, _ = bytes.Cut(msg, []byte{'\n'})
	return string(msg), len(msg) > 0
}
