#!/usr/bin/env bash
# Builds and imports the image of `bench startup` (tests/src/bench/): SlowStart (a Java
# HTTP service that initialises for seconds, hack/bench/startup/SlowStart.java)
# on a Java runtime made from the host's OpenJDK 17 with jlink (java.base and
# jdk.httpserver, the only modules it uses), the shared libraries that runtime
# needs (ldd of bin/java and every lib/**/*.so, copied to the same paths) and
# Debian's static busybox for a shell and wget. No registry is needed.
#
#   hack/bench/startup-image.sh build            -> target/images/slowstart.tar (cached)
#   hack/bench/startup-image.sh import ADDRESS   into the containerd at ADDRESS
#   hack/bench/startup-image.sh name             prints the image name
#   hack/bench/startup-image.sh command          prints the container command (one word a line)
#
# Like hack/images.sh, the archive is built deterministically (fixed mtimes,
# owners and order, gzip without a timestamp: hack/bench/oci-image.sh). It is
# rebuilt only when its inputs change: this script, oci-image.sh,
# SlowStart.java and the JDK.
# Environment: JAVA_HOME (default /usr/lib/jvm/java-17-openjdk-amd64), FORCE=1.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF=$REPO/hack/bench/startup-image.sh
LIB=$REPO/hack/bench/oci-image.sh
PROG=startup-image
# shellcheck source=hack/bench/oci-image.sh
. "$LIB"
SRC=$REPO/hack/bench/startup/SlowStart.java
JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
IMAGE_NAME=localhost/containerd-migrate/slowstart:latest
OUT_DIR=$REPO/target/images
ARCHIVE=$OUT_DIR/slowstart.tar
STAMP=$ARCHIVE.inputs
BUSYBOX=/bin/busybox
JRE=/opt/java # where the runtime goes in the image

# The JVM flags make CRIU's job easy and the checkpoint small:
#   -XX:-UsePerfData   no hsperfdata file mapped from /tmp
#   -XX:+UseSerialGC   one GC thread, no concurrent GC threads to freeze
#   -Xshare:off        no class data sharing archive mapping (jlink makes none anyway)
#   -Xms16m -Xmx256m -XX:MinHeapFreeRatio=5 -XX:MaxHeapFreeRatio=20
#                      a fixed ceiling, and the heap shrinks after the System.gc()
#                      that ends initialisation, so only live data is dumped
#   -Djava.net.preferIPv4Stack=true   an IPv4 listener; busybox wget asks 127.0.0.1
COMMAND=("$JRE/bin/java" -XX:-UsePerfData -XX:+UseSerialGC -Xshare:off
	-Xms16m -Xmx256m -XX:MinHeapFreeRatio=5 -XX:MaxHeapFreeRatio=20
	-Djava.net.preferIPv4Stack=true -cp /app SlowStart)

# What the archive is made from; a change means a rebuild.
inputs() {
	sha256sum "$SELF" "$LIB" "$SRC" "$BUSYBOX"
	"$JAVA_HOME/bin/java" -version 2>&1
	sha256sum "$JAVA_HOME/lib/server/libjvm.so" "$JAVA_HOME/jmods/java.base.jmod" 2>/dev/null || true
}

# Copies every shared library that the ELF files under $1 need into rootfs
# $2, at the path the dynamic linker finds it on the host.
copy_libs() {
	local tree=$1 root=$2 f lib
	{
		find "$tree" -type f \( -name '*.so' -o -path '*/bin/*' \) -print0 |
			while IFS= read -r -d '' f; do
				file -b "$f" | grep -q '^ELF' || continue
				ldd "$f" 2>/dev/null | awk '
					$2 == "=>" && $3 ~ /^\// { print $3 }
					$1 ~ /^\// { print $1 }'
			done
	} | sort -u | while read -r lib; do
		# Libraries of the runtime itself are already there.
		[[ $lib == "$tree"/* ]] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
		chmod 0755 "$root$lib"
	done
}

cmd_build() {
	umask 022
	command -v file >/dev/null || die "file(1) is missing (apt-get install file)"
	[[ -x $JAVA_HOME/bin/jlink && -x $JAVA_HOME/bin/javac ]] || die "no JDK at $JAVA_HOME (javac, jlink)"
	[[ -x $BUSYBOX ]] || die "$BUSYBOX missing: install busybox-static"
	mkdir -p "$OUT_DIR"
	if [[ ${FORCE:-0} != 1 && -s $ARCHIVE && -s $STAMP ]] && cmp -s <(inputs) "$STAMP"; then
		say "up to date: $ARCHIVE"
		echo "$ARCHIVE $IMAGE_NAME"
		return 0
	fi

	BUILD_DIR=$(mktemp -d "$OUT_DIR/.slowstart.XXXXXX")
	trap 'rm -rf "$BUILD_DIR"' EXIT
	local work=$BUILD_DIR root=$BUILD_DIR/rootfs
	mkdir -p "$root"/{bin,etc,root,tmp,proc,sys,dev,run,app,opt}
	chmod 0700 "$root/root"
	chmod 1777 "$root/tmp"

	say "compiling SlowStart"
	"$JAVA_HOME/bin/javac" --release 17 -d "$root/app" "$SRC"

	say "making a Java runtime with jlink (java.base, jdk.httpserver)"
	"$JAVA_HOME/bin/jlink" --add-modules java.base,jdk.httpserver --strip-debug --no-man-pages \
		--no-header-files --output "$root$JRE"
	copy_libs "$root$JRE" "$root"

	install -m 0755 "$BUSYBOX" "$root/bin/busybox"
	local applet
	while read -r applet; do
		[[ -n $applet && $applet != busybox ]] || continue
		ln -s busybox "$root/bin/$applet"
	done < <("$BUSYBOX" --list)
	printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
	printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$root/etc/group"
	# The runtime must start in the image, not only on the host (with a /proc:
	# the loader resolves java's $ORIGIN rpath through it).
	# shellcheck disable=SC2016 # expanded by the inner sh
	unshare --mount sh -c 'mount -t proc proc "$1/proc" && exec chroot "$1" "$2/bin/java" -version' sh "$root" "$JRE" \
		>/dev/null 2>"$work/java-version.err" || die "the Java runtime does not start inside the image's root: $(cat "$work/java-version.err")"

	local cmd_json config digest
	cmd_json=$(printf '%s\n' "${COMMAND[@]}" | jq -R . | jq -s -c .)
	config='{"Env":["PATH='"$JRE"'/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":'"$cmd_json"',"WorkingDir":"/app","ExposedPorts":{"8080/tcp":{}}}'
	digest=$(oci_archive "$root" "$ARCHIVE" "$IMAGE_NAME" "$config" \
		"containerd-migrate hack/bench/startup-image.sh build")
	inputs >"$STAMP"
	say "wrote $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
	echo "$ARCHIVE $IMAGE_NAME $digest"
}

case ${1:-} in
build) cmd_build ;;
import)
	[[ -n ${2:-} ]] || die "usage: startup-image.sh import ADDRESS"
	oci_import "$ARCHIVE" "$IMAGE_NAME" "$2"
	;;
name) echo "$IMAGE_NAME" ;;
command) printf '%s\n' "${COMMAND[@]}" ;;
*) die "usage: hack/bench/startup-image.sh build | import ADDRESS | name | command" ;;
esac
