#!/bin/sh
# vmtest-stage.sh — one boot of the systemd VM run, started by
# luod-vmtest.service (After=luod.service) with systemd as PID 1. The stage
# comes from luod.stage=N on the kernel command line: 1 on the "from"
# kernel, 2 on the "to" kernel after luod's live update; luod.suite= names
# the Debian root and luod.path= the upgrade path luod must pick by itself:
# direct (systemd < 261) or orderly (kexec.target, systemd >= 261).
#
# Verdict lines go straight to /dev/console, like deploy/qemu/init's:
#   LUOD-VM-SUITE: PASS|FAIL stage=N SUITE/NAME
#   LUOD-VM-RESULT: PASS | FAIL <why>
# Everything else goes to stdout (journal+console). The VM is powered off
# at the end, on success and on failure alike.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
share=/mnt/host
sess=vm-sd
size=${LUOD_VMSD_SIZE:-64M}
metrics_url=http://127.0.0.1:9478/metrics

vm() { echo "$*" >/dev/console; }
finish() {
	vm "LUOD-VM-RESULT: $*"
	sync
	umount "$share" 2>/dev/null
	systemctl poweroff -f -f 2>/dev/null || poweroff -f
	sleep 30
}

mkdir -p "$share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host "$share" ||
	finish "FAIL cannot mount the host share"

