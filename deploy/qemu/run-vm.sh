#!/usr/bin/env bash
# run-vm.sh SHARE LOG — boot SHARE/bootN/vmlinuz with SHARE/initrd.img in
# QEMU (LUOD_ARCH: x86_64 on q35, arm64 on virt), SHARE exported to the guest over virtio-9p (tag "host"), and follow
# the serial console until the guest's verdict. N is LUOD_VM_STAGE (default
# 1), passed to the guest as luod.stage=N: a later N is a cold boot into the
# middle of a plan, on the same share (a machine powered off and on again).
#
# The console is echoed with a prefix and kept in LOG. Exit status: 0 when
# the guest printed "LUOD-VM-RESULT: PASS" and no suite or Go test failed
# or was skipped; 1 otherwise, including a timeout (LUOD_VM_TIMEOUT seconds,
# default 900).
#
# Acceleration: on x86_64, KVM when /dev/kvm is usable and a probe boot shows
# the kernel running under it, TCG otherwise; LUOD_VM_ACCEL=kvm|tcg forces
# one. An arm64 guest on this x86_64 host always runs under TCG.
set -euo pipefail
share=${1:?usage: run-vm.sh SHARE LOG}
log=${2:?usage: run-vm.sh SHARE LOG}
timeout_s=${LUOD_VM_TIMEOUT:-900}
mem=${LUOD_VM_MEM:-2G}
stage=${LUOD_VM_STAGE:-1}
kernel=$share/boot$stage/vmlinuz
arch=${LUOD_ARCH:-x86_64}

common=(-m "$mem" -smp 2 -nographic -no-reboot -monitor none -serial stdio)
case "$arch" in
x86_64) qemu=(qemu-system-x86_64 -machine q35 "${common[@]}") console=ttyS0 ;;
arm64) qemu=(qemu-system-aarch64 -machine virt "${common[@]}") console=ttyAMA0 ;;
*) echo "run-vm: LUOD_ARCH=$arch: want x86_64 or arm64" >&2; exit 2 ;;
esac

probe_kvm() {
	[ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
	local out
	out=$(timeout 60 "${qemu[@]}" -accel kvm -cpu host -kernel "$kernel" \
		-append "console=$console panic=-1" </dev/null 2>&1 || true)
	grep -q -E 'Kernel panic|VFS:|Linux version' <<<"$out"
}

accel=${LUOD_VM_ACCEL:-auto}
[ "$arch" = arm64 ] && accel=tcg
if [ "$accel" = auto ]; then
	if probe_kvm; then accel=kvm; else accel=tcg; fi
fi
case "$accel" in
kvm) qemu+=(-accel kvm -cpu host) ;;
tcg) qemu+=(-accel tcg,thread=multi -cpu max) ;;
*) echo "run-vm: LUOD_VM_ACCEL=$accel: want kvm, tcg or auto" >&2; exit 2 ;;
esac
echo "$accel" >"$share/accel"

cmdline="console=$console quiet panic=-1 liveupdate=on kho=on luod.stage=$stage ${LUOD_VM_APPEND:-}"
echo "run-vm: $arch boot$stage/vmlinuz ($(cat "$share/boot$stage/release")) accel=$accel mem=$mem timeout=${timeout_s}s log=$log"
start=$(date +%s)
set +e
timeout --foreground "$timeout_s" "${qemu[@]}" \
	-kernel "$kernel" -initrd "$share/initrd.img" -append "$cmdline" \
	-virtfs "local,path=$share,mount_tag=host,security_model=none,id=host" \
	</dev/null 2>&1 | tr -d '\r' | tee "$log" | sed -u 's/^/  vm| /'
rc=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))

echo "run-vm: qemu exited with $rc after ${elapsed}s"
if [ "$rc" = 124 ]; then
	echo "run-vm: FAIL: timed out after ${timeout_s}s (console in $log)"
	exit 1
fi
fails=$(grep -c -E -e '^\s*--- (FAIL|SKIP)' -e '^LUOD-VM-SUITE: FAIL' "$log" || true)
passes=$(grep -c -E '^\s*--- PASS' "$log" || true)
if grep -q 'LUOD-VM-RESULT: PASS' "$log" && [ "$fails" = 0 ]; then
	echo "run-vm: PASS: $passes Go tests passed across $(grep -c 'LUOD-VM: boot stage=' "$log") boot(s) in ${elapsed}s"
	exit 0
fi
echo "run-vm: FAIL: $(grep '^LUOD-VM-RESULT' "$log" || echo 'no verdict from the guest'); failing lines:"
grep -E -e '^\s*--- (FAIL|SKIP)' -e '^LUOD-VM-SUITE: FAIL' -e 'panic' "$log" | sed 's/^/  /' || true
echo "run-vm: console kept in $log"
exit 1
