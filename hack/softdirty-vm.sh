#!/usr/bin/env bash
# Runs the soft-dirty tests (tests/tests/softdirty.rs) in a QEMU VM whose
# kernel has soft-dirty memory tracking, which this machine's kernel lacks:
# CRIU pre-dumps, incremental dumps against parent images, and the ticker's
# criu-parent versions can only be tested there.
#
#   hack/softdirty-vm.sh [run] [FILTER...]   build what is missing, boot the VM, run the
#                                            soft-dirty tests inside (FILTER as for cargo
#                                            test); exits with their status
#   hack/softdirty-vm.sh exec CMD [ARG...]   run one command in the VM instead, e.g.
#                                            `exec criu check --feature mem_dirty_track`
#   hack/softdirty-vm.sh bench [ARG...]      the migration benchmark in the VM, where
#                                            pre-copy works: `bench migrate ARG...` on a
#                                            local cluster inside; its JSON and plots are
#                                            copied to target/bench/vm/ (a results disk)
#   hack/softdirty-vm.sh image               only build (or find) the cached VM image
#
# The VM (see hack/vm/image.sh) is Debian bookworm's cloud kernel 6.1 with a
# minbase root file system holding this host's containerd, runc and CRIU; each
# run adds a payload disk with this checkout's release binaries (the shim, and
# the cluster's migratectl, migrate-agent, migrate-coordinator and
# containerd-snapshotter-migrate: the tests bring up hack/cluster.sh's local
# cluster inside the VM, to move containers between two hosts), the test
# binary, the test image and the hack/ scripts the tests use. QEMU emulates the CPU
# (TCG): this machine's /dev/kvm cannot boot a stock kernel (PLATFORM.md), so
# KVM is never used. The guest's console is this script's output and is kept
# in target/softdirty-vm/console.log; the guest reports the tests' exit status
# on it, which becomes this script's.
#
# Environment:
#   VM_CPUS=N          virtual CPUs (default 2: TCG runs one host thread per vCPU)
#   VM_MEMORY_MIB=N    guest memory (default 3072)
#   VM_TIMEOUT=S       seconds before the VM is killed (default 900: the three
#                      tests take about 400 s with 2 vCPUs on a busy 2-core host)
#   CI=true            passed into the VM: a missing prerequisite fails a test
#
# Under the emulated CPU everything takes 5 to 20 times as long as on this
# machine, so the deadlines of hack/cluster.sh, hack/containerd.sh and the
# cluster tests are raised inside the VM (and only there), each to the value
# of the variable here if set, else to the default below (seconds):
#   START_TIMEOUT (containerd answering), SNAPSHOTTER_TIMEOUT, READY_TIMEOUT
#   (an agent ready at the coordinator), CLUSTER_SCRIPT_TIMEOUT (a whole
#   `hack/cluster.sh up`), CLUSTER_EXEC_TIMEOUT (one command on a host, such
#   as a migration).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$REPO/target/softdirty-vm
SHIM=containerd-shim-migrate-v1
# The release binaries the payload carries: the shim; migratectl, with which
# the tests restore the ticker's versions; and what hack/cluster.sh runs on
# the cluster's hosts and beside them.
RELEASE_BINARIES=("$SHIM" migratectl migrate-agent migrate-coordinator containerd-snapshotter-migrate)
# The scripts of hack/ the tests run inside the VM.
HACK_SCRIPTS=(containerd.sh images.sh cluster.sh)
TEST_IMAGE=$REPO/target/images/testbox.tar
VM_CPUS=${VM_CPUS:-2}
VM_MEMORY_MIB=${VM_MEMORY_MIB:-3072}
VM_TIMEOUT=${VM_TIMEOUT:-900}
STATUS_LINE='containerd-migrate-vm: exit status '
# The deadlines raised inside the VM (see above); measured there with 2
# vCPUs: containerd answers after about 17 s, `cluster.sh up 2` takes 85 s,
# a stop-and-copy migration of 16 MiB 40 s.
VM_DEADLINES=(START_TIMEOUT=120 SNAPSHOTTER_TIMEOUT=60 READY_TIMEOUT=120
	CLUSTER_SCRIPT_TIMEOUT=600 CLUSTER_EXEC_TIMEOUT=300
	# Not a deadline: the VM's image has no docker-registry.
	CLUSTER_STORE=none)

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
[[ -d ${HOME:-/root}/.cargo/bin ]] && export PATH=${HOME:-/root}/.cargo/bin:$PATH

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'ERROR: %s\n' "$*" >&2
	exit 1
}

