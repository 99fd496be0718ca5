#!/usr/bin/env bash
# host-deps.sh installs what the VM harness needs on a Debian host: QEMU,
# busybox, the kernel build toolchain and the Debian kernel sources the LUO
# kernels are built from.
#
# linux-source-7.2 lives in sid and linux-source-7.3 in trixie-backports.
# They are reached through an apt list of the project's own that reuses the
# mirror already configured for this host, pinned at priority 100 so that no
# other package on the machine is ever upgraded from those suites.
set -euo pipefail

want_pkgs=(qemu-system-x86 qemu-utils busybox-static cpio bc bison flex
	libelf-dev libssl-dev dwarves python3 xz-utils zstd kmod rsync
	linux-source-7.2 linux-source-7.3)

list=/etc/apt/sources.list.d/luod-kernel-sources.sources
pin=/etc/apt/preferences.d/luod-kernel-sources

have_all() {
	local p
	for p in "${want_pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
	done
}

if have_all; then
	exit 0
fi

mirror=$("$(dirname "$0")/mirror.sh")

if [ ! -f "$list" ]; then
	cat >"$list" <<EOT
# Added by luod's deploy/qemu/host-deps.sh: Debian kernel sources for the
# LUO VM harness. Pinned low in $pin.
Types: deb
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
