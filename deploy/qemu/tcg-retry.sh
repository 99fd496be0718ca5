#!/usr/bin/env bash
# tcg-retry.sh SUITE-COMMAND... — run one VM suite; if it fails and its
# console shows the x86 guest kernel tripping over its own text patching
# under multi-threaded TCG ("Oops: int3": a vCPU ran a breakpoint the
# kernel had already patched away; seen in early boot, in a cold boot and
# after a kexec, and once twice in a row in one suite), run the whole
# suite again from scratch, up to LUOD_TCG_TRIES tries in all (default
# 3). Any other failure stands at once. It is the harness's only retry:
# run-vm.sh itself boots once.
#
# The suite lines of a try that is run again are relabelled "(try N)" so
# that the closing count of .ci/run reads only the try that stands; the
# standing try's lines are printed as they were.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
tries=${LUOD_TCG_TRIES:-3}
for ((try = 1; try < tries; try++)); do
	"$@" 2>&1 | tee "$log" | sed -u "s/LUOD-VM-SUITE: /LUOD-VM-SUITE (try $try): /"
	rc=${PIPESTATUS[0]}
	if [ "$rc" = 0 ] || ! grep -q 'accel=tcg' "$log" || ! grep -q 'Oops: int3' "$log"; then
		grep -o 'LUOD-VM-SUITE: .*' "$log" | sed 's/^/tcg-retry: /'
		exit "$rc"
	fi
	echo "tcg-retry: the guest kernel hit the TCG text-patching race (Oops: int3) on try $try of $tries:"
	grep -m3 -E 'Oops: int3|RIP:' "$log" | sed 's/^/  /'
	echo "tcg-retry: running the suite again from scratch: $*"
done
"$@"