usage() {
	die "usage: hack/softdirty-vm.sh [run] [FILTER...] | exec CMD [ARG...] | bench [ARG...] | image"
}

# The host tools this script and hack/vm/image.sh use; hack/setup.sh deps
# installs them.
host_tools() {
	local tool missing=()
	for tool in qemu-system-x86_64 debootstrap cpio mkfs.ext4 busybox; do
		command -v "$tool" >/dev/null || missing+=("$tool")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	say "missing ${missing[*]}: hack/setup.sh deps"
	"$REPO/hack/setup.sh" deps >&2 || die "hack/setup.sh deps failed"
	for tool in "${missing[@]}"; do
		command -v "$tool" >/dev/null || die "$tool is still missing after hack/setup.sh deps"
	done
}

image() {
	"$REPO/hack/vm/image.sh"
}

# Builds the release binaries the payload carries, as hack/test.sh's build
# does (the whole workspace, every target): with `-p` Cargo would unify
# features differently and build the workspace's crates again, for minutes.
build_binaries() {
	command -v cargo >/dev/null || die "cargo not found"
	(cd "$REPO" && cargo build --release --quiet --workspace --all-targets) ||
		die "building the shim, the cluster's binaries and the snapshotter failed"
}

# Builds the soft-dirty test binary (up to date after hack/test.sh's build,
# so this is quick then) and prints its path.
build_tests() {
	local json exe
	json=$(cd "$REPO" && cargo test --release --quiet --workspace --no-run --message-format=json) ||
		die "building tests/tests/softdirty.rs failed"
	exe=$(grep -o '"executable":"[^"]*softdirty-[^"]*"' <<<"$json" | tail -1 | cut -d'"' -f4)
	[[ -x $exe ]] || die "cargo built no softdirty test binary"
	echo "$exe"
}

# Builds the benchmark program (tests/src/bin/bench.rs) and prints its path.
build_bench() {
	(cd "$REPO" && cargo build --release --quiet --workspace --all-targets) ||
		die "building the benchmark program failed"
	echo "$REPO/target/release/bench"
}

