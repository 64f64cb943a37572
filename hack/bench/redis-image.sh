#!/usr/bin/env bash
# Builds and imports the Redis image of `bench migrate --workloads redis`
# (tests/src/bench/workloads/redis.rs): Debian bookworm's own redis-server
# and redis-tools in a root made with debootstrap, plus the workspace's
# static memtick (from hack/images.sh's build) as the container's clock:
# Redis itself has no tick a benchmark can read from outside, and the
# downtime "as the process lived it" needs one.
#
# The server runs as root, not as Debian's user redis: CRIU needs
# CAP_SYS_RESOURCE to read the rlimits of a process of another uid, and this
# project's machines lack it (as hack/bench/tomcat-image.sh says for Tomcat).
#
#   hack/bench/redis-image.sh build            -> target/images/redis.tar (cached)
#   hack/bench/redis-image.sh import ADDRESS   into the containerd at ADDRESS
#   hack/bench/redis-image.sh name             prints the image name
#
# The archive is rebuilt only when this script, hack/bench/oci-image.sh or
# memtick changes (the packages are whatever the mirror has then; their
# versions are listed in target/images/redis.packages).
# Environment: MIRROR (default http://deb.debian.org/debian), FORCE=1.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF=$REPO/hack/bench/redis-image.sh
LIB=$REPO/hack/bench/oci-image.sh
PROG=redis-image
# shellcheck source=hack/bench/oci-image.sh
. "$LIB"
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=redis-server,redis-tools
IMAGE_NAME=localhost/containerd-migrate/redis:latest
OUT_DIR=$REPO/target/images
ARCHIVE=$OUT_DIR/redis.tar
STAMP=$ARCHIVE.inputs
PACKAGE_LIST=$OUT_DIR/redis.packages
# hack/images.sh builds the test programs statically here.
MEMTICK=$REPO/target/x86_64-unknown-linux-gnu/release/memtick

# What the archive is made from; a change means a rebuild.
inputs() {
	sha256sum "$SELF" "$LIB" "$MEMTICK"
}



cmd_build() {
	umask 022
	mkdir -p "$OUT_DIR"
	[[ -x $MEMTICK ]] || die "$MEMTICK missing: run hack/images.sh build first"
	if [[ ${FORCE:-0} != 1 && -s $ARCHIVE && -s $STAMP ]] && cmp -s <(inputs) "$STAMP"; then
		say "up to date: $ARCHIVE"
		echo "$ARCHIVE $IMAGE_NAME"
		return 0
	fi
	local started=$SECONDS
	debootstrap_root "$OUT_DIR" redis "$PACKAGES" "$SUITE" "$MIRROR"
	local root=$ROOT
	[[ -x $root/usr/bin/redis-server && -x $root/usr/bin/redis-cli ]] ||
		die "no redis-server or redis-cli in /usr/bin"
	install -m 0755 "$MEMTICK" "$root/usr/local/bin/memtick"
	trim_root "$root"

	local config digest
	# The image's own command is Debian's server in the foreground; the
	# benchmark gives its own (a shell starting memtick beside redis-server).
	config=$(jq -n -c '{
		Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
		Cmd: ["/usr/bin/redis-server", "--protected-mode", "no", "--save", ""],
		WorkingDir: "/var/lib/redis", ExposedPorts: {"6379/tcp": {}}}')
	digest=$(oci_archive "$root" "$ARCHIVE" "$IMAGE_NAME" "$config" \
		"containerd-migrate hack/bench/redis-image.sh build" keep-owners)
	mv "$BUILD_DIR/packages" "$PACKAGE_LIST"
	inputs >"$STAMP"
	say "wrote $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)) in $((SECONDS - started)) s; redis-server $(awk '$1 == "redis-server" { print $2 }' "$PACKAGE_LIST")"
	echo "$ARCHIVE $IMAGE_NAME $digest"
}

case ${1:-} in
build) cmd_build ;;
import)
	[[ -n ${2:-} ]] || die "usage: redis-image.sh import ADDRESS"
	oci_import "$ARCHIVE" "$IMAGE_NAME" "$2"
	;;
name) echo "$IMAGE_NAME" ;;
*) die "usage: hack/bench/redis-image.sh build | import ADDRESS | name" ;;
esac
