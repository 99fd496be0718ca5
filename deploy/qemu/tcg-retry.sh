#!/usr/bin/env bash
# tcg-retry.sh SUITE-COMMAND... — run one VM suite; if it fails and its
# console shows the x86 guest kernel tripping over its own text patching
# under multi-threaded TCG ("Oops: int3": a vCPU ran a breakpoint the
# kernel had already patched away; seen twice in early boot, once in a cold
# boot, once after a kexec, both on a loaded host), run the whole suite
# once more from scratch. Any other failure stands. It is the harness's only
# retry: run-vm.sh itself boots once.
#
# The first try's suite lines are relabelled so that the closing count of
# .ci/run reads only the try that stands; when there is no second try,
# they are printed again as they were.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" 2>&1 | tee "$log" | sed -u 's/LUOD-VM-SUITE: /LUOD-VM-SUITE (first try): /'
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ] && grep -q 'accel=tcg' "$log" && grep -q 'Oops: int3' "$log"; then
	echo "tcg-retry: the guest kernel hit the TCG text-patching race (Oops: int3):"
	grep -m3 -E 'Oops: int3|RIP:' "$log" | sed 's/^/  /'
	echo "tcg-retry: running the suite once more: $*"
	"$@"
	exit
fi
grep -o 'LUOD-VM-SUITE: .*' "$log" | sed 's/^/tcg-retry: /'
exit "$rc"
