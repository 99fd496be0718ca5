//go:build linux && (amd64 || arm64 || riscv64)

package kexec

import (
	"os"

	ukexec "github.com/u-root/u-root/pkg/boot/kexec"
	"golang.org/x/sys/unix"
)

func fileLoad(kernel, initrd *os.File, cmdline string) error {
	return ukexec.FileLoad(kernel, initrd, cmdline)
}

func fileUnload() error {
	return unix.KexecFileLoad(-1, -1, "", unix.KEXEC_FILE_UNLOAD)
}

func reboot() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC)
}

var errKeyRejected = unix.EKEYREJECTED
