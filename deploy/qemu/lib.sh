# lib.sh — shared steps of the VM runs (sourced by vm-test.sh and demo.sh).
#
# vm_prepare OUT: install the host's needs, build (or reuse) the kernels
# LUOD_FROM_KERNEL (default 7.2) and LUOD_TO_KERNEL (default 7.3), and make
# an empty OUT/bin and OUT/share.
# vm_share OUT: pack OUT/bin/* into the initramfs and lay out the boots:
# boot1 = the "from" kernel, boot2 and boot3 = the "to" kernel, each with
# bzImage, release and config.
vm_prepare() {
	local out=$1
	"$here/host-deps.sh"
	k_from=$("$here/build-kernel.sh" "${LUOD_FROM_KERNEL:-7.2}")
	k_to=$("$here/build-kernel.sh" "${LUOD_TO_KERNEL:-7.3}")
	rm -rf "$out"
	mkdir -p "$out/bin" "$out/share"
}

vm_share() {
	local out=$1 n k
	"$here/mkinitramfs.sh" "$out/share/initrd.img" "$out/bin/"*
	for n in 1 2 3; do
		k=$k_to
		[ "$n" = 1 ] && k=$k_from
		mkdir -p "$out/share/boot$n"
		cp "$k/bzImage" "$k/release" "$k/config" "$out/share/boot$n/"
	done
}
