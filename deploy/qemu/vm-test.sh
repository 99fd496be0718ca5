#!/usr/bin/env bash
# vm-test.sh — the kernel-contract VM test: builds (or reuses) the LUO
# kernels, packs the Go test binaries into an initramfs and boots
#
#   boot1: linux-source-7.2 (cold boot)  contract cases on the real device,
#          then three sessions preserved and kexec_file_load into 7.3
#   boot2: linux-source-7.3              handover decoded and checked against
#          the kernel log, sessions retrieved byte-exact, fresh ones
#          preserved, kexec into 7.3 again
#   boot3: linux-source-7.3              liveupdate number 2, data verified
#
# in one QEMU run. Output goes to ${LUOD_OUT:-_out}/vm/contract/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
out=${LUOD_OUT:-$repo/_out}/vm/contract$vm_suffix

vm_prepare "$out"
echo "vm-test: building static test binaries"
(cd "$repo" &&
	CGO_ENABLED=0 go test -c -o "$out/bin/contract.test" ./pkg/ioctl/contract &&
	CGO_ENABLED=0 go test -c -o "$out/bin/vmtest.test" ./internal/vmtest)
vm_share "$out"

cat >"$out/share/plan" <<'EOT'
# stage name command (run in /luod of the guest)
1 contract ./contract.test -test.v -test.run TestKernel
1 kexec ./vmtest.test -test.v -test.run TestStage
2 kexec ./vmtest.test -test.v -test.run TestStage
3 kexec ./vmtest.test -test.v -test.run TestStage
EOT

exec "$here/run-vm.sh" "$out/share" "$out/console.log"
