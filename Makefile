# luod — see README.md. Everything runs as root on a Debian host; the VM
# targets install what they need (deploy/qemu/host-deps.sh) and cache the
# kernels they build outside the repository (LUOD_CACHE, default
# /var/cache/luod).

GO       ?= go
FUZZTIME ?= 10s

.PHONY: all build demo test unit fuzz-short vm-test vm-contract vm-daemon vm-systemd vm-systemd-bookworm vm-systemd-sid vet fmt-check clean

all: build

build:
	$(GO) build ./...

## demo: a real live update in a VM — luod, luoctl and a workload with 256 MiB of
## guest RAM through two updates, 7.2 -> 7.3 -> 7.3 (installs what it needs).
demo:
	deploy/qemu/demo.sh

## test: every test — unit tests, short fuzzing, and the VM tests on real LUO kernels.
test: unit vm-test

## unit: vet, gofmt check and the Go unit tests (no root, no VM).
unit: vet fmt-check
	$(GO) test -count=1 ./...
	deploy/systemd/verify.sh
	GOARCH=arm64 $(GO) build ./...
	$(MAKE) fuzz-short

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

## vm-test: the VM runs on real LUO kernels.
vm-test: vm-contract vm-daemon vm-systemd

## vm-contract: the kernel contract: raw ioctls, handover decoding, byte-exact data.
vm-contract:
	deploy/qemu/vm-test.sh

## vm-daemon: the demo flow with the daemon's VM test cases in its first boot.
vm-daemon:
	deploy/qemu/demo.sh --tests

## vm-systemd: luod under real systemd as PID 1 (rootfs by debootstrap, cached per
## suite), both upgrade paths: socket activation, a SIGKILL restart that keeps the
## session through the fd store, metrics, a watchdog kill, and one live update
## 7.2 -> 7.3 from inside the unit.
vm-systemd: vm-systemd-bookworm vm-systemd-sid

## vm-systemd-bookworm: systemd 252, the direct path (luod calls reboot(2)).
vm-systemd-bookworm:
	deploy/qemu/systemd/vm-systemd.sh bookworm

## vm-systemd-sid: systemd >= 261, the orderly path (kexec.target carries the fd store).
vm-systemd-sid:
	deploy/qemu/systemd/vm-systemd.sh sid

clean:
	rm -rf _out
