#!/usr/bin/env bash
# vm-systemd.sh [SUITE] — luod under real systemd as PID 1 (from the
# initramfs) through one live update, 7.2 -> 7.3. SUITE picks the Debian
# root and with it the upgrade path luod must choose by itself
# (--upgrade.path=auto):
#
#   bookworm (default): systemd 252, the "direct" path: luod calls
#     reboot(LINUX_REBOOT_CMD_KEXEC) itself.
#   sid: systemd >= 261, the "orderly" path: luod stores its sessions and
#     reserved session in its fd store, closes /dev/liveupdate and starts
#     kexec.target; systemd stops every service, its shutdown step keeps
#     the stored sessions open through the kexec, and after boot PID 1
#     retrieves them and hands them back to luod by LISTEN_FDNAMES.
#
#   boot 1 (7.2): luod.socket + luod.service (Type=notify) come up; a
#     workload preserves 64 MiB; `systemctl kill -s KILL luod` and systemd
#     restarts luod, which takes the session back from its fd store;
#     metrics; a hung main loop (test fault switch) is killed by the
#     watchdog and luod comes back with the session; luoctl load +
#     luoctl upgrade.
#   boot 2 (7.3): luod is READY only after recovery; liveupdate number 1,
#     continuity ok in luoctl status and the metrics; the workload reclaims
#     its memory byte-exact; on sid the sessions came back through systemd.
#
# The guest side is vmtest-stage.sh (luod-vmtest.service); the image is made
# by mkrootfs.sh; QEMU is deploy/qemu/run-vm.sh. Output in
# ${LUOD_OUT:-_out}/vm/systemd-SUITE/. Exits 0 only on the guest's PASS
# verdict.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
qemu_dir=$(cd "$here/.." && pwd)
repo=$(cd "$here/../../.." && pwd)
suite=${1:-bookworm}
case "$suite" in
bookworm) path=direct ;;
sid) path=orderly ;;
*)
	echo "vm-systemd: suite $suite: want bookworm or sid" >&2
	exit 2
	;;
esac
out=${LUOD_OUT:-$repo/_out}/vm/systemd-$suite
t0=$(date +%s)
stamp() { echo "vm-systemd[$suite]: [$(($(date +%s) - t0))s] $*"; }

. "$qemu_dir/lib.sh"

stamp "installing what the VM needs and reusing (or building) the kernels"
vm_prepare "$out"

stamp "building luod, luod-exporter, luoctl and guestram (static)"
(cd "$repo" && CGO_ENABLED=0 go build -o "$out/bin/" ./cmd/luod ./cmd/luod-exporter ./cmd/luoctl ./examples/guestram)

stamp "making the systemd root image (debootstrap cached under ${LUOD_CACHE:-/var/cache/luod}/rootfs)"
"$here/mkrootfs.sh" "$out/share/initrd.img" "$out/bin" "$suite"
vm_boots "$out" 2

stamp "booting $(cat "$out/share/boot1/release") with systemd as PID 1"
rc=0
LUOD_VM_MEM=${LUOD_VM_MEM:-3G} LUOD_VM_TIMEOUT=${LUOD_VM_TIMEOUT:-1800} \
	LUOD_VM_APPEND="rdinit=/sbin/init systemd.show_status=0 luod.suite=$suite luod.path=$path ${LUOD_VM_APPEND:-}" \
	"$qemu_dir/run-vm.sh" "$out/share" "$out/console.log" || rc=$?
grep -E '^LUOD-VM: (boot stage|stage=1 upgrading)' "$out/console.log" | sed "s/^/vm-systemd[$suite]: /" || true
if [ "$path" = orderly ]; then
	# systemd-shutdown's own words: it preserved the fd stores and kexec'd.
	echo "vm-systemd[$suite]: systemd's shutdown step on the console:"
	grep -a -E 'systemd-shutdown\[1\]: (Preserved|Rebooting|Failed to (open|create|preserve))' "$out/console.log" |
		grep -a -v -e '^LUOD-VM' -e 'vmtest-stage' | sed 's/^/  /' || true
	if grep -a -q "systemd-shutdown\[1\]: Preserved fd stores in LUO session 'systemd' for kexec" "$out/console.log" &&
		! grep -a -q -E 'systemd-shutdown\[1\]: Failed to (open|create|preserve)' "$out/console.log"; then
		echo "LUOD-VM-SUITE: PASS stage=1 $suite/systemd-shutdown-preserved-fd-stores"
	else
		echo "LUOD-VM-SUITE: FAIL stage=1 $suite/systemd-shutdown-preserved-fd-stores"
		rc=1
	fi
fi
if grep -q '^LUOD-VM: BUG' "$out/console.log"; then
	echo "vm-systemd[$suite]: bugs the guest noted (worked around for the run):"
	grep '^LUOD-VM: BUG' "$out/console.log" | sort -u | sed 's/^/  /'
fi
if [ $rc = 0 ] && grep -q 'vmsd: VERDICT: PASS' "$out/console.log"; then
	grep 'vmsd: VERDICT' "$out/console.log"
	stamp "PASS"
	exit 0
fi
stamp "VERDICT: FAIL (console in $out/console.log)"
exit 1
