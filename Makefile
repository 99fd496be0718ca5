# luod — see README.md. Everything runs as root on a Debian host; the VM
# targets install what they need (deploy/qemu/host-deps.sh) and cache the
# kernels they build outside the repository (LUOD_CACHE, default
# /var/cache/luod).

GO       ?= go
# An execution count, not a duration: with a duration Go 1.26's fuzz
# coordinator can fail a target with "context deadline exceeded" at the end
# of its time (golang/go#75804, fixed in Go 1.27), as it did once in CI.
FUZZTIME ?= 200000x
# Every VM suite of make test runs through tcg-retry.sh: once more, from
# scratch, only if the guest kernel hit the multi-threaded TCG
# text-patching race (see the script); any other failure stands.
VM       = deploy/qemu/tcg-retry.sh

.PHONY: all build bench demo demo-arm64 test unit unit-arm64 fuzz-short vm-test vm-contract vm-daemon vm-systemd vm-systemd-bookworm vm-systemd-sid vm-faults vm-arm64 reliability-doc vet fmt-check clean

all: build

build:
	$(GO) build ./...

## demo: a real live update in a VM — luod, luoctl and a workload with 256 MiB of
## guest RAM through two updates, 7.2 -> 7.3 -> 7.3 (installs what it needs).
demo:
	deploy/qemu/demo.sh

## demo-arm64: the same demo on an arm64 guest (QEMU virt, TCG), kernels cross-built.
demo-arm64:
	LUOD_ARCH=arm64 deploy/qemu/demo.sh

## test: every test — unit tests (amd64 and arm64), short fuzzing, and the VM tests on
## real LUO kernels.
test: unit unit-arm64 vm-test

## bench: luod's cost against raw ioctls, measured in one VM run on the real LUO
## kernels (and the Go benchmarks on the host); writes docs/performance.md. Not part of test.
bench:
	deploy/qemu/bench.sh

## unit: vet, gofmt check and the Go unit tests under the race detector (no root, no VM).
unit: vet fmt-check
	$(GO) test -race -count=1 ./...
	deploy/systemd/verify.sh
	GOARCH=arm64 $(GO) build ./...
	$(MAKE) fuzz-short

## unit-arm64: the unit tests built for arm64 and run under qemu-user (installed by
## host-deps.sh). Skipped there, and run natively by `unit`: the tests that re-exec
## their own binary (TestTakeInherited*, and TestExporterProcess, whose luod starts the
## test binary as its exporter: that needs binfmt_misc registration, which a container may
## not allow) and the one that needs MSG_CTRUNC, which qemu-user does not report.
ARM64_EMU_SKIP = ^(TestTakeInherited|TestTakeInheritedOtherPID|TestTakeInheritedMissingFD|TestControlTruncated|TestExporterProcess)$$
unit-arm64:
	LUOD_ARCH=arm64 deploy/qemu/host-deps.sh
	GOARCH=arm64 CGO_ENABLED=0 $(GO) test -count=1 -exec qemu-aarch64-static -skip '$(ARM64_EMU_SKIP)' ./...

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi

## fuzz-short: each decoder fuzz target for FUZZTIME (seed corpora in testdata).
fuzz-short:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
			$(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) -parallel 2 $$pkg >_fuzz.log 2>&1 \
				|| { cat _fuzz.log; rm -f _fuzz.log; exit 1; }; \
		done; \
	done; rm -f _fuzz.log

## vm-test: the VM runs on real LUO kernels, then docs/reliability.md from their consoles.
vm-test: vm-contract vm-daemon vm-systemd vm-faults vm-arm64
	deploy/qemu/reliability.sh

## vm-contract: the kernel contract: raw ioctls, handover decoding, byte-exact data.
vm-contract:
	$(VM) deploy/qemu/vm-test.sh

## vm-daemon: the demo flow with the daemon's VM test cases in its first boot.
vm-daemon:
	$(VM) deploy/qemu/demo.sh --tests

## vm-systemd: luod under real systemd as PID 1 (rootfs by debootstrap, cached per
## suite), both upgrade paths: socket activation, a SIGKILL restart that keeps the
## session through the fd store, metrics, a watchdog kill, and one live update
## 7.2 -> 7.3 from inside the unit.
vm-systemd: vm-systemd-bookworm vm-systemd-sid

## vm-systemd-bookworm: systemd 252, the direct path (luod calls reboot(2)).
vm-systemd-bookworm:
	$(VM) deploy/qemu/systemd/vm-systemd.sh bookworm

## vm-systemd-sid: systemd >= 261, the orderly path (kexec.target carries the fd store).
vm-systemd-sid:
	$(VM) deploy/qemu/systemd/vm-systemd.sh sid

## vm-arm64: the kernel contract and the demo flow on arm64 (QEMU virt, TCG): two live
## updates with byte-exact data, the handover decoded, an x86 bzImage refused.
vm-arm64:
	LUOD_ARCH=arm64 $(VM) deploy/qemu/vm-test.sh
	LUOD_ARCH=arm64 $(VM) deploy/qemu/demo.sh

## vm-faults: luod's fault cases in three boots, the third a second QEMU run on the
## same share (a cold boot): luod SIGKILLed without an fd store, a client that quits
## after preserving, refused loads, 1000 concurrent clients, a full and read-only
## state directory, a failing reboot call, then the kexec; all data byte-exact after.
vm-faults:
	$(VM) deploy/qemu/faults.sh

## reliability-doc: docs/reliability.md again from the last vm-daemon and vm-faults consoles.
reliability-doc:
	deploy/qemu/reliability.sh

clean:
	rm -rf _out
