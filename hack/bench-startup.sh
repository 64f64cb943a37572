#!/usr/bin/env bash
# Start-up benchmark: a JVM service that takes seconds to initialise, started
# cold against started from a ready-point checkpoint, under
# io.containerd.migrate.v1, in one run.
# Run as root: hack/bench-startup.sh   (env: RUNS=5 CLONES=10)
#
# The service is hack/bench/startup/SlowStart.java (builds a deterministic
# in-memory index and warms up for a few seconds, then listens on 8080; GET /
# answers with the index's checksum and a request counter). Its image is built
# from the host's JDK by hack/bench/startup-image.sh.
#
#   ready point  one container started with the annotations
#                  io.containerd.migrate.checkpoint-when-ready=tcp:8080
#                  io.containerd.migrate.checkpoint-when-ready.store=file://DIR
#                the shim checkpoints it the moment it listens, into
#                DIR/<id>-ready (the benchmark waits for its manifest.json);
#                reported: time to the checkpoint, its size and its frozen,
#                dump and persist times (manifest.json timings).
#   cold         `ctr run -d --runtime io.containerd.migrate.v1 IMAGE ID CMD`
#                until the first successful HTTP response on port 8080;
#   restored     the same command with the annotation
#                  io.containerd.migrate.restore-from=file://DIR/<id>-ready
#                until the first successful response, whose body must be the
#                same as a cold start's; RUNS of each, interleaved.
#   clones       CLONES containers restored from the one checkpoint, one after
#                the other, then all launched at once: per-clone time to the
#                first response and the total; afterwards each clone must
#                answer a second request with its own counter at 2 (so each is
#                its own running server).
# The HTTP polling is the same for every start: a loop in the container's
# network namespace (nsenter from the host into /proc/PID/net, PID from the
# bundle's init.pid) that connects to 127.0.0.1:8080 every 2 ms, so no
# process is added inside the container. POLL=exec polls with
# `ctr t exec ID sh -c 'until wget ...'` instead (about 0.15 s more per start).
# A restored start that fell back to a cold one (the shim does that when a
# restore-from checkpoint is unusable) is caught by the app's start-up line
# in the container's output, and reported.
# Goal: restored >= 10x faster than cold (ratio of the medians).
#
# Prints a table and writes raw samples, medians, ratios, the goal and machine
# info to $OUT. Exits non-zero only if the benchmark could not run; a missed
# goal is printed as MISSED.
#
# Environment:
#   RUNS=5        cold and restored starts each (interleaved)
#   CLONES=10     clones restored from the one checkpoint, sequentially and in parallel
#   POLL=nsenter  or exec (see above)
#   OUT=<repo>/target/bench/startup.json
#   INSTANCE=bench-startup   the private containerd (hack/containerd.sh), destroyed at the end
#   WORK_BASE=/var/tmp       where the checkpoint store goes (disk)
#   START_TIMEOUT=120        seconds a start may take to answer
#   SKIP_BUILD=1             use target/release/containerd-shim-migrate-v1 as it is
# The shim runs from a private copy made at the start.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
CLONES=${CLONES:-10}
POLL=${POLL:-nsenter}
OUT=${OUT:-$REPO/target/bench/startup.json}
INSTANCE=${INSTANCE:-bench-startup}
WORK_BASE=${WORK_BASE:-/var/tmp}
START_TIMEOUT=${START_TIMEOUT:-120}
SKIP_BUILD=${SKIP_BUILD:-0}
PORT=8080
MIGRATE=io.containerd.migrate.v1
SHIM_BIN=$REPO/target/release/containerd-shim-migrate-v1
IMAGE_SCRIPT=$REPO/hack/bench/startup-image.sh
GOAL_SPEEDUP=10

[[ -d ${HOME:-/root}/.cargo/bin ]] && export PATH=${HOME:-/root}/.cargo/bin:$PATH

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'bench-startup: ERROR: %s\n' "$*" >&2
	exit 1
}

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number, not '$RUNS'"
[[ $CLONES =~ ^[1-9][0-9]*$ ]] || die "CLONES must be a positive number, not '$CLONES'"
[[ $POLL == nsenter || $POLL == exec ]] || die "POLL must be nsenter or exec, not '$POLL'"
[[ $(id -u) -eq 0 ]] || die "run as root"
for c in ctr containerd jq cargo nsenter; do
	command -v "$c" >/dev/null || die "$c not found (hack/setup.sh)"
