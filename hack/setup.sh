#!/usr/bin/env bash
# Sets up a Debian bookworm machine (as root) for building and testing
# containerd-migrate: packages, containerd 2.x, CRIU >= 4.2, kernel settings,
# the shim binary and the test image.
#
#   hack/setup.sh [deps|containerd|criu|sysctl|shim|images|all]...   (default: all)
#
# Every step checks first and does nothing when its work is already done, so a
# re-run takes seconds. The script ends with a summary of what is installed and
# exits non-zero if something a selected step should provide is missing.
#
# Environment:
#   SKIP_SHIM_BUILD=1   skip building/installing the shim (it is developed
#                       concurrently; "all" then does not require it)
#   JOBS=N              parallel make/cargo jobs (default: nproc)
#   BUILD_TESTS=1       build the test targets too (hack/test.sh sets it): one
#                       build whose dependencies, compiled with the tests'
#                       features, `cargo test` then finds up to date
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=/var/cache/containerd-migrate
JOBS=${JOBS:-$(nproc)}
SKIP_SHIM_BUILD=${SKIP_SHIM_BUILD:-0}

CONTAINERD_MIN=2.0
CRIU_MIN=4.2
PIPE_MAX_SIZE=4194304
SHIM_NAME=containerd-shim-migrate-v1
SHIM_DEST=/usr/local/bin/$SHIM_NAME
IMAGE_TAR=$REPO/target/images/testbox.tar

# The temporary apt source for Debian sid, and the pin that keeps every other
# package on bookworm while it exists.
SID_SOURCES=/etc/apt/sources.list.d/containerd-migrate-sid.sources
SID_PREFS=/etc/apt/preferences.d/containerd-migrate-sid
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_OURS=0

# criu lands in /usr/local/sbin; cargo usually lives in ~/.cargo/bin.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
[[ -d ${HOME:-/root}/.cargo/bin ]] && export PATH=${HOME:-/root}/.cargo/bin:$PATH
export DEBIAN_FRONTEND=noninteractive

# Packages from bookworm. CRIU's build dependencies are only needed for the
# `criu` step but are cheap, so they are installed together. Their
# protobuf-compiler is also the workspace build's protoc: containerd-client
# and the cluster's API (coordinator/proto) are generated with it.
# jq reads JSON in the scripts (hack/cluster.sh, the benchmark images).
RUNTIME_PKGS=(runc iptables busybox-static iproute2 ca-certificates jq)
# The soft-dirty VM (hack/softdirty-vm.sh): QEMU, and what builds its image.
VM_PKGS=(qemu-system-x86 debootstrap cpio e2fsprogs)
# The distribution registry that the oci:// version store tests start, each
# a private one, and etcd, which a local cluster's replicated coordinators
# keep their state in (hack/cluster.sh up N --etcd); the packages' own
# services are kept from running.
TEST_PKGS=(docker-registry etcd-server)
CRIU_BUILD_PKGS=(build-essential pkg-config xz-utils python3
	libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
	python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev
	libgnutls28-dev libaio-dev uuid-dev libnftables-dev)

say() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
	printf 'ERROR: %s\n' "$*" >&2
	exit 1
}

need_root() {
	[[ $(id -u) -eq 0 ]] || die "run as root"
}

version_ge() { dpkg --compare-versions "$1" ge "$2"; }

# ---------------------------------------------------------------- apt helpers

APT_UPDATED=0

# apt-get update at most once per run, and not at all when this script did
# one less than an hour ago. (apt sets the lists' mtimes to the server's, so
# they cannot tell.)
APT_STAMP=$CACHE/apt-update.stamp
apt_update() {
	[[ $APT_UPDATED -eq 1 ]] && return 0
	APT_UPDATED=1
	if [[ -n $(find "$APT_STAMP" -mmin -60 2>/dev/null) ]]; then
		return 0
	fi
	say "apt-get update"
	apt-get update -qq >/dev/null || die "apt-get update failed"
	mkdir -p "$CACHE"
	touch "$APT_STAMP"
}

pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Installs the given bookworm packages that are not installed yet.
apt_install() {
	local missing=() p
	for p in "$@"; do
		pkg_installed "$p" || missing+=("$p")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	apt_update
	say "apt-get install ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
		die "apt-get install ${missing[*]} failed"
}

