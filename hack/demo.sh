#!/usr/bin/env bash
# The main job, for a newcomer: set everything up, then run a container under
# io.containerd.migrate.v1, checkpoint it, remove it, restore it, and show
# that it carries on from where it was (its tick counter continues).
#
#   sudo hack/demo.sh
#
# Uses a private containerd (hack/containerd.sh) that is removed at the end.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNTIME=io.containerd.migrate.v1
IMAGE=localhost/containerd-migrate/testbox:latest
NAME=demo
ID=demo-counter
CHECKPOINT=localhost/containerd-migrate/checkpoint/$ID:demo

"$REPO/hack/setup.sh" all

ADDR=$("$REPO/hack/containerd.sh" start "$NAME")
trap '"$REPO/hack/containerd.sh" destroy "$NAME" >/dev/null 2>&1 || true' EXIT
"$REPO/hack/images.sh" import "$ADDR" >/dev/null
ctr() { command ctr --address "$ADDR" "$@"; }

# The latest tick the counter wrote, read from inside the container.
tick() { ctr task exec --exec-id "peek-$RANDOM" "$ID" cat /tmp/tick | sed -n 's/^tick=\([0-9]*\).*/\1/p'; }

# Polls (with a deadline) until the counter has reached at least $1.
wait_tick() {
	local want=$1 deadline=$((SECONDS + 20)) t
	while ((SECONDS < deadline)); do
		t=$(tick 2>/dev/null || true)
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

echo
echo "counter: $before before the checkpoint, ~$at_checkpoint when it was taken, $after after the restore"
echo "The restored container continued its count from the checkpoint instead of starting again at 1."
