# lib.sh — shared steps of the VM runs (sourced by vm-test.sh and demo.sh).
#
# LUOD_ARCH picks the guest architecture: x86_64 (default; q35, KVM when it
# works, TCG otherwise) or arm64 (QEMU's virt machine under TCG; kernels
# cross-compiled, Go binaries built with GOARCH=arm64).
#
# vm_suffix names the architecture in output folders ("" on x86_64).
#
# vm_prepare OUT: install the host's needs, build (or reuse) the kernels
# LUOD_FROM_KERNEL (default 7.2) and LUOD_TO_KERNEL (default 7.3 on x86_64,
# 7.2 on arm64) for
# LUOD_ARCH, export GOARCH for the guest binaries and make an empty OUT/bin
# and OUT/share.
# vm_boots OUT N: lay out OUT/share/boot1..N: boot1 = the "from" kernel,
# the others the "to" kernel, each with vmlinuz (the boot image: bzImage or
# arm64 Image), release and config.
# vm_share OUT [N]: pack OUT/bin/* into the initramfs and lay out N boots
# (default 3).
lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LUOD_ARCH=${LUOD_ARCH:-x86_64}
case "$LUOD_ARCH" in
x86_64) vm_goarch=amd64 vm_image=bzImage vm_suffix="" vm_to=7.3 ;;
# arm64 updates 7.2 -> 7.2: one cross build instead of two keeps a cold
# make test inside its time budget; 7.2 -> 7.3 is shown on x86_64.
arm64) vm_goarch=arm64 vm_image=Image vm_suffix=-arm64 vm_to=7.2 ;;
*)
	echo "lib.sh: LUOD_ARCH=$LUOD_ARCH: want x86_64 or arm64" >&2
	exit 2
	;;
esac

vm_prepare() {
	local out=$1
	"$lib_dir/host-deps.sh"
	k_from=$("$lib_dir/build-kernel.sh" "${LUOD_FROM_KERNEL:-7.2}" "$LUOD_ARCH")
	k_to=$("$lib_dir/build-kernel.sh" "${LUOD_TO_KERNEL:-$vm_to}" "$LUOD_ARCH")
	export GOARCH=$vm_goarch
	rm -rf "$out"
	mkdir -p "$out/bin" "$out/share"
}

vm_boots() {
	local out=$1 n k
	for n in $(seq 1 "$2"); do
		k=$k_to
		[ "$n" = 1 ] && k=$k_from
		mkdir -p "$out/share/boot$n"
		cp "$k/$vm_image" "$out/share/boot$n/vmlinuz"
		cp "$k/release" "$k/config" "$out/share/boot$n/"
	done
}

vm_share() {
	"$lib_dir/mkinitramfs.sh" "$1/share/initrd.img" "$1/bin/"*
	vm_boots "$1" "${2:-3}"
}
