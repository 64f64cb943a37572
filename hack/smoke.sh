#!/usr/bin/env bash
# End-to-end smoke test of the machine set-up (hack/setup.sh): a private
# containerd, the test image, containers under a runtime, and CRIU checkpoint
# and restore through containerd.
#
#   hack/smoke.sh            with io.containerd.runc.v2 (the reference)
#   RUNTIME=io.containerd.migrate.v1 hack/smoke.sh    with our shim
#
# Uses containerd instance "smoke" (destroyed at the end; KEEP=1 keeps it).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNTIME=${RUNTIME:-io.containerd.runc.v2}
INSTANCE=${INSTANCE:-smoke}
IMAGE=$("$REPO/hack/images.sh" name)
WORK=$(mktemp -d /tmp/containerd-migrate-smoke.XXXXXX)
PASSED=0
FAILED=0

say() { printf '==> %s\n' "$*"; }
pass() {
	printf 'ok   %s\n' "$*"
	PASSED=$((PASSED + 1))
}
fail() {
	printf 'FAIL %s\n' "$*"
	FAILED=$((FAILED + 1))
}

# expect ACTUAL WANTED WHAT
expect() {
	if [[ $1 == "$2" ]]; then
		pass "$3"
	else
		fail "$3: got '$1', want '$2'"
	fi
}

cleanup() {
	if [[ ${KEEP:-0} != 1 ]]; then
		"$REPO/hack/containerd.sh" destroy "$INSTANCE" || true
		rm -rf "$WORK"
	else
		say "kept instance $INSTANCE and $WORK"
	fi
}
trap cleanup EXIT

# Polls command "$@" until it succeeds or $1 seconds pass.
poll() {
	local timeout=$1 deadline
	shift
	deadline=$((SECONDS + timeout))
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 0.05
	done
}

ADDR=$("$REPO/hack/containerd.sh" start "$INSTANCE")
"$REPO/hack/images.sh" import "$ADDR"
CTR=(ctr --address "$ADDR")
EXECS=0
in_task() { # in_task TASK CMD...: runs CMD inside TASK
	local task=$1
	shift
	EXECS=$((EXECS + 1))
	"${CTR[@]}" tasks exec --exec-id "smoke-$EXECS" "$task" "$@"
}
task_status() { "${CTR[@]}" tasks ls | awk -v t="$1" '$1 == t { print $3 }'; }
task_stopped() { [[ $(task_status "$1") == STOPPED ]]; }
remove() { # kills and removes task and container $1
	"${CTR[@]}" tasks kill --signal SIGKILL "$1" >/dev/null 2>&1 || true
	poll 10 task_stopped "$1" || true
	"${CTR[@]}" tasks delete "$1" >/dev/null 2>&1 || true
	"${CTR[@]}" containers delete "$1" >/dev/null 2>&1 || true
}
# The tick number in memtick's --out file inside task $1.
current_tick() { in_task "$1" cat /tmp/tick 2>/dev/null | sed -n 's/^tick=\([0-9]*\) .*/\1/p'; }
tick_beyond() { local t; t=$(current_tick "$1"); [[ -n $t && $t -gt $2 ]]; }

say "runtime $RUNTIME, containerd $ADDR"

# 1. A container runs at all.
out=$("${CTR[@]}" run --rm --runtime "$RUNTIME" "$IMAGE" smoke-hello /bin/echo hello 2>&1) || true
expect "$out" hello "echo hello in a container"

# 2. memtick: checkpoint leaving it running, then checkpoint, kill and restore.
"${CTR[@]}" run -d --log-uri "file://$WORK/memtick.log" --runtime "$RUNTIME" "$IMAGE" smoke-mt \
	/usr/local/bin/memtick --mib 64 --interval-ms 10 --dirty-percent 5 --out /tmp/tick >/dev/null ||
	fail "ctr run memtick"
if poll 20 tick_beyond smoke-mt 5; then
	pass "memtick ticks ($(in_task smoke-mt cat /tmp/tick))"
else
	fail "memtick does not tick: $(tail -3 "$WORK/memtick.log" 2>/dev/null)"
fi

start=$SECONDS
if [[ $(task_status smoke-mt) != RUNNING ]]; then
	fail "tasks checkpoint: memtick is not running"
