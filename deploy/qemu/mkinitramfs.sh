#!/usr/bin/env bash
# mkinitramfs.sh OUT BINARY... — pack the VM harness initramfs: busybox
# (static), deploy/qemu/init as /init and the given static binaries under
# /luod, gzip-compressed newc cpio.
set -euo pipefail
out=${1:?usage: mkinitramfs.sh OUT BINARY...}
shift
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

chmod 755 "$root" # mktemp made it 0700: that would be the guest's /
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,mnt,root,luod,etc}
cp /bin/busybox "$root/bin/busybox"
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
