# lib.sh — shared steps of the VM runs (sourced by vm-test.sh and demo.sh).
#
# vm_prepare OUT: install the host's needs, build (or reuse) the kernels
# LUOD_FROM_KERNEL (default 7.2) and LUOD_TO_KERNEL (default 7.3), and make
# an empty OUT/bin and OUT/share.
# vm_boots OUT N: lay out OUT/share/boot1..N: boot1 = the "from" kernel,
# the others the "to" kernel, each with bzImage, release and config.
# vm_share OUT: pack OUT/bin/* into the initramfs and lay out three boots.
lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

vm_prepare() {
	local out=$1
	"$lib_dir/host-deps.sh"
	k_from=$("$lib_dir/build-kernel.sh" "${LUOD_FROM_KERNEL:-7.2}")
	k_to=$("$lib_dir/build-kernel.sh" "${LUOD_TO_KERNEL:-7.3}")
	rm -rf "$out"
	mkdir -p "$out/bin" "$out/share"
}

vm_boots() {
	local out=$1 n k
	for n in $(seq 1 "$2"); do
		k=$k_to
		[ "$n" = 1 ] && k=$k_from
		mkdir -p "$out/share/boot$n"
		cp "$k/bzImage" "$k/release" "$k/config" "$out/share/boot$n/"
	done
}

vm_share() {
	"$lib_dir/mkinitramfs.sh" "$1/share/initrd.img" "$1/bin/"*
	vm_boots "$1" 3
}
