#!/usr/bin/env bash
# Checkpoint benchmark: how long a running container is frozen by a checkpoint,
# how long the checkpoint command takes and how long a restore takes, for
# io.containerd.migrate.v1 against io.containerd.runc.v2, in one run.
# Run as root: hack/bench-checkpoint.sh   (env: RUNS=3 SIZES="64 256 1024")
#
# The workload is `memtick --mib S --interval-ms 10 --out /tmp/tick` (S MiB of
# touched memory, a tick every 10 ms). For each size, RUNS times, with a fresh
# container per measurement and the methods in rotating order (interleaved, so
# machine noise hits all alike; sync(1) between measurements, so one method's
# dirty pages are not written back during the next), it checkpoints with:
#   migratectl         migrate.v1  `migratectl checkpoint create --root DIR` (dumps to
#                                  tmpfs, unfreezes, then hashes and commits to DIR)
#   migrate-task       migrate.v1  `ctr t checkpoint --image-path DIR`
#   runc-task          runc.v2     `ctr t checkpoint --image-path DIR`
#   runc-container     runc.v2     `ctr c checkpoint --task --rw ID REF` (tarred into
#                                  containerd's content store)
#   migrate-container  migrate.v1  `ctr c checkpoint --task --rw ID REF`
# and measures
#   total     wall time of the checkpoint command (migratectl: until the checkpoint
#             is committed and verified in the store)
#   frozen    how long memtick stopped, as it experienced it: its max_gap_ms (the
#             largest gap between two ticks), read from /tmp/tick with `ctr t exec`
#             before and after the checkpoint; when it increased, the new maximum is
#             the gap that spans the checkpoint. When the freeze is shorter than an
#             earlier gap (no increase), the largest tick gap in memtick's output
#             (the container's log) during the checkpoint is used instead. Either
#             includes up to one 10 ms tick interval.
#   restore   for the *-container methods: kill and delete the container, then
#             `ctr c restore --live --rw ID REF`; for migratectl: kill the source,
#             then `migratectl restore --checkpoint ID --as NEWID -d`. Time until the
#             command returns, and until the restored counter is seen ticking (its
#             /tmp/tick, read from the host side of the rootfs mount, carries a wall
#             clock time after the restore began). State continuity: the restored
#             counter must carry on from at least the tick read before the checkpoint.
# Goals, at 1 GiB (median of the runs): migratectl frozen <= 1 s; migratectl
# create >= 3x faster than runc.v2 `ctr c checkpoint`; `ctr t checkpoint
# --image-path` with migrate.v1 no slower than with runc.v2 (ratio <= 1.05).
#
# Prints a table and writes every raw sample, medians, ratios, the goals and
# machine info to $OUT. Exits non-zero only if the benchmark could not run; a
# missed goal (or one that could not be measured) is printed as MISSED.
#
# Environment:
#   RUNS=3                 measurements per size and method
#   SIZES="64 256 1024"    memtick sizes in MiB
#   OUT=<repo>/target/bench/checkpoint.json
#   INSTANCE=bench-checkpoint   the private containerd (hack/containerd.sh), destroyed at the end
#   WORK_BASE=/var/tmp     where image directories and the migratectl store go (disk, not tmpfs)
#   WARM_TICKS=50          ticks memtick must have made before a checkpoint
#   SKIP_BUILD=1           use target/release/{containerd-shim-migrate-v1,migratectl} as they are
# The shim and migratectl run from private copies made at the start.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
SIZES=${SIZES:-64 256 1024}
OUT=${OUT:-$REPO/target/bench/checkpoint.json}
INSTANCE=${INSTANCE:-bench-checkpoint}
WORK_BASE=${WORK_BASE:-/var/tmp}
WARM_TICKS=${WARM_TICKS:-50}
SKIP_BUILD=${SKIP_BUILD:-0}
INTERVAL_MS=10
TIMEOUT=${TIMEOUT:-180} # seconds any one command may take

RUNC=io.containerd.runc.v2
MIGRATE=io.containerd.migrate.v1
SHIM_BIN=$REPO/target/release/containerd-shim-migrate-v1
MIGRATECTL=$REPO/target/release/migratectl
METHODS=(migratectl migrate-task runc-task runc-container migrate-container)
# Goals of the checkpoint issue, at GOAL_MIB.
GOAL_MIB=1024
GOAL_FROZEN_MS=1000
GOAL_SPEEDUP=3
GOAL_TASK_RATIO=1.05