elif "${CTR[@]}" tasks checkpoint --image-path "$WORK/mt-image" --work-path "$WORK/mt-work" smoke-mt \
	>"$WORK/ctr.err" 2>&1; then
	t=$(current_tick smoke-mt)
	if [[ $(task_status smoke-mt) == RUNNING ]] && poll 10 tick_beyond smoke-mt "$t"; then
		pass "tasks checkpoint --image-path left memtick running ($((SECONDS - start))s; $(in_task smoke-mt cat /tmp/tick))"
	else
		fail "memtick not running after tasks checkpoint: $(task_status smoke-mt)"
	fi
else
	fail "tasks checkpoint: $(tail -3 "$WORK/ctr.err")"
fi

if [[ $(task_status smoke-mt) != RUNNING ]]; then
	fail "containers checkpoint: memtick is not running"
elif "${CTR[@]}" containers checkpoint --task --rw smoke-mt localhost/smoke/mt:1 >"$WORK/ctr.err" 2>&1; then
	before=$(current_tick smoke-mt)
	remove smoke-mt
	# ctr attaches the restored task's stdio to its own; memtick ignores the
	# broken pipe once ctr is gone.
	if "${CTR[@]}" containers restore --live --rw smoke-mt localhost/smoke/mt:1 >"$WORK/restore.out" 2>&1; then
		# 300 ticks: three full verification sweeps of all pages.
		first=$(current_tick smoke-mt)
		if [[ -n $first ]] && poll 30 tick_beyond smoke-mt $((first + 300)) &&
			[[ $(task_status smoke-mt) == RUNNING ]]; then
			pass "memtick restored: continued at tick $first (checkpointed around $before), no corruption after 300 ticks"
		else
			fail "restored memtick: $(task_status smoke-mt); $(grep CORRUPT "$WORK/restore.out" || tail -2 "$WORK/restore.out")"
		fi
	else
		fail "containers restore: $(tail -5 "$WORK/restore.out")"
	fi
else
	fail "containers checkpoint of memtick: $(tail -3 "$WORK/ctr.err")"
fi
remove smoke-mt

# 3. echo-server: the line counter survives checkpoint, kill and restore.
ask() { in_task smoke-es sh -c "printf '$2\n' | nc 127.0.0.1 $1"; }
"${CTR[@]}" run -d --log-uri "file://$WORK/echo.log" --runtime "$RUNTIME" "$IMAGE" smoke-es \
	/usr/local/bin/echo-server --port 8080 >/dev/null || fail "ctr run echo-server"
poll 10 grep -qs listening "$WORK/echo.log" || fail "echo-server did not listen"
out=$(ask 8080 'one\ntwo' 2>&1) || true
expect "$out" $'1 one\n2 two' "echo-server answers"
if [[ $(task_status smoke-es) != RUNNING ]]; then
	fail "containers checkpoint: echo-server is not running"
elif "${CTR[@]}" containers checkpoint --task smoke-es localhost/smoke/es:1 >"$WORK/ctr.err" 2>&1; then
	remove smoke-es
	if "${CTR[@]}" containers restore --live smoke-es localhost/smoke/es:1 >"$WORK/restore-es.out" 2>&1; then
		# runc 1.1 always asks CRIU not to dump the network namespace's
		# devices (--empty-ns net), so a restored container's own netns has
		# its loopback down. Bring it up as a network set-up would.
		pid=$("${CTR[@]}" tasks ls | awk '$1 == "smoke-es" { print $2 }')
		if ! in_task smoke-es ip link show lo | grep -q 'UP'; then
			say "loopback down in the restored netns (runc --empty-ns net); setting it up"
			nsenter -t "$pid" -n ip link set lo up
		fi
		out=$(ask 8080 'three' 2>&1) || true
		expect "$out" '3 three' "echo-server restored with its counter"
	else
		fail "containers restore of echo-server: $(tail -5 "$WORK/restore-es.out")"
	fi
else
	fail "containers checkpoint of echo-server: $(tail -3 "$WORK/ctr.err")"
fi
remove smoke-es

echo "runtime $RUNTIME"
echo "smoke: $PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