done

WORK=$(mktemp -d "$WORK_BASE/bench-startup.XXXXXX")
STORE=$WORK/store
SAMPLES=$WORK/samples.jsonl
: >"$SAMPLES"
mkdir -p "$WORK/logs" "$WORK/out" "$STORE"
ADDR=""
STATE=/run/containerd-migrate/$INSTANCE/state/io.containerd.runtime.v2.task/default
CREATED_IDS=()
EXECS=0

ctr_() { timeout "$START_TIMEOUT" ctr --address "$ADDR" "$@"; }
task_status() { timeout 10 ctr --address "$ADDR" task ls 2>/dev/null | awk -v id="$1" '$1 == id { print $3 }'; }

# Kills and deletes containers (tasks first); quiet, bounded, never fails.
remove() {
	local id deadline
	for id in "$@"; do
		timeout 10 ctr --address "$ADDR" task kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
	done
	for id in "$@"; do
		deadline=$((SECONDS + 15))
		while ((SECONDS < deadline)) && [[ $(task_status "$id") =~ ^(RUNNING|PAUSED|CREATED)$ ]]; do
			sleep 0.05
		done
		timeout 10 ctr --address "$ADDR" task delete --force "$id" >/dev/null 2>&1 || true
		timeout 10 ctr --address "$ADDR" container rm "$id" >/dev/null 2>&1 || true
	done
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	((rc == 0)) || say "cleaning up after exit status $rc"
	[[ -z $ADDR || ${#CREATED_IDS[@]} -eq 0 ]] || remove "${CREATED_IDS[@]}"
	"$REPO/hack/containerd.sh" destroy "$INSTANCE" || printf 'bench-startup: destroying %s failed\n' "$INSTANCE" >&2
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- set-up

BUILD_NOTE=""
if [[ $SKIP_BUILD != 1 ]]; then
	say "building the shim (cargo build --release -p containerd-shim-migrate-v1)"
	if ! (cd "$REPO" && cargo build --quiet --release -p containerd-shim-migrate-v1); then
		BUILD_NOTE="cargo build failed; the existing shim binary was used"
		say "WARNING: $BUILD_NOTE"
	fi
fi
[[ -x $SHIM_BIN ]] || die "$SHIM_BIN missing"
# A private copy: the tree is shared, and a rebuild during the run must not
# mix two builds (containerd starts a shim per container, from SHIM_DIR).
mkdir -p "$WORK/bin"
install -m 0755 "$SHIM_BIN" "$WORK/bin/containerd-shim-migrate-v1"
SHIM_SHA=$(sha256sum "$WORK/bin/containerd-shim-migrate-v1" | cut -d' ' -f1)

"$IMAGE_SCRIPT" build >/dev/null || die "building the SlowStart image failed"
IMAGE=$("$IMAGE_SCRIPT" name)
mapfile -t CMD < <("$IMAGE_SCRIPT" command)

"$REPO/hack/containerd.sh" destroy "$INSTANCE"
ADDR=$(SHIM_DIR=$WORK/bin "$REPO/hack/containerd.sh" start "$INSTANCE")
"$IMAGE_SCRIPT" import "$ADDR"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%FT%TZ)

# ----------------------------------------------------------------- helpers

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
ms() { local d=$(($2 - $1)); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

# Starts container $1 from the image with the service's command; the rest of
# the arguments go to `ctr run` (annotations).
start() {
	local id=$1
	shift
	CREATED_IDS+=("$id")
	ctr_ run -d --runtime "$MIGRATE" --log-uri "file://$WORK/logs/$id.log" "$@" "$IMAGE" "$id" "${CMD[@]}" \
		</dev/null >>"$WORK/ctr.log" 2>&1
}

# Polls container $1 until its service answers GET /; prints the body.
# Gives up after START_TIMEOUT seconds.
poll_http() {
	local id=$1 pid raw
	if [[ $POLL == exec ]]; then
		EXECS=$((EXECS + 1))
		ctr_ task exec --exec-id "poll-$EXECS-$id" "$id" sh -c \
			"until wget -q -O- http://127.0.0.1:$PORT/ 2>/dev/null; do usleep 10000; done"
		return
	fi
	pid=$(<"$STATE/$id/init.pid") || return 1
	# One process for the whole wait: bash connects through /dev/tcp every
	# 2 ms, then sends the request and reads the answer (HTTP/1.0: the
	# server closes the connection after it). It waits with `read -t` on a
	# pipe nobody writes to, not with sleep(1): a fork and exec per try
	# would take CPU from the start being timed and blur it by the interval.
	# shellcheck disable=SC2016 # expanded by the inner bash
	raw=$(timeout "$START_TIMEOUT" nsenter --net="/proc/$pid/ns/net" bash -c '
		exec {idle}<> <(:)
		until exec 3<>"/dev/tcp/127.0.0.1/$1"; do read -r -t 0.002 -u "$idle" || :; done 2>/dev/null
		printf "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3
		cat <&3' poll "$PORT") || return 1
	[[ $raw == "HTTP/1."?" 200 "* ]] || return 1
	# The body: everything after the first empty line.
	printf '%s\n' "$raw" | tr -d '\r' | sed '1,/^$/d'
}

# One timed start: START_MS (ctr run returned) and FIRST_MS (first answer),
# both from the moment before `ctr run`; BODY; RESTORED (no cold start-up
# line in its output); ERR.
timed_start() {
	local id=$1 t0 t1
	shift
	ERR="" START_MS=null FIRST_MS=null BODY="" RESTORED=null
	t0=$(now_us)
	start "$id" "$@" || {
		ERR="ctr run failed: $(tail -n 3 "$WORK/ctr.log" | tr '\n' ' ')"
		return 1
	}
	t1=$(now_us)
	START_MS=$(ms "$t0" "$t1")
	BODY=$(poll_http "$id") || {
		ERR="no HTTP answer within ${START_TIMEOUT}s (task $(task_status "$id")): $(tail -n 3 "$WORK/logs/$id.log" 2>/dev/null | tr '\n' ' ')"
		return 1
	}
	FIRST_MS=$(ms "$t0" "$(now_us)")
	if grep -q '^slowstart: initialising' "$WORK/logs/$id.log" 2>/dev/null; then RESTORED=false; else RESTORED=true; fi
}

# A sample as a JSON line.
record() { # kind i id [extra-json]
	jq -n -c --arg kind "$1" --argjson i "$2" --arg id "$3" --arg err "$ERR" \
		--argjson start_ms "$START_MS" --argjson first_ms "$FIRST_MS" --argjson restored "$RESTORED" \
		--arg body "$BODY" --arg ref "$REF_BODY" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
		--argjson extra "${4:-null}" '
		{kind: $kind, i: $i, id: $id, ok: ($err == "" and $body == $ref), error: (if $err == "" then
			(if $body == $ref then null else "the body differs from the reference: \($body)" end) else $err end),
		 run_returned_ms: $start_ms, first_response_ms: $first_ms, restored: $restored,
		 body_matches: ($body == $ref), loadavg_1m: ($load | tonumber)} + ($extra // {})' >>"$SAMPLES"
}

# How long `criu restore` took for container $1, from the last timestamp of
# its log in the bundle, as JSON.
criu_restore_report() {
	local log=$STATE/$1/criu-restore-work/restore.log
	[[ -f $log ]] || return 0
	sed -n 's/^(\([0-9.]*\)).*/\1/p' "$log" | tail -n 1 | jq -R -c 'select(. != "") | {criu_restore_s: tonumber}'
}

# The service's own start-up report in container $1's output, as JSON.
app_report() {
	sed -n 's/^slowstart: listening on [0-9]* after \([0-9]*\) ms (index \([0-9]*\) ms, digest+warm-up \([0-9]*\) ms).*/{"app_listening_after_ms":\1,"app_index_ms":\2,"app_warmup_ms":\3}/p' \
		"$WORK/logs/$1.log" 2>/dev/null | head -1
}

# ------------------------------------------------------------- ready point

READY_ID=ss-ready
CP=$STORE/$READY_ID-ready
say "ready point: $READY_ID checkpoints itself into $CP when it listens on $PORT"
t0=$(now_us)
start "$READY_ID" --annotation "io.containerd.migrate.checkpoint-when-ready=tcp:$PORT" \
	--annotation "io.containerd.migrate.checkpoint-when-ready.store=file://$STORE" ||
	die "ctr run of the ready-point container failed: $(tail -n 5 "$WORK/ctr.log")"
deadline=$((SECONDS + START_TIMEOUT))
checked=$SECONDS
until [[ -f $CP/manifest.json ]]; do
	# Once a second, whether it still runs. Not `!= RUNNING`: while it waits
	# for the port, the shim can be too busy to answer containerd's State in
	# time (ctr then shows UNKNOWN).
	if ((SECONDS >= deadline)) || { ((SECONDS > checked)) && checked=$SECONDS && [[ $(task_status "$READY_ID") == STOPPED ]]; }; then
		say "containerd log (shim lines):"
		grep -F "$READY_ID" "/run/containerd-migrate/$INSTANCE/containerd.log" | tail -n 10 >&2 || true
		die "no ready-point checkpoint in $CP after $((SECONDS - deadline + START_TIMEOUT)) s (task $(task_status "$READY_ID")); CRIU's log: $STATE/$READY_ID/criu-work/dump.log"
	fi
	sleep 0.05
done
READY_MS=$(ms "$t0" "$(now_us)")
# CPU time the ready container's shim used until then (its port watch).
shim_cpu_s() {
	local p cmdline
	for p in /proc/[0-9]*; do
		cmdline=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		if [[ $cmdline == *containerd-shim-migrate-v1*"-id $1 "*"-address $ADDR"* ]]; then
			awk '{ printf "%.2f", ($14 + $15) / 100 }' "$p/stat"
			return
		fi
	done
	echo null
}
READY_SHIM_CPU_S=$(shim_cpu_s "$READY_ID")
MANIFEST=$(jq -c '{id, memoryBytes, files: (.files | length), bytes: ([.files[].size] | add), timings, created, host}' "$CP/manifest.json")
CP_DU=$(du -sb "$CP" | cut -f1)
# After the checkpoint, the ready container answers; its first answer is the
# reference body every start must give (the checkpoint was taken before any
# request, so a restored clone's first answer says requests=1 too).
REF_BODY=$(poll_http "$READY_ID") || die "the ready-point container does not answer after its checkpoint"
READY_APP=$(app_report "$READY_ID")
[[ -n $READY_APP ]] || READY_APP=null
say "checkpoint after $READY_MS ms: $(jq -r '"\(.bytes / 1048576 | floor) MiB, frozen \(.timings.frozenMs) ms, dump \(.timings.dumpMs | floor) ms, persist \(.timings.persistMs | floor) ms"' <<<"$MANIFEST")"
say "reference body: $(head -1 <<<"$REF_BODY")"
remove "$READY_ID"
CREATED_IDS=()
RESTORE_ANNOTATION=(--annotation "io.containerd.migrate.restore-from=file://$CP")

# --------------------------------------------------- cold against restored

say "cold and restored starts: $RUNS each, interleaved (polling: $POLL)"
for ((i = 0; i < RUNS; i++)); do
	if ((i % 2 == 0)); then order=(cold restored); else order=(restored cold); fi
	for kind in "${order[@]}"; do
		id=ss-$kind-$i
		if [[ $kind == cold ]]; then
			timed_start "$id" || true
			extra=$(app_report "$id")
		else
			timed_start "$id" "${RESTORE_ANNOTATION[@]}" || true
			extra=$(criu_restore_report "$id")
			[[ $RESTORED != false ]] || ERR="the restore fell back to a cold start (see the shim's warning in /run/containerd-migrate/$INSTANCE/containerd.log)"
		fi
		record "$kind" "$i" "$id" "${extra:-null}"
		printf '    %-9s %d  ctr run %8s ms  first answer %9s ms  %s\n' "$kind" "$i" "$START_MS" "$FIRST_MS" "${ERR:-ok}" >&2
		remove "$id"
		CREATED_IDS=()
	done
done

# ------------------------------------------------------------------ clones

# Second request to each clone: its own counter must say 2.
check_independent() {
	local kind=$1 id body pid
	shift
	for id in "$@"; do
		body=$(poll_http "$id") || body=""
		jq -n -c --arg kind "$kind-second-request" --arg id "$id" --arg body "$body" '
			{kind: $kind, id: $id, ok: ($body | test("(^|\n)requests=2\n?$")), body: $body}' >>"$SAMPLES"
	done
}

say "$CLONES clones, one after the other"
seq_ids=()
t_all=$(now_us)
for ((c = 1; c <= CLONES; c++)); do
	id=ss-seq-$c
	seq_ids+=("$id")
	timed_start "$id" "${RESTORE_ANNOTATION[@]}" || true
	[[ $RESTORED != false ]] || ERR="the restore fell back to a cold start"
	record clone-sequential "$c" "$id"
done
SEQ_TOTAL=$(ms "$t_all" "$(now_us)")
check_independent clone-sequential "${seq_ids[@]}"
remove "${seq_ids[@]}"
CREATED_IDS=()

say "$CLONES clones, launched all at once"
par_ids=()
for ((c = 1; c <= CLONES; c++)); do par_ids+=("ss-par-$c"); done
CREATED_IDS+=("${par_ids[@]}")
t_all=$(now_us)
for ((c = 1; c <= CLONES; c++)); do
	(
		id=ss-par-$c
		t0=$t_all
		ERR="" FIRST_MS=null START_MS=null BODY="" RESTORED=null
		if ctr_ run -d --runtime "$MIGRATE" --log-uri "file://$WORK/logs/$id.log" "${RESTORE_ANNOTATION[@]}" \
			"$IMAGE" "$id" "${CMD[@]}" </dev/null >"$WORK/out/$id.ctr" 2>&1; then
			START_MS=$(ms "$t0" "$(now_us)")
			if BODY=$(poll_http "$id"); then
				FIRST_MS=$(ms "$t0" "$(now_us)")
				if grep -q '^slowstart: initialising' "$WORK/logs/$id.log"; then
					RESTORED=false ERR="the restore fell back to a cold start"
				else RESTORED=true; fi
			else
				ERR="no HTTP answer within ${START_TIMEOUT}s"
			fi
		else
			ERR="ctr run failed: $(tail -n 3 "$WORK/out/$id.ctr" | tr '\n' ' ')"
		fi
		record clone-parallel "$c" "$id"
	) &
done
wait
PAR_TOTAL=$(ms "$t_all" "$(now_us)")
check_independent clone-parallel "${par_ids[@]}"
remove "${par_ids[@]}"
CREATED_IDS=()

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ results

git_commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
git_dirty=$(git -C "$REPO" status --porcelain -- shim oci Cargo.toml Cargo.lock hack/bench 2>/dev/null | jq -R -s -c 'split("\n") | map(select(. != ""))')
mkdir -p "$(dirname "$OUT")"
jq -n --slurpfile samples "$SAMPLES" \
	--argjson runs "$RUNS" --argjson clones "$CLONES" --arg poll "$POLL" --argjson goal "$GOAL_SPEEDUP" \
	--arg image "$IMAGE" --argjson command "$(printf '%s\n' "${CMD[@]}" | jq -R . | jq -s -c .)" \
	--argjson ready_ms "$READY_MS" --argjson ready_shim_cpu "$READY_SHIM_CPU_S" --argjson manifest "$MANIFEST" --argjson cp_du "$CP_DU" --argjson ready_app "$READY_APP" \
	--arg ref_body "$REF_BODY" --argjson seq_total "$SEQ_TOTAL" --argjson par_total "$PAR_TOTAL" \
	--arg started "$STARTED" --arg finished "$(date -u +%FT%TZ)" \
	--arg kernel "$(uname -r)" --argjson nproc "$(nproc)" \
	--arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
	--argjson mem_total_kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)" \
	--arg load_before "$LOAD_BEFORE" --arg load_after "$LOAD_AFTER" \
	--arg containerd "$(containerd --version)" --arg runc_version "$(runc --version | head -1)" \
	--arg criu "$(criu --version 2>/dev/null | head -1)" \
	--arg java "$("${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}/bin/java" -version 2>&1 | head -2 | tail -1)" \
	--arg git_commit "$git_commit" --argjson git_dirty "$git_dirty" --arg build_note "$BUILD_NOTE" \
	--arg shim_bin "$SHIM_BIN" --arg shim_sha "$SHIM_SHA" '
	def pct($q): sort as $s | ($s | length) as $n | if $n == 0 then null else (($n - 1) * $q) as $h | ($h | floor) as $lo
		| $s[$lo] + ($h - $lo) * ($s[[$lo + 1, $n - 1] | min] - $s[$lo]) end;
	def r1: if . == null then null else . * 10 | round / 10 end;
	def r2: if . == null then null else . * 100 | round / 100 end;
	def stats: map(select(. != null)) | if length == 0 then null
		else {n: length, median: (pct(0.5) | r1), p10: (pct(0.1) | r1), p90: (pct(0.9) | r1), min: min, max: max} end;
	def ok($k): [$samples[] | select(.kind == $k and .ok)];
	def all_of($k): [$samples[] | select(.kind == $k)];
	(ok("cold") | map(.first_response_ms) | stats) as $cold |
	(ok("restored") | map(.first_response_ms) | stats) as $restored |
	(if $cold == null or $restored == null then null else $cold.median / $restored.median | r2 end) as $ratio |
	{
	  summary: {
	    cold_first_response_ms: $cold,
	    restored_first_response_ms: $restored,
	    cold_run_returned_ms: (ok("cold") | map(.run_returned_ms) | stats),
	    restored_run_returned_ms: (ok("restored") | map(.run_returned_ms) | stats),
	    cold_app_listening_after_ms: (ok("cold") | map(.app_listening_after_ms) | stats),
	    restored_criu_restore_ms: (ok("restored") | map(.criu_restore_s | if . == null then null else . * 1000 end) | stats),
	    speedup_median: $ratio,
	    speedup_paired_median: ([range(0; $runs)] | map(. as $i |
	        ([$samples[] | select(.kind == "cold" and .i == $i and .ok)][0].first_response_ms) as $c |
	        ([$samples[] | select(.kind == "restored" and .i == $i and .ok)][0].first_response_ms) as $r |
	        if $c == null or $r == null then null else $c / $r end) | map(select(. != null)) | pct(0.5) | r2),
	    failed: {cold: (all_of("cold") | map(select(.ok | not)) | length),
	             restored: (all_of("restored") | map(select(.ok | not)) | length)},
	    ready_point: {checkpoint_after_ms: $ready_ms, shim_cpu_s_until_checkpoint: $ready_shim_cpu, checkpoint_dir_bytes: $cp_du, manifest: $manifest, app: $ready_app},
	    clones_sequential: {per_clone_first_response_ms: (ok("clone-sequential") | map(.first_response_ms) | stats),
	      total_ms: $seq_total, answered: (ok("clone-sequential") | length), of: $clones,
	      independent: (ok("clone-sequential-second-request") | length)},
	    clones_parallel: {per_clone_first_response_ms: (ok("clone-parallel") | map(.first_response_ms) | stats),
	      total_ms: $par_total, answered: (ok("clone-parallel") | length), of: $clones,
	      independent: (ok("clone-parallel-second-request") | length)}
	  },
	  goals: {restored_speedup: {value: $ratio, goal: ">= \($goal)", met: ($ratio != null and $ratio >= $goal)},
	          clones_answer: {value: ((ok("clone-sequential") | length) + (ok("clone-parallel") | length)),
	            goal: "all \(2 * $clones) clones answer with the reference body, and each answers a second request with requests=2",
	            met: ((ok("clone-sequential") | length) == $clones and (ok("clone-parallel") | length) == $clones
	              and (ok("clone-sequential-second-request") | length) == $clones
	              and (ok("clone-parallel-second-request") | length) == $clones)}},
	  config: {runs: $runs, clones: $clones, poll: $poll, image: $image, command: $command,
	    reference_body: $ref_body,
	    measured: "from just before `ctr run -d` to the first HTTP 200 on 127.0.0.1:8080 inside the container (same polling for every start)",
	    order: "cold and restored alternate (cold first on even runs); each start is a fresh container, removed afterwards"},
	  machine: {kernel: $kernel, nproc: $nproc, cpu: $cpu, mem_total_kib: $mem_total_kib,
	    loadavg_before: $load_before, loadavg_after: $load_after,
	    containerd: $containerd, runc: $runc_version, criu: $criu, java: $java,
	    git_commit: $git_commit, git_dirty: $git_dirty, build_note: $build_note,
	    migrate_shim: {built_as: $shim_bin, sha256: $shim_sha, run_from: "a private copy, so a rebuild during the run cannot mix builds"}},
	  started: $started, finished: $finished,
	  samples: $samples
	}' >"$OUT"

jq -r '
	def f: if . == null then "-" else tostring end;
	.summary as $s |
	(["start", "n", "median ms", "p10", "p90", "min", "max"] | @tsv),
	(["cold (ctr run -> first answer)", $s.cold_first_response_ms] , ["restored from ready point", $s.restored_first_response_ms],
	 ["clone, sequential", $s.clones_sequential.per_clone_first_response_ms], ["clone, all at once", $s.clones_parallel.per_clone_first_response_ms]
	 | . as [$name, $st] | [$name, ($st.n | f), ($st.median | f), ($st.p10 | f), ($st.p90 | f), ($st.min | f), ($st.max | f)] | @tsv)
' "$OUT" | awk -F'\t' '{ printf "%-32s %3s %10s %9s %9s %9s %9s\n", $1, $2, $3, $4, $5, $6, $7 }'
jq -r '
	.summary as $s | .goals as $g | .config as $c |
	def f: if . == null then "-" else tostring end;
	"(\($c.runs) cold and \($c.runs) restored starts, interleaved; failed: cold \($s.failed.cold), restored \($s.failed.restored))",
	"ctr run -d returned after: cold \($s.cold_run_returned_ms.median | f) ms, restored \($s.restored_run_returned_ms.median | f) ms (of which criu restore \($s.restored_criu_restore_ms.median | f) ms); the app itself reported listening \($s.cold_app_listening_after_ms.median | f) ms after it started (cold; medians)",
	"ready-point checkpoint: \($s.ready_point.manifest.bytes / 1048576 | . * 10 | round / 10) MiB (memory \($s.ready_point.manifest.memoryBytes / 1048576 | . * 10 | round / 10) MiB), frozen \($s.ready_point.manifest.timings.frozenMs | f) ms, dump \($s.ready_point.manifest.timings.dumpMs | floor) ms, persist \($s.ready_point.manifest.timings.persistMs | floor) ms; taken \($s.ready_point.checkpoint_after_ms) ms after ctr run (the app reported listening after \($s.ready_point.app.app_listening_after_ms | f) ms; its shim had used \($s.ready_point.shim_cpu_s_until_checkpoint | f) s of CPU)",
	"clones: sequential \($s.clones_sequential.answered)/\($s.clones_sequential.of) answered in \($s.clones_sequential.total_ms) ms total, \($s.clones_sequential.independent) answered a 2nd request on their own; all at once \($s.clones_parallel.answered)/\($s.clones_parallel.of) in \($s.clones_parallel.total_ms) ms total, \($s.clones_parallel.independent) independent",
	"",
	"goal: restored >= \($g.restored_speedup.goal | ltrimstr(">= "))x faster than cold (medians)   \($g.restored_speedup.value | f)x (paired median \($s.speedup_paired_median | f)x)  \(if $g.restored_speedup.met then "ok" else "MISSED" end)",
	"clones answer independently                                  \(if $g.clones_answer.met then "ok" else "MISSED" end)"
' "$OUT"
failed=$(jq '[.samples[] | select(.ok | not)] | length' "$OUT")
((failed == 0)) || {
	say "$failed sample(s) failed:"
	jq -r '.samples[] | select(.ok | not) | "    \(.kind) \(.i // "") \(.id): \(.error // .body)"' "$OUT" >&2
}
say "wrote $OUT"