# Adds to the payload what `bench migrate` needs besides the tests' files:
# itself, its image scripts and the Redis workload's archive if it was
# built (hack/bench/redis-image.sh build, on this machine).
bench_payload() {
	local dir=$OUT/payload redis=$REPO/target/images/redis.tar
	install -m 0755 "$1" "$dir/repo/target/release/"
	mkdir -p "$dir/repo/hack/bench"
	install -m 0755 "$REPO"/hack/bench/*.sh "$dir/repo/hack/bench/"
	[[ ! -s $redis ]] || install -m 0644 "$redis" "$dir/repo/target/images/"
}

# Copies what the guest wrote on the results disk $1 to directory $2.
copy_results() {
	local img=$1 to=$2 mnt
	mnt=$(mktemp -d)
	mount -o loop "$img" "$mnt" || die "cannot mount the results disk $img"
	mkdir -p "$to"
	cp -a "$mnt"/. "$to"/ || true
	umount "$mnt" && rmdir "$mnt"
	rm -rf "$to/lost+found"
	say "results copied to $to"
}

# Writes the payload disk $1 from directory $2.
payload_disk() {
	local img=$1 dir=$2 mib
	mib=$(du -sm "$dir" | cut -f1)
	rm -f "$img"
	mkfs.ext4 -q -F -L payload -d "$dir" "$img" "$((mib + mib / 4 + 16))M" >/dev/null ||
		die "mkfs.ext4 -d $dir failed"
}

# Makes the payload's directory: guest-init, the env it sources, the command
# to run (the arguments of this function) and the files of this checkout the
# tests need, at the paths the test binary was built with.
make_payload() {
	local dir=$OUT/payload
	rm -rf "$dir"
	mkdir -p "$dir/repo/hack" "$dir/repo/target/release" "$dir/repo/target/images" "$dir/bin"
	install -m 0755 "$REPO/hack/vm/guest-init" "$dir/guest-init"
	install -m 0755 "${HACK_SCRIPTS[@]/#/$REPO/hack/}" "$dir/repo/hack/"
	install -m 0755 "${RELEASE_BINARIES[@]/#/$REPO/target/release/}" "$dir/repo/target/release/"
	install -m 0644 "$TEST_IMAGE" "$dir/repo/target/images/"
	{
		printf 'REPO=%q\n' "$REPO"
		printf 'export CI=%q RUST_BACKTRACE=1\n' "${CI:-}"
		local deadline name
		for deadline in "${VM_DEADLINES[@]}"; do
			name=${deadline%%=*}
			# This environment's value wins over the VM's default.
			printf 'export %s=%q\n' "$name" "${!name:-${deadline#*=}}"
		done
	} >"$dir/env"
	{
		echo '#!/bin/bash'
		printf 'exec'
		printf ' %q' "$@"
		echo
	} >"$dir/run"
	chmod 0755 "$dir/run"
}

# Boots the VM with image directory $1 and the payload; its console goes to
# stdout and console.log. Returns the status the guest reported.
boot() {
	local image=$1 log=$OUT/console.log start=$SECONDS qemu_status
	say "booting the VM (TCG, $VM_CPUS vCPUs, $VM_MEMORY_MIB MiB; at most ${VM_TIMEOUT}s)"
	# -snapshot semantics for the root disk: the cached image is never
	# written. The kernel's console is the serial port, which is stdio.
	set +e
	timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
		-accel tcg -cpu max -smp "$VM_CPUS" -m "$VM_MEMORY_MIB" \
		-nodefaults -no-user-config -display none -no-reboot \
		-kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
		-append "console=ttyS0 panic=-1 quiet loglevel=3" \
		-drive "file=$image/rootfs.img,format=raw,if=virtio,snapshot=on" \
		-drive "file=$OUT/payload.img,format=raw,if=virtio,readonly=on" \
		"${RESULTS_DRIVE[@]}" \
		-serial stdio </dev/null 2>&1 | sed -u 's/\r$//' | tee "$log"
	qemu_status=${PIPESTATUS[0]}
	set -e
	say "the VM ran for $((SECONDS - start)) s"
	local line
	line=$(grep -a "^$STATUS_LINE" "$log" | tail -1 || true)
	if [[ -z $line ]]; then
		if [[ $qemu_status -eq 124 || $qemu_status -eq 137 ]]; then
			die "the VM did not finish within ${VM_TIMEOUT}s (VM_TIMEOUT); console: $log"
		fi
		die "the VM stopped (qemu exit status $qemu_status) without reporting an exit status; console: $log"
	fi
	return "${line#"$STATUS_LINE"}"
}

main() {
	local cmd=${1:-run}
	case $cmd in
	run | exec | bench | image) [[ $# -gt 0 ]] && shift ;;
	-*) cmd=run ;; # run's filters and test-harness flags
	*) usage ;;
	esac
	[[ $(id -u) -eq 0 ]] || die "run as root (the image build needs it, and the tests in the VM run as root)"
	host_tools
	local image
	image=$(image)
	[[ $cmd == image ]] && {
		echo "$image"
		return 0
	}
	mkdir -p "$OUT"
	# The payload and the console log are per checkout: one run at a time.
	exec 8>"$OUT/.lock"
	flock -n 8 || die "another hack/softdirty-vm.sh is running in this checkout ($OUT)"
	[[ -s $TEST_IMAGE ]] || "$REPO/hack/images.sh" build >&2 || die "hack/images.sh build failed"
	RESULTS_DRIVE=()
	if [[ $cmd == exec ]]; then
		[[ $# -gt 0 ]] || usage
		build_binaries
		make_payload "$@"
	elif [[ $cmd == bench ]]; then
		local bench
		build_binaries
		bench=$(build_bench)
		# The archives as they are: nothing in the VM can build images.
		make_payload "$REPO/target/release/bench" migrate --skip-build --skip-images \
			--cluster sdbench --out /results/migrate.json "$@"
		bench_payload "$bench"
		# The guest mounts a third disk at /results (hack/vm/guest-init).
		rm -f "$OUT/results.img"
		mkfs.ext4 -q -F -L results "$OUT/results.img" 256M >/dev/null || die "mkfs.ext4 results.img failed"
		RESULTS_DRIVE=(-drive "file=$OUT/results.img,format=raw,if=virtio")
	else
		local tests
		build_binaries
		tests=$(build_tests)
		# The soft-dirty tests are #[ignore]d outside the VM: --ignored here.
		make_payload /payload/bin/softdirty --ignored --test-threads=1 "$@"
		install -m 0755 "$tests" "$OUT/payload/bin/softdirty"
	fi
	payload_disk "$OUT/payload.img" "$OUT/payload"
	local status=0
	boot "$image" || status=$?
	[[ $cmd == bench ]] && copy_results "$OUT/results.img" "$REPO/target/bench/vm"
	if [[ $status -eq 0 ]]; then
		say "the VM reported success ($SECONDS s in all)"
	else
		say "the VM reported exit status $status ($SECONDS s in all); console: $OUT/console.log"
	fi
	return "$status"
}

main "$@"
