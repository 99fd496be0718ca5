#!/usr/bin/env bash
# build-kernel.sh VERSION — build (or reuse) a LUO-capable x86_64 kernel from
# Debian's linux-source-VERSION and print the path of its cache directory,
# which holds bzImage, config and release.
#
# The cache lives outside the repository (LUOD_CACHE, default
# /var/cache/luod) and is keyed by the Debian source package version, the
# config fragment and the build recipe (bump recipe below when the steps
# change), so a kernel is rebuilt only when one of them changes. Builds of
# the same key wait for each other (flock), so parallel callers build once.
set -euo pipefail

ver=${1:?usage: build-kernel.sh VERSION (e.g. 7.2)}
here=$(cd "$(dirname "$0")" && pwd)
cache=${LUOD_CACHE:-/var/cache/luod}
jobs=${LUOD_KERNEL_JOBS:-$(($(nproc) + 1))}
frag=$here/luo.config
recipe=1

pkg=linux-source-$ver
srcver=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || {
	echo "build-kernel: $pkg is not installed (run deploy/qemu/host-deps.sh)" >&2
	exit 1
}
key=$( (echo "$pkg $srcver recipe=$recipe"; cat "$frag") | sha256sum | cut -c1-16)
out=$cache/kernel/x86_64-$ver-$key

if [ -f "$out/bzImage" ] && [ -f "$out/release" ]; then
	echo "$out"
	exit 0
fi
mkdir -p "$cache/kernel"
exec 9>"$out.lock"
flock 9
if [ -f "$out/bzImage" ] && [ -f "$out/release" ]; then
	echo "$out"
	exit 0
fi

log() { echo "build-kernel: $*" >&2; }
log "building $pkg $srcver (key $key) with -j$jobs; log in $out.build.log"
work=$(mktemp -d "$cache/kernel/build-$ver.XXXXXX")
trap 'rm -rf "$work"' EXIT

tar -C "$work" -xf "/usr/src/$pkg.tar.xz"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
{
	make -C "$src" x86_64_defconfig
	"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$frag"
	make -C "$src" olddefconfig
} >"$out.build.log" 2>&1

# Every option the fragment asks for must have survived olddefconfig.
missing=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		if ! grep -qx "$line" "$src/.config"; then
			log "config fragment line not honoured: $line"
			missing=1
		fi
		;;
	esac
done <"$frag"
[ "$missing" = 0 ] || exit 1

if ! make -C "$src" -j"$jobs" bzImage >>"$out.build.log" 2>&1; then
	tail -40 "$out.build.log" >&2
	exit 1
fi

mkdir -p "$out.tmp"
cp "$src/arch/x86/boot/bzImage" "$out.tmp/bzImage"
cp "$src/.config" "$out.tmp/config"
make -s -C "$src" kernelrelease >"$out.tmp/release"
echo "$pkg $srcver" >"$out.tmp/source"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built $(cat "$out/release") in $out"
echo "$out"