[[ -d ${HOME:-/root}/.cargo/bin ]] && export PATH=${HOME:-/root}/.cargo/bin:$PATH

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'bench-checkpoint: ERROR: %s\n' "$*" >&2
	exit 1
}

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number, not '$RUNS'"
[[ $WARM_TICKS =~ ^[0-9]+$ ]] || die "WARM_TICKS must be a number"
read -r -a SIZE_LIST <<<"$SIZES"
for s in "${SIZE_LIST[@]}"; do [[ $s =~ ^[1-9][0-9]*$ ]] || die "SIZES must be MiB numbers, not '$s'"; done
[[ $(id -u) -eq 0 ]] || die "run as root"
for c in ctr containerd jq cargo; do
	command -v "$c" >/dev/null || die "$c not found (hack/setup.sh)"
done

WORK=$(mktemp -d "$WORK_BASE/bench-checkpoint.XXXXXX")
STORE=$WORK/store # migratectl's checkpoint store
SAMPLES=$WORK/samples.jsonl
: >"$SAMPLES"
mkdir -p "$WORK/logs" "$WORK/img" "$WORK/work" "$WORK/out" "$STORE"
ADDR=""
STATE=/run/containerd-migrate/$INSTANCE/state/io.containerd.runtime.v2.task/default
RESTORE_LOG_DIR=/run/containerd-migrate/logs # where migratectl restore sends output
CREATED_IDS=()                               # containers to remove on exit
EXECS=0

ctr_() { timeout "$TIMEOUT" ctr --address "$ADDR" "$@"; }
mctl() { timeout "$TIMEOUT" "$MIGRATECTL" --address "$ADDR" "$@"; }

# Kills and deletes container $1 (task first); quiet, bounded, never fails.
remove() {
	local id=$1 deadline
	timeout 10 ctr --address "$ADDR" task kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
	deadline=$((SECONDS + 15))
	while ((SECONDS < deadline)) && [[ $(task_status "$id") == RUNNING || $(task_status "$id") == PAUSED ]]; do
		sleep 0.05
	done
	timeout 10 ctr --address "$ADDR" task delete --force "$id" >/dev/null 2>&1 || true
	timeout 10 ctr --address "$ADDR" container rm "$id" >/dev/null 2>&1 || true
	rm -f "$RESTORE_LOG_DIR/$id.log"
}
task_status() { timeout 10 ctr --address "$ADDR" task ls 2>/dev/null | awk -v id="$1" '$1 == id { print $3 }'; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	((rc == 0)) || say "cleaning up after exit status $rc"
	if [[ -n $ADDR ]]; then
		local id
		for id in "${CREATED_IDS[@]}"; do remove "$id"; done
	fi
	"$REPO/hack/containerd.sh" destroy "$INSTANCE" || printf 'bench-checkpoint: destroying %s failed\n' "$INSTANCE" >&2
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- set-up

BUILD_NOTE=""
if [[ $SKIP_BUILD != 1 ]]; then
	say "building the shim and migratectl (cargo build --release)"
	if ! (cd "$REPO" && cargo build --quiet --release -p containerd-shim-migrate-v1 -p containerd-migrate-coordinator); then
		# The tree is shared; someone's half-done change must not stop a benchmark
		# of the binaries that are there.
		BUILD_NOTE="cargo build failed; the existing binaries were used"
		say "WARNING: $BUILD_NOTE"
	fi
fi
[[ -x $SHIM_BIN ]] || die "$SHIM_BIN missing"
[[ -x $MIGRATECTL ]] || die "$MIGRATECTL missing (cargo build --release -p containerd-migrate-coordinator)"
# Private copies: the tree is shared, and a rebuild during the run must not
# mix two builds (containerd starts a shim per container, from SHIM_DIR).
mkdir -p "$WORK/bin"
install -m 0755 "$SHIM_BIN" "$WORK/bin/containerd-shim-migrate-v1"
install -m 0755 "$MIGRATECTL" "$WORK/bin/migratectl"
MIGRATECTL=$WORK/bin/migratectl
SHIM_SHA=$(sha256sum "$WORK/bin/containerd-shim-migrate-v1" | cut -d' ' -f1)
MIGRATECTL_SHA=$(sha256sum "$MIGRATECTL" | cut -d' ' -f1)

if [[ ! -s $REPO/target/images/testbox.tar ]]; then
	say "building the test image"
	"$REPO/hack/images.sh" build >/dev/null
fi
IMAGE=$("$REPO/hack/images.sh" name)

"$REPO/hack/containerd.sh" destroy "$INSTANCE"
# containerd unpacks a checkpoint it restores from (`ctr c restore`) into a
# temporary directory under $XDG_RUNTIME_DIR (else /tmp) and never removes it
# (containerd 2.1.9, any runtime): a private one keeps those copies out of
# /tmp, and clear_sample empties it.
CTRD_TMP=$WORK/containerd-tmp
mkdir -p "$CTRD_TMP"
ADDR=$(SHIM_DIR=$WORK/bin XDG_RUNTIME_DIR=$CTRD_TMP "$REPO/hack/containerd.sh" start "$INSTANCE")
"$REPO/hack/images.sh" import "$ADDR" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%FT%TZ)

