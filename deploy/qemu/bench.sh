#!/usr/bin/env bash
# bench.sh — make bench: luod's cost against raw ioctls, measured in one VM
# run on the real LUO kernels, plus the Go benchmarks on the host.
#
#   boot1 7.2  preserve 1000 memfds of 1 MiB in several layouts, directly and
#              through luod (luod's RSS at 10/100/1000 sessions), then carry
#              10 sessions x 10 memfds twice (raw holder and luod) and upgrade
#   boot2 7.3  retrieve them both ways, byte-exact: the raw ones by a minimal
#              program (internal/bench/directretrieve) started and timed as
#              luod is, exec to READY=1; carry 100 x 10, upgrade
#   boot3 7.3  the same with 100 x 10; carry 1000 x 10, upgrade
#   boot4 7.3  the same with 1000 x 10; render the report
#
# The guest program is internal/bench's test binary, beside luod and the
# direct program in the guest's /luod; the figures go to
# docs/performance.md between its "bench:begin" and "bench:end" markers,
# the rest of that file is kept as written. Output in ${LUOD_OUT:-_out}/vm/bench/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${LUOD_OUT:-$repo/_out}/vm/bench
doc=$repo/docs/performance.md
. "$here/lib.sh"
# 1000 memfds of 1 MiB, then 2 x 1000 x 10 memfds of 64 KiB across a kexec.
export LUOD_VM_MEM=${LUOD_VM_MEM:-3G}
export LUOD_VM_TIMEOUT=${LUOD_VM_TIMEOUT:-1800}

echo "bench: Go benchmarks on the host (the fake kernel for luod's own cost)"
mkdir -p "$out.tmp"
(cd "$repo" && go test -run '^$' -bench . -benchmem -count 1 ./pkg/proto ./pkg/session ./pkg/kho &&
	go test -run '^$' -bench 'Hello|Preserve' -benchmem -count 1 -benchtime 3000x ./internal/daemon &&
	go test -run '^$' -bench 'Sessions1000|ManifestPhase1000|Reclaim100' -benchmem -count 1 -benchtime 5x ./internal/daemon) | tee "$out.tmp/gobench.txt"

echo "bench: installing what the VM needs and building (or reusing) the kernels"
vm_prepare "$out"
mv "$out.tmp/gobench.txt" "$out/" && rmdir "$out.tmp"
(cd "$repo" &&
	CGO_ENABLED=0 go build -o "$out/bin/" ./cmd/luod ./cmd/luod-exporter ./internal/bench/directretrieve &&
	CGO_ENABLED=0 go test -c -o "$out/bin/bench.test" ./internal/bench)
# The direct program's start alone runs from a copy: under TCG the first run
# of a file's code pays its translation, and each measured run is a first.
cp "$out/bin/directretrieve" "$out/bin/directretrieve-start"
vm_share "$out" 4
{
	echo "# stage name command (run in /luod of the guest)"
	for s in 1 2 3 4; do echo "$s bench ./bench.test -test.v -test.run TestBench"; done
} >"$out/share/plan"

"$here/run-vm.sh" "$out/share" "$out/console.log" && rc=0 || rc=$?
report=$out/share/bench/report.md
if [ $rc != 0 ] || ! grep -q 'LUOD-BENCH: done' "$out/console.log" || [ ! -s "$report" ]; then
	echo "bench: FAIL: no complete report (console in $out/console.log)"
	exit 1
fi

cpu=$(sed -n 's/^model name\s*:\s*//p' /proc/cpuinfo | head -1)
{
	echo "<!-- bench:begin: written by make bench (deploy/qemu/bench.sh); edit outside the markers -->"
	echo
	echo "## Latest figures"
	echo
	echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`make bench\` in one VM run:"
	echo "kernels $(cat "$out/share/boot1/release") (boot 1) and $(cat "$out/share/boot2/release") (boots 2–4),"
	echo "QEMU $(cat "$out/share/accel"), ${LUOD_VM_MEM} of guest RAM, 2 vCPUs;"
	echo "host: $cpu, $(nproc) cores, shared with other work, so figures are noisy."
	echo
	cat "$report"
	echo
	echo "### Go benchmarks (host, luod on the fake kernel)"
	echo
	echo '```'
	grep -E '^(goos|goarch|cpu|Benchmark|pkg)' "$out/gobench.txt"
	echo '```'
	echo
	echo "<!-- bench:end -->"
} >"$out/generated.md"
if [ -f "$doc" ] && grep -q 'bench:begin' "$doc"; then
	awk -v gen="$out/generated.md" '
		/<!-- bench:begin/ { while ((getline l < gen) > 0) print l; skip = 1; next }
		/<!-- bench:end -->/ { skip = 0; next }
		!skip { print }' "$doc" >"$out/performance.md"
else
	{ echo "# Performance"; echo; cat "$out/generated.md"; } >"$out/performance.md"
fi
cp "$out/performance.md" "$doc"
grep '^LUOD-BENCH: |' "$out/console.log" | sed 's/^LUOD-BENCH: //'
echo "bench: docs/performance.md updated"
