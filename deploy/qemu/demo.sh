#!/usr/bin/env bash
# demo.sh — the luod demo in a VM (make demo): luod, luoctl and a demo
# workload (examples/guestram) do two live updates, 7.2 -> 7.3 -> 7.3 (on arm64
# 7.2 -> 7.2 -> 7.2, see lib.sh), with
# 256 MiB of guest RAM verified byte-exact after each. With --tests (make
# test) stage 1 also runs the daemon's VM test cases first.
# Output goes to ${LUOD_OUT:-_out}/vm/demo/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tests=0
[ "${1:-}" = --tests ] && tests=1
name=demo
[ $tests = 1 ] && name=daemon
. "$here/lib.sh"
out=${LUOD_OUT:-$repo/_out}/vm/$name$vm_suffix

echo "demo: installing what the VM needs and building (or reusing) the kernels"
vm_prepare "$out"
echo "demo: building luod, luod-exporter, luoctl and the guestram workload (static)"
(cd "$repo" &&
	CGO_ENABLED=0 go build -o "$out/bin/" ./cmd/luod ./cmd/luod-exporter ./cmd/luoctl ./examples/guestram &&
	CGO_ENABLED=0 go test -c -o "$out/bin/vmtest.test" ./internal/vmtest)
cp "$here/demo-stage.sh" "$here/luod-svc.sh" "$out/bin/"
vm_share "$out"
if [ "$LUOD_ARCH" = arm64 ]; then
	# The preflight must refuse an x86 bzImage on arm64: the real one.
	mkdir -p "$out/share/foreign"
	cp "$("$here/build-kernel.sh" "${LUOD_FROM_KERNEL:-7.2}" x86_64)/bzImage" "$out/share/foreign/vmlinuz"
	echo x86_64 >"$out/share/foreign/arch"
fi

{
	echo "# stage name command (run in /luod of the guest)"
	for s in 1 2 3; do echo "$s demo env LUOD_DEMO_TESTS=$tests ./demo-stage.sh"; done
} >"$out/share/plan"

"$here/run-vm.sh" "$out/share" "$out/console.log" && rc=0 || rc=$?
if [ $rc = 0 ] && grep -q 'demo: VERDICT: PASS' "$out/console.log"; then
	grep 'demo: VERDICT' "$out/console.log"
	exit 0
fi
echo "demo: VERDICT: FAIL (console in $out/console.log)"
exit 1