# Which staging directory migratectl dumps into by default (it wants tmpfs).
fs_type() { stat -f -c %T "$1" 2>/dev/null || echo unknown; }
STAGING_NOTE="/run/containerd-migrate/staging is $(fs_type /run), /dev/shm is $(fs_type /dev/shm)"

# ----------------------------------------------------------------- helpers

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
# Milliseconds between two now_us values, 3 decimals.
ms() { local d=$(($2 - $1)); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

# Splits a memtick line "tick=N gap_ms=G max_gap_ms=M unix_ms=T" into TICK MAXGAP UNIX.
parse_tick() {
	TICK="" MAXGAP="" UNIX=""
	[[ $1 =~ tick=([0-9]+)\ gap_ms=[0-9]+\ max_gap_ms=([0-9]+)\ unix_ms=([0-9]+) ]] || return 1
	TICK=${BASH_REMATCH[1]} MAXGAP=${BASH_REMATCH[2]} UNIX=${BASH_REMATCH[3]}
}

# memtick's /tmp/tick of container $1, read inside it with ctr t exec.
exec_tick() {
	EXECS=$((EXECS + 1))
	ctr_ task exec --exec-id "peek-$EXECS" "$1" cat /tmp/tick 2>/dev/null
}

# The same file, read from the host through the container's rootfs mount: no
# process in the container, so it can be polled every few ms.
host_tick() {
	local f=$STATE/$1/rootfs/tmp/tick line
	[[ -r $f ]] || return 1
	read -r line <"$f" 2>/dev/null || return 1
	echo "$line"
}

# Polls until container $1's counter shows a tick written at or after unix
# time $2 (ms), or $3 seconds pass. Prints the line.
wait_tick_after() {
	local id=$1 since=$2 limit=$3 line deadline
	deadline=$(($(now_us) + limit * 1000000))
	while (($(now_us) < deadline)); do
		if line=$(host_tick "$id") && parse_tick "$line" && ((UNIX >= since)); then
			echo "$line"
			return 0
		fi
		sleep 0.005
	done
	return 1
}

# Starts memtick in a new container: runtime $1, id $2, $3 MiB. Waits until it
# has ticked WARM_TICKS times.
start_memtick() {
	local rt=$1 id=$2 mib=$3 line deadline
	CREATED_IDS+=("$id")
	ctr_ run -d --runtime "$rt" --log-uri "file://$WORK/logs/$id.log" "$IMAGE" "$id" \
		/usr/local/bin/memtick --mib "$mib" --interval-ms "$INTERVAL_MS" --out /tmp/tick \
		</dev/null >>"$WORK/ctr.log" 2>&1 || return 1
	deadline=$((SECONDS + 120))
	while ((SECONDS < deadline)); do
		if line=$(host_tick "$id") && parse_tick "$line" && ((TICK >= WARM_TICKS)); then
			return 0
		fi
		sleep 0.02
	done
	return 1
}

# The largest tick gap in container $1's output with a wall clock time in [$2, $3] (ms).
log_window_gap() {
	awk -v a="$2" -v b="$3" '
		match($0, /gap_ms=[0-9]+ /) { g = substr($0, RSTART + 7, RLENGTH - 8) + 0
			if (match($0, /unix_ms=[0-9]+/)) { t = substr($0, RSTART + 8, RLENGTH - 8) + 0
				if (t >= a && t <= b && g > m) m = g } }
		END { print m + 0 }' "$WORK/logs/$1.log" 2>/dev/null || echo 0
}

# Bytes of the content behind image $1 (index + everything it points to that
# is in the content store: the checkpoint tar, the rw diff).
image_bytes() {
	local digest
	digest=$(ctr_ images ls 2>/dev/null | awk -v r="$1" '$1 == r { print $3 }')
	[[ -n $digest ]] || {
		echo null
		return
	}
	ctr_ content get "$digest" 2>/dev/null | jq '[.manifests[]? | select(.mediaType | test("checkpoint|layer")) | .size] | add // null' 2>/dev/null || echo null
}

# Memory needed for a size: the container, a copy of its images (tmpfs
# staging or page cache) and the restored copy.
wait_for_memory() {
	local mib=$1 need avail deadline=$((SECONDS + 120))
	need=$(((3 * mib + 1024) * 1024))
	while :; do
		avail=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
		((avail >= need)) && return 0
		if ((SECONDS >= deadline)); then
			say "WARNING: only $((avail / 1024)) MiB available, $((need / 1024)) MiB wanted; measuring anyway"
			return 0
		fi
		sleep 2
	done
}

# ------------------------------------------------------------- one sample

# Globals a sample fills in; measure() resets them.
reset_sample() {
	S_ERR="" S_TOTAL=null S_FROZEN=null S_FROZEN_SRC=null S_MAXB=null S_MAXA=null S_WINDOW=null
	S_TICKB=null S_TICKA=null S_BYTES=null S_EXTRA=null
	S_RRET=null S_RTICK=null S_RFIRST=null S_CONT=null S_REXTRA=null
}

runtime_of() { case $1 in migratectl | migrate-*) echo "$MIGRATE" ;; *) echo "$RUNC" ;; esac }

