#!/bin/sh
# luod-svc.sh start [LUOD-ARGS...] | kill — luod as a plain service in the
# VM harness, without systemd (so without an fd store): what the demo and
# the fault cases start, kill and restart. Run from /luod of the guest.
#
#   start  start luod in the background with the harness's flags (state
#          directory LUOD_STATE_DIR, default /var/lib/luod) and the given
#          ones; its log goes to /tmp/luod.log and to the console, only
#          its warnings and errors with LUOD_SVC_CONSOLE=warn (the serial
#          console is slow: luod would wait on it under load). Returns once
#          luod serves.
#   kill   SIGKILL luod and wait until it is gone.
set -eu
state=${LUOD_STATE_DIR:-/var/lib/luod}
case "${1:-}" in
start)
	shift
	mkdir -p /run/luod "$state"
	ip link set lo up 2>/dev/null || true # the metrics endpoint listens on 127.0.0.1
	(./luod --socket.group 100 --reclaim.grace 1h --state.dir "$state" "$@" 2>&1 |
		while IFS= read -r l; do
			echo "$l" >>/tmp/luod.log
			case "${LUOD_SVC_CONSOLE:-all}:$l" in
			warn:*level=INFO* | warn:*level=DEBUG*) ;;
			*) echo "    luod| $l" >/dev/console ;;
			esac
		done) </dev/null >/dev/null 2>&1 &
	i=0
	until ./luoctl status >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 150 ] || { echo "luod-svc: luod did not come up" >&2; exit 1; }
		sleep 0.2
	done
	;;
kill)
	pid=$(pidof luod) || { echo "luod-svc: no luod running" >&2; exit 1; }
	kill -KILL $pid
	while kill -0 $pid 2>/dev/null; do sleep 0.1; done
	;;
*)
	echo "usage: luod-svc.sh start [LUOD-ARGS...] | kill" >&2
	exit 2
	;;
esac
