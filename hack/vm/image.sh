#!/usr/bin/env bash
# Builds (or finds in the cache) the image of the soft-dirty VM and prints
# the directory that holds it:
#
#   vmlinuz       Debian bookworm's linux-image-6.1.0-*-cloud-amd64 kernel
#                 (CONFIG_MEM_SOFT_DIRTY=y, older than 6.13)
#   initrd.img    busybox and the virtio modules: mounts the disks and
#                 switch_roots (hack/vm/initramfs-init)
#   rootfs.img    a raw ext4 disk: bookworm minbase with kmod, iptables,
#                 iproute2, jq and busybox (what hack/cluster.sh and its
#                 tests use), the kernel's modules, and this host's containerd, ctr,
#                 containerd-shim-runc-v2, runc and CRIU with the libraries
#                 they link
#   inputs        what the cache key was made from
#
#   hack/vm/image.sh          (as root)
#
# The image is cached under /var/cache/containerd-migrate/softdirty-vm/KEY,
# where KEY hashes everything it is built from: this script, the initramfs
# init, the kernel package's version and the host binaries put into it. A
# change of any of them builds a new image (about a minute: debootstrap is
# most of it); otherwise this takes a second. Several checkouts of different
# ages share the cache, so the KEEP images used last stay, not only the
# newest: else two checkouts would rebuild each other's image in turn.
#
# Why the host's CRIU (4.2.1, built by hack/setup.sh) rather than bookworm's
# 3.17, which also works on kernel 6.1: the soft-dirty tests are meant to
# exercise what this project ships and its tests use everywhere else, and
# CRIU 4.2 is the only version that works on both this host's kernel and the
# VM's. Its libraries are bookworm's, copied from the host as ldd lists them.
#
# Environment: DEBIAN_MIRROR (default: the mirror apt uses for bookworm).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_DIR=$REPO/hack/vm
CACHE=/var/cache/containerd-migrate/softdirty-vm
# Images kept in the cache (about 300 MB each), the most recently used.
KEEP=3
SUITE=bookworm
KERNEL_META=linux-image-cloud-amd64
# minbase has bash, coreutils, util-linux, mawk, grep, sed and tar, which is
# all hack/containerd.sh and hack/images.sh use; CRIU needs iptables-restore
# to lock a container's network during a dump, and a loopback that is up (ip,
# from iproute2) to probe TCP repair mode; kmod loads modules. The local
# cluster of hack/cluster.sh, run inside the VM for pre-copy between two
# hosts, also needs ip netns and bridges (iproute2), jq (it reads
# `migratectl hosts --json` and `ip -j`) and busybox (its tests ping between
# hosts); util-linux, in minbase, has nsenter, unshare and flock.
INCLUDE=kmod,iptables,iproute2,jq,busybox
# The host binaries the VM runs, and where they go in the image.
HOST_BINARIES=(
	/usr/bin/containerd:/usr/local/bin/containerd
	/usr/bin/ctr:/usr/local/bin/ctr
	/usr/bin/containerd-shim-runc-v2:/usr/local/bin/containerd-shim-runc-v2
	/usr/sbin/runc:/usr/local/sbin/runc
	/usr/local/sbin/criu:/usr/local/sbin/criu
)
# Modules the initramfs loads (with their dependencies) to reach the disks.
INITRAMFS_MODULES=(virtio_pci virtio_blk)

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'ERROR: %s\n' "$*" >&2
	exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, chroot and mknod need it)"

for tool in debootstrap mkfs.ext4 cpio gzip dpkg-deb apt-get chroot ldd; do
	command -v "$tool" >/dev/null || die "$tool is missing: run hack/setup.sh deps"
done
# grep without -q reads the whole list: with -q it may exit at the match,
# busybox then dies of SIGPIPE and pipefail fails the test now and then.
if ! [[ -x /bin/busybox ]] || ! /bin/busybox --list | grep -x switch_root >/dev/null; then
	die "/bin/busybox (static, with switch_root) is missing: run hack/setup.sh deps"
fi

# ---------------------------------------------------------------- the inputs