stage=$(sed -n 's/.*luod\.stage=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$stage" ] || stage=1
suite=$(sed -n 's/.*luod\.suite=\([a-z]*\).*/\1/p' /proc/cmdline)
[ -n "$suite" ] || suite=bookworm
path=$(sed -n 's/.*luod\.path=\([a-z]*\).*/\1/p' /proc/cmdline)
[ -n "$path" ] || path=direct
# Marks a stop of this unit as the kexec's doing (see luod-vmtest.service).
kexec_marker=/run/luod-vmtest.kexec
vm "LUOD-VM: boot stage=$stage kernel=$(uname -r) accel=$(cat $share/accel 2>/dev/null) systemd=$(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p') uptime=$(cut -d' ' -f1 /proc/uptime)s"
dmesg | grep -E 'KHO: exec from|liveupdate number|luo:' | sed 's/^/LUOD-VM: kernel: /' >/dev/console

say() { echo "vmsd[$stage]: $*"; }
die() {
	say "FAIL: $*"
	journalctl -b -u luod -u luod.socket --no-pager -o short-monotonic 2>&1 | tail -60 | sed 's/^/    journal| /'
	vm "LUOD-VM-SUITE: FAIL stage=$stage $suite/systemd ($*)"
	finish "FAIL stage $stage"
}
indent() { sed 's/^/    | /'; }
# luodlog [journalctl args]: luod's journal entries, each MESSAGE with the
# structured fields luod attached (ERR=, SESSION=, WARNING=, ...).
luodlog() {
	journalctl -b -u luod --no-pager -o verbose "$@" 2>/dev/null | awk '
		/^[^ ]/ { if (msg != "") print prio " " msg extra; msg = ""; extra = ""; prio = ""; next }
		/^    MESSAGE=/ { msg = substr($0, 13); next }
		/^    PRIORITY=/ { prio = "<" substr($0, 14) ">"; next }
		/^    (_|SYSLOG_|CODE_|INVOCATION_ID|MESSAGE_ID|TID)/ { next }
		/^    [A-Z0-9_]+=/ { sub(/^    /, ""); extra = extra " " $0 }
		END { if (msg != "") print prio " " msg extra }'
}
# evidence: every warning of this boot (systemd about the units, luod).
evidence() {
	say "journal: warnings of this boot (priority <= warning)"
	journalctl -b -p warning --no-pager -o short-monotonic 2>&1 | grep -v -e 'vmtest-stage' | tail -40 | indent
	say "journal: luod with its fields"
	luodlog | tail -40 | indent
}

wait_active() { # wait_active UNIT SECONDS
	i=0
	until [ "$(systemctl is-active "$1")" = active ]; do
		i=$((i + 1))
		[ $i -lt $(($2 * 5)) ] || { systemctl status "$1" --no-pager 2>&1 | indent; die "$1 not active after $2 s"; }
		sleep 0.2
	done
}

expect() { # expect WHAT TEXT PATTERN...
	what=$1 text=$2
	shift 2
	for p in "$@"; do
		echo "$text" | grep -q -E -e "$p" || die "$what lacks /$p/"
	done
}

show_unit() {
	systemctl show luod -p MainPID -p NRestarts -p StatusText -p ActiveState -p SubState \
		-p ExecMainStatus -p ExecMainCode 2>&1 | indent
}

# check_metrics PATTERN...: the metrics endpoint answers and matches.
# The endpoint is luod-exporter's, which luod starts once ready: wait up to
# 30 s for a page on which luod answered the exporter (luod_up 1).
probe_metrics() {
	deadline=$(($(date +%s) + 30))
	until m=$(curl -s --max-time 5 "$metrics_url") && echo "$m" | grep -q '^luod_up 1$'; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 0.2
	done
}
check_metrics() {
	probe_metrics || die "metrics endpoint $metrics_url does not answer with luod_up 1"
	echo "$m" | grep -E '^luod_boot_(continuity|liveupdate_number)' | indent
	for p in "$@"; do
		echo "$m" | grep -q -E -e "$p" || die "metrics lack /$p/"
	done
}

wait_sessions() { # wait_sessions PATTERN SECONDS
	i=0
	until luoctl sessions 2>/dev/null | grep -q -E "$1"; do
		i=$((i + 1))
		[ $i -lt $(($2 * 5)) ] || { luoctl sessions 2>&1 | indent; die "no session line /$1/ after $2 s"; }
		sleep 0.2
	done
	luoctl sessions | indent
}


case "$stage" in
1)
	say "boot 1: kernel $(uname -r), cold boot, systemd $(systemctl --version | head -1)"
	wait_active luod.socket 60
	wait_active luod 120
	say "luod is active (READY=1 sent); unit:"
	show_unit
	ls -l /run/luod | indent
	st=$(luoctl status) || die "luoctl status failed"
	echo "$st" | indent
	expect "luoctl status" "$st" 'continuity: +fresh' 'liveupdate number: +0'
	# luod serves the socket luod.socket listens on, not one of its own.
	expect "luod's journal" "$(luodlog)" 'using the socket passed by systemd socket activation'
	vm "LUOD-VM-SUITE: PASS stage=1 $suite/ready"

	probe_metrics || die "metrics endpoint $metrics_url does not answer under luod.service: $(luodlog | grep -i -E 'metrics endpoint|exporter|cannot serve' | tail -3)"
	# The endpoint is luod-exporter's, luod's child in luod.service.
	expect "luod's journal" "$(luodlog)" 'metrics exporter started'
	procs=$(for p in $(cat "/sys/fs/cgroup$(systemctl show -p ControlGroup --value luod)/cgroup.procs"); do cat "/proc/$p/comm"; done)
	expect "luod.service's processes" "$procs" '^luod$' '^luod-exporter$'

	say "workload: guestram keeps $size in a memfd, session $sess (detached)"
	out=$(guestram run --session "$sess" --size "$size" --detach 2>&1) && rc=0 || rc=$?
	echo "$out" | indent
	[ $rc = 0 ] || die "guestram run exited $rc"
	wait_sessions "^$sess +0 +open +1 " 60
	pid1=$(systemctl show -p MainPID --value luod)
	vm "LUOD-VM-SUITE: PASS stage=1 $suite/preserve"

	say "systemctl kill -s KILL luod (pid $pid1): systemd must restart it with its fd store"
	systemctl kill -s KILL luod
	i=0
	while :; do
		pid2=$(systemctl show -p MainPID --value luod)
		[ "$(systemctl is-active luod)" = active ] && [ "$pid2" != 0 ] && [ "$pid2" != "$pid1" ] && break
		i=$((i + 1))
		[ $i -lt 300 ] || { show_unit; die "luod not restarted 60 s after SIGKILL"; }
		sleep 0.2
	done
	say "luod restarted: pid $pid1 -> $pid2"
	show_unit
	[ "$(systemctl show -p NRestarts --value luod)" -ge 1 ] || die "NRestarts did not count the restart"
	wait_sessions "^$sess +0 +open +1 " 30
	adopt=$(journalctl -b -u luod --no-pager -o cat _PID="$pid2" 2>/dev/null)
	[ -n "$adopt" ] || adopt=$(journalctl -b -u luod --no-pager -o cat 2>/dev/null)
	echo "$adopt" | grep -E 'restarted within this boot|taken back|fd store' | indent
	expect "journal of the restarted luod" "$adopt" 'restarted within this boot' "session taken back from systemd's fd store"
	st=$(luoctl status) || die "luoctl status failed after the restart"
	echo "$st" | indent
	vm "LUOD-VM-SUITE: PASS stage=1 $suite/restart-keeps-sessions"

	check_metrics '^luod_boot_continuity\{continuity="fresh"\} 1' '^luod_boot_liveupdate_number 0'
	vm "LUOD-VM-SUITE: PASS stage=1 $suite/metrics"

	# A hung main loop (test fault switch, enabled by the test drop-in):
	# luod stops feeding the watchdog, systemd kills and restarts it, and
	# the fd store keeps the session.
	pid1=$(systemctl show -p MainPID --value luod)
	n1=$(systemctl show -p NRestarts --value luod)
	say "systemctl kill -s USR2 luod (pid $pid1): the test fault switch hangs its main loop"
	systemctl kill -s USR2 luod
	i=0
	until [ "$(systemctl show -p NRestarts --value luod)" -gt "$n1" ] && [ "$(systemctl is-active luod)" = active ]; do
		i=$((i + 1))
		[ $i -lt 300 ] || die "the watchdog did not restart the hung luod within 60 s"
		sleep 0.2
	done
	journalctl -b -u luod --no-pager -o cat 2>/dev/null | grep -E 'TEST FAULT|[Ww]atchdog' | indent
	journalctl -b --no-pager -o cat 2>/dev/null | grep -q -i 'watchdog timeout' || die "systemd did not report a watchdog timeout"
	wait_sessions "^$sess +0 +open +1 " 30
	vm "LUOD-VM-SUITE: PASS stage=1 $suite/watchdog-restarts-hung-luod"

	next=$share/boot2
	cmdline=$(sed "s/luod\.stage=[0-9]*/luod.stage=2/" /proc/cmdline)
	say "luoctl load $(cat "$next/release") --cmdline '$cmdline'"
	out=$(luoctl --timeout 600s load "$next/vmlinuz" --initrd "$share/initrd.img" --cmdline "$cmdline" 2>&1) && rc=0 || rc=$?
	echo "$out" | indent
	[ $rc = 0 ] || die "luoctl load exited $rc"
	# A dry run: luod raises its threads to nice -20 for the barrier and
	# the pause (LimitNICE= in the unit allows it without CAP_SYS_NICE)
	# and gives them nice 0 back after.
	say "luoctl upgrade --dry-run: luod's priority raised for the pause, then given back"
	luoctl upgrade --dry-run --timeout 60s 2>&1 | indent
	if journalctl -b -u luod --no-pager -o cat 2>/dev/null | grep "luod's priority"; then
		die "luod could not raise or give back its priority under luod.service"
	fi
	pid=$(systemctl show -p MainPID --value luod)
	nices=$(for s in /proc/"$pid"/task/*/stat; do sed 's/.*) //' "$s" | cut -d' ' -f17; done | sort -u | tr '\n' ' ')
	[ "$nices" = "0 " ] || die "luod's threads after the dry run have nice values: $nices (want 0)"
	vm "LUOD-VM-SUITE: PASS stage=1 $suite/pause-priority-given-back"
	evidence
	vm "LUOD-VM: stage=1 upgrading at uptime=$(cut -d' ' -f1 /proc/uptime)s path=$path"
	sync
	if [ "$path" = direct ]; then
		say "luoctl upgrade: barrier, manifest, reboot(LINUX_REBOOT_CMD_KEXEC) from inside luod.service"
		luoctl upgrade --timeout 60s 2>&1 | indent
		die "luoctl upgrade returned: the kexec did not happen"
	fi
	say "luoctl upgrade: barrier, manifest, fd store, kexec.target: systemd stops every service and kexecs"
	# This unit is stopped with the rest; its ExecStopPost= must not power
	# the VM off then. The shutdown step logs to the kernel log: show it.
	: >"$kexec_marker"
	dmesg -n 7
	# luoctl gets "committed" and then waits for its connection to end,
	# which happens only when systemd stops luod — after this unit, which
	# is ordered after luod: so it runs in the background. What the
	# shutdown did is checked on the host, from the console
	# (vm-systemd.sh), and in boot 2.
	luoctl upgrade --timeout 60s >/dev/console 2>&1 &
	sync
	sleep 600
	rm -f "$kexec_marker"
	die "systemd did not kexec within 600 s of kexec.target"
	;;
2)
	prev=$(cat "$share/boot1/release")
	say "boot 2: kernel $(uname -r), after the live update from $prev"
	wait_active luod 120
	say "luod is active (READY=1 only after recovery); unit:"
	show_unit
	luodlog | grep -E 'recovery|handed over|handover' | indent
	st=$(luoctl status) || die "luoctl status failed"
	echo "$st" | indent
	expect "luoctl status" "$st" 'liveupdate number: +1' 'continuity: +ok' "previous kernel: +$prev" '1 incoming'
	vm "LUOD-VM-SUITE: PASS stage=2 $suite/recovered"

	# Which way did the sessions come? Orderly: systemd retrieved them in
	# this kernel and handed them back through the fd store; direct: luod
	# retrieved them itself.
	back=$(luodlog | grep -E 'fd store came back|handed back by systemd')
	echo "$back" | indent
	if [ "$path" = orderly ]; then
		expect "luod's journal after the orderly kexec" "$back" 'fd store came back with session fds' \
			"handed back by systemd.*SESSION=$sess" 'handed back by systemd.*SESSION=luod( |$)'
	else
		[ -z "$back" ] || die "sessions came back through the fd store on the direct path"
	fi
	vm "LUOD-VM-SUITE: PASS stage=2 $suite/$path-path"

	check_metrics '^luod_boot_liveupdate_number 1' '^luod_boot_continuity\{continuity="ok"\} 1'
	vm "LUOD-VM-SUITE: PASS stage=2 $suite/metrics"

	# Recovery put the session it holds into systemd's fd store with one
	# sendmmsg(2) batch (StoreFDs), beside the custody record: on the
	# direct path the kexec left systemd's store empty, so these are
	# luod's; the finishing reclaim below takes the session out (RemoveFDs).
	nstore=$(systemctl show -p NFileDescriptorStore --value luod)
	say "luod.service's fd store after recovery: $nstore fds"
	[ -n "$nstore" ] && [ "$nstore" -ge 2 ] || die "luod.service's fd store holds '$nstore' fds after recovery, want the session and the record"

	say "workload: reclaiming its memory from luod"
	out=$(guestram verify --session "$sess" --finish 2>&1) && rc=0 || rc=$?
	echo "$out" | indent
	[ $rc = 0 ] || die "guestram verify exited $rc: memory not byte-exact or not reclaimed"
	luoctl sessions 2>&1 | indent
	# systemd reads the removal from its notify socket, not in the D-Bus
	# call that asks: give it a moment.
	i=0
	until nafter=$(systemctl show -p NFileDescriptorStore --value luod) && [ "$nafter" -eq $((nstore - 1)) ]; do
		i=$((i + 1))
		[ $i -lt 25 ] || die "the finished session did not leave systemd's fd store: $nstore fds before, $nafter after"
		sleep 0.2
	done
	say "luod.service's fd store after the finishing reclaim: $nafter fds"
	vm "LUOD-VM-SUITE: PASS stage=2 $suite/guestram-verify"
	evidence
	capbnd=$(grep CapBnd "/proc/$(systemctl show -p MainPID --value luod)/status")
	say "luod's capability bounding set: $capbnd"
	[ "$capbnd" = "CapBnd:	0000000400400000" ] || die "luod runs with capabilities beyond CAP_SYS_BOOT CAP_SYSLOG: $capbnd"
	echo "vmsd: VERDICT: PASS: luod under systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p') ($suite): restart kept $sess via the fd store, live update $prev -> $(uname -r) by the $path path, $size byte-exact" >/dev/console
	finish "PASS after 2 boot(s)"
	;;
*)
	die "no such stage $stage"
	;;
esac