# measure METHOD MIB RUN: one checkpoint (and restore) of a fresh memtick.
measure() {
	local method=$1 mib=$2 run=$3 rt id ref cpid line t0 t1 since rt0 rret out
	rt=$(runtime_of "$method")
	id=ck-$method-$mib-$run
	ref=localhost/bench-checkpoint/$id:1
	cpid=$id-cp
	out=$WORK/out/$id
	reset_sample

	start_memtick "$rt" "$id" "$mib" || {
		S_ERR="memtick did not start: $(tail -n 3 "$WORK/ctr.log" "$WORK/logs/$id.log" 2>/dev/null | tr '\n' ' ')"
		return 1
	}
	if ! { line=$(exec_tick "$id") && parse_tick "$line"; }; then
		S_ERR="could not read /tmp/tick with ctr t exec"
		return 1
	fi
	S_TICKB=$TICK S_MAXB=$MAXGAP

	t0=$(now_us)
	case $method in
	migratectl)
		mctl checkpoint create --root "$STORE" --id "$cpid" --json "$id" >"$out.json" 2>"$out.err"
		;;
	migrate-task | runc-task)
		ctr_ task checkpoint --image-path "$WORK/img/$id" --work-path "$WORK/work/$id" "$id" >"$out.json" 2>"$out.err"
		;;
	runc-container | migrate-container)
		ctr_ container checkpoint --task --rw "$id" "$ref" >"$out.json" 2>"$out.err"
		;;
	esac || {
		S_ERR="checkpoint failed: $(tail -n 3 "$out.err" | tr '\n' ' ')"
		return 1
	}
	t1=$(now_us)
	S_TOTAL=$(ms "$t0" "$t1")

	# A few ticks past the end of the command, then the counter again.
	since=$((t1 / 1000 + 3 * INTERVAL_MS))
	wait_tick_after "$id" "$since" 30 >/dev/null || {
		S_ERR="memtick did not tick on after the checkpoint (task $(task_status "$id"))"
		return 1
	}
	sleep 0.05 # the shim copies memtick's output to the log asynchronously
	if ! { line=$(exec_tick "$id") && parse_tick "$line"; }; then
		S_ERR="could not read /tmp/tick after the checkpoint"
		return 1
	fi
	S_TICKA=$TICK S_MAXA=$MAXGAP
	S_WINDOW=$(log_window_gap "$id" $((t0 / 1000)) "$UNIX")
	# max_gap_ms grew: the new maximum is the gap that spans the checkpoint.
	if ((S_MAXA > S_MAXB)); then
		S_FROZEN=$S_MAXA S_FROZEN_SRC='"max_gap_ms"'
	else
		S_FROZEN=$S_WINDOW S_FROZEN_SRC='"log_window"'
	fi

	case $method in
	migratectl)
		S_EXTRA=$(jq -c . "$out.json" 2>/dev/null || echo null)
		S_BYTES=$(jq '.sizeBytes // null' <<<"$S_EXTRA" 2>/dev/null || echo null)
		;;
	*-task)
		S_BYTES=$(du -sb "$WORK/img/$id" | cut -f1)
		# CRIU's own run time, from the last timestamp of its log.
		S_EXTRA=$(sed -n 's/^(\([0-9.]*\)) Dumping finished successfully.*/\1/p' "$WORK/work/$id/dump.log" 2>/dev/null |
			jq -R -c '{criu_dump_s: tonumber}' 2>/dev/null || echo null)
		[[ -n $S_EXTRA ]] || S_EXTRA=null
		;;
	*-container) S_BYTES=$(image_bytes "$ref") ;;
	esac

	# Restore, where the method has one.
	case $method in
	migratectl | *-container)
		remove "$id"
		rt0=$(now_us)
		if [[ $method == migratectl ]]; then
			CREATED_IDS+=("$id-r")
			mctl restore --root "$STORE" --checkpoint "$cpid" --as "$id-r" -d --json >"$out.restore.json" 2>"$out.restore.err"
			rret=$?
			id=$id-r
		else
			CREATED_IDS+=("$id")
			# ctr hands the restored task its own stdio; memtick ignores the broken
			# pipe once ctr is gone.
			ctr_ container restore --live --rw "$id" "$ref" >"$out.restore.json" 2>"$out.restore.err"
			rret=$?
		fi
		S_RRET=$(ms "$rt0" "$(now_us)")
		if ((rret != 0)); then
			S_ERR="restore failed: $(tail -n 3 "$out.restore.err" | tr '\n' ' ')"
			S_RRET=null
			return 1
		fi
		line=$(wait_tick_after "$id" $((rt0 / 1000)) 60) || {
			S_ERR="the restored counter did not tick within 60 s (task $(task_status "$id"))"
			return 1
		}
		S_RTICK=$(ms "$rt0" "$(now_us)")
		parse_tick "$line"
		S_RFIRST=$TICK
		# Continuity: the restored memory carries the count on from the
		# checkpoint, which was taken after the tick read before it.
		if ((TICK >= S_TICKB)); then S_CONT=true; else S_CONT=false; fi
		# And it keeps running (memtick exits 3 if it finds a corrupt page).
		local t2
		t2=$(($(now_us) / 1000 + 20 * INTERVAL_MS))
		if ! wait_tick_after "$id" "$t2" 10 >/dev/null || [[ $(task_status "$id") != RUNNING ]]; then
			S_CONT=false
			S_ERR="the restored counter stopped (task $(task_status "$id")): $(grep -h CORRUPT "$WORK/logs/$id.log" "$out.restore.json" 2>/dev/null | head -1)"
		fi
		[[ $method == migratectl ]] && S_REXTRA=$(jq -c . "$out.restore.json" 2>/dev/null || echo null)
		[[ -n $S_REXTRA ]] || S_REXTRA=null
		;;
	esac
	[[ -z $S_ERR ]]
}

