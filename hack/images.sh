#!/usr/bin/env bash
# Builds and imports the test image. There is no registry to pull from, so the
# image is an OCI archive made here from Debian's static busybox and the
# static test programs in tests/apps.
#
#   hack/images.sh build                          -> target/images/testbox.tar
#   hack/images.sh import ADDRESS [--namespace NS] into the containerd at ADDRESS
#   hack/images.sh name                           prints the image name
#
# The archive is deterministic (fixed mtimes, owners and order, gzip without a
# timestamp): the same inputs give the same digests.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE_NAME=localhost/containerd-migrate/testbox:latest
OUT_DIR=$REPO/target/images
ARCHIVE=$OUT_DIR/testbox.tar
TARGET=x86_64-unknown-linux-gnu
APPS_DIR=$REPO/target/$TARGET/release
APPS=(memtick echo-server late-ready-server)
BUSYBOX=/bin/busybox
# 2026-01-01T00:00:00Z, the mtime of everything in the image.
EPOCH=1767225600
CREATED=2026-01-01T00:00:00Z

[[ -d ${HOME:-/root}/.cargo/bin ]] && export PATH=${HOME:-/root}/.cargo/bin:$PATH

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'ERROR: %s\n' "$*" >&2
	exit 1
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Reproducible tar of directory $1's contents into file $2.
det_tar() {
	tar --create --file "$2" --directory "$1" --format=gnu --sort=name \
		--mtime=@"$EPOCH" --owner=0 --group=0 --numeric-owner .
}

# Stores file $1 as a blob of layout $2 and prints its digest.
add_blob() {
	local digest
	digest=$(sha256 "$1")
	install -m 0644 "$1" "$2/blobs/sha256/$digest"
	echo "$digest"
}

build_apps() {
	say "building the test programs (static)"
	# With an explicit --target, RUSTFLAGS reach only this build, not the
	# host build of the rest of the workspace. The remap keeps the checkout's
	# path out of the binaries, so a clone elsewhere builds the same image.
	(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$REPO=/src" \
		cargo build --quiet --release -p migrate-testapps --target "$TARGET") ||
		die "building migrate-testapps failed"
}

make_rootfs() {
	local root=$1 applet
	mkdir -p "$root"/{bin,etc,root,tmp,proc,sys,dev,run,usr/local/bin}
	chmod 0755 "$root" "$root"/{bin,etc,proc,sys,dev,run,usr,usr/local,usr/local/bin}
	chmod 0700 "$root/root"
	chmod 1777 "$root/tmp"

	[[ -x $BUSYBOX ]] || die "$BUSYBOX missing: install busybox-static (hack/setup.sh deps)"
	install -m 0755 "$BUSYBOX" "$root/bin/busybox"
	while read -r applet; do
		[[ -n $applet && $applet != busybox ]] || continue
		ln -s busybox "$root/bin/$applet"
	done < <("$BUSYBOX" --list)

	local app
	for app in "${APPS[@]}"; do
		install -m 0755 "$APPS_DIR/$app" "$root/usr/local/bin/$app"
	done

	printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
		'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
	printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$root/etc/group"
	chmod 0644 "$root/etc/passwd" "$root/etc/group"
}

cmd_build() {
	umask 022
	build_apps
	# A private work dir: concurrent builds must not trip over each other.
	mkdir -p "$OUT_DIR"
	BUILD_DIR=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
	trap 'rm -rf "$BUILD_DIR"' EXIT
	local work=$BUILD_DIR
	mkdir -p "$work/rootfs" "$work/oci/blobs/sha256"
	make_rootfs "$work/rootfs"

	local oci=$work/oci layer_tar=$work/layer.tar
	det_tar "$work/rootfs" "$layer_tar"
	gzip -n -9 -c "$layer_tar" >"$layer_tar.gz"
	local diff_id layer_digest
	diff_id=$(sha256 "$layer_tar")
	layer_digest=$(add_blob "$layer_tar.gz" "$oci")

	cat >"$work/config.json" <<-EOF
		{"architecture":"amd64","os":"linux","created":"$CREATED",
		"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},
		"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},
		"history":[{"created":"$CREATED","created_by":"containerd-migrate hack/images.sh build"}]}
	EOF
	local config_digest
	config_digest=$(add_blob "$work/config.json" "$oci")

	cat >"$work/manifest.json" <<-EOF
		{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
		"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$(size "$work/config.json")},
		"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$(size "$layer_tar.gz")}]}
	EOF
	local manifest_digest
	manifest_digest=$(add_blob "$work/manifest.json" "$oci")

	# io.containerd.image.name is what containerd names an imported image
	# after; the OCI ref.name annotation carries the same full name.
	cat >"$oci/index.json" <<-EOF
		{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
		"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$(size "$work/manifest.json"),
		"platform":{"architecture":"amd64","os":"linux"},
		"annotations":{"io.containerd.image.name":"$IMAGE_NAME","org.opencontainers.image.ref.name":"$IMAGE_NAME"}}]}
	EOF
	echo '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
	chmod 0644 "$oci/index.json" "$oci/oci-layout"
	chmod 0755 "$oci" "$oci/blobs" "$oci/blobs/sha256"

	det_tar "$oci" "$work/testbox.tar"
	if cmp -s "$work/testbox.tar" "$ARCHIVE"; then
		say "unchanged: $ARCHIVE"
	else
		mv "$work/testbox.tar" "$ARCHIVE"
		say "wrote $ARCHIVE"
	fi
	echo "$ARCHIVE $IMAGE_NAME sha256:$manifest_digest"
}

# The manifest digest recorded in the archive's index.json.
archive_digest() {
	tar -xOf "$ARCHIVE" ./index.json | grep -oE 'sha256:[0-9a-f]{64}' | head -1
}

cmd_import() {
	local address="" ns=default
	while [[ $# -gt 0 ]]; do
		case $1 in
		--namespace | -n)
			ns=${2:?--namespace needs a value}
			shift 2
			;;
		--namespace=*)
			ns=${1#*=}
			shift
			;;
		-*) die "unknown option $1" ;;
		*)
			[[ -z $address ]] || die "more than one ADDRESS given"
			address=$1
			shift
			;;
		esac
	done
	[[ -n $address ]] || die "usage: hack/images.sh import ADDRESS [--namespace NS]"
	[[ -s $ARCHIVE ]] || die "$ARCHIVE missing: run hack/images.sh build"

	local want have
	want=$(archive_digest)
	have=$(ctr --address "$address" --namespace "$ns" images ls 2>/dev/null |
		awk -v n="$IMAGE_NAME" '$1 == n { print $3 }')
	if [[ $have == "$want" ]]; then
		say "$IMAGE_NAME ($want) already in namespace $ns"
		return 0
	fi
	say "importing $IMAGE_NAME ($want) into namespace $ns"
	ctr --address "$address" --namespace "$ns" images import "$ARCHIVE" >&2 ||
		die "ctr images import failed"
	have=$(ctr --address "$address" --namespace "$ns" images ls |
		awk -v n="$IMAGE_NAME" '$1 == n { print $3 }')
	[[ $have == "$want" ]] || die "after import, $IMAGE_NAME is '${have:-missing}', expected $want"
}

case ${1:-} in
build) cmd_build ;;
import)
	shift
	cmd_import "$@"
	;;
name) echo "$IMAGE_NAME" ;;
*) die "usage: hack/images.sh build | import ADDRESS [--namespace NS] | name" ;;
esac
