#!/bin/sh
# verify.sh — check luod's systemd units with the host's systemd.
#
#   deploy/systemd/verify.sh
#
# 1. Every setting in luod.service and luod.socket has a comment line right
#    above it saying why it is there (systemd has no end-of-line comments).
# 2. The socket path is pkg/proto's DefaultSocket.
# 3. `systemd-analyze verify` accepts both units: it loads them, resolves
#    every dependency against the host's units and builds a start
#    transaction, so ordering cycles fail it. It checks that ExecStart=
#    exists, so the units are copied to a temporary directory with the
#    binary replaced by /bin/true. systemd-analyze exits 0 on mere
#    warnings (a value it cannot parse is ignored), so any output other
#    than the expected lines fails this script too. Expected: on systemd
#    older than 254, "Unknown key 'FileDescriptorStorePreserve'".
#
# Needs systemd-analyze (package systemd); no root, no running systemd.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
fail=0

# 1. A comment above every setting.
for u in luod.service luod.socket; do
	# A setting directly under another one needs its own comment too.
	bad=$(awk '
		/^[ \t]*$/ || /^\[/ { prev = ""; next }
		/^[#;]/            { prev = "comment"; next }
		{ if (prev != "comment") print FILENAME ":" FNR ": " $0; prev = "setting" }
	' "$here/$u" | sed "s#^$here/##")
	if [ -n "$bad" ]; then
		echo "FAIL: settings without a comment line above them:"
		echo "$bad"
		fail=1
	fi
done

# 2. The socket path matches the protocol's default.
want=$(sed -n 's/^const DefaultSocket = "\(.*\)"$/\1/p' "$repo/pkg/proto/proto.go")
got=$(sed -n 's/^ListenSequentialPacket=//p' "$here/luod.socket")
if [ -z "$want" ] || [ "$want" != "$got" ]; then
	echo "FAIL: luod.socket listens on '$got', pkg/proto.DefaultSocket is '$want'"
	fail=1
fi

# 3. systemd-analyze verify.
if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "SKIP: no systemd-analyze on this host"
	exit $fail
fi
version=$(systemd-analyze --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed 's#^ExecStart=/usr/local/sbin/luod #ExecStart=/bin/true #' "$here/luod.service" >"$tmp/luod.service"
cp "$here/luod.socket" "$tmp/luod.socket"
grep -q '^ExecStart=/bin/true ' "$tmp/luod.service" || { echo "FAIL: ExecStart= not found to replace"; exit 1; }

rc=0
(cd "$tmp" && systemd-analyze verify --man=no ./luod.service ./luod.socket) >"$tmp/out" 2>&1 || rc=$?
expected='^$'
if [ "${version:-0}" -lt 254 ]; then
	expected="Unknown key 'FileDescriptorStorePreserve' in section \[Service\], ignoring\.\$"
fi
unexpected=$(grep -v -e "$expected" "$tmp/out" | grep -v '^$' || true)
if [ $rc -ne 0 ] || [ -n "$unexpected" ]; then
	echo "FAIL: systemd-analyze verify (systemd $version) exited $rc:"
	sed "s#$tmp/##" "$tmp/out"
	fail=1
else
	echo "ok: systemd-analyze verify (systemd $version)$( [ -s "$tmp/out" ] && printf ', expected: %s' "$(sed "s#$tmp/##" "$tmp/out" | tr '\n' ' ')")"
fi

if [ $fail -ne 0 ]; then
	echo "FAIL deploy/systemd"
	exit 1
fi
echo "PASS deploy/systemd"
