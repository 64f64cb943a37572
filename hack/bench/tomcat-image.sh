#!/usr/bin/env bash
# Builds and imports the Tomcat image of `bench startup --app tomcat`
# (tests/src/bench/): Debian bookworm's own tomcat10 and tomcat10-examples
# packages in a root made with debootstrap, run as Debian's systemd unit runs
# them (CATALINA_HOME=/usr/share/tomcat10, CATALINA_BASE=/var/lib/tomcat10,
# `catalina.sh run` in the foreground), with two departures: JVM flags for
# checkpoints (JAVA_OPTS below), and root instead of the unit's user tomcat: CRIU needs CAP_SYS_RESOURCE to read
# the rlimits of a process of another uid, and some hosts' root (this
# project's machines) lacks it.
# A real server that binds its port long before it serves: Tomcat binds 8080
# when its connector initialises, then deploys its webapps, and only then
# accepts connections.
#
#   hack/bench/tomcat-image.sh build            -> target/images/tomcat.tar (cached)
#   hack/bench/tomcat-image.sh import ADDRESS   into the containerd at ADDRESS
#   hack/bench/tomcat-image.sh name             prints the image name
#   hack/bench/tomcat-image.sh command          prints the container command (one word a line)
#
# The archive is rebuilt only when this script or hack/bench/oci-image.sh
# changes (the packages are whatever the mirror has then; their versions are
# listed in target/images/tomcat.packages). Packaging is deterministic for a
# given root (hack/bench/oci-image.sh); debootstrap's root itself is not (a
# new build may have newer packages).
# Environment: MIRROR (default http://deb.debian.org/debian), FORCE=1.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF=$REPO/hack/bench/tomcat-image.sh
LIB=$REPO/hack/bench/oci-image.sh
PROG=tomcat-image
# shellcheck source=hack/bench/oci-image.sh
. "$LIB"
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=tomcat10,tomcat10-examples
IMAGE_NAME=localhost/containerd-migrate/tomcat:latest
OUT_DIR=$REPO/target/images
ARCHIVE=$OUT_DIR/tomcat.tar
STAMP=$ARCHIVE.inputs
PACKAGE_LIST=$OUT_DIR/tomcat.packages
CATALINA_HOME=/usr/share/tomcat10
CATALINA_BASE=/var/lib/tomcat10

# JVM flags a user who checkpoints a JVM would set, on top of Debian's own
# -Djava.awt.headless=true:
#   -XX:-UsePerfData   no hsperfdata file shared-mapped from /tmp, which every
#                      restore would have to find in the container's root again
#   -XX:+UseSerialGC   one GC thread instead of G1's pool and its concurrent
#                      threads: fewer threads to freeze, dump and restore
#   -Xmx256m -Xms32m   a fixed ceiling and a small start: the heap that start-up
#                      touched is what gets dumped, so keep eden small
# Class data sharing stays on (Debian's classes.jsa): CRIU maps the archive
# again from the image on restore, and -Xshare:off made the http: ready point
# no smaller (111 against 110 MiB) while it slows every cold start.
JAVA_OPTS=(-Djava.awt.headless=true -XX:-UsePerfData -XX:+UseSerialGC -Xmx256m -Xms32m)
COMMAND=(/usr/bin/env "JAVA_OPTS=${JAVA_OPTS[*]}" "$CATALINA_HOME/bin/catalina.sh" run)

# What the archive is made from; a change means a rebuild.
inputs() {
	sha256sum "$SELF" "$LIB"
}



cmd_build() {
	umask 022
	mkdir -p "$OUT_DIR"
	if [[ ${FORCE:-0} != 1 && -s $ARCHIVE && -s $STAMP ]] && cmp -s <(inputs) "$STAMP"; then
		say "up to date: $ARCHIVE"
		echo "$ARCHIVE $IMAGE_NAME"
		return 0
	fi
	local started=$SECONDS
	debootstrap_root "$OUT_DIR" tomcat "$PACKAGES" "$SUITE" "$MIRROR"
	local root=$ROOT
	[[ -x $root$CATALINA_HOME/bin/catalina.sh && -d $root$CATALINA_BASE/webapps/ROOT ]] ||
		die "no Tomcat at $CATALINA_HOME with webapps in $CATALINA_BASE"
	trim_root "$root"

	local cmd_json config digest
	cmd_json=$(printf '%s\n' "${COMMAND[@]}" | jq -R . | jq -s -c .)
	# As Debian's unit (tomcat10.service) sets them, but for JAVA_OPTS, which
	# the command carries so that the benchmark's results record it.
	config=$(jq -n -c --argjson cmd "$cmd_json" \
		--arg home "$CATALINA_HOME" --arg base "$CATALINA_BASE" '{
		Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"CATALINA_HOME=\($home)", "CATALINA_BASE=\($base)", "CATALINA_TMPDIR=/tmp",
			"JAVA_HOME=/usr/lib/jvm/default-java"],
		Cmd: $cmd, WorkingDir: $base, ExposedPorts: {"8080/tcp": {}}}')
	digest=$(oci_archive "$root" "$ARCHIVE" "$IMAGE_NAME" "$config" \
		"containerd-migrate hack/bench/tomcat-image.sh build" keep-owners)
	mv "$BUILD_DIR/packages" "$PACKAGE_LIST"
	inputs >"$STAMP"
	say "wrote $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)) in $((SECONDS - started)) s; tomcat10 $(awk '$1 == "tomcat10" { print $2 }' "$PACKAGE_LIST")"
	echo "$ARCHIVE $IMAGE_NAME $digest"
}

case ${1:-} in
build) cmd_build ;;
import)
	[[ -n ${2:-} ]] || die "usage: tomcat-image.sh import ADDRESS"
	oci_import "$ARCHIVE" "$IMAGE_NAME" "$2"
	;;
name) echo "$IMAGE_NAME" ;;
command) printf '%s\n' "${COMMAND[@]}" ;;
*) die "usage: hack/bench/tomcat-image.sh build | import ADDRESS | name | command" ;;
esac
