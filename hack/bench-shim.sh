#!/usr/bin/env bash
# Measures io.containerd.migrate.v1 against io.containerd.runc.v2: `ctr run --rm /bin/true` latency
# (interleaved runs) and the resident memory of one shim per running container.
# Run as root: hack/bench-shim.sh   (env: RUNS=25 WARMUP=3 SHIMS=5 OUT=target/bench/shim.json)
#
# What it does, in one private containerd instance ($INSTANCE, destroyed at the end):
#   1. latency: WARMUP discarded runs, then RUNS timed runs per runtime, in the
#      order runc, migrate, runc, migrate, ... so machine noise hits both alike;
#      reports p10/p50/p90/mean and the migrate/runc ratio of the medians.
#   2. memory: SHIMS `sleep 100000` containers per runtime (started interleaved);
#      each container's shim is its task's parent (the shim is the subreaper);
#      reports the median VmRSS (/proc/PID/status) and Pss (smaps_rollup).
# Prints a table on stdout and writes every raw sample plus machine info to
# $OUT. Exits non-zero only if the benchmark could not run; a missed goal is
# printed as MISSED.
#
# Environment:
#   RUNS=25          timed runs per runtime (at least 20 for the issue's numbers)
#   WARMUP=3         discarded runs per runtime before them
#   SHIMS=5          long-running containers (= shims) per runtime
#   SETTLE=2         seconds to let the shims settle before reading their memory
#   OUT=<repo>/target/bench/shim.json
#   INSTANCE=bench-shim   name of the private containerd (hack/containerd.sh)
#   SKIP_BUILD=1     use target/release/containerd-shim-migrate-v1 as it is
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-25}
WARMUP=${WARMUP:-3}
SHIMS=${SHIMS:-5}
SETTLE=${SETTLE:-2}
OUT=${OUT:-$REPO/target/bench/shim.json}
INSTANCE=${INSTANCE:-bench-shim}
SKIP_BUILD=${SKIP_BUILD:-0}

RUNC=io.containerd.runc.v2
MIGRATE=io.containerd.migrate.v1
SHIM_BIN=$REPO/target/release/containerd-shim-migrate-v1
# Goals of the shim foundation issue: migrate / runc.
LATENCY_GOAL=1.05
RSS_GOAL=0.50

[[ -d ${HOME:-/root}/.cargo/bin ]] && export PATH=${HOME:-/root}/.cargo/bin:$PATH

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'bench-shim: ERROR: %s\n' "$*" >&2
	exit 1
}

