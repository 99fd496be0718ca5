#!/usr/bin/env bash
# mkrootfs.sh OUT BINDIR [SUITE] — the initramfs of the systemd VM run: a
# minimal Debian root of SUITE (default bookworm: systemd 252; sid: systemd
# >= 261) with systemd as PID 1, luod's units from
# deploy/systemd enabled, BINDIR/luod (the unit's ExecStart=) and
# BINDIR/luod-exporter beside it in /usr/local/sbin, BINDIR/luoctl and
# BINDIR/guestram in /usr/local/bin, and
# luod-vmtest.service running vmtest-stage.sh once luod is up.
# Written to OUT as a gzip (-1) newc cpio.
#
# The debootstrapped base is cached in ${LUOD_CACHE:-/var/cache/luod}/rootfs,
# keyed by suite, package list and the recipe below (bump it when the base
# steps change); builds of one key wait for each other (flock). Each run
# copies the base and adds what changes per run.
set -euo pipefail
out=${1:?usage: mkrootfs.sh OUT BINDIR [SUITE]}
bindir=${2:?usage: mkrootfs.sh OUT BINDIR [SUITE]}
suite=${3:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cache=${LUOD_CACHE:-/var/cache/luod}
pkgs=systemd,systemd-sysv,dbus,curl,kmod,procps
recipe=1

log() { echo "mkrootfs: $*" >&2; }

key=$(echo "$suite $pkgs recipe=$recipe" | sha256sum | cut -c1-16)
base=$cache/rootfs/$suite-$key

build_base() {
	command -v debootstrap >/dev/null || {
		log "installing debootstrap"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
	}
	local mirror work t0
	mirror=$("$here/../mirror.sh")
	work=$(mktemp -d "$cache/rootfs/build-$suite.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$work'" EXIT
	t0=$(date +%s)
	log "debootstrap $suite (minbase + $pkgs), log in $base.build.log"
	if ! debootstrap --variant=minbase --include="$pkgs" \
		--keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
		"$suite" "$work/root" "$mirror" >"$base.build.log" 2>&1; then
		tail -30 "$base.build.log" >&2
		exit 1
	fi
	local r=$work/root
	# Slim it: the image is unpacked into RAM at every boot.
	rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* \
		"$r"/usr/share/locale/* "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* \
		"$r"/var/cache/debconf/*-old "$r"/var/log/*.log
	chmod 755 "$r"
	echo "$suite $pkgs recipe=$recipe" >"$r/etc/luod-vm-rootfs"
	mv "$r" "$base"
	rm -rf "$work"
	trap - EXIT
	log "built $base in $(($(date +%s) - t0))s ($(du -sh "$base" | cut -f1))"
}

mkdir -p "$cache/rootfs"
if [ ! -f "$base/etc/luod-vm-rootfs" ]; then
	exec 9>"$base.lock"
	flock 9
	[ -f "$base/etc/luod-vm-rootfs" ] || build_base
	exec 9>&-
fi

# Per run: a copy of the base with luod and the test added.
root=$(mktemp -d "$cache/rootfs/run.XXXXXX")
trap 'rm -rf "$root"' EXIT
cp -a "$base/." "$root/"
chmod 755 "$root"

install -m 0755 "$bindir/luod" "$bindir/luod-exporter" "$root/usr/local/sbin/"
install -m 0755 "$bindir/luoctl" "$bindir/guestram" "$root/usr/local/bin/"
install -m 0755 "$here/vmtest-stage.sh" "$root/usr/local/bin/vmtest-stage.sh"
install -m 0644 "$repo/deploy/systemd/luod.service" "$repo/deploy/systemd/luod.socket" \
	"$here/luod-vmtest.service" "$root/etc/systemd/system/"
install -m 0644 "$repo/deploy/systemd/luod.sysusers" "$root/usr/lib/sysusers.d/luod.conf"
# The socket's group (what systemd-sysusers would create from luod.sysusers).
chroot "$root" /usr/sbin/groupadd --system luod
# Test-only drop-ins (see vm-systemd.sh), if any.
if compgen -G "$here/dropins/*.conf" >/dev/null; then
	mkdir -p "$root/etc/systemd/system/luod.service.d"
	install -m 0644 "$here"/dropins/*.conf "$root/etc/systemd/system/luod.service.d/"
fi

systemctl --root="$root" enable luod.socket luod.service luod-vmtest.service >/dev/null 2>&1
# Boot straight to the test: nothing that waits for devices, logins or the
# network, no timers.
systemctl --root="$root" set-default multi-user.target >/dev/null 2>&1
for u in getty@tty1.service serial-getty@ttyS0.service getty.target console-getty.service \
	systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
	dpkg-db-backup.timer e2scrub_all.timer fstrim.timer man-db.timer \
	systemd-tmpfiles-clean.timer systemd-networkd-wait-online.service \
	systemd-firstboot.service systemd-hwdb-update.service systemd-update-utmp.service \
	systemd-update-utmp-runlevel.service systemd-logind.service \
	systemd-remount-fs.service systemd-journal-catalog-update.service \
	ldconfig.service; do
	ln -sf /dev/null "$root/etc/systemd/system/$u"
done
# A machine id (an empty one means "first boot" to systemd 252), a name,
# no fstab entries; no /etc/initrd-release, so systemd runs this as the root.
tr -d '-' </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
echo luod-vm >"$root/etc/hostname"
: >"$root/etc/fstab"
rm -f "$root/etc/initrd-release"
mkdir -p "$root/mnt/host"
[ -e "$root/dev/console" ] || mknod -m 600 "$root/dev/console" c 5 1
[ -e "$root/dev/null" ] || mknod -m 666 "$root/dev/null" c 1 3

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out"
log "$out: $(du -h "$out" | cut -f1) (tree $(du -sh "$root" | cut -f1))"
