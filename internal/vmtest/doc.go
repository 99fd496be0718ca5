// Package vmtest is the cross-kexec scenario run inside the VM harness
// (deploy/qemu). It is compiled with `go test -c` into the VM's initramfs
// and runs once per boot; LUOD_STAGE says which boot this is.
//
// The host lays out a shared folder (virtio-9p, mounted at LUOD_SHARE):
//
//	boot1/vmlinuz boot1/release   the kernel of the first (cold) boot
//	boot2/…, boot3/…              the kernel each kexec goes into
//	initrd.img                    this initramfs, reused by every kexec
//	state/                        what a stage leaves for the next one
//
// Stage N checks what came over from stage N-1 (nothing on the cold boot),
// then preserves fresh sessions and kexecs into bootN+1, if there is one.
// Every decoded handover number is checked against the kernel's own log.
package vmtest