for v in RUNS WARMUP SHIMS SETTLE; do
	[[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, not '${!v}'"
done
((RUNS >= 1 && SHIMS >= 1)) || die "RUNS and SHIMS must be at least 1"
((RUNS >= 20)) || say "note: RUNS=$RUNS; the issue asks for at least 20 runs per runtime"
[[ $(id -u) -eq 0 ]] || die "run as root"
for c in ctr containerd jq cargo; do
	command -v "$c" >/dev/null || die "$c not found (hack/setup.sh)"
done

WORK=$(mktemp -d /tmp/bench-shim.XXXXXX)
LOG=$WORK/ctr.log
ADDR=""
LONG_IDS=() # containers of the memory phase, removed by cleanup

CTR=(ctr --address) # + "$ADDR", once known
ctr_() { "${CTR[@]}" "$ADDR" "$@"; }

# Kills and removes the long-running containers. Every ctr call is bounded
# (timeout) so a wedged shim cannot hang the clean-up; destroy sweeps the rest.
remove_long_running() {
	local id deadline
	for id in "${LONG_IDS[@]}"; do
		timeout 10 "${CTR[@]}" "$ADDR" task kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
	done
	deadline=$((SECONDS + 10))
	while ((SECONDS < deadline)) && timeout 10 "${CTR[@]}" "$ADDR" task ls 2>/dev/null |
		awk '$1 ~ /^bench-sleep-/ && $3 != "STOPPED" { f = 1 } END { exit !f }'; do
		sleep 0.1
	done
	for id in "${LONG_IDS[@]}"; do
		timeout 10 "${CTR[@]}" "$ADDR" task delete --force "$id" >/dev/null 2>&1 || true
		timeout 10 "${CTR[@]}" "$ADDR" container rm "$id" >/dev/null 2>&1 || true
	done
	LONG_IDS=()
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	((rc == 0)) || say "cleaning up after exit status $rc"
	if [[ -n $ADDR ]]; then remove_long_running; fi
	"$REPO/hack/containerd.sh" destroy "$INSTANCE" || printf 'bench-shim: destroying %s failed\n' "$INSTANCE" >&2
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- set-up

if [[ $SKIP_BUILD != 1 ]]; then
	say "building the shim (cargo build --release -p containerd-shim-migrate-v1)"
	(cd "$REPO" && cargo build --quiet --release -p containerd-shim-migrate-v1) ||
		die "building the shim failed (SKIP_BUILD=1 uses the existing binary)"
fi
[[ -x $SHIM_BIN ]] || die "$SHIM_BIN missing"
SHIM_SHA=$(sha256sum "$SHIM_BIN" | cut -d' ' -f1)

if [[ ! -s $REPO/target/images/testbox.tar ]]; then
	say "building the test image"
	"$REPO/hack/images.sh" build >/dev/null
fi
IMAGE=$("$REPO/hack/images.sh" name)

# A fresh instance: leftovers of an interrupted run would skew the numbers.
"$REPO/hack/containerd.sh" destroy "$INSTANCE"
ADDR=$("$REPO/hack/containerd.sh" start "$INSTANCE")
"$REPO/hack/images.sh" import "$ADDR" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%FT%TZ)

# ------------------------------------------------------------------ latency

# Prints the wall time in ms of one `ctr run --rm ... /bin/true`.
# $EPOCHREALTIME (bash 5) needs no fork, unlike `date +%s%N`.
time_run() {
	local runtime=$1 id=$2 t0 t1
	t0=$EPOCHREALTIME
	if ! ctr_ run --rm --runtime "$runtime" "$IMAGE" "$id" /bin/true </dev/null >>"$LOG" 2>&1; then
		tail -n 20 "$LOG" >&2
		die "ctr run --runtime $runtime $id failed"
	fi
	t1=$EPOCHREALTIME
	# Microseconds without the dot; 10# so leading zeros are not octal.
	local us=$((10#${t1/./} - 10#${t0/./}))
	printf '%d.%03d\n' $((us / 1000)) $((us % 1000))
}

# JSON lines of samples: {"runtime","i","warmup","ms"}.
SAMPLES=$WORK/latency.jsonl
: >"$SAMPLES"
say "latency: $WARMUP warm-up + $RUNS timed runs per runtime, interleaved"
for ((i = 0; i < WARMUP + RUNS; i++)); do
	warm=false
	((i < WARMUP)) && warm=true
	for rt in "$RUNC" "$MIGRATE"; do
		short=${rt#io.containerd.}
		ms=$(time_run "$rt" "bench-${short//./-}-$i")
		printf '{"runtime":"%s","i":%d,"warmup":%s,"ms":%s}\n' "$rt" "$i" "$warm" "$ms" >>"$SAMPLES"
	done
	printf '\r    %d/%d' $((i + 1)) $((WARMUP + RUNS)) >&2
done
printf '\n' >&2

# ------------------------------------------------------------------- memory

# Prints the shim pid of running container $1: the parent of its task.
shim_pid() {
	local id=$1 task ppid
	task=$(ctr_ task ls | awk -v id="$id" '$1 == id && $3 == "RUNNING" { print $2 }')
	[[ -n $task ]] || die "container $id has no running task"
	ppid=$(awk '/^PPid:/ { print $2 }' "/proc/$task/status")
	# Make sure it is the shim of this container and not, say, init.
	tr '\0' ' ' <"/proc/$ppid/cmdline" | grep -qF -- "-id $id " ||
		die "parent $ppid of task $task ($id) is not its shim: $(tr '\0' ' ' <"/proc/$ppid/cmdline")"
	echo "$ppid"
}

# Prints a JSON object with the memory figures (KiB) of pid $1.
mem_json() {
	local pid=$1
	jq -n --arg pid "$pid" --arg exe "$(readlink "/proc/$pid/exe")" \
		--rawfile status "/proc/$pid/status" --rawfile rollup "/proc/$pid/smaps_rollup" '
		def field($text; $name): $text | capture("(^|\n)" + $name + ":\\s+(?<v>[0-9]+)").v | tonumber;
		{pid: ($pid | tonumber), exe: $exe,
		 vmrss_kib: field($status; "VmRSS"), rss_anon_kib: field($status; "RssAnon"),
		 rss_file_kib: field($status; "RssFile"), threads: field($status; "Threads"),
		 pss_kib: field($rollup; "Pss"), pss_anon_kib: field($rollup; "Pss_Anon"),
		 pss_file_kib: field($rollup; "Pss_File")}'
}

MEMORY=$WORK/memory.jsonl
: >"$MEMORY"
say "memory: $SHIMS long-running containers per runtime"
for ((i = 0; i < SHIMS; i++)); do
	for rt in "$RUNC" "$MIGRATE"; do
		short=${rt#io.containerd.}
		id=bench-sleep-${short//./-}-$i
		LONG_IDS+=("$id")
		ctr_ run -d --runtime "$rt" "$IMAGE" "$id" sleep 100000 </dev/null >>"$LOG" 2>&1 ||
			die "ctr run -d --runtime $rt $id failed: $(tail -n 5 "$LOG")"
	done
done
sleep "$SETTLE"
for ((i = 0; i < SHIMS; i++)); do
	for rt in "$RUNC" "$MIGRATE"; do
		short=${rt#io.containerd.}
		id=bench-sleep-${short//./-}-$i
		pid=$(shim_pid "$id")
		mem_json "$pid" | jq -c --arg rt "$rt" --arg id "$id" '{runtime: $rt, id: $id} + .' >>"$MEMORY"
	done
done
# One shim per container, or the per-shim figure would be meaningless.
distinct=$(jq -s 'map(.pid) | unique | length' "$MEMORY")
((distinct == 2 * SHIMS)) || die "expected $((2 * SHIMS)) distinct shims, found $distinct"
jq -e --arg bin "$SHIM_BIN" --arg m "$MIGRATE" -s 'map(select(.runtime == $m) | .exe == $bin) | all' "$MEMORY" >/dev/null ||
	die "the migrate shims do not run $SHIM_BIN: $(jq -r -s 'map(.exe) | unique | join(" ")' "$MEMORY")"

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
say "removing the long-running containers"
remove_long_running
[[ $(sha256sum "$SHIM_BIN" | cut -d' ' -f1) == "$SHIM_SHA" ]] ||
	say "WARNING: $SHIM_BIN changed during the run (rebuilt by someone?); numbers may mix two builds"

# ------------------------------------------------------------------ results

git_commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
git_shim_dirty=$([[ -n $(git -C "$REPO" status --porcelain -- shim Cargo.toml Cargo.lock 2>/dev/null) ]] && echo true || echo false)
mkdir -p "$(dirname "$OUT")"
jq -n \
	--slurpfile lat "$SAMPLES" --slurpfile mem "$MEMORY" \
	--arg runc "$RUNC" --arg migrate "$MIGRATE" \
	--argjson latency_goal "$LATENCY_GOAL" --argjson rss_goal "$RSS_GOAL" \
	--argjson runs "$RUNS" --argjson warmup "$WARMUP" --argjson shims "$SHIMS" --argjson settle "$SETTLE" \
	--arg started "$STARTED" --arg finished "$(date -u +%FT%TZ)" \
	--arg kernel "$(uname -r)" --argjson nproc "$(nproc)" \
	--arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
	--argjson mem_total_kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)" \
	--arg load_before "$LOAD_BEFORE" --arg load_after "$LOAD_AFTER" \
	--arg containerd "$(containerd --version)" --arg runc_version "$(runc --version | head -1)" \
	--arg runc_shim "$(command -v containerd-shim-runc-v2)" \
	--arg git_commit "$git_commit" --argjson git_shim_dirty "$git_shim_dirty" \
	--arg shim_bin "$SHIM_BIN" --arg shim_sha "$SHIM_SHA" \
	--argjson shim_size "$(stat -c %s "$SHIM_BIN")" \
	--arg image "$IMAGE" '
	# Percentile with linear interpolation between closest ranks (numpy default).
	def pct($q): sort as $s | ($s | length) as $n | (($n - 1) * $q) as $h | ($h | floor) as $lo
		| $s[$lo] + ($h - $lo) * ($s[[$lo + 1, $n - 1] | min] - $s[$lo]);
	def r1: . * 10 | round / 10;
	def r3: . * 1000 | round / 1000;
	def stats(round): {n: length, p10: pct(0.1), p50: pct(0.5), p90: pct(0.9), mean: (add / length), min: min, max: max}
		| with_entries(if .key == "n" then . else .value |= round end);
	def lat($rt): [$lat[] | select(.runtime == $rt and (.warmup | not)) | .ms] | stats(r1);
	def mem($rt; $f): [$mem[] | select(.runtime == $rt) | .[$f] / 1024] | stats(r3);
	{
	  summary: ({
	    latency_ms: {($runc): lat($runc), ($migrate): lat($migrate)},
	    shim_rss_mib: {($runc): mem($runc; "vmrss_kib"), ($migrate): mem($migrate; "vmrss_kib")},
	    shim_pss_mib: {($runc): mem($runc; "pss_kib"), ($migrate): mem($migrate; "pss_kib")}
	  }
	  | .ratios = {
	      latency_p50: (.latency_ms[$migrate].p50 / .latency_ms[$runc].p50 | r3),
	      latency_mean: (.latency_ms[$migrate].mean / .latency_ms[$runc].mean | r3),
	      # Median of migrate/runc within each interleaved pair: robust to slow drift in machine load.
	      latency_paired_p50: ([$lat[] | select(.warmup | not)] | group_by(.i)
	        | map((map(select(.runtime == $migrate).ms)[0]) / (map(select(.runtime == $runc).ms)[0])) | pct(0.5) | r3),
	      shim_rss_p50: (.shim_rss_mib[$migrate].p50 / .shim_rss_mib[$runc].p50 | r3),
	      shim_pss_p50: (.shim_pss_mib[$migrate].p50 / .shim_pss_mib[$runc].p50 | r3)
	    }
	  | .goals = {latency_p50_max: $latency_goal, shim_rss_p50_max: $rss_goal,
	      latency_met: (.ratios.latency_p50 <= $latency_goal),
	      rss_met: (.ratios.shim_rss_p50 <= $rss_goal)}),
	  config: {runs: $runs, warmup: $warmup, shims: $shims, settle_s: $settle, image: $image,
	    latency_command: "ctr run --rm --runtime R IMAGE ID /bin/true",
	    order: "interleaved: runc.v2, migrate.v1, runc.v2, ...; warm-up samples are marked and not in the summary"},
	  machine: {kernel: $kernel, nproc: $nproc, cpu: $cpu, mem_total_kib: $mem_total_kib,
	    loadavg_before: $load_before, loadavg_after: $load_after,
	    containerd: $containerd, runc: $runc_version, runc_v2_shim: $runc_shim,
	    git_commit: $git_commit, git_shim_dirty: $git_shim_dirty,
	    migrate_shim: {path: $shim_bin, sha256: $shim_sha, size: $shim_size}},
	  started: $started, finished: $finished,
	  samples: {latency_ms: $lat, memory: $mem}
	}' >"$OUT"

# The table, from the JSON so both always agree.
jq -r --arg runc "$RUNC" --arg migrate "$MIGRATE" --arg lgoal "$LATENCY_GOAL" --arg rgoal "$RSS_GOAL" '
	.summary as $s | .config.shims as $n |
	def row($name; $a; $b; $ratio; $goal; $ok):
		[$name, $a, $b, $ratio, $goal,
		 (if $ok == null then "" elif $ok then "ok" else "MISSED" end)] | @tsv;
	def lrow($q): row("ctr run --rm /bin/true \($q) ms"; $s.latency_ms[$runc][$q]; $s.latency_ms[$migrate][$q];
		$s.latency_ms[$migrate][$q] / $s.latency_ms[$runc][$q]; ""; null);
	def mrow($name; $k; $goal; $ok): row($name; $s[$k][$runc].p50; $s[$k][$migrate].p50;
		$s[$k][$migrate].p50 / $s[$k][$runc].p50; $goal; $ok);
	(["metric", "runc.v2", "migrate.v1", "ratio", "goal", ""] | @tsv),
	row("ctr run --rm /bin/true p50 ms"; $s.latency_ms[$runc].p50; $s.latency_ms[$migrate].p50;
		$s.ratios.latency_p50; "<= \($lgoal)"; $s.goals.latency_met),
	lrow("p10"), lrow("p90"), lrow("mean"),
	mrow("shim RSS MiB (median of \($n))"; "shim_rss_mib"; "<= \($rgoal)"; $s.goals.rss_met),
	mrow("shim Pss MiB (median of \($n))"; "shim_pss_mib"; ""; null)
' "$OUT" | awk -F'\t' '
	NR == 1 { printf "%-34s %10s %11s %7s %9s\n", $1, $2, $3, $4, $5; next }
	{ printf "%-34s %10.1f %11.1f %7.2f %9s  %s\n", $1, $2, $3, $4, $5, $6 }'
printf '(%d timed + %d warm-up runs per runtime, interleaved; load %s -> %s)\n' \
	"$RUNS" "$WARMUP" "$LOAD_BEFORE" "$LOAD_AFTER"
say "wrote $OUT"