# Removes what one sample left: containers, images, checkpoints, directories.
clear_sample() {
	local method=$1 mib=$2 run=$3 id ref
	id=ck-$method-$mib-$run
	ref=localhost/bench-checkpoint/$id:1
	remove "$id"
	remove "$id-r"
	CREATED_IDS=()
	timeout 60 "$MIGRATECTL" checkpoint rm --root "$STORE" "$id-cp" >/dev/null 2>&1 || true
	rm -rf "${STORE:?}/$id-cp" "$WORK/img/$id" "$WORK/work/$id" "${CTRD_TMP:?}"/ctrd-checkpoint*
	# `ctr t checkpoint` with a runtime other than runc.v2 also makes an image
	# (containerd's client skips that only for runc.v2); remove those too.
	local refs
	refs=$(ctr_ images ls -q 2>/dev/null | grep -E "^(localhost/bench-checkpoint/|containerd.io/checkpoint/)" || true)
	if [[ -n $refs ]]; then
		# shellcheck disable=SC2086
		ctr_ images rm --sync $refs >/dev/null 2>&1 || true
	fi
	# `ctr t checkpoint` leaves its images as dirty pages (nothing fsyncs
	# them): write them back now, not during the next method's measurement.
	sync
}

# ------------------------------------------------------------------ the runs

