#!/usr/bin/env bash
# build-kernel.sh VERSION [ARCH] — build (or reuse) a LUO-capable kernel for
# ARCH (x86_64, the default, or arm64) from Debian's linux-source-VERSION and
# print the path of its cache directory, which holds the boot image (bzImage
# on x86_64, Image on arm64), config and release.
#
# x86_64 starts from x86_64_defconfig plus luo.config; arm64 starts from
# allnoconfig plus luo-arm64.config (only what QEMU's virt machine needs),
# cross-compiled with Debian's gcc-aarch64-linux-gnu.
#
# The cache lives outside the repository (LUOD_CACHE, default
# /var/cache/luod) and is keyed by the Debian source package version, the
# config fragment and the build recipe (bump recipe below when the steps
# change), so a kernel is rebuilt only when one of them changes. Builds of
# the same key wait for each other (flock), so parallel callers build once.
set -euo pipefail

ver=${1:?usage: build-kernel.sh VERSION [x86_64|arm64] (e.g. 7.2)}
arch=${2:-x86_64}
here=$(cd "$(dirname "$0")" && pwd)
cache=${LUOD_CACHE:-/var/cache/luod}
jobs=${LUOD_KERNEL_JOBS:-$(($(nproc) + 1))}
case "$arch" in
x86_64)
	frag=$here/luo.config base=x86_64_defconfig image=bzImage
	kmake=(ARCH=x86_64) boot=arch/x86/boot/bzImage
	recipe=1
	;;
arm64)
	frag=$here/luo-arm64.config base=allnoconfig image=Image
	kmake=(ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-) boot=arch/arm64/boot/Image
	recipe=arm64-1
	;;
*)
	echo "build-kernel: unknown architecture $arch (want x86_64 or arm64)" >&2
	exit 2
	;;
esac

pkg=linux-source-$ver
srcver=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || {
	echo "build-kernel: $pkg is not installed (run deploy/qemu/host-deps.sh)" >&2
	exit 1
}
key=$( (echo "$pkg $srcver recipe=$recipe"; cat "$frag") | sha256sum | cut -c1-16)
out=$cache/kernel/$arch-$ver-$key

if [ -f "$out/$image" ] && [ -f "$out/release" ]; then
	echo "$out"
	exit 0
fi
mkdir -p "$cache/kernel"
exec 9>"$out.lock"
flock 9
if [ -f "$out/$image" ] && [ -f "$out/release" ]; then
	echo "$out"
	exit 0
fi

log() { echo "build-kernel: $*" >&2; }
log "building $arch $pkg $srcver (key $key) with -j$jobs; log in $out.build.log"
work=$(mktemp -d "$cache/kernel/build-$ver.XXXXXX")
trap 'rm -rf "$work"' EXIT

tar -C "$work" -xf "/usr/src/$pkg.tar.xz"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
{
	make -C "$src" "${kmake[@]}" "$base"
	env "${kmake[@]}" "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$frag"
	make -C "$src" "${kmake[@]}" olddefconfig
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

if ! make -C "$src" "${kmake[@]}" -j"$jobs" "$image" >>"$out.build.log" 2>&1; then
	tail -40 "$out.build.log" >&2
	exit 1
fi

mkdir -p "$out.tmp"
cp "$src/$boot" "$out.tmp/$image"
cp "$src/.config" "$out.tmp/config"
make -s -C "$src" "${kmake[@]}" kernelrelease >"$out.tmp/release"
echo "$pkg $srcver" >"$out.tmp/source"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built $(cat "$out/release") in $out"
echo "$out"
