#!/usr/bin/env bash
# mkinitramfs.sh OUT BINARY... — pack the VM harness initramfs: busybox
# (static, for LUOD_ARCH: the host's own on x86_64, the one host-deps.sh
# unpacked into the cache on arm64), deploy/qemu/init as /init and the given
# static binaries under /luod, gzip-compressed newc cpio.
set -euo pipefail
out=${1:?usage: mkinitramfs.sh OUT BINARY...}
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

chmod 755 "$root" # mktemp made it 0700: that would be the guest's /
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,mnt,root,luod,etc}
case "${LUOD_ARCH:-x86_64}" in
x86_64) busybox=/bin/busybox ;;
*) busybox=${LUOD_CACHE:-/var/cache/luod}/busybox-${LUOD_ARCH}/bin/busybox ;;
esac
[ -x "$busybox" ] || {
	echo "mkinitramfs: no busybox for ${LUOD_ARCH:-x86_64} at $busybox (run deploy/qemu/host-deps.sh)" >&2
	exit 1
}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$here/init" "$root/init"
chmod 755 "$root/init"
# The kernel needs a console node before devtmpfs is mounted.
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
for b in "$@"; do
	cp "$b" "$root/luod/"
done
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out"
