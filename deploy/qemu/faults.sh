#!/usr/bin/env bash
# faults.sh — luod's fault cases on the real LUO kernels (make vm-faults),
# internal/vmtest/faults_test.go run by luod's side in three boots:
#
#   boot1: 7.2, cold   luod SIGKILLed without an fd store (the restart names
#                      the lost sessions), a client that preserves and quits,
#                      kexec loads refused (truncated initrd, over the size
#                      limits), 1000 concurrent clients each with a session,
#                      the state directory full then read-only, a reboot call
#                      failing (test fault switch), then the real kexec
#   boot2: 7.3         every session reclaimed byte-exact (the 1000 clients',
#                      the quitter's, the ones that saw the faults); sessions
#                      left open, then the machine powered off
#   boot3: 7.3, cold   a second QEMU run on the same share, so the same
#                      state directory: continuity cold_boot, the sessions of
#                      boot2 named lost in status, log and metrics
#
# Each case prints a LUOD-RELIABILITY line (docs/reliability.md is made
# from them). Output goes to ${LUOD_OUT:-_out}/vm/faults/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${LUOD_OUT:-$repo/_out}/vm/faults
. "$here/lib.sh"

vm_prepare "$out"
echo "faults: building luod, luod-exporter, luoctl and the VM tests (static)"
(cd "$repo" &&
	CGO_ENABLED=0 go build -o "$out/bin/" ./cmd/luod ./cmd/luod-exporter ./cmd/luoctl &&
	CGO_ENABLED=0 go test -c -o "$out/bin/vmtest.test" ./internal/vmtest)
cp "$here/luod-svc.sh" "$out/bin/"
vm_share "$out"
touch "$out/share/boot3/cold" # boot3 is entered by powering the VM on again
mkdir -p "$out/share/state"

{
	echo "# stage name command (run in /luod of the guest)"
	for s in 1 2 3; do
		echo "$s faults export LUOD_STATE_DIR=/mnt/host/state/luod LUOD_SVC_CONSOLE=warn; ulimit -n 65536; ./luod-svc.sh start && ./vmtest.test -test.v -test.run '^TestFaults\$'"
	done
} >"$out/share/plan"

"$here/run-vm.sh" "$out/share" "$out/console.log"
echo "faults: powering the machine on again: a cold boot on the same state directory"
LUOD_VM_STAGE=3 "$here/run-vm.sh" "$out/share" "$out/console-cold.log"