# The Debian mirror this machine already uses (from debian.sources or
# sources.list), so the temporary sid entry goes to the same host.
debian_mirror() {
	local uri=""
	if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
		uri=$(awk '
			/^URIs:/ { u = $2 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") found = u }
			/^$/ { u = "" }
			END { print found }' /etc/apt/sources.list.d/debian.sources)
	fi
	if [[ -z $uri && -f /etc/apt/sources.list ]]; then
		uri=$(awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
	fi
	echo "${uri:-http://deb.debian.org/debian}"
}

# Adds Debian sid (binary and source) as a temporary apt source. The pin gives
# every sid package priority 1, so nothing comes from sid unless asked for by
# name (pkg/sid); that keeps bookworm's libc6 and runc.
sid_open() {
	[[ -f $SID_SOURCES ]] && return 0
	local mirror
	mirror=$(debian_mirror)
	say "adding temporary apt source: sid at $mirror"
	cat >"$SID_PREFS" <<-EOF
		# Temporary, written by containerd-migrate hack/setup.sh.
		Package: *
		Pin: release n=sid
		Pin-Priority: 1
	EOF
	cat >"$SID_SOURCES" <<-EOF
		# Temporary, written by containerd-migrate hack/setup.sh; removed when it ends.
		Types: deb deb-src
		URIs: $mirror
		Suites: sid
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	# Only fetch sid's lists now; the bookworm lists stay as they are.
	apt-get update -qq -o Dir::Etc::sourcelist="$SID_SOURCES" \
		-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 >/dev/null ||
		die "apt-get update for sid failed"
}

# Removes the sid source again and refreshes apt so sid's lists are gone.
sid_close() {
	[[ -f $SID_SOURCES || -f $SID_PREFS ]] || return 0
	say "removing temporary sid apt source"
	rm -f "$SID_SOURCES" "$SID_PREFS"
	if apt-get update -qq >/dev/null; then
		mkdir -p "$CACHE"
		touch "$APT_STAMP"
	else
		warn "apt-get update after removing sid failed"
	fi
}

# The containerd package's maintainer script would start the daemon; we want
# only private instances (hack/containerd.sh). policy-rc.d exit 101 forbids it.
policy_rc_forbid() {
	[[ -e $POLICY_RC ]] && return 0
	printf '#!/bin/sh\n# Temporary, written by containerd-migrate hack/setup.sh.\nexit 101\n' >"$POLICY_RC"
	chmod 0755 "$POLICY_RC"
	POLICY_RC_OURS=1
}

policy_rc_restore() {
	if [[ $POLICY_RC_OURS -eq 1 ]]; then
		rm -f "$POLICY_RC"
		POLICY_RC_OURS=0
	fi
}

cleanup() {
	policy_rc_restore
	sid_close
}
trap cleanup EXIT

# -------------------------------------------------------------- version probes

containerd_version() {
	command -v containerd >/dev/null || return 0
	containerd --version 2>/dev/null | grep -oE ' v?[0-9]+\.[0-9]+\.[0-9]+' | head -1 | tr -d ' v'
}

criu_version() {
	command -v criu >/dev/null || return 0
	criu --version 2>/dev/null | awk '/^Version:/ { print $2; exit }'
}

runc_version() {
	command -v runc >/dev/null || return 0
	runc --version 2>/dev/null | awk '/^runc version/ { print $3; exit }'
}

# ------------------------------------------------------------------- the steps

step_deps() {
	apt_install "${RUNTIME_PKGS[@]}" "${CRIU_BUILD_PKGS[@]}" "${VM_PKGS[@]}"
	policy_rc_forbid
	apt_install "${TEST_PKGS[@]}"
	policy_rc_restore
	if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
		systemctl disable --now docker-registry.service etcd.service >/dev/null 2>&1 || true
	fi
}

check_deps() {
	local p ok=0
	for p in "${RUNTIME_PKGS[@]}" "${CRIU_BUILD_PKGS[@]}" "${VM_PKGS[@]}" "${TEST_PKGS[@]}"; do
		pkg_installed "$p" || {
			warn "package $p is missing"
			ok=1
		}
	done
	return $ok
}

# containerd 2.x: the shim answers `start` in the JSON form only containerd
# >= 2.0 reads, and bookworm has 1.6. sid's package depends only on runc and
# libc6 >= 2.34, so it installs on bookworm as it is.
step_containerd() {
	local v
	v=$(containerd_version)
	if [[ -n $v ]] && version_ge "$v" "$CONTAINERD_MIN"; then
		say "containerd $v already installed"
	else
		apt_install runc # from bookworm, before sid is visible
		sid_open
		# Dry run first: refuse if apt wants anything but containerd from sid.
		local plan from_sid
		plan=$(apt-get -s install --no-install-recommends containerd/sid 2>&1) ||
			die "apt cannot install containerd from sid: $plan"
		from_sid=$(awk '/^Inst / && /(Debian:unstable|Debian:sid|\/sid)/ { print $2 }' <<<"$plan" | sort -u | tr '\n' ' ')
		[[ $from_sid == "containerd " ]] ||
			die "installing containerd from sid would also take from sid: ${from_sid:-nothing?}"$'\n'"$plan"
		policy_rc_forbid
		say "apt-get install containerd/sid"
		apt-get install -y -qq --no-install-recommends containerd/sid >/dev/null ||
			die "apt-get install containerd/sid failed"
		policy_rc_restore
		sid_close
	fi
	# No systemd here, but a SysV script or a future package might still have
	# started the system daemon; the project only uses private instances.
	if [[ -f /etc/init.d/containerd ]] && /etc/init.d/containerd status >/dev/null 2>&1; then
		warn "a system containerd is running (from /etc/init.d/containerd); stopping it"
		/etc/init.d/containerd stop >/dev/null 2>&1 || true
	fi
	if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
		systemctl disable --now containerd.service >/dev/null 2>&1 || true
	fi
}

check_containerd() {
	local v
	v=$(containerd_version)
	[[ -n $v ]] && version_ge "$v" "$CONTAINERD_MIN" && command -v ctr >/dev/null
}

# CRIU >= 4.2: kernels >= 6.13 broke older CRIU's vDSO handling (fixed in 4.1),
# and kernels >= 6.16 refuse SO_PASSCRED on inet sockets, so CRIU 4.1 cannot
# dump a process with a TCP socket (fixed in 4.2). Bookworm has 3.17, and
# sid's binary package would pull a newer libc, so build sid's source instead.
step_criu() {
	local v
	v=$(criu_version)
	if [[ -n $v ]] && version_ge "$v" "$CRIU_MIN"; then
		say "criu $v already installed"
		return 0
	fi
	local bin
	bin=$(cached_criu_binary)
	if [[ -z $bin ]]; then
		apt_install "${CRIU_BUILD_PKGS[@]}"
		build_criu
		bin=$(cached_criu_binary)
		[[ -n $bin ]] || die "criu build produced no binary"
	else
		say "using cached criu build $bin"
	fi
	# Copy then rename: a runc running criu at this moment keeps the old file.
	install -D -m 0755 "$bin" /usr/local/sbin/.criu.new
	mv -f /usr/local/sbin/.criu.new /usr/local/sbin/criu
	say "installed /usr/local/sbin/criu ($(criu_version))"
}

# The newest criu binary already built under the cache, if it is new enough.
cached_criu_binary() {
	local b v
	for b in "$CACHE"/criu/criu-*/criu/criu; do
		[[ -x $b ]] || continue
		v=$("$b" --version 2>/dev/null | awk '/^Version:/ { print $2; exit }')
		[[ -n $v ]] && version_ge "$v" "$CRIU_MIN" && {
			echo "$b"
			return 0
		}
	done
	return 0
}

build_criu() {
	local dl=$CACHE/criu/download orig src
	mkdir -p "$dl"
	orig=$(find "$dl" -maxdepth 1 -name 'criu_*.orig.tar.*' -print -quit)
	if [[ -z $orig ]]; then
		sid_open
		say "downloading criu source from sid"
		# _apt must be able to write here, else apt warns and downloads as root.
		chown _apt "$dl" 2>/dev/null || true
		# Only the .orig tarball is needed; the .debian.tar.xz sometimes 404s
		# (without dpkg-dev apt cannot unpack it anyway), so the exit code of
		# apt-get is not trusted -- the tarball's presence is.
		(cd "$dl" && apt-get source -qq --download-only criu/sid >/dev/null 2>&1) || true
		orig=$(find "$dl" -maxdepth 1 -name 'criu_*.orig.tar.*' -print -quit)
		[[ -n $orig ]] || die "could not download criu's source from sid"
		sid_close
	fi
	local ver=${orig##*/criu_}
	ver=${ver%%.orig.tar.*}
	src=$CACHE/criu/criu-$ver
	if [[ ! -f $src/Makefile ]]; then
		rm -rf "$src" "$src.tmp"
		mkdir -p "$src.tmp"
		tar -xf "$orig" -C "$src.tmp" --strip-components=1
		mv "$src.tmp" "$src"
	fi
	say "building criu $ver (make -j$JOBS criu, about a minute)"
	make -C "$src" -j"$JOBS" criu >"$CACHE/criu/build.log" 2>&1 ||
		die "criu build failed; see $CACHE/criu/build.log: $(tail -5 "$CACHE/criu/build.log")"
}

CRIU_CHECK=""
CRIU_LAZY=""
CRIU_DIRTY=""

# `criu check` is the real test that this CRIU works on this kernel.
probe_criu() {
	CRIU_CHECK="not installed"
	CRIU_LAZY="unknown"
	CRIU_DIRTY="unknown"
	command -v criu >/dev/null || return 0
	local out
	out=$(criu check 2>&1) || true
	if grep -q 'Looks good' <<<"$out"; then
		CRIU_CHECK="Looks good"
	else
		CRIU_CHECK="FAILED: $(tail -3 <<<"$out" | tr '\n' ' ')"
	fi
	# Post-copy migration needs userfaultfd for non-cooperative processes.
	out=$(criu check --feature uffd-noncoop 2>&1) || true
	if grep -q 'is supported' <<<"$out"; then
		CRIU_LAZY="supported (uffd-noncoop)"
	else
		CRIU_LAZY="NOT supported: $(tail -1 <<<"$out")"
	fi
	# Pre-dumps and incremental dumps need soft-dirty tracking in the kernel
	# (CONFIG_MEM_SOFT_DIRTY); not essential, but worth knowing.
	out=$(criu check --feature mem_dirty_track 2>&1) || true
	if grep -q 'Dirty tracking is OFF' <<<"$out"; then
		CRIU_DIRTY="OFF (no soft-dirty: no pre-dump/incremental dumps)"
	elif grep -q 'is supported' <<<"$out"; then
		CRIU_DIRTY="supported (pre-dump/incremental dumps possible)"
	else
		CRIU_DIRTY="unknown: $(tail -1 <<<"$out")"
	fi
}

check_criu() {
	local v
	v=$(criu_version)
	[[ -n $v ]] && version_ge "$v" "$CRIU_MIN" || return 1
	probe_criu
	[[ $CRIU_CHECK == "Looks good" ]]
}

# With the default 1 MiB, CRIU's lazy page server cannot enlarge its pipe (we
# lack CAP_SYS_RESOURCE), ignores that, and post-copy later fails with
# "page-pipe: splice: Bad file descriptor".
step_sysctl() {
	local cur
	cur=$(sysctl -n fs.pipe-max-size)
	if [[ $cur -lt $PIPE_MAX_SIZE ]]; then
		sysctl -q -w fs.pipe-max-size=$PIPE_MAX_SIZE
		say "fs.pipe-max-size $cur -> $PIPE_MAX_SIZE"
	fi
	# Also for boots that apply sysctl.d (this machine kind has no systemd).
	local conf=/etc/sysctl.d/90-containerd-migrate.conf
	[[ -f $conf ]] || echo "fs.pipe-max-size = $PIPE_MAX_SIZE" >"$conf"
}

check_sysctl() {
	[[ $(sysctl -n fs.pipe-max-size) -ge $PIPE_MAX_SIZE ]]
}

shim_build_skipped() { [[ $SKIP_SHIM_BUILD == 1 ]]; }

step_shim() {
	if shim_build_skipped; then
		say "shim: skipped (SKIP_SHIM_BUILD=1)"
		return 0
	fi
	command -v cargo >/dev/null || die "cargo not found"
	local targets=()
	[[ ${BUILD_TESTS:-0} == 1 ]] && targets=(--all-targets)
	say "cargo build --release --workspace ${targets[*]}"
	(cd "$REPO" && cargo build --release --workspace "${targets[@]}" --quiet) ||
		die "workspace build failed (the shim is being developed; SKIP_SHIM_BUILD=1 skips this step)"
	local built=$REPO/target/release/$SHIM_NAME
	[[ -x $built ]] || die "the build produced no $built"
	if ! cmp -s "$built" "$SHIM_DEST"; then
		install -D -m 0755 "$built" "$SHIM_DEST"
		say "installed $SHIM_DEST"
	fi
}

check_shim() {
	shim_build_skipped && return 0
	[[ -x $SHIM_DEST ]]
}

step_images() {
	"$REPO/hack/images.sh" build
}

check_images() {
	[[ -s $IMAGE_TAR ]]
}

# -------------------------------------------------------------------- summary

summary() {
	local v
	echo
	echo "summary:"
	probe_criu
	row() { printf '  %-18s %s\n' "$1" "$2"; }
	v=$(runc_version)
	row runc "${v:-MISSING}"
	v=$(containerd_version)
	if [[ -n $v ]] && version_ge "$v" "$CONTAINERD_MIN"; then
		row containerd "$v ($(command -v containerd))"
	else
		row containerd "MISSING (need >= $CONTAINERD_MIN, have ${v:-none})"
	fi
	v=$(criu_version)
	if [[ -n $v ]] && version_ge "$v" "$CRIU_MIN"; then
		row criu "$v ($(command -v criu))"
	else
		row criu "MISSING (need >= $CRIU_MIN, have ${v:-none})"
	fi
	row "criu check" "$CRIU_CHECK"
	row "lazy pages" "$CRIU_LAZY"
	row "dirty tracking" "$CRIU_DIRTY"
	row iptables "$(command -v iptables-restore >/dev/null && echo ok || echo MISSING)"
	row busybox-static "$(pkg_installed busybox-static && echo ok || echo MISSING)"
	row fs.pipe-max-size "$(sysctl -n fs.pipe-max-size)$(check_sysctl || echo ' (TOO SMALL: post-copy will fail)')"
	if shim_build_skipped; then
		row shim "skipped (SKIP_SHIM_BUILD=1)$([[ -x $SHIM_DEST ]] && echo "; installed $SHIM_DEST left as it is")"
	elif check_shim; then
		if cmp -s "$REPO/target/release/$SHIM_NAME" "$SHIM_DEST"; then
			row shim "$SHIM_DEST"
		else
			row shim "$SHIM_DEST (older than target/release's: hack/setup.sh shim)"
		fi
	else
		row shim "MISSING"
	fi
	if check_images; then
		row "test image" "$IMAGE_TAR ($(tar -xOf "$IMAGE_TAR" ./index.json | grep -oE 'sha256:[0-9a-f]{64}' | head -1))"
	else
		row "test image" "MISSING"
	fi
}

# ----------------------------------------------------------------------- main

ALL_STEPS=(deps containerd criu sysctl shim images)

main() {
	need_root
	local steps=("$@")
	[[ ${#steps[@]} -eq 0 ]] && steps=(all)
	if [[ ${steps[0]} == all ]]; then
		steps=("${ALL_STEPS[@]}")
	fi
	local s
	for s in "${steps[@]}"; do
		[[ " ${ALL_STEPS[*]} " == *" $s "* ]] || die "unknown step '$s' (use: ${ALL_STEPS[*]} all)"
	done

	# A run that was killed may have left the sid source behind.
	sid_close

	local start failed=()
	for s in "${steps[@]}"; do
		start=$SECONDS
		say "step $s"
		"step_$s"
		say "step $s done in $((SECONDS - start))s"
	done

	summary
	for s in "${steps[@]}"; do
		"check_$s" >/dev/null 2>&1 || failed+=("$s")
	done
	if [[ ${#failed[@]} -gt 0 ]]; then
		echo "MISSING after steps: ${failed[*]}"
		exit 1
	fi
	echo "all done: ${steps[*]}"
}

main "$@"
