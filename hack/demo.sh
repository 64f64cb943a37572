#!/usr/bin/env bash
# The main job, for a newcomer: set everything up, then
#
# 1. a cluster of two hosts (hack/cluster.sh: namespaces on this machine,
#    each with its own containerd, shim, snapshotter and agent): a TCP
#    server runs on h1, a client on this machine connects to it, and
#    `migratectl migrate` moves the server to h2, where it keeps its IP, its
#    count and the client's connection;
# 2. on one host: run a container under io.containerd.migrate.v1,
#    checkpoint it, remove it, restore it, and show that it carries on from
#    where it was (its tick counter continues); then the same through a
#    checkpoint ticker: the shim stores a version every 2 s, the container
#    is killed as if its host died, and migratectl restores the newest
#    version from the store.
#
#   sudo hack/demo.sh
#
# Uses a cluster and a private containerd (hack/containerd.sh) of its own,
# removed at the end.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNTIME=io.containerd.migrate.v1
IMAGE=localhost/containerd-migrate/testbox:latest
NAME=demo
ID=demo-counter
CHECKPOINT=localhost/containerd-migrate/checkpoint/$ID:demo

"$REPO/hack/setup.sh" all

# Part 1: a TCP server moves between two hosts under its client.
export CLUSTER_NAME=demo
cluster() { "$REPO/hack/cluster.sh" "$@"; }
trap 'cluster down >/dev/null 2>&1 || true' EXIT
echo "==> bring up a cluster of two hosts (hack/cluster.sh up 2)"
cluster up 2 | sed 's/^/    /'
"$REPO/hack/images.sh" import "/run/containerd-migrate-cluster/demo/h1/containerd.sock" >/dev/null
on() { local h=$1; shift; cluster exec "$h" -- "$@"; }

echo "==> run a TCP server on h1 through the cluster (migratectl run): it numbers every line it answers"
ip=$(on h1 migratectl run --json --host h1 "$IMAGE" echo-server -- echo-server --port 7000 | jq -r .ip)
on h1 migratectl ps | sed 's/^/    /'
echo "==> connect to $ip:7000 from this machine and keep the connection open"
deadline=$((SECONDS + 10))
until exec 3<>"/dev/tcp/$ip/7000"; do
	((SECONDS < deadline)) || { echo "cannot connect to $ip:7000" >&2; exit 1; }
	sleep 0.1
done 2>/dev/null
say() { echo "$1" >&3; local answer; read -r -t 30 answer <&3; echo "$answer"; }
echo "    sent hello, got: $(say hello)"
echo "    sent world, got: $(say world)"

echo "==> move it to h2 (migratectl migrate --to h2): memory, writable layer, IP and TCP connection"
on h1 migratectl migrate --to h2 echo-server | sed 's/^/    /'
on h1 migratectl ps | sed 's/^/    /'
echo "    on the same connection, sent again, got: $(say again)"
echo "    The server on h2 answered with the next number: it is the same process, with its state,"
echo "    and the client's connection, opened to h1, went on."
exec 3>&-
cluster down >/dev/null
trap - EXIT
echo

# Part 2: checkpoint and restore on one host, and a checkpoint ticker.
ADDR=$("$REPO/hack/containerd.sh" start "$NAME")
trap '"$REPO/hack/containerd.sh" destroy "$NAME" >/dev/null 2>&1 || true' EXIT
"$REPO/hack/images.sh" import "$ADDR" >/dev/null
ctr() { command ctr --address "$ADDR" "$@"; }

# The latest tick the counter of container ${1:-$ID} wrote, read from inside it.
tick() { ctr task exec --exec-id "peek-$RANDOM" "${1:-$ID}" cat /tmp/tick | sed -n 's/^tick=\([0-9]*\).*/\1/p'; }

