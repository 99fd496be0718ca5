#!/bin/sh
# demo-stage.sh — one boot of the luod demo, run by the VM's /init from
# /luod with LUOD_STAGE set. Three boots: 7.2 (cold) -> 7.3 -> 7.3 (7.2 on arm64), each
# update driven by luod, a workload keeping 256 MiB of "guest RAM" in a
# memfd across both. With LUOD_DEMO_TESTS=1 (make test) stage 1 also runs
# the daemon's VM test cases against the live luod first.
set -eu
stage=$LUOD_STAGE
share=$LUOD_SHARE
size=${LUOD_DEMO_SIZE:-256M}

say() { echo "demo[$stage]: $*"; }
die() { echo "demo[$stage]: FAIL: $*"; exit 1; }

start_luod() {
	say "starting luod (it recovers what the previous kernel handed over before it serves)"
	./luod-svc.sh start || die "luod did not come up"
}

expect_status() { # expect_status PATTERN...
	st=$(./luoctl status)
	echo "$st" | sed 's/^/    | /'
	for p in "$@"; do
		echo "$st" | grep -q -E "$p" || die "luoctl status lacks /$p/"
	done
}

update_to() { # update_to N: load bootN and upgrade into it
	next=$share/boot$1
	say "luoctl load: the next kernel, $(cat "$next/release"), with its config for the preflight"
	cmdline=$(sed "s/luod\.stage=[0-9]*/luod.stage=$1/" /proc/cmdline)
	./luoctl load "$next/vmlinuz" --initrd "$share/initrd.img" --cmdline "$cmdline" | sed 's/^/    | /'
	say "luoctl upgrade: barrier (the workload must answer ready), manifest, reboot"
	./luoctl upgrade --timeout 60s | sed 's/^/    | /'
	die "luoctl upgrade returned: the kexec did not happen"
}

start_workload() { # start_workload SESSION [--own-ioctls]
	say "workload: guestram keeps $size of guest RAM in a memfd, session $1 ${2:+(doing the kernel ioctls itself, as a VFIO VMM must)}"
	./guestram run --session "$1" --size "$size" ${2:-} &
	i=0
	until ./luoctl sessions 2>/dev/null | grep -q -E "^$1 +0 +open +1 "; do
		i=$((i + 1))
		[ $i -lt 600 ] || die "the workload's session $1 did not appear"
		sleep 0.2
	done
	./luoctl sessions | sed 's/^/    | /'
}

case "$stage" in
1)
	say "boot 1: kernel $(uname -r), cold boot"
	start_luod
	expect_status 'continuity: +fresh' 'liveupdate number: +0'
	if [ "${LUOD_DEMO_TESTS:-0}" = 1 ]; then
		say "running the daemon's VM test cases against this luod"
		./vmtest.test -test.v -test.run 'TestDaemon' || die "daemon test cases failed"
	fi
	if [ -e "$share/foreign/vmlinuz" ]; then
		say "luoctl load: a kernel of the other architecture ($(cat "$share/foreign/arch")) must be refused by the preflight"
		if out=$(./luoctl load "$share/foreign/vmlinuz" 2>&1); then
			die "luoctl load took a $(cat "$share/foreign/arch") kernel on $(uname -m): $out"
		fi
		echo "$out" | sed 's/^/    | /'
		echo "$out" | grep -q 'cannot be kexec.d on' || die "the refusal does not name the architectures: $out"
	fi
	start_workload vm-demo
	update_to 2
	;;
2)
	say "boot 2: kernel $(uname -r), after live update #1"
	start_luod
	expect_status 'liveupdate number: +1' 'continuity: +ok' "previous kernel: +$(cat "$share/boot1/release")" '1 incoming'
	say "workload: reclaiming its guest RAM from luod"
	./guestram verify --session vm-demo --finish || die "guest RAM not byte-exact after update #1"
	start_workload vm-demo-2 --own-ioctls
	update_to 3
	;;
3)
	say "boot 3: kernel $(uname -r), after live update #2"
	start_luod
	expect_status 'liveupdate number: +2' 'continuity: +ok' "previous kernel: +$(cat "$share/boot2/release")"
	./guestram verify --session vm-demo-2 --finish --own-ioctls || die "guest RAM not byte-exact after update #2"
	say "luoctl inspect: the handover of this boot, decoded"
	./luoctl inspect | sed 's/^/    | /' | head -40
	echo "demo: VERDICT: PASS: two live updates ($(cat "$share/boot1/release") -> $(cat "$share/boot2/release") -> $(cat "$share/boot3/release")), $size of guest RAM byte-exact after each"
	;;
*)
	die "no such stage"
	;;
esac
