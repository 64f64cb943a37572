# Sourced by the benchmark image scripts (hack/bench/*-image.sh): a root
# directory made into a one-layer OCI image archive, and its import into a
# containerd. The archive is deterministic for a given root (fixed mtimes
# and order, gzip without a timestamp), as hack/images.sh makes the test
# image, so an unchanged root gives unchanged digests.
#
# The sourcing script sets PROG (its name, for messages) first.

# 2026-01-01T00:00:00Z, the mtime of everything in the images.
EPOCH=1767225600
CREATED=2026-01-01T00:00:00Z

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf '%s: ERROR: %s\n' "${PROG:-oci-image}" "$*" >&2
	exit 1
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Reproducible tar of directory $1's contents into file $2. Owners become
# root unless $3 is "keep-owners": a distribution's root has files of its
# own users (a service's log directory), which must stay theirs.
det_tar() {
	local owners=(--owner=0 --group=0)
	[[ ${3:-} == keep-owners ]] && owners=()
	tar --create --file "$2" --directory "$1" --format=gnu --sort=name \
		--mtime=@"$EPOCH" "${owners[@]}" --numeric-owner .
}

# Stores file $1 as a blob of layout $2 and prints its digest.
add_blob() {
	local digest
	digest=$(sha256 "$1")
	install -m 0644 "$1" "$2/blobs/sha256/$digest"
	echo "$digest"
}

# Writes the OCI image archive $2 named $3 whose one layer is root $1.
#   $4  the image config's "config" object (Env, Cmd, WorkingDir, ...), as JSON
#   $5  what the history says made it
#   $6  "keep-owners" to keep the root's file owners (see det_tar)
# Works in a new directory beside $1 (in the caller's build directory, which
# the caller removes, also on failure); prints the manifest digest.
oci_archive() {
	local root=$1 archive=$2 name=$3 config=$4 made_by=$5 owners=${6:-}
	local work diff_id layer_digest config_digest manifest_digest
	work=$(mktemp -d "$(dirname "$root")/.oci.XXXXXX")
	mkdir -p "$work/oci/blobs/sha256"
	det_tar "$root" "$work/layer.tar" "$owners"
	gzip -n -6 -c "$work/layer.tar" >"$work/layer.tar.gz"
	diff_id=$(sha256 "$work/layer.tar")
	layer_digest=$(add_blob "$work/layer.tar.gz" "$work/oci")
	say "layer: $(du -h "$work/layer.tar" | cut -f1) unpacked, $(du -h "$work/layer.tar.gz" | cut -f1) compressed"

	cat >"$work/config.json" <<-EOF
		{"architecture":"amd64","os":"linux","created":"$CREATED",
		"config":$config,
		"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},
		"history":[{"created":"$CREATED","created_by":"$made_by"}]}
	EOF
	config_digest=$(add_blob "$work/config.json" "$work/oci")
	cat >"$work/manifest.json" <<-EOF
		{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
		"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$(size "$work/config.json")},
		"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$(size "$work/layer.tar.gz")}]}
	EOF
	manifest_digest=$(add_blob "$work/manifest.json" "$work/oci")
	# io.containerd.image.name is what containerd names an imported image
	# after; the OCI ref.name annotation carries the same full name.
	cat >"$work/oci/index.json" <<-EOF
		{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
		"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$(size "$work/manifest.json"),
		"platform":{"architecture":"amd64","os":"linux"},
		"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"$name"}}]}
	EOF
	echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
	chmod 0644 "$work/oci/index.json" "$work/oci/oci-layout"
	chmod 0755 "$work/oci" "$work/oci/blobs" "$work/oci/blobs/sha256"
	det_tar "$work/oci" "$work/image.tar"
	mv "$work/image.tar" "$archive"
	rm -rf "$work"
	echo "sha256:$manifest_digest"
}

# The manifest digest recorded in archive $1's index.json.
archive_digest() {
	tar -xOf "$1" ./index.json | grep -oE 'sha256:[0-9a-f]{64}' | head -1
}

# Imports archive $1 (image $2) into the containerd at $3, unless that
# containerd already has this very image.
oci_import() {
	local archive=$1 name=$2 address=$3 want have
	[[ -s $archive ]] || die "$archive missing: run $PROG build"
	want=$(archive_digest "$archive")
	have=$(ctr --address "$address" images ls 2>/dev/null | awk -v n="$name" '$1 == n { print $3 }')
	if [[ $have == "$want" ]]; then
		say "$name ($want) already imported"
		return 0
	fi
	say "importing $name ($want)"
	ctr --address "$address" images import "$archive" >&2 || die "ctr images import failed"
	have=$(ctr --address "$address" images ls | awk -v n="$name" '$1 == n { print $3 }')
	[[ $have == "$want" ]] || die "after import, $name is '${have:-missing}', expected $want"
}

# True if anything is mounted at $1 or under it.
mounted_under() {
	awk -v p="$1" '$5 == p || index($5, p "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# A Debian root made by debootstrap (minbase and the packages $3 of suite $4
# from mirror $5) in a new build directory under $1 named after $2, which
# goes, with everything in it, when the script exits. Sets BUILD_DIR and
# ROOT (its rootfs); the packages' versions are in $BUILD_DIR/packages.
debootstrap_root() {
	local out=$1 label=$2 packages=$3 suite=$4 mirror=$5
	if ! command -v debootstrap >/dev/null; then
		say "installing debootstrap"
		apt-get install -y -q debootstrap >&2 || die "apt-get install debootstrap failed"
	fi
	BUILD_DIR=$(mktemp -d "$out/.$label.XXXXXX")
	# debootstrap mounts /proc and /sys in the root while it installs; a
	# failed run may leave them, and rm -rf must not descend into them.
	trap 'mounted_under "$BUILD_DIR" && umount -R "$BUILD_DIR/rootfs"/{proc,sys} 2>/dev/null; rm -rf --one-file-system "$BUILD_DIR"' EXIT
	ROOT=$BUILD_DIR/rootfs
	say "debootstrap $suite with $packages from $mirror (a minute or two)"
	debootstrap --variant=minbase --include="$packages" "$suite" "$ROOT" "$mirror" \
		>"$BUILD_DIR/debootstrap.log" 2>&1 ||
		die "debootstrap failed; its log: $(tail -n 20 "$BUILD_DIR/debootstrap.log")"
	! mounted_under "$ROOT" || die "debootstrap left mounts under $ROOT"
	chroot "$ROOT" dpkg-query -W -f '${Package} ${Version}\n' >"$BUILD_DIR/packages"
}

# Makes root $1 a container image's root: no package caches, apt lists,
# logs or host facts debootstrap copied in (resolv.conf, hostname), no
# machine id, no device nodes (the runtime mounts /dev).
trim_root() {
	local root=$1
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
		"$root"/var/lib/apt/lists/* "$root"/var/cache/ldconfig/aux-cache \
		"$root"/var/lib/dpkg/*-old "$root"/var/cache/debconf/*-old "$root"/dev/*
	find "$root/var/log" -type f -delete
	: >"$root/etc/machine-id"
	: >"$root/etc/resolv.conf"
	echo localhost >"$root/etc/hostname"
}