say "sizes ${SIZE_LIST[*]} MiB, $RUNS runs each, methods ${METHODS[*]} (rotating order)"
say "work dir $WORK ($(fs_type "$WORK")); $STAGING_NOTE"
n_methods=${#METHODS[@]}
for mib in "${SIZE_LIST[@]}"; do
	for ((run = 0; run < RUNS; run++)); do
		for ((k = 0; k < n_methods; k++)); do
			# Rotated each run, and backwards on odd runs, so that no method
			# always follows the same other one.
			if ((run % 2 == 0)); then j=$(((k + run) % n_methods)); else j=$(((n_methods - 1 - k + run) % n_methods)); fi
			method=${METHODS[$j]}
			wait_for_memory "$mib"
			load=$(cut -d' ' -f1 /proc/loadavg)
			ok=true
			measure "$method" "$mib" "$run" || ok=false
			jq -n -c --arg method "$method" --arg runtime "$(runtime_of "$method")" \
				--argjson mib "$mib" --argjson run "$run" --argjson order "$k" --argjson ok "$ok" \
				--arg error "$S_ERR" --arg load "$load" \
				--argjson total_ms "$S_TOTAL" --argjson frozen_ms "$S_FROZEN" --argjson frozen_source "$S_FROZEN_SRC" \
				--argjson max_gap_before "$S_MAXB" --argjson max_gap_after "$S_MAXA" --argjson log_window_gap_ms "$S_WINDOW" \
				--argjson tick_before "$S_TICKB" --argjson tick_after "$S_TICKA" --argjson checkpoint_bytes "$S_BYTES" \
				--argjson detail "$S_EXTRA" --argjson restore_return_ms "$S_RRET" --argjson restore_ticking_ms "$S_RTICK" \
				--argjson restored_first_tick "$S_RFIRST" --argjson continuity "$S_CONT" --argjson restore_detail "$S_REXTRA" '
				{mib: $mib, run: $run, order: $order, method: $method, runtime: $runtime, ok: $ok,
				 error: (if $error == "" then null else $error end), loadavg_1m: ($load | tonumber),
				 total_ms: $total_ms, frozen_ms: $frozen_ms, frozen_source: $frozen_source,
				 max_gap_before_ms: $max_gap_before, max_gap_after_ms: $max_gap_after, log_window_gap_ms: $log_window_gap_ms,
				 tick_before: $tick_before, tick_after: $tick_after, checkpoint_bytes: $checkpoint_bytes, detail: $detail,
				 restore_return_ms: $restore_return_ms, restore_ticking_ms: $restore_ticking_ms,
				 restored_first_tick: $restored_first_tick, continuity: $continuity, restore_detail: $restore_detail}' \
				>>"$SAMPLES"
			if [[ $ok == true ]]; then
				printf '    %5s MiB run %d %-18s total %9s ms  frozen %5s ms  restored+ticking %s ms\n' "$mib" "$run" "$method" \
					"$S_TOTAL" "$S_FROZEN" "${S_RTICK/null/-}" >&2
			else
				printf '    %5s MiB run %d %-18s FAILED: %s\n' "$mib" "$run" "$method" "$S_ERR" >&2
			fi
			clear_sample "$method" "$mib" "$run"
		done
	done
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ results

git_commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
git_dirty=$(git -C "$REPO" status --porcelain -- shim oci coordinator Cargo.toml Cargo.lock 2>/dev/null | jq -R -s -c 'split("\n") | map(select(. != ""))')
mkdir -p "$(dirname "$OUT")"
jq -n \
	--slurpfile samples "$SAMPLES" \
	--argjson runs "$RUNS" --argjson goal_mib "$GOAL_MIB" --argjson goal_frozen "$GOAL_FROZEN_MS" \
	--argjson goal_speedup "$GOAL_SPEEDUP" --argjson goal_task_ratio "$GOAL_TASK_RATIO" \
	--argjson interval "$INTERVAL_MS" --argjson warm "$WARM_TICKS" --arg image "$IMAGE" \
	--arg started "$STARTED" --arg finished "$(date -u +%FT%TZ)" \
	--arg kernel "$(uname -r)" --argjson nproc "$(nproc)" \
	--arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
	--argjson mem_total_kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)" \
	--arg load_before "$LOAD_BEFORE" --arg load_after "$LOAD_AFTER" \
	--arg containerd "$(containerd --version)" --arg runc_version "$(runc --version | head -1)" \
	--arg criu "$(criu --version 2>/dev/null | head -1)" \
	--arg git_commit "$git_commit" --argjson git_dirty "$git_dirty" --arg build_note "$BUILD_NOTE" \
	--arg shim_bin "$SHIM_BIN" --arg shim_sha "$SHIM_SHA" \
	--arg migratectl "$MIGRATECTL" --arg migratectl_sha "$MIGRATECTL_SHA" \
	--arg work "$WORK" --arg work_fs "$(fs_type "$WORK")" --arg staging "$STAGING_NOTE" '
	def pct($q): sort as $s | ($s | length) as $n | if $n == 0 then null else (($n - 1) * $q) as $h | ($h | floor) as $lo
		| $s[$lo] + ($h - $lo) * ($s[[$lo + 1, $n - 1] | min] - $s[$lo]) end;
	def r1: if . == null then null else . * 10 | round / 10 end;
	def r3: if . == null then null else . * 1000 | round / 1000 end;
	def stats: map(select(. != null)) | if length == 0 then null
		else {n: length, median: (pct(0.5) | r1), min: min, max: max} end;
	def ok($m; $mib): [$samples[] | select(.method == $m and .mib == $mib and .ok)];
	def med($m; $mib; $f): ok($m; $mib) | map(.[$f]) | stats | if . == null then null else .median end;
	def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else $a / $b | r3 end;
	($samples | map(.mib) | unique) as $sizes |
	($samples | map(.method) | unique) as $methods |
	{
	  summary: ($sizes | map(. as $mib | {key: ($mib | tostring), value: ($methods | map(. as $m | {key: $m, value: {
	      runtime: (ok($m; $mib)[0].runtime // null),
	      ok: (ok($m; $mib) | length), failed: ([$samples[] | select(.method == $m and .mib == $mib and (.ok | not))] | length),
	      total_ms: (ok($m; $mib) | map(.total_ms) | stats),
	      frozen_ms: (ok($m; $mib) | map(.frozen_ms) | stats),
	      restore_return_ms: (ok($m; $mib) | map(.restore_return_ms) | stats),
	      restore_ticking_ms: (ok($m; $mib) | map(.restore_ticking_ms) | stats),
	      checkpoint_bytes: (ok($m; $mib) | map(.checkpoint_bytes) | stats),
	      continuity: (ok($m; $mib) | map(.continuity) | map(select(. != null)) | if length == 0 then null else all end)
	    }}) | from_entries)}) | from_entries),
	  ratios: ($sizes | map(. as $mib | {key: ($mib | tostring), value: {
	      runc_container_over_migratectl_total: ratio(med("runc-container"; $mib; "total_ms"); med("migratectl"; $mib; "total_ms")),
	      migrate_task_over_runc_task_total: ratio(med("migrate-task"; $mib; "total_ms"); med("runc-task"; $mib; "total_ms")),
	      migrate_task_over_runc_task_total_paired_median: ([range(0; $runs)] | map(. as $r |
	          ([$samples[] | select(.mib == $mib and .run == $r and .ok and .method == "migrate-task")][0].total_ms) as $a |
	          ([$samples[] | select(.mib == $mib and .run == $r and .ok and .method == "runc-task")][0].total_ms) as $b |
	          ratio($a; $b)) | map(select(. != null)) | pct(0.5) | r3),
	      migrate_container_over_runc_container_total: ratio(med("migrate-container"; $mib; "total_ms"); med("runc-container"; $mib; "total_ms")),
	      runc_container_frozen_over_migratectl_frozen: ratio(med("runc-container"; $mib; "frozen_ms"); med("migratectl"; $mib; "frozen_ms"))
	    }}) | from_entries),
	  goals: (($goal_mib | tostring) as $g | {
	      size_mib: $goal_mib,
	      migratectl_frozen_ms: {value: med("migratectl"; $goal_mib; "frozen_ms"), goal: "<= \($goal_frozen)",
	        met: (med("migratectl"; $goal_mib; "frozen_ms") as $v | $v != null and $v <= $goal_frozen)},
	      migratectl_speedup_over_runc_container_checkpoint: {
	        value: ratio(med("runc-container"; $goal_mib; "total_ms"); med("migratectl"; $goal_mib; "total_ms")),
	        goal: ">= \($goal_speedup)",
	        met: (ratio(med("runc-container"; $goal_mib; "total_ms"); med("migratectl"; $goal_mib; "total_ms")) as $v | $v != null and $v >= $goal_speedup)},
	      task_checkpoint_migrate_over_runc: {
	        value: ratio(med("migrate-task"; $goal_mib; "total_ms"); med("runc-task"; $goal_mib; "total_ms")),
	        goal: "<= \($goal_task_ratio)",
	        met: (ratio(med("migrate-task"; $goal_mib; "total_ms"); med("runc-task"; $goal_mib; "total_ms")) as $v | $v != null and $v <= $goal_task_ratio)},
	      state_continuity: {value: ([$samples[] | select(.continuity != null) | .continuity] | if length == 0 then null else all end),
	        goal: "every restored counter carries on", met: ([$samples[] | select(.continuity != null) | .continuity] | length > 0 and all)}
	    }),
	  config: {runs: $runs, sizes_mib: $sizes, interval_ms: $interval, warm_ticks: $warm, image: $image,
	    methods: {
	      migratectl: "migrate.v1: migratectl checkpoint create --root DIR ID (restore: migratectl restore --checkpoint CP --as NEWID -d)",
	      "migrate-task": "migrate.v1: ctr t checkpoint --image-path DIR --work-path W ID",
	      "runc-task": "runc.v2: ctr t checkpoint --image-path DIR --work-path W ID",
	      "runc-container": "runc.v2: ctr c checkpoint --task --rw ID REF (restore: ctr c restore --live --rw ID REF)",
	      "migrate-container": "migrate.v1: ctr c checkpoint --task --rw ID REF (restore: ctr c restore --live --rw ID REF)"},
	    frozen: "memtick max_gap_ms after the checkpoint when it increased across it (the gap spanning the checkpoint, includes up to one tick interval); when it did not, the largest gap logged during the checkpoint (frozen_source)",
	    restore_ticking: "from the restore command starting until /tmp/tick (read on the host side of the rootfs) was written after that start",
	    order: "per size and run, a fresh container per method; the method order rotates each run and runs backwards on odd runs; sync(1) after each sample",
	    notes: ["ctr t checkpoint: containerd'"'"'s client skips the rw-layer diff and the checkpoint image only for io.containerd.runc.v2 (isCheckpointPathExist); for migrate.v1 it also diffs the rw layer and creates an image containerd.io/checkpoint/ID:DATE while the task is still paused, so migrate-task carries that work (about 0.1 s here) in its total and frozen times. The benchmark removes those images.",
	      "migratectl restore checks that the checkpoint has all its files with their sizes (restore_detail.checkMs); the shim verifies every digest when the container is created.",
	      "containerd (2.1.9) unpacks the checkpoint of `ctr c restore` into a temporary directory ctrd-checkpoint* under XDG_RUNTIME_DIR or /tmp and never removes it; this benchmark gives its containerd a private XDG_RUNTIME_DIR and empties it after each sample."],
	    work_dir: $work, work_dir_fs: $work_fs, staging: $staging},
	  machine: {kernel: $kernel, nproc: $nproc, cpu: $cpu, mem_total_kib: $mem_total_kib,
	    loadavg_before: $load_before, loadavg_after: $load_after,
	    containerd: $containerd, runc: $runc_version, criu: $criu,
	    git_commit: $git_commit, git_dirty: $git_dirty, build_note: $build_note,
	    migrate_shim: {built_as: $shim_bin, sha256: $shim_sha, run_from: "a private copy, so a rebuild during the run cannot mix builds"},
	    migratectl: {sha256: $migratectl_sha}},
	  started: $started, finished: $finished,
	  samples: $samples
	}' >"$OUT"

# The table, from the JSON so both always agree.
jq -r '
	def f: if . == null then "-" else tostring end;
	def sz: if . == null then "-" else (. / 1048576 | . * 10 | round / 10 | tostring) + "M" end;
	(["MiB", "method", "runtime", "n", "total ms", "frozen ms", "restore ret", "restore tick", "size", "continuity"] | @tsv),
	(.summary | to_entries | sort_by(.key | tonumber)[] | .key as $mib | .value | to_entries[] |
		[$mib, .key, (.value.runtime // "-" | sub("io.containerd."; "")), "\(.value.ok)/\(.value.ok + .value.failed)",
		 (.value.total_ms.median | f), (.value.frozen_ms.median | f),
		 (.value.restore_return_ms.median | f), (.value.restore_ticking_ms.median | f),
		 (.value.checkpoint_bytes.median | sz),
		 (.value.continuity | if . == null then "" elif . then "ok" else "BROKEN" end)] | @tsv)
' "$OUT" | awk -F'\t' '{ printf "%-5s %-18s %-11s %-4s %9s %10s %12s %13s %8s  %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
printf '(medians of %d runs per size and method; frozen includes the %d ms tick interval; load %s -> %s)\n\n' \
	"$RUNS" "$INTERVAL_MS" "$LOAD_BEFORE" "$LOAD_AFTER"
jq -r '
	.goals as $g |
	def st($x): if $x.met then "ok" else "MISSED" end;
	def v: if . == null then "not measured" else tostring end;
	"goals at \($g.size_mib) MiB:",
	"  migratectl frozen ms                          \($g.migratectl_frozen_ms.value | v) (goal \($g.migratectl_frozen_ms.goal))  \(st($g.migratectl_frozen_ms))",
	"  runc.v2 ctr c checkpoint / migratectl create  \($g.migratectl_speedup_over_runc_container_checkpoint.value | v) (goal \($g.migratectl_speedup_over_runc_container_checkpoint.goal))  \(st($g.migratectl_speedup_over_runc_container_checkpoint))",
	"  ctr t checkpoint migrate.v1 / runc.v2         \($g.task_checkpoint_migrate_over_runc.value | v) (goal \($g.task_checkpoint_migrate_over_runc.goal); paired median \(.ratios[$g.size_mib | tostring].migrate_task_over_runc_task_total_paired_median | v); run-to-run noise here is often 10-30 %)  \(st($g.task_checkpoint_migrate_over_runc))",
	"  state continuity after every restore          \($g.state_continuity.value | v)  \(st($g.state_continuity))"
' "$OUT"
failed=$(jq '[.samples[] | select(.ok | not)] | length' "$OUT")
((failed == 0)) || {
	say "$failed sample(s) failed:"
	jq -r '.samples[] | select(.ok | not) | "    \(.mib) MiB run \(.run) \(.method): \(.error)"' "$OUT" >&2
}
say "wrote $OUT"