mirror() {
	if [[ -n ${DEBIAN_MIRROR:-} ]]; then
		echo "$DEBIAN_MIRROR"
		return
	fi
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

# The versioned kernel package the meta package points at, and its version.
kernel_package() {
	local pkg
	pkg=$(apt-cache depends "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
	if [[ -z $pkg ]]; then
		say "apt-get update (apt knows no $KERNEL_META)"
		apt-get update -qq >/dev/null || die "apt-get update failed"
		pkg=$(apt-cache depends "$KERNEL_META" | awk '/Depends: linux-image-/ { print $2; exit }')
	fi
	[[ $pkg =~ ^linux-image-6\.1\.0-[0-9]+-cloud-amd64$ ]] ||
		die "$KERNEL_META depends on '${pkg:-nothing}', not a linux-image-6.1.0-*-cloud-amd64 (is this bookworm?)"
	local version
	version=$(apt-cache show --no-all-versions "$pkg" | awk '/^Version:/ { print $2; exit }')
	[[ -n $version ]] || die "apt-cache shows no version of $pkg"
	echo "$pkg $version"
}

inputs() {
	local entry src
	echo "suite $SUITE include $INCLUDE modules ${INITRAMFS_MODULES[*]}"
	echo "kernel $KERNEL_PKG $KERNEL_VERSION"
	echo "recipe $(cat "$VM_DIR/image.sh" "$VM_DIR/initramfs-init" | sha256sum | cut -d' ' -f1)"
	for entry in "${HOST_BINARIES[@]}"; do
		src=${entry%%:*}
		[[ -x $src ]] || die "$src is missing: run hack/setup.sh (it installs containerd, runc and CRIU)"
		echo "binary $src $(sha256sum "$src" | cut -d' ' -f1)"
	done
	echo "busybox $(sha256sum /bin/busybox | cut -d' ' -f1)"
}

# ------------------------------------------------------------------ building

# Copies host binary $1 to $ROOTFS$2 with every library it links that the
# image lacks (same Debian release, so the same files).
install_host_binary() {
	local src=$1 dst=$2 lib
	install -D -m 0755 "$src" "$ROOTFS$dst"
	while read -r lib; do
		[[ -e $ROOTFS$lib ]] && continue
		install -D -m 0644 "$(readlink -f "$lib")" "$ROOTFS$lib"
	done < <(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
}

# The module files of $@ and their dependencies, dependencies first, as
# paths relative to the kernel's module directory.
module_closure() {
	local dep_file=$1
	shift
	local -A seen=()
	local -a order=()
	visit() {
		local path=$1 deps d
		[[ -n ${seen[$path]:-} ]] && return 0
		seen[$path]=1
		deps=$(awk -v p="$path:" '$1 == p { $1 = ""; print }' "$dep_file")
		for d in $deps; do visit "$d"; done
		order+=("$path")
	}
	local name path
	for name in "$@"; do
		path=$(awk -v n="/$name.ko:" 'index($1, n) && substr($1, length($1) - length(n) + 1) == n { sub(":$", "", $1); print $1; exit }' "$dep_file")
		[[ -n $path ]] || die "module $name is not in $dep_file"
		visit "$path"
	done
	printf '%s\n' "${order[@]}"
}

build() {
	local out=$1 debs=$CACHE/debs
	mkdir -p "$debs"
	ROOTFS=$out/rootfs

	local start=$SECONDS mirror
	mirror=$(mirror)
	say "debootstrap --variant=minbase $SUITE from $mirror (about 30 s)"
	debootstrap --variant=minbase --include="$INCLUDE" --cache-dir="$debs" \
		"$SUITE" "$ROOTFS" "$mirror" >"$out/debootstrap.log" 2>&1 ||
		die "debootstrap failed; see $out/debootstrap.log: $(tail -3 "$out/debootstrap.log")"

	say "adding the kernel $KERNEL_PKG $KERNEL_VERSION"
	# apt-get download's file name: an epoch's ':' is written %3a.
	local deb=$debs/${KERNEL_PKG}_${KERNEL_VERSION//:/%3a}_amd64.deb
	if [[ ! -s $deb ]]; then
		# _apt must be able to write here, else apt warns and downloads as root.
		chown _apt "$debs" 2>/dev/null || true
		download() { (cd "$debs" && apt-get download -qq "$KERNEL_PKG=$KERNEL_VERSION" >/dev/null 2>&1); }
		if ! download; then
			# Stale lists name a file the mirror no longer has.
			apt-get update -qq >/dev/null 2>&1 || true
			download || die "apt-get download $KERNEL_PKG=$KERNEL_VERSION failed (after apt-get update too);" \
				"if the mirror dropped that version, run this again: it takes the kernel apt offers now"
		fi
		[[ -s $deb ]] || die "apt-get download left no $deb"
	fi
	# Older kernels are not used again.
	find "$debs" -maxdepth 1 -name 'linux-image-*.deb' ! -name "${deb##*/}" -delete
	local kernel=$out/kernel
	dpkg-deb -x "$deb" "$kernel"
	local kver=${KERNEL_PKG#linux-image-}
	[[ -f $kernel/boot/vmlinuz-$kver ]] || die "$deb holds no boot/vmlinuz-$kver"
	grep -qx 'CONFIG_MEM_SOFT_DIRTY=y' "$kernel/boot/config-$kver" ||
		die "$KERNEL_PKG has no CONFIG_MEM_SOFT_DIRTY=y: the VM would not test soft-dirty tracking"
	# Into usr/lib: the image's /lib is a symlink (merged /usr), which
	# extracting the package over it would replace.
	mkdir -p "$ROOTFS/usr/lib/modules"
	cp -a "$kernel/lib/modules/$kver" "$ROOTFS/usr/lib/modules/"
	chroot "$ROOTFS" depmod "$kver" || die "depmod $kver in the image failed"
	cp "$kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

	say "adding the host's containerd, runc and CRIU"
	local entry
	for entry in "${HOST_BINARIES[@]}"; do
		install_host_binary "${entry%%:*}" "${entry#*:}"
	done
	chroot "$ROOTFS" criu --version >/dev/null || die "the image's criu does not run (a library missing?)"
	chroot "$ROOTFS" runc --version >/dev/null || die "the image's runc does not run"

	# Nothing in the VM reads documentation or apt's caches.
	rm -rf "$ROOTFS"/usr/share/{doc,man,info,locale} "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/*
	mkdir -p "$ROOTFS/payload"
	echo softdirty-vm >"$ROOTFS/etc/hostname"

	say "writing rootfs.img"
	local mib
	mib=$(du -sm "$ROOTFS" | cut -f1)
	# Room to spare: a single containerd's state and the tests' files go
	# to tmpfs, but the cluster's hosts keep their disks (images, layers,
	# checkpoints) under /var/lib/containerd-migrate-cluster on / (written
	# to QEMU's snapshot=on overlay, never to this file). The file is
	# sparse: free space costs nothing here.
	mkfs.ext4 -q -F -L softdirty-root -d "$ROOTFS" "$out/rootfs.img" "$((mib + mib / 2 + 2048))M" >/dev/null ||
		die "mkfs.ext4 -d $ROOTFS failed"

	say "writing initrd.img"
	local initramfs=$out/initramfs module
	mkdir -p "$initramfs"/{bin,dev,modules,proc,sys,newroot}
	install -m 0755 /bin/busybox "$initramfs/bin/busybox"
	install -m 0755 "$VM_DIR/initramfs-init" "$initramfs/init"
	# The kernel opens /dev/console on the initramfs for PID 1's stdio.
	mknod -m 600 "$initramfs/dev/console" c 5 1
	while read -r module; do
		cp "$ROOTFS/usr/lib/modules/$kver/$module" "$initramfs/modules/"
		basename "$module" >>"$initramfs/modules/order"
	done < <(module_closure "$ROOTFS/usr/lib/modules/$kver/modules.dep" "${INITRAMFS_MODULES[@]}")
	(cd "$initramfs" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -n -1 >"$out/initrd.img"

	rm -rf "$ROOTFS" "$kernel" "$initramfs"
	say "image built in $((SECONDS - start)) s"
}

# ----------------------------------------------------------------------- main

mkdir -p "$CACHE"
# One builder at a time; a second caller waits and then finds the image.
exec 9>"$CACHE/.lock"
flock -w 900 9 || die "another hack/vm/image.sh holds $CACHE/.lock for 15 minutes"

read -r KERNEL_PKG KERNEL_VERSION < <(kernel_package)
INPUTS=$(inputs)
KEY=$(sha256sum <<<"$INPUTS" | cut -c1-16)
IMAGE=$CACHE/$KEY

if [[ ! -f $IMAGE/inputs ]]; then
	say "building the soft-dirty VM image $KEY"
	rm -rf "$CACHE"/.build-*
	BUILD=$CACHE/.build-$KEY
	mkdir -p "$BUILD"
	trap 'rm -rf "$BUILD"' EXIT
	build "$BUILD"
	printf '%s\n' "$INPUTS" >"$BUILD/inputs"
	sync -f "$BUILD/rootfs.img"
	mv "$BUILD" "$IMAGE"
	trap - EXIT
fi
# inputs' mtime is the image's last use; all but the KEEP last used go.
touch "$IMAGE/inputs"
find "$CACHE" -mindepth 2 -maxdepth 2 -name inputs -printf '%T@ %h\n' | sort -rn |
	tail -n +$((KEEP + 1)) | cut -d' ' -f2- | while read -r old; do
	say "removing the cached image $old (not used lately)"
	rm -rf "$old"
done
echo "$IMAGE"
