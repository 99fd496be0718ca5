#!/usr/bin/env bash
# host-deps.sh installs what the VM harness needs on a Debian host: QEMU,
# busybox, the kernel build toolchain and the Debian kernel sources the LUO
# kernels are built from. With LUOD_ARCH=arm64 also the aarch64 cross
# compiler, qemu-system-aarch64, qemu-user (for the arm64 unit tests) and an
# arm64 busybox-static, unpacked into
# the cache (it cannot be installed beside the host's own busybox).
#
# linux-source-7.2 lives in sid and linux-source-7.3 in trixie-backports.
# They are reached through an apt list of the project's own that reuses the
# mirror already configured for this host, pinned at priority 100 so that no
# other package on the machine is ever upgraded from those suites.
set -euo pipefail

want_pkgs=(qemu-system-x86 qemu-utils busybox-static cpio bc bison flex
	libelf-dev libssl-dev dwarves python3 xz-utils zstd kmod rsync
	linux-source-7.2 linux-source-7.3)

arch=${LUOD_ARCH:-x86_64}
cache=${LUOD_CACHE:-/var/cache/luod}
busybox_dir=$cache/busybox-$arch
if [ "$arch" = arm64 ]; then
	want_pkgs+=(gcc-aarch64-linux-gnu qemu-system-arm qemu-user-static)
fi

list=/etc/apt/sources.list.d/luod-kernel-sources.sources
pin=/etc/apt/preferences.d/luod-kernel-sources

have_all() {
	local p
	for p in "${want_pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
	done
}

# arm64 busybox: dpkg must know the foreign architecture for apt to fetch
# it; the package is only downloaded and unpacked, never installed.
arm64_busybox() {
	[ "$arch" = arm64 ] || return 0
	[ -x "$busybox_dir/bin/busybox" ] && return 0
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then
		dpkg --add-architecture arm64
		apt-get update -qq
	fi
	local tmp
	tmp=$(mktemp -d)
	chmod 755 "$tmp" # apt downloads as _apt
	(cd "$tmp" && apt-get download -qq busybox-static:arm64)
	rm -rf "$busybox_dir.tmp"
	dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$busybox_dir.tmp"
	rm -rf "$tmp" "$busybox_dir"
	mkdir -p "$cache"
	mv "$busybox_dir.tmp" "$busybox_dir"
}

if have_all; then
	arm64_busybox
	exit 0
fi

mirror=$("$(dirname "$0")/mirror.sh")

if [ ! -f "$list" ]; then
	cat >"$list" <<EOT
# Added by luod's deploy/qemu/host-deps.sh: Debian kernel sources for the
# LUO VM harness. Pinned low in $pin.
Types: deb
Architectures: amd64
URIs: $mirror
Suites: sid trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
	cat >"$pin" <<'EOT'
# Added by luod's deploy/qemu/host-deps.sh: never upgrade anything from these
# suites unless asked for by name.
Package: *
Pin: release n=sid
Pin-Priority: 100

Package: *
Pin: release n=trixie-backports
Pin-Priority: 100
EOT
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want_pkgs[@]}"
arm64_busybox