# Polls (with a deadline) until the counter of container ${2:-$ID} has reached at least $1.
wait_tick() {
	local want=$1 deadline=$((SECONDS + 20)) t
	while ((SECONDS < deadline)); do
		t=$(tick "${2:-$ID}" 2>/dev/null || true)
		[[ -n $t ]] && ((t >= want)) && { echo "$t"; return 0; }
	done
	echo "the counter did not reach $want within 20 s" >&2
	return 1
}

echo "==> run a counter with 64 MiB of touched memory under $RUNTIME"
ctr run -d --runtime "$RUNTIME" "$IMAGE" "$ID" memtick --mib 64 --interval-ms 100 --out /tmp/tick >/dev/null
before=$(wait_tick 20)
echo "    counter is at tick $before"

echo "==> checkpoint it with its memory and writable layer (ctr container checkpoint --task --rw)"
start=$(date +%s%N)
ctr container checkpoint --task --rw "$ID" "$CHECKPOINT"
echo "    checkpoint $CHECKPOINT taken in $((($(date +%s%N) - start) / 1000000)) ms; the container kept running"
at_checkpoint=$(tick)

echo "==> remove the container completely"
ctr task kill -s SIGKILL "$ID"
ctr task delete "$ID" >/dev/null 2>&1 || {
	# The kill is asynchronous: delete once the task has stopped.
	deadline=$((SECONDS + 10))
	until ctr task delete "$ID" >/dev/null 2>&1; do ((SECONDS < deadline)) || exit 1; done
}
ctr container delete "$ID"

echo "==> restore it from the checkpoint (ctr container restore --live --rw)"
start=$(date +%s%N)
ctr container restore --live --rw "$ID" "$CHECKPOINT" >/dev/null
echo "    restored in $((($(date +%s%N) - start) / 1000000)) ms"
after=$(wait_tick $((at_checkpoint + 5)))

echo "    counter: $before before the checkpoint, ~$at_checkpoint when it was taken, $after after the restore"
echo "    The restored container continued its count from the checkpoint instead of starting again at 1."
ctr task kill -s SIGKILL "$ID" >/dev/null 2>&1 || true

MIGRATECTL=$REPO/target/release/migratectl
STORE=$(mktemp -d /var/tmp/containerd-migrate-demo.XXXXXX)
trap '"$REPO/hack/containerd.sh" destroy "$NAME" >/dev/null 2>&1 || true; rm -rf "$STORE"' EXIT
mctl() { "$MIGRATECTL" --address "$ADDR" "$@"; }
TICKED=demo-ticked
echo
echo "==> run a counter with a checkpoint ticker: a version every 2 s into file://$STORE"
ctr run -d --runtime "$RUNTIME" \
	--annotation io.containerd.migrate.checkpoint.interval=2s \
	--annotation "io.containerd.migrate.checkpoint.store=file://$STORE" \
	"$IMAGE" "$TICKED" memtick --mib 64 --interval-ms 100 --dirty-percent 1 --out /tmp/tick >/dev/null
deadline=$((SECONDS + 60))
until [[ -e $STORE/containers/default/$TICKED/versions/2.json ]]; do
	((SECONDS < deadline)) || { echo "no version 2 within 60 s" >&2; exit 1; }
	sleep 0.2
done
mctl checkpoint ls --store "file://$STORE" --container "$TICKED" | sed 's/^/    /'
last=$(tick "$TICKED")

echo "==> kill it, as if its host had died"
ctr task kill -s SIGKILL "$TICKED"
deadline=$((SECONDS + 10))
until ctr task delete "$TICKED" >/dev/null 2>&1; do ((SECONDS < deadline)) || exit 1; done

echo "==> restore the newest version from the store as demo-restored"
mctl restore --store "file://$STORE" --container "$TICKED" --as demo-restored --detach | sed 's/^/    /'
again=$(wait_tick 1 demo-restored)
echo "    counter: $last when the container was killed, $again right after the restore"
echo "    It carried on from the newest version (taken at most one interval before the kill), not from 1."
ctr task kill -s SIGKILL demo-restored >/dev/null 2>&1 || true
