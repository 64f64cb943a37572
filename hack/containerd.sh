#!/usr/bin/env bash
# Private containerd instances for tests, so they never touch a system
# containerd (nor each other).
#
#   hack/containerd.sh start NAME     start (if not running) and print the socket path
#   hack/containerd.sh stop NAME      stop containerd only; shims and containers keep running
#   hack/containerd.sh restart NAME   stop + start (prints the socket path)
#   hack/containerd.sh destroy NAME   delete all tasks/containers, stop, unmount, remove dirs
#   hack/containerd.sh address NAME   print the socket path
#
# Instance NAME lives in
#   /var/lib/containerd-migrate/NAME          root (content, snapshots, metadata)
#   /run/containerd-migrate/NAME/state        state (bundles of running tasks)
#   /run/containerd-migrate/NAME/containerd.sock (+ .ttrpc beside it)
#   /run/containerd-migrate/NAME/{config.toml,containerd.log,containerd.pid}
#
# containerd runs with PATH starting with $SHIM_DIR (default: <repo>/target/release),
# so the freshly built containerd-shim-migrate-v1 is the one it finds.
#
# Environment: SHIM_DIR, START_TIMEOUT (s, default 30), STOP_TIMEOUT (s,
# default 10), CONTAINERD_LOG_LEVEL (default info), INSTANCE_SOCKET (the
# socket path instead of the one above; hack/cluster.sh puts it where the
# machine can reach it while the rest of the instance stays private to its
# host; give it to every command for that instance), SNAPSHOTTER_SOCKET
# (the socket of a containerd-snapshotter-migrate: the configuration gets
# the proxy plugin `migrate`, a snapshotter containers can name with
# `ctr run --snapshotter migrate`; it must listen before containerd starts).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT_BASE=/var/lib/containerd-migrate
RUN_BASE=/run/containerd-migrate
START_TIMEOUT=${START_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
CONTAINERD_LOG_LEVEL=${CONTAINERD_LOG_LEVEL:-info}
# Where runc.v2 (and, by default, our shim) keep runc's state: runc --root
# /run/containerd/runc/<namespace>.
RUNC_ROOT_BASE=/run/containerd/runc
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Everything but the socket path goes to stderr, so ADDR=$(... start NAME) works.
log() { printf 'containerd.sh: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

usage() {
	die "usage: hack/containerd.sh start|stop|restart|destroy|address NAME"
}

# Sets the paths of instance $1.
instance() {
	NAME=$1
	# The socket path must stay well below the 108-byte limit of AF_UNIX.
	[[ $NAME =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$ ]] ||
		die "bad instance name '$NAME' (letters, digits, . _ -; at most 48)"
	ROOT=$ROOT_BASE/$NAME
	RUN=$RUN_BASE/$NAME
	STATE=$RUN/state
	SOCK=${INSTANCE_SOCKET:-$RUN/containerd.sock}
	# containerd also listens on $SOCK.ttrpc; an AF_UNIX path has at most
	# 107 bytes.
	((${#SOCK} + 6 <= 107)) || die "socket path $SOCK is too long (at most 101 bytes)"
	CONFIG=$RUN/config.toml
	LOG=$RUN/containerd.log
	PIDFILE=$RUN/containerd.pid
}

# One operation per instance at a time. The lock file sits outside $RUN so
# destroy can remove $RUN while holding it.
lock_instance() {
	mkdir -p "$RUN_BASE"
	exec 9>"$RUN_BASE/.$NAME.lock"
	flock -w 120 9 || die "instance $NAME is locked by another hack/containerd.sh"
}

# --------------------------------------------------------------- the process

# Whether pid $1 is a containerd started with this instance's config. With
# builtins only: without a pid file this runs for every process of the
# machine, and a fork each (readlink, tr) cost 14 s per start where forks are
# slow, under the emulated CPU of hack/softdirty-vm.sh. comm is the name of
# the program the process runs (an executable's, up to 15 characters).
is_our_containerd() {
	local pid=$1 comm args
	read -r comm 2>/dev/null <"/proc/$pid/comm" || return 1
	[[ $comm == containerd ]] || return 1
	mapfile -d '' -t args 2>/dev/null <"/proc/$pid/cmdline" || return 1
	[[ "${args[*]} " == *containerd*"--config $CONFIG "* ]]
}

# Prints the pid of this instance's containerd, if it runs.
containerd_pid() {
	local pid p
	if [[ -f $PIDFILE ]]; then
		pid=$(<"$PIDFILE")
		if [[ $pid =~ ^[0-9]+$ ]] && is_our_containerd "$pid"; then
			echo "$pid"
			return 0
		fi
	fi
	# No (valid) pid file: look for it, e.g. after the file was removed.
	for p in /proc/[0-9]*; do
		p=${p#/proc/}
		if is_our_containerd "$p"; then
			echo "$p"
			return 0
		fi
	done
	return 0
}

responds() {
	timeout 5 ctr --address "$SOCK" version >/dev/null 2>&1
}

# Polls until containerd answers on its socket; fails early if it died.
wait_ready() {
	local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
	while ((SECONDS < deadline)); do
		responds && return 0
		# Alive is enough: right after the launch the child may still be
		# the forked shell or setsid, not yet exec'd into containerd.
		if ! kill -0 "$pid" 2>/dev/null; then
			log "containerd $NAME (pid $pid) exited during start-up; log tail:"
			tail -n 30 "$LOG" >&2 || true
			return 1
		fi
		sleep 0.05
	done
	log "containerd $NAME did not answer on $SOCK within ${START_TIMEOUT}s; log tail:"
	tail -n 30 "$LOG" >&2 || true
	return 1
}

write_config() {
	# Version 3 is containerd 2.x's format. The disabled plugins are CRI (and
	# what only CRI uses), NRI (its socket, /run/nri/nri.sock, would be shared
	# by all instances), tracing, and snapshotters/differs we do not use.
	cat >"$CONFIG.tmp" <<-EOF
		# Written by hack/containerd.sh for instance "$NAME".
		version = 3
		root = "$ROOT"
		state = "$STATE"
		disabled_plugins = [
		  "io.containerd.grpc.v1.cri",
		  "io.containerd.cri.v1.images",
		  "io.containerd.cri.v1.runtime",
		  "io.containerd.podsandbox.controller.v1.podsandbox",
		  "io.containerd.nri.v1.nri",
		  "io.containerd.tracing.processor.v1.otlp",
		  "io.containerd.internal.v1.tracing",
		  "io.containerd.snapshotter.v1.blockfile",
		  "io.containerd.snapshotter.v1.btrfs",
		  "io.containerd.snapshotter.v1.devmapper",
		  "io.containerd.snapshotter.v1.erofs",
		  "io.containerd.differ.v1.erofs",
		]

		[grpc]
		  address = "$SOCK"

		[plugins."io.containerd.transfer.v1.local"]
		  # Unpack imported images into overlayfs, the default snapshotter.
		  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
		    platform = "linux/amd64"
		    snapshotter = "overlayfs"
	EOF
	if [[ -n ${SNAPSHOTTER_SOCKET:-} ]]; then
		cat >>"$CONFIG.tmp" <<-EOF

			# containerd-migrate's snapshotter (snapshotter/README.md).
			[proxy_plugins.migrate]
			  type = "snapshot"
			  address = "$SNAPSHOTTER_SOCKET"
		EOF
	fi
	mv "$CONFIG.tmp" "$CONFIG"
}

launch() {
	mkdir -p "$ROOT" "$STATE"
	write_config
	local shim_dir=${SHIM_DIR:-$REPO/target/release}
	printf '\n--- hack/containerd.sh start %s at %s (shims from %s) ---\n' \
		"$NAME" "$(date -u +%FT%TZ)" "$shim_dir" >>"$LOG"
	# setsid: its own session, so it outlives the calling shell and its
	# terminal. fd 9 (our lock) must not be inherited. Without job control
	# the child is no process-group leader, so setsid execs in place and $!
	# is containerd's pid.
	# containerd unpacks checkpoints for restores into XDG_RUNTIME_DIR (/tmp
	# by default) and never removes them; inside the state directory they
	# go away with the instance.
	mkdir -p "$STATE/tmp"
	XDG_RUNTIME_DIR="$STATE/tmp" PATH="$shim_dir:$SYSTEM_PATH" setsid containerd --config "$CONFIG" \
		--log-level "$CONTAINERD_LOG_LEVEL" </dev/null >>"$LOG" 2>&1 9>&- &
	local pid=$!
	echo "$pid" >"$PIDFILE"
	wait_ready "$pid" || {
		stop_process
		die "containerd $NAME failed to start"
	}
}

# SIGTERM, wait, SIGKILL: containerd only. Its shims are in their own
# sessions and keep running with their containers.
stop_process() {
	local pid
	pid=$(containerd_pid)
	if [[ -n $pid ]]; then
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + STOP_TIMEOUT))
		while is_our_containerd "$pid" && ((SECONDS < deadline)); do
			sleep 0.05
		done
		if is_our_containerd "$pid"; then
			log "containerd $NAME (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			while is_our_containerd "$pid"; do sleep 0.05; done
		fi
	fi
	rm -f "$PIDFILE"
}

# ---------------------------------------------------------------- commands

cmd_start() {
	command -v containerd >/dev/null || die "containerd not installed (hack/setup.sh containerd)"
	mkdir -p "$RUN"
	local pid
	pid=$(containerd_pid)
	if [[ -n $pid ]]; then
		if wait_ready "$pid"; then
			echo "$pid" >"$PIDFILE"
			echo "$SOCK"
			return 0
		fi
		log "containerd $NAME (pid $pid) runs but does not answer; restarting it"
		stop_process
	fi
	launch
	echo "$SOCK"
}

cmd_stop() {
	stop_process
}

# Kills and deletes every task and container, in every namespace, through
# containerd's API so shims clean up after themselves.
delete_all_through_api() {
	local ctr=(timeout 30 ctr --address "$SOCK") ns id deadline
	for ns in $("${ctr[@]}" namespaces ls -q 2>/dev/null); do
		for id in $("${ctr[@]}" -n "$ns" tasks ls -q 2>/dev/null); do
			"${ctr[@]}" -n "$ns" tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1 || true
		done
		deadline=$((SECONDS + 10))
		while ((SECONDS < deadline)) &&
			"${ctr[@]}" -n "$ns" tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED" { f = 1 } END { exit !f }'; do
			sleep 0.05
		done
		for id in $("${ctr[@]}" -n "$ns" tasks ls -q 2>/dev/null); do
			"${ctr[@]}" -n "$ns" tasks delete --force "$id" >/dev/null 2>&1 ||
				log "could not delete task $ns/$id"
		done
		for id in $("${ctr[@]}" -n "$ns" containers ls -q 2>/dev/null); do
			"${ctr[@]}" -n "$ns" containers delete "$id" >/dev/null 2>&1 ||
				log "could not delete container $ns/$id"
		done
	done
}

# What the API could not reach (containerd would not start, a shim is stuck):
# runc containers whose bundle is in this instance's state, and its shims.
kill_leftovers() {
	local bundles=$STATE/io.containerd.runtime.v2.task b ns id state
	for b in "$bundles"/*/*; do
		[[ -d $b ]] || continue
		id=${b##*/}
		ns=${b%/*}
		ns=${ns##*/}
		state=$RUNC_ROOT_BASE/$ns/$id/state.json
		# The runc root is shared by instances; only touch our own bundle.
		if [[ -f $state ]] && grep -qF "\"bundle\":\"$b\"" "$state"; then
			log "killing leftover container $ns/$id"
			runc --root "$RUNC_ROOT_BASE/$ns" kill --all "$id" KILL >/dev/null 2>&1 || true
			runc --root "$RUNC_ROOT_BASE/$ns" delete --force "$id" >/dev/null 2>&1 || true
		fi
	done
	local p cmdline
	for p in /proc/[0-9]*; do
		cmdline=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		if [[ $cmdline == *containerd-shim*"-address $SOCK "* ]]; then
			log "killing leftover shim ${p#/proc/}: $cmdline"
			kill -KILL "${p#/proc/}" 2>/dev/null || true
			# A killed shim cannot remove its socket; a stale one would
			# confuse the next shim started for the same container.
			if [[ $cmdline =~ -socket\ unix://([^ ]+) ]]; then
				rm -f "${BASH_REMATCH[1]}"
			fi
		fi
	done
}

unmount_under() {
	local mp prefix
	for prefix in "$@"; do
		# Deepest first.
		awk -v p="$prefix" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo |
			sort -r | while read -r mp; do
			umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ||
				log "could not unmount $mp"
		done
	done
}

cmd_destroy() {
	if [[ -d $RUN || -d $ROOT ]]; then
		if command -v containerd >/dev/null && (cmd_start >/dev/null); then
			delete_all_through_api
		else
			log "containerd $NAME would not start; cleaning up without it"
		fi
		stop_process
		kill_leftovers
		unmount_under "$ROOT" "$RUN"
		rm -rf "$ROOT" "$RUN"
	fi
}

main() {
	[[ $# -eq 2 ]] || usage
	local cmd=$1
	instance "$2"
	case $cmd in
	address)
		echo "$SOCK"
		return 0
		;;
	start | stop | restart | destroy) ;;
	*) usage ;;
	esac
	[[ $(id -u) -eq 0 ]] || die "run as root"
	lock_instance
	case $cmd in
	start) cmd_start ;;
	stop) cmd_stop ;;
	restart)
		cmd_stop
		cmd_start
		;;
	destroy) cmd_destroy ;;
	esac
}

main "$@"
