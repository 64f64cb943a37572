#!/usr/bin/env bash
# Checkpoint ticker benchmark (issue 4): a container with MIB (1 GiB) of
# touched memory that dirties 1 %, 10 % and 50 % of its pages between ticks,
# TICKS (10) ticks each, against the file:// and the oci:// version store,
# compared in the same run with a full leave-running checkpoint per tick.
# Run as root: hack/bench-ticker.sh   (env: DIRTY="1 10 50" STORES="file oci")
#
# Per dirty level X (outer loop) and store (inner loop):
#   ticker    `ctr run --runtime io.containerd.migrate.v1` of
#               memtick --mib MIB --interval-ms MEMTICK_MS --dirty-percent P --out /tmp/tick
#             with the annotations io.containerd.migrate.checkpoint.interval=I,
#             .version-group=VERSION_GROUP, .keep-groups=KEEP_GROUPS (one group
#             of 10 versions, all kept) and .store=URL. memtick dirties P % of its
#             pages per memtick tick in a rotating window of contiguous pages;
#             P = X * MEMTICK_MS / I, so X % per ticker interval I. When version
#             TICKS-1 is stored the container is killed. Per version:
#               freeze      the frozen time the version's checkpoint records (the
#                           pause across CRIU's dump and the rootfs diff), from the
#                           shim's log line
#                           "<id>: version V ... frozen F ms, dump D, total T"
#                           in the instance's containerd.log; and memtick's own
#                           view: the largest tick gap (gap_ms in its output) in
#                           the tick's dump window, which includes up to one
#                           MEMTICK_MS interval
#               upload      T - D: chunking, upload and retention after the dump
#               bytes       bytesNew / bytesTotal of `migratectl checkpoint ls
#                           --store URL --container ID --json`
#               dirtied     memtick ticks between the two freezes (the freeze of a
#                           version ends at the memtick tick with that largest
#                           gap; the ticks from the previous version's one up to
#                           this one each dirtied N pages after its snapshot and
#                           before this one), times N pages, capped at MIB. Should
#                           a freeze tick not be found, the time between the
#                           versions' `created` stamps times memtick's measured
#                           rate is used (dirtied_source says which; both are kept).
#             Then RUNS restores of the newest version (TICKS-1) under new ids:
#               migratectl restore --store URL --container ID --version V --image IMAGE --as NEW --detach --json
#             (its JSON: checkMs = rebuild + size check, containers[0].ms, totalMs),
#             each checked to carry the counter on from at least memtick's last
#             tick before that version's freeze, then killed; alternating (the
#             order flipping each run) with as many restores of the level's
#             full checkpoint (below), so that load drift hits both alike.
#   full      the baseline, once per dirty level (it does not involve a version
#             store): the same memtick (dirtying at the first store's rate)
#             without a ticker, and RUNS times
#               migratectl checkpoint create --root DIR --json ID
#             (leave-running, committed and verified on disk: frozenMs, dumpMs,
#             sizeBytes, totalMs) one ticker interval apart, the older ones
#             removed as it goes; the last is kept until the level is done and
#             restored RUNS times per store, between the ticker's restores:
#               migratectl restore --root DIR --checkpoint CP --as NEW --detach --json
# Stores: file:// is a directory per level under the work dir; oci:// is a
# Debian docker-registry (`docker-registry serve`, hack/setup.sh installs it)
# per level on 127.0.0.1 and a free port, storage.delete.enabled, its storage
# in the work dir: one store per level, so a level's total is its own (the
# levels' base versions share their chunks otherwise).
# Both restores read a store that was just written (page cache warm).
#
# Goals (per store and level):
#   bytes per incremental version (1..TICKS-1) <= 1.5 x dirtied + 1 MiB, every one
#   freeze per tick (median, CRIU's) no worse than one full leave-running
#     checkpoint's (median ratio <= 1.05: bench-checkpoint's allowance for noise)
#   restore of the newest of TICKS versions <= 2 x a single full checkpoint's
#     (median totalMs of migratectl restore)
# Not a goal, reported: total bytes stored after TICKS versions (the sum of the
# versions' new bytes, i.e. the distinct chunks; and du of the store) against
# TICKS full checkpoints.
#
# Prints a table per store and level and writes every raw sample, the summary,
# the goals and machine info to $OUT. Exits non-zero only if the benchmark
# could not run; a missed goal (or one not measured) is printed as MISSED.
#
# Environment:
#   DIRTY="1 10 50"     per cent of the pages dirtied per ticker interval
#   STORES="file oci"   version stores
#   TICKS=10            versions per container
#   MIB=1024            memtick's memory
#   INTERVAL="15 15 30"       ticker interval into file://, seconds: one for all levels or one
#                             per level (default with the default DIRTY; else 15)
#   OCI_INTERVAL="20 20 30"   the same into oci:// (else 20): the registry store uploads a 1 GiB
#                             base as some 130 packs of 8 MiB, about 8 s here
#                       A tick that overruns its interval delays the next, and more than X %
#                       is dirtied; the dirtied bytes are measured either way, and the table
#                       shows the tick-to-tick time and the share actually dirtied.
#   RUNS=3              full checkpoints per level, and restores of each kind
#   MEMTICK_MS=100      memtick's tick interval
#   VERSION_GROUP=10 KEEP_GROUPS=10
#   OUT=<repo>/target/bench/ticker.json
#   WORK_BASE=/var/tmp  work dir (stores, registry storage, full checkpoints): disk, not tmpfs
#   INSTANCE=bench-ticker   the private containerd (hack/containerd.sh), destroyed at the end
#   KEEP_WORK=1         keep the work dir (logs, per-level results) instead of removing it
#   REPORT_FROM=DIR     only redo the JSON and the tables from a work dir kept with KEEP_WORK=1
# The shim and migratectl run from private copies of target/release's, made at
# the start (built only if missing).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/lib/bench.sh
. "$REPO/hack/lib/bench.sh"

DIRTY_DEFAULT=${DIRTY:+no}
DIRTY=${DIRTY:-1 10 50}
STORES=${STORES:-file oci}
TICKS=${TICKS:-10}
MIB=${MIB:-1024}
# A tick dumps all of MIB and writes what changed: at 50 % the ticks take about
# twice as long as at 1 % (measured at 1 GiB on 2 busy cores: 1 % 11-15 s,
# 50 % 18-25 s into file://), so the default levels get their own intervals.
if [[ -z $DIRTY_DEFAULT ]]; then
	INTERVAL=${INTERVAL:-15 15 30}
	OCI_INTERVAL=${OCI_INTERVAL:-20 20 30}
else
	INTERVAL=${INTERVAL:-15}
	OCI_INTERVAL=${OCI_INTERVAL:-20}
fi
RUNS=${RUNS:-3}
MEMTICK_MS=${MEMTICK_MS:-100}
VERSION_GROUP=${VERSION_GROUP:-10}
KEEP_GROUPS=${KEEP_GROUPS:-10}
OUT=${OUT:-$REPO/target/bench/ticker.json}
WORK_BASE=${WORK_BASE:-/var/tmp}
INSTANCE=${INSTANCE:-bench-ticker}
KEEP_WORK=${KEEP_WORK:-0}
TIMEOUT=${TIMEOUT:-300} # seconds any one command may take

MIGRATE=io.containerd.migrate.v1
A=io.containerd.migrate.checkpoint
SHIM_BIN=$REPO/target/release/containerd-shim-migrate-v1
MIGRATECTL=$REPO/target/release/migratectl
PAGE=4096
GOAL_BYTES_FACTOR=1.5
GOAL_BYTES_SLACK=$((1 << 20))
GOAL_FREEZE_RATIO=1.05
GOAL_RESTORE_RATIO=2

[[ -d ${HOME:-/root}/.cargo/bin ]] && export PATH=${HOME:-/root}/.cargo/bin:$PATH

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'bench-ticker: ERROR: %s\n' "$*" >&2
	exit 1
}

# ------------------------------------------------------------------ results

# The JSON and the tables, from the per-level results in $WORK/res and the
# run's settings in $WORK/meta.env (so REPORT_FROM=DIR can redo them).
write_results() {

	mkdir -p "$(dirname "$OUT")"
	jq -n \
		--slurpfile fulls <(cat "$WORK"/res/full-*.json) \
		--slurpfile tickers <(cat "$WORK"/res/tk-*-*[0-9].json) \
		--argjson machine "$(bench_machine_json shim oci coordinator Cargo.toml Cargo.lock)" \
		--argjson ticks "$TICKS" --argjson mib "$MIB" --argjson runs "$RUNS" --argjson memtick_ms "$MEMTICK_MS" \
		--arg interval "$INTERVAL" --arg oci_interval "$OCI_INTERVAL" \
		--argjson version_group "$VERSION_GROUP" --argjson keep_groups "$KEEP_GROUPS" \
		--argjson goal_factor "$GOAL_BYTES_FACTOR" --argjson goal_slack "$GOAL_BYTES_SLACK" \
		--argjson goal_freeze "$GOAL_FREEZE_RATIO" --argjson goal_restore "$GOAL_RESTORE_RATIO" \
		--arg image "$IMAGE" --arg started "$STARTED" --arg finished "$FINISHED" \
		--arg load_before "$LOAD_BEFORE" --arg load_after "$LOAD_AFTER" --argjson other_load "$OTHER_LOAD" \
		--arg shim_sha "$SHIM_SHA" --arg shim_mtime "$SHIM_MTIME" --arg migratectl_sha "$MIGRATECTL_SHA" \
		--arg work "$WORK" --arg work_fs "$(bench_fs_type "$WORK")" --arg staging "$STAGING_NOTE" "$BENCH_JQ_DEFS"'
		($fulls | map({key: (.dirty_percent | tostring), value: .}) | from_entries) as $full |
		def fullsum($f; $r): {
		    frozen_ms: ($f.checkpoints | map(select(.ok)) | map(.frozen_ms) | stats),
		    persist_ms: ($f.checkpoints | map(select(.ok)) | map(.persist_ms) | stats),
		    memtick_gap_ms: ($f.checkpoints | map(select(.ok)) | map(.memtick_gap_ms) | stats),
		    total_ms: ($f.checkpoints | map(select(.ok)) | map(.total_ms) | stats),
		    size_bytes: ($f.checkpoints | map(select(.ok)) | map(.size_bytes) | stats),
		    restore_total_ms: ($r | map(select(.ok)) | map(.total_ms) | stats),
		    restore_check_ms: ($r | map(select(.ok)) | map(.check_ms) | stats),
		    restore_ticking_ms: ($r | map(select(.ok)) | map(.ticking_ms) | stats),
		    continuity: ($r | map(.continuity) | if length == 0 then null else all end),
		    failed: (($f.checkpoints + $r) | map(select(.ok | not)) | length)};
		def tsum($k; $f): ($k.versions | map(select(.version >= 1))) as $inc |
		  fullsum($f; $k.full_restores // []) as $fs | {
		    store: $k.store, dirty_percent: $k.dirty_percent, interval_s: $k.interval_s,
		    versions: ($k.versions | length), failed_ticks: ($k.failed_ticks | length), error: $k.error,
		    ticker: {
		      frozen_ms: ($k.versions | map(.frozen_ms) | stats),
		      memtick_gap_ms: ($k.versions | map(.memtick_gap_ms) | stats),
		      dump_ms: ($k.versions | map(.dump_ms) | stats),
		      upload_ms: ($k.versions | map(.upload_ms) | stats),
		      incremental_upload_ms: ($inc | map(.upload_ms) | stats),
		      base_upload_ms: ($k.versions | map(select(.version == 0))[0].upload_ms // null),
		      since_previous_ms: ($inc | map(.since_previous_ms) | stats),
		      bytes_new: ($inc | map(.bytes_new) | stats),
		      dirtied_bytes: ($inc | map(.dirtied_bytes) | stats),
		      dirtied_percent: ($inc | map(select(.dirtied_bytes != null) | .dirtied_bytes / ($k.memtick.pages * 4096) * 100) | stats),
		      bound_bytes: ($inc | map(.bound_bytes) | stats),
		      bytes_over_bound: ($inc | map(.bytes_over_bound) | map(select(. != null)) | {median: (pct(0.5) | r3), max: max}),
		      base_bytes: ($k.versions | map(select(.version == 0))[0].bytes_new // null),
		      bytes_total: ($k.versions | map(.bytes_total) | stats),
		      stored_bytes: $k.stored_bytes, store_du_bytes: $k.store_du_bytes,
		      restore_total_ms: ($k.restores | map(select(.ok)) | map(.total_ms) | stats),
		      restore_check_ms: ($k.restores | map(select(.ok)) | map(.check_ms) | stats),
		      restore_ticking_ms: ($k.restores | map(select(.ok)) | map(.ticking_ms) | stats),
		      restored_version: ($k.restores | map(.version) | unique),
		      continuity: ($k.restores | map(.continuity) | if length == 0 then null else all end)},
		    full: $fs,
		    full_times_versions_bytes: (if $fs.size_bytes then $fs.size_bytes.median * ($k.versions | length) else null end)} |
		  . + {ratios: {
		      freeze: ratio(.ticker.frozen_ms.median; .full.frozen_ms.median),
		      memtick_gap: ratio(.ticker.memtick_gap_ms.median; .full.memtick_gap_ms.median),
		      stored_over_full: ratio(.ticker.stored_bytes; .full_times_versions_bytes),
		      restore: ratio(.ticker.restore_total_ms.median; .full.restore_total_ms.median),
		      restore_paired_median: ([range(0; $runs) as $i |
		          ([$k.restores[] | select(.run == $i and .ok)][0].total_ms) as $a |
		          ([($k.full_restores // [])[] | select(.run == $i and .ok)][0].total_ms) as $b |
		          ratio($a; $b)] | map(select(. != null)) | pct(0.5) | r3),
		      restore_ticking: ratio(.ticker.restore_ticking_ms.median; .full.restore_ticking_ms.median)}} |
		  . + {goals: {
		      bytes_per_version: {value: .ticker.bytes_over_bound.max, goal: "every incremental version: bytes new <= \($goal_factor) x dirtied + 1 MiB (value: the largest bytes/bound)",
		        met: (.ticker.bytes_over_bound.max as $v | $v != null and $v <= 1 and ($inc | length) >= $ticks - 1)},
		      freeze: {value: .ratios.freeze, goal: "median ticker freeze / median full checkpoint freeze (CRIU frozen) <= \($goal_freeze)",
		        met: (.ratios.freeze as $v | $v != null and $v <= $goal_freeze)},
		      restore: {value: .ratios.restore, goal: "median restore of the newest of \($ticks) versions / of a full checkpoint (migratectl totalMs) <= \($goal_restore)",
		        met: (.ratios.restore as $v | $v != null and $v <= $goal_restore)},
		      continuity: {value: ([.ticker.continuity, .full.continuity] | map(select(. != null)) | if length == 0 then null else all end),
		        goal: "every restored counter carries on", met: ([.ticker.continuity, .full.continuity] | length > 0 and all(. == true))}}};
		{
		  summary: [$tickers[] | tsum(.; $full[.dirty_percent | tostring] // {checkpoints: []})]
		    | sort_by(.dirty_percent, .store),
		  config: {ticks: $ticks, mib: $mib, runs: $runs, memtick_interval_ms: $memtick_ms,
		    interval_s: {file: ($interval | split(" ") | map(select(. != "") | tonumber)), oci: ($oci_interval | split(" ") | map(select(. != "") | tonumber)), per_level: "one for all levels, or one per DIRTY level in order"}, version_group: $version_group, keep_groups: $keep_groups,
		    image: $image, work_dir: $work, work_dir_fs: $work_fs, staging: $staging,
		    ticker: "ctr run --runtime io.containerd.migrate.v1 with io.containerd.migrate.checkpoint.{interval,version-group,keep-groups,store}; memtick --mib MIB --interval-ms MEMTICK_MS --dirty-percent X*MEMTICK_MS/INTERVAL",
		    full: "migratectl checkpoint create --root DIR --json ID of the same workload without a ticker, one interval apart (dirty rate of the file interval); restore: migratectl restore --root DIR --checkpoint CP --as NEW --detach",
		    chain_restore: "migratectl restore --store URL --container ID --version TICKS-1 --image IMAGE --as NEW --detach (checkMs = rebuild from chunks + size check)",
		    stores: "one per level: file:// a directory in the work dir; oci:// a docker-registry on 127.0.0.1 with its storage in the work dir (registry-LEVEL/data), removed after the level",
		    freeze: "frozen_ms is the frozen time the checkpoint records, the pause across CRIU'"'"'s dump and the rootfs diff (shim log line / migratectl frozenMs); memtick_gap_ms is memtick'"'"'s largest tick gap around the dump and includes up to one memtick interval",
		    dirtied: "pages memtick dirtied between two versions'"'"' freezes: memtick ticks between the ticks that ended the freezes x pages per tick, capped at MIB; else created-stamp difference x measured tick rate",
		    stored_bytes: "sum of the versions'"'"' bytesNew (each distinct chunk counted once, plaintext); store_du_bytes: du -sb of the store (manifests, file system or registry overhead)"},
		  machine: ($machine + {loadavg_before: $load_before, loadavg_after: $load_after, busy_processes_at_start: $other_load,
		    migrate_shim: {sha256: $shim_sha, built: $shim_mtime, run_from: "a private copy"}, migratectl: {sha256: $migratectl_sha}}),
		  started: $started, finished: $finished,
		  samples: {ticker: $tickers, full: $fulls}
		}' >"$OUT"

	# Tables, from the JSON so both always agree.
	jq -r '
		def f1: if . == null then "-" else . * 10 | round / 10 | tostring end;
		def mib: if . == null then "-" else . / 1048576 | f1 end;
		def st($g): if $g.met then "ok" else "MISSED" end;
		def f3: if . == null then "-" else . * 1000 | round / 1000 | tostring end;
		def s1: if . == null then "-" else . / 1000 | f1 end;
		def row($a; $b; $c; $d; $e; $s): [$a, $b, $c, $d, $e, $s] | @tsv;
		.config.ticks as $n |
		.summary[] |
		"\(.store) store, \(.dirty_percent) % dirtied per \(.interval_s) s tick, \(.versions) versions (\(.failed_ticks) failed ticks)\(if .error then "; " + .error else "" end)",
		(row("metric"; "ticker"; "full ckpt"; "ratio"; "goal"; "") ,
		 row("freeze per tick, median ms"; (.ticker.frozen_ms.median | f1); (.full.frozen_ms.median | f1); (.ratios.freeze | f3); "<= 1.05"; st(.goals.freeze)),
		 row("freeze per tick, p90 ms"; (.ticker.frozen_ms.p90 | f1); (.full.frozen_ms.p90 | f1); ""; ""; ""),
		 row("memtick gap per tick, median ms"; (.ticker.memtick_gap_ms.median | f1); (.full.memtick_gap_ms.median | f1); (.ratios.memtick_gap | f3); ""; ""),
		 row("dump, median ms"; (.ticker.dump_ms.median | f1); ""; ""; ""; ""),
		 row("tick to tick, median s"; (.ticker.since_previous_ms.median | s1); ""; ""; "interval \(.interval_s) s"; ""),
		 row("write after the dump, median ms"; (.ticker.incremental_upload_ms.median | f1); (.full.persist_ms.median | f1); ""; "upload / persist"; ""),
		 row("upload of version 0 (base), ms"; (.ticker.base_upload_ms | f1); ""; ""; ""; ""),
		 row("new per incr. version, median MiB"; (.ticker.bytes_new.median | mib); (.full.size_bytes.median | mib); ""; ""; ""),
		 row("dirtied per version, median MiB"; (.ticker.dirtied_bytes.median | mib); ""; ""; "\(.ticker.dirtied_percent.median | f1) % of memory"; ""),
		 row("new / (1.5 x dirtied + 1 MiB)"; "med \(.ticker.bytes_over_bound.median | f3)"; "max \(.ticker.bytes_over_bound.max | f3)"; ""; "max <= 1"; st(.goals.bytes_per_version)),
		 row("stored after \(.versions) versions, MiB"; (.ticker.stored_bytes | mib); (.full_times_versions_bytes | mib); (.ratios.stored_over_full | f3); ""; ""),
		 row("  (du of the store, MiB)"; (.ticker.store_du_bytes | mib); ""; ""; ""; ""),
		 row("restore newest / full, median ms"; (.ticker.restore_total_ms.median | f1); (.full.restore_total_ms.median | f1); (.ratios.restore | f3); "<= 2"; st(.goals.restore)),
		 row("  paired (run by run), median"; ""; ""; (.ratios.restore_paired_median | f3); ""; ""),
		 row("  rebuild+check / check, ms"; (.ticker.restore_check_ms.median | f1); (.full.restore_check_ms.median | f1); ""; ""; ""),
		 row("  until ticking, median ms"; (.ticker.restore_ticking_ms.median | f1); (.full.restore_ticking_ms.median | f1); (.ratios.restore_ticking | f3); ""; ""),
		 row("  counter carries on"; (.ticker.continuity | tostring); (.full.continuity | tostring); ""; ""; st(.goals.continuity))),
		""
	' "$OUT" | awk -F'\t' 'NF < 2 { print; next } { printf "  %-38s %10s %10s %7s %22s  %s\n", $1, $2, $3, $4, $5, $6 }'
	printf '(medians; %s ticks of %s MiB; %s full checkpoints per level; %s restores of each kind, alternating; load %s -> %s)\n' \
		"$TICKS" "$MIB" "$RUNS" "$RUNS" "$LOAD_BEFORE" "$LOAD_AFTER"
	missed=$(jq '[.summary[].goals[] | select(.met | not)] | length' "$OUT")
	if ((missed == 0)); then say "all goals met"; else say "$missed goal(s) MISSED"; fi
	say "wrote $OUT"
}

num() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive whole number, not '$2'"; }
num TICKS "$TICKS"
num MIB "$MIB"
num RUNS "$RUNS"
num MEMTICK_MS "$MEMTICK_MS"
num VERSION_GROUP "$VERSION_GROUP"
num KEEP_GROUPS "$KEEP_GROUPS"
((TICKS >= 2)) || die "TICKS must be at least 2 (version 0 is the full base)"
read -r -a DIRTY_LIST <<<"$DIRTY"
read -r -a STORE_LIST <<<"$STORES"
((${#DIRTY_LIST[@]} && ${#STORE_LIST[@]})) || die "DIRTY and STORES must not be empty"
for x in "${DIRTY_LIST[@]}"; do
	if ! [[ $x =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v x="$x" 'BEGIN { exit !(x > 0 && x <= 100) }'; then
		die "DIRTY must be per cents in (0, 100], not '$x'"
	fi
done
# INTERVAL and OCI_INTERVAL: one number for every level, or one per level.
read -r -a INTERVAL_LIST <<<"$INTERVAL"
read -r -a OCI_INTERVAL_LIST <<<"$OCI_INTERVAL"
for v in "${INTERVAL_LIST[@]}" "${OCI_INTERVAL_LIST[@]}"; do num "INTERVAL and OCI_INTERVAL" "$v"; done
((${#INTERVAL_LIST[@]} == 1 || ${#INTERVAL_LIST[@]} == ${#DIRTY_LIST[@]})) || die "INTERVAL takes one number or one per DIRTY level"
((${#OCI_INTERVAL_LIST[@]} == 1 || ${#OCI_INTERVAL_LIST[@]} == ${#DIRTY_LIST[@]})) || die "OCI_INTERVAL takes one number or one per DIRTY level"
# The ticker interval of store $1 at the level with index $2.
interval_of() {
	if [[ $1 == oci ]]; then
		echo "${OCI_INTERVAL_LIST[$((${#OCI_INTERVAL_LIST[@]} == 1 ? 0 : $2))]}"
	else
		echo "${INTERVAL_LIST[$((${#INTERVAL_LIST[@]} == 1 ? 0 : $2))]}"
	fi
}
for s in "${STORE_LIST[@]}"; do [[ $s == file || $s == oci ]] || die "STORES takes file and oci, not '$s'"; done
[[ $(id -u) -eq 0 ]] || die "run as root"
for c in ctr containerd jq curl ss criu; do
	command -v "$c" >/dev/null || die "$c not found (hack/setup.sh)"
done
[[ " ${STORE_LIST[*]} " != *" oci "* ]] || command -v docker-registry >/dev/null ||
	die "docker-registry not found (hack/setup.sh installs it), or run with STORES=file"

if [[ -n ${REPORT_FROM:-} ]]; then
	WORK=$REPORT_FROM
	[[ -f $WORK/meta.env ]] || die "REPORT_FROM=$WORK: no meta.env there (a work dir kept with KEEP_WORK=1)"
	# shellcheck disable=SC1091
	. "$WORK/meta.env"
	: "${FINISHED:=unknown}" "${LOAD_AFTER:=unknown}"
	write_results
	exit 0
fi

# Room: the ticker's store holds a base plus TICKS-1 increments; a full
# checkpoint and a rebuilt version (RAM) need MIB each, the container MIB more.
max_dirty=$(printf '%s\n' "${DIRTY_LIST[@]}" | sort -g | tail -1)
need_disk_mib=$(awk -v m="$MIB" -v x="$max_dirty" -v t="$TICKS" 'BEGIN { printf "%d", m * (1 + x / 100 * (t - 1)) * 1.15 + 2 * m + 1024 }')
mkdir -p "$WORK_BASE"
have_disk_mib=$(($(df -Pk "$WORK_BASE" | awk 'NR == 2 { print $4 }') / 1024))
((have_disk_mib >= need_disk_mib)) || die "$WORK_BASE has $have_disk_mib MiB free, the benchmark needs about $need_disk_mib MiB"

WORK=$(mktemp -d "$WORK_BASE/bench-ticker.XXXXXX")
mkdir -p "$WORK/logs" "$WORK/out" "$WORK/res" "$WORK/full" "$WORK/bin" "$WORK/trash"
ADDR=""
STATE=/run/containerd-migrate/$INSTANCE/state/io.containerd.runtime.v2.task/default
CTRD_LOG=/run/containerd-migrate/$INSTANCE/containerd.log
RESTORE_LOG_DIR=/run/containerd-migrate/logs # where migratectl restore sends output
CREATED_IDS=()                               # containers to remove on exit
REG_PID="" REG_PORT="" REG_DIR=""
FULL_CP="" FULL_TICK_BEFORE=0 # the level's full checkpoint kept for the restores

ctr_() { timeout "$TIMEOUT" ctr --address "$ADDR" "$@"; }
mctl() { timeout "$TIMEOUT" "$MIGRATECTL" --address "$ADDR" "$@"; }
task_status() { timeout 10 ctr --address "$ADDR" task ls 2>/dev/null | awk -v id="$1" '$1 == id { print $3 }'; }

# Kills and deletes container $1 (task first); quiet, bounded, never fails.
remove() {
	local id=$1 deadline s
	timeout 10 ctr --address "$ADDR" task kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
	deadline=$((SECONDS + 15))
	while ((SECONDS < deadline)); do
		s=$(task_status "$id")
		[[ $s == RUNNING || $s == PAUSED ]] || break
		sleep 0.05
	done
	timeout 10 ctr --address "$ADDR" task delete --force "$id" >/dev/null 2>&1 || true
	timeout 10 ctr --address "$ADDR" container rm "$id" >/dev/null 2>&1 || true
	rm -f "$RESTORE_LOG_DIR/$id.log"
}

stop_registry() {
	[[ -n $REG_PID ]] || return 0
	kill -TERM "$REG_PID" 2>/dev/null || true
	local deadline=$((SECONDS + 10))
	while kill -0 "$REG_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
	kill -KILL "$REG_PID" 2>/dev/null || true
	wait "$REG_PID" 2>/dev/null || true
	REG_PID=""
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	((rc == 0)) || say "cleaning up after exit status $rc"
	if [[ -n $ADDR ]]; then
		local id
		for id in "${CREATED_IDS[@]}"; do remove "$id"; done
	fi
	stop_registry
	"$REPO/hack/containerd.sh" destroy "$INSTANCE" || printf 'bench-ticker: destroying %s failed\n' "$INSTANCE" >&2
	if [[ $KEEP_WORK == 1 ]]; then
		# The logs are worth keeping; the stores are not.
		rm -rf "$WORK"/store-* "$WORK"/registry-*/data "$WORK/full" "$WORK/trash"
		say "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- set-up

if [[ ! -x $SHIM_BIN || ! -x $MIGRATECTL ]]; then
	say "building the workspace (cargo build --release --workspace): a binary is missing"
	(cd "$REPO" && cargo build --quiet --release --workspace) || die "cargo build failed"
fi
# Private copies: the tree is shared, and a rebuild during the run must not
# mix two builds (containerd starts a shim per container, from SHIM_DIR).
install -m 0755 "$SHIM_BIN" "$WORK/bin/containerd-shim-migrate-v1"
install -m 0755 "$MIGRATECTL" "$WORK/bin/migratectl"
MIGRATECTL=$WORK/bin/migratectl
SHIM_SHA=$(sha256sum "$WORK/bin/containerd-shim-migrate-v1" | cut -d' ' -f1)
MIGRATECTL_SHA=$(sha256sum "$MIGRATECTL" | cut -d' ' -f1)
SHIM_MTIME=$(date -u -r "$SHIM_BIN" +%FT%TZ)

if [[ ! -s $REPO/target/images/testbox.tar ]]; then
	say "building the test image"
	"$REPO/hack/images.sh" build >/dev/null
fi
IMAGE=$("$REPO/hack/images.sh" name)

"$REPO/hack/containerd.sh" destroy "$INSTANCE"
ADDR=$(SHIM_DIR=$WORK/bin "$REPO/hack/containerd.sh" start "$INSTANCE")
"$REPO/hack/images.sh" import "$ADDR" >&2
LOAD_BEFORE=$(bench_loadavg)
STARTED=$(date -u +%FT%TZ)
STAGING_NOTE="/run is $(bench_fs_type /run), /dev/shm is $(bench_fs_type /dev/shm) (the ticker commits dumps, and migratectl stages them and rebuilds versions, in RAM when /run/containerd-migrate or /dev/shm is a tmpfs)"
OTHER_LOAD=$(ps -eo pid=,pcpu=,args= --sort=-pcpu | awk -v w="$WORK" '$2 >= 5 && index($0, w) == 0 && n++ < 5 { $1 = $1; print substr($0, 1, 160) }' | jq -R -s -c 'split("\n") | map(select(. != ""))')
declare -p TICKS MIB RUNS MEMTICK_MS INTERVAL OCI_INTERVAL VERSION_GROUP KEEP_GROUPS IMAGE STARTED \
	LOAD_BEFORE OTHER_LOAD SHIM_SHA SHIM_MTIME MIGRATECTL_SHA STAGING_NOTE >"$WORK/meta.env"

# ----------------------------------------------------------------- helpers

now_us() { bench_now_us; }
now_ms() { echo $(($(bench_now_us) / 1000)); }

# Splits a memtick line "tick=N gap_ms=G max_gap_ms=M unix_ms=T" into TICK MAXGAP UNIX.
parse_tick() {
	TICK="" MAXGAP="" UNIX=""
	[[ $1 =~ tick=([0-9]+)\ gap_ms=[0-9]+\ max_gap_ms=([0-9]+)\ unix_ms=([0-9]+) ]] || return 1
	TICK=${BASH_REMATCH[1]} MAXGAP=${BASH_REMATCH[2]} UNIX=${BASH_REMATCH[3]}
	: "$MAXGAP"
}

# memtick's /tmp/tick of container $1, read on the host through its bundle's
# rootfs mount: nothing runs in the container, so it can be polled often.
host_tick() {
	local f=$STATE/$1/rootfs/tmp/tick line
	[[ -r $f ]] || return 1
	read -r line <"$f" 2>/dev/null || return 1
	echo "$line"
}

# Polls until container $1's counter shows a tick written at or after unix
# time $2 (ms), or $3 seconds pass; leaves it parsed (TICK, UNIX).
wait_tick_after() {
	local id=$1 since=$2 deadline=$(($(now_us) + $3 * 1000000)) line
	while (($(now_us) < deadline)); do
		if line=$(host_tick "$id") && parse_tick "$line" && ((UNIX >= since)); then
			return 0
		fi
		sleep 0.01
	done
	return 1
}

# memtick's --dirty-percent for X % per interval of $2 seconds.
per_tick_percent() { awk -v x="$1" -v i="$2" -v m="$MEMTICK_MS" 'BEGIN { printf "%.6g", x * m / (i * 1000) }'; }
# The pages memtick dirties per tick at P per cent (its pages_for_percent: rounded up).
pages_per_tick() {
	awk -v p="$1" -v n="$((MIB * 256))" 'BEGIN { v = n * p / 100; c = int(v); if (c < v) c++; if (c > n) c = n; print c }'
}

# Starts memtick in container $1 with --dirty-percent $2 and ctr run options
# "${@:3}"; waits until it has ticked 10 times.
start_memtick() {
	local id=$1 pct=$2 deadline
	shift 2
	CREATED_IDS+=("$id")
	ctr_ run -d --runtime "$MIGRATE" --log-uri "file://$WORK/logs/$id.log" "$@" "$IMAGE" "$id" \
		/usr/local/bin/memtick --mib "$MIB" --interval-ms "$MEMTICK_MS" --dirty-percent "$pct" --out /tmp/tick \
		</dev/null >>"$WORK/ctr.log" 2>&1 || return 1
	deadline=$((SECONDS + 180))
	while ((SECONDS < deadline)); do
		if line=$(host_tick "$id") && parse_tick "$line" && ((TICK >= 10)); then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# memtick's output of container $1 as a JSON array of [tick, gap_ms, unix_ms].
memtick_ticks() {
	awk 'match($0, /tick=[0-9]+ gap_ms=[0-9]+ max_gap_ms=[0-9]+ unix_ms=[0-9]+/) {
			split(substr($0, RSTART, RLENGTH), f, /[ =]/); print f[2] "\t" f[4] "\t" f[8] }' \
		"$WORK/logs/$1.log" 2>/dev/null | jq -R -s -c 'split("\n") | map(select(. != "") | split("\t") | map(tonumber))'
}

# The shim's ticker lines for container $1 (from containerd's log), as JSON
# lines: {version, log_ms, frozen_ms, dump_ms, total_ms, ...}; failures as {failed: msg}.
ticker_lines() {
	{ grep -F -e "msg=\"$1: version " -e "msg=\"$1: checkpoint tick failed" "$CTRD_LOG" 2>/dev/null || true; } | jq -R -c '
		def dur: capture("^(?<n>[0-9.]+)(?<u>[a-zµ]+)$") | (.n | tonumber) *
			({"s": 1000, "ms": 1, "µs": 0.001, "us": 0.001, "ns": 0.000001}[.u] // null);
		def epoch_ms: capture("^(?<s>[^.Z]+)(\\.(?<f>[0-9]+))?Z$") |
			((.s + "Z" | fromdateiso8601) * 1000 + ((("0." + (.f // "0")) | tonumber) * 1000));
		(capture("time=\"(?<t>[^\"]+)\"").t | epoch_ms) as $t |
		if test("checkpoint tick failed") then {failed: (capture("msg=\"(?<m>.*)\"$").m), log_ms: $t}
		else capture("version (?<v>[0-9]+) \\(group (?<g>[0-9]+)\\) stored: (?<new>[0-9.]+) MiB new of (?<tot>[0-9.]+) MiB, (?<cn>[0-9]+) of (?<ct>[0-9]+) chunks; frozen (?<fr>[0-9.]+|\\?)( ms)?, dump (?<d>[^,]+), total (?<T>[^;\"]+)") |
			{version: (.v | tonumber), group: (.g | tonumber), log_ms: $t,
			 log_new_mib: (.new | tonumber), log_total_mib: (.tot | tonumber),
			 chunks_new: (.cn | tonumber), chunks_total: (.ct | tonumber),
			 frozen_ms: (if .fr == "?" then null else .fr | tonumber end),
			 dump_ms: (.d | dur), total_ms: (.T | dur)}
			| .upload_ms = (if .dump_ms == null or .total_ms == null then null else (.total_ms - .dump_ms) * 1000 | round / 1000 end)
		end'
}

# The newest version the shim logged as stored for container $1 (-1: none).
newest_logged() {
	local v
	v=$({ grep -F "msg=\"$1: version " "$CTRD_LOG" 2>/dev/null || true; } | sed -n 's/.*: version \([0-9][0-9]*\) (group.*/\1/p' | sort -n | tail -1)
	echo "${v:--1}"
}
failed_ticks() { grep -cF "msg=\"$1: checkpoint tick failed" "$CTRD_LOG" 2>/dev/null || true; }

# Memory for the container, a dump in RAM and a restored copy.
wait_for_memory() {
	local need=$(((3 * MIB + 1024) * 1024)) avail deadline=$((SECONDS + 120))
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

# A registry of this level's own: storage in $1/data, log in $1/registry.log.
# Sets REG_PID, REG_PORT.
start_registry() {
	local dir=$1 port deadline
	mkdir -p "$dir/data"
	for _ in $(seq 1 50); do
		port=$((20000 + RANDOM % 30000))
		[[ -z $(ss -Htln "sport = :$port" 2>/dev/null) ]] && break
	done
	cat >"$dir/config.yml" <<-EOF
		version: 0.1
		log:
		  accesslog:
		    disabled: true
		  level: warn
		storage:
		  filesystem:
		    rootdirectory: $dir/data
		  delete:
		    enabled: true
		http:
		  addr: 127.0.0.1:$port
	EOF
	docker-registry serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
	REG_PID=$! REG_PORT=$port
	deadline=$((SECONDS + 30))
	while ((SECONDS < deadline)); do
		kill -0 "$REG_PID" 2>/dev/null || {
			REG_PID=""
			die "docker-registry exited at start-up: $(tail -n 5 "$dir/registry.log")"
		}
		[[ $(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' "http://127.0.0.1:$port/v2/" 2>/dev/null) == 200 ]] && return 0
		sleep 0.1
	done
	die "docker-registry did not answer on 127.0.0.1:$port/v2/ within 30 s: $(tail -n 5 "$dir/registry.log")"
}

# restore_one OUT TICK_BEFORE NEW_ID RUN KIND ARGS...: one restore with
# migratectl ARGS --as NEW_ID --detach --json, checked to tick on from at
# least TICK_BEFORE, then removed; a JSON line appended to OUT: wall time,
# migratectl's JSON, time until the restored counter ticks (its /tmp/tick
# written after the restore began), continuity.
restore_one() {
	local out=$1 tick_before=$2 nid=$3 run=$4 kind=$5 t0 t1 rc err json ticking first cont ok
	shift 5
	{
		CREATED_IDS+=("$nid")
		wait_for_memory
		sync
		err="" ticking=null first=null cont=null ok=true
		t0=$(now_us)
		rc=0
		mctl "$@" --as "$nid" --detach --json >"$WORK/out/$nid.json" 2>"$WORK/out/$nid.err" || rc=$?
		t1=$(now_us)
		json=$(jq -c . "$WORK/out/$nid.json" 2>/dev/null) || json=null
		[[ -n $json ]] || json=null
		if ((rc != 0)); then
			ok=false err="migratectl restore exited $rc: $(tail -n 3 "$WORK/out/$nid.err" | tr '\n' ' ')"
		elif wait_tick_after "$nid" $((t0 / 1000)) 60; then
			ticking=$(bench_ms "$t0" "$(now_us)")
			first=$TICK
			if ((TICK >= tick_before)); then cont=true; else cont=false; fi
			# And it keeps running (memtick exits 3 on a corrupt page).
			if ! wait_tick_after "$nid" $(($(now_ms) + 10 * MEMTICK_MS)) 15 || ! [[ $(task_status "$nid") =~ ^(RUNNING|PAUSED)$ ]]; then
				cont=false ok=false
				err="the restored counter stopped (task $(task_status "$nid")): $(grep -h CORRUPT "$RESTORE_LOG_DIR/$nid.log" 2>/dev/null | head -1)"
			fi
		else
			ok=false err="the restored counter did not tick within 60 s (task $(task_status "$nid"))"
		fi
		jq -n -c --argjson run "$run" --arg kind "$kind" --arg id "$nid" --argjson ok "$ok" --arg error "$err" \
			--argjson wall_ms "$(bench_ms "$t0" "$t1")" --argjson ticking_ms "$ticking" \
			--argjson tick_before "$tick_before" --argjson first_tick "$first" --argjson continuity "$cont" \
			--argjson detail "$json" '
			{run: $run, kind: $kind, id: $id, ok: $ok, error: (if $error == "" then null else $error end),
			 wall_ms: $wall_ms, total_ms: ($detail.totalMs // null), check_ms: ($detail.checkMs // null),
			 container_ms: ($detail.containers[0].ms // null), version: ($detail.version // null),
			 skipped: ($detail.skipped // []), ticking_ms: $ticking_ms,
			 tick_before: $tick_before, first_tick: $first_tick, continuity: $continuity}' >>"$out"
		if [[ $ok == true ]]; then
			printf '      restore %d %-5s: total %s ms (verify/rebuild %s ms), ticking after %s ms, tick %s >= %s\n' "$run" "$kind" \
				"$(jq -r '.totalMs // "?"' <<<"$json")" "$(jq -r '.verifyMs // "?"' <<<"$json")" "$ticking" "$first" "$tick_before" >&2
		else
			printf '      restore %d %-5s FAILED: %s\n' "$run" "$kind" "$err" >&2
		fi
		remove "$nid"
	}
}

# --------------------------------------------------------------- baseline

# full LEVEL INTERVAL: RUNS full leave-running checkpoints of a ticker-less
# memtick, one INTERVAL apart; the last is kept (FULL_CP, FULL_TICK_BEFORE)
# for the restores, which alternate with the ticker's. Writes $WORK/res/full-LEVEL.json.
full_level() {
	local x=$1 interval=$2 id=full-$1 pct run cpid t0 t1 prev="" json tick_before=0 start gap
	pct=$(per_tick_percent "$x" "$interval")
	local cps=$WORK/res/full-$x.checkpoints.jsonl
	: >"$cps"
	say "full checkpoints, $x % per ${interval} s: memtick --dirty-percent $pct"
	wait_for_memory
	start_memtick "$id" "$pct" || die "memtick $id did not start: $(tail -n 3 "$WORK/ctr.log" "$WORK/logs/$id.log" 2>/dev/null | tr '\n' ' ')"
	# Run the workload for one interval first, as the ticker's container does
	# before its first tick.
	sleep "$interval"
	for ((run = 0; run < RUNS; run++)); do
		cpid=$id-cp$run
		start=$(now_us)
		host_tick "$id" >/dev/null && parse_tick "$(host_tick "$id")" && tick_before=$TICK
		t0=$(now_us)
		if mctl checkpoint create --root "$WORK/full" --id "$cpid" --json "$id" >"$WORK/out/$cpid.json" 2>"$WORK/out/$cpid.err"; then
			t1=$(now_us)
			json=$(jq -c . "$WORK/out/$cpid.json")
			# memtick's view: the largest gap of a tick in the command's window.
			wait_tick_after "$id" $((t1 / 1000 + 2 * MEMTICK_MS)) 30 || true
			sleep 0.2 # the shim copies memtick's output to the log asynchronously
			gap=$(awk -v a=$((t0 / 1000)) -v b=$((t1 / 1000 + 2 * MEMTICK_MS)) '
				match($0, /gap_ms=[0-9]+ /) { g = substr($0, RSTART + 7, RLENGTH - 8) + 0
					if (match($0, /unix_ms=[0-9]+/)) { t = substr($0, RSTART + 8, RLENGTH - 8) + 0
						if (t >= a && t <= b && g > m) m = g } }
				END { print m + 0 }' "$WORK/logs/$id.log")
			jq -n -c --argjson run "$run" --arg id "$cpid" --argjson wall_ms "$(bench_ms "$t0" "$t1")" \
				--argjson d "$json" --argjson gap "$gap" --argjson tick_before "$tick_before" '
				{run: $run, id: $id, ok: true, wall_ms: $wall_ms, frozen_ms: ($d.frozenMs // null),
				 dump_ms: ($d.dumpMs // null), persist_ms: ($d.persistMs // null), total_ms: ($d.totalMs // null),
				 size_bytes: ($d.sizeBytes // null), memtick_gap_ms: $gap, tick_before: $tick_before, detail: $d}' >>"$cps"
			printf '    full %d: frozen %s ms, memtick gap %s ms, total %s ms, %s bytes\n' "$run" \
				"$(jq -r '.frozenMs // "?"' <<<"$json")" "$gap" "$(jq -r '.totalMs // "?"' <<<"$json")" "$(jq -r '.sizeBytes // "?"' <<<"$json")" >&2
			# Keep only the newest (for the restores): 1 GiB each.
			[[ -z $prev ]] || rm -rf "${WORK:?}/full/$prev"
			prev=$cpid
		else
			jq -n -c --argjson run "$run" --arg id "$cpid" --arg e "$(tail -n 3 "$WORK/out/$cpid.err" | tr '\n' ' ')" \
				'{run: $run, id: $id, ok: false, error: $e}' >>"$cps"
			printf '    full %d FAILED: %s\n' "$run" "$(tail -n 1 "$WORK/out/$cpid.err")" >&2
		fi
		sync
		# One ticker interval apart, start to start.
		local left=$((start / 1000 + interval * 1000 - $(now_ms)))
		((run == RUNS - 1 || left <= 0)) || sleep "$(awk -v l="$left" 'BEGIN { printf "%.3f", l / 1000 }')"
	done
	# The tick read before the last (kept) checkpoint.
	tick_before=$(jq -s -r --arg id "$prev" 'map(select(.id == $id))[0].tick_before // 0' "$cps")
	cp "$WORK/logs/$id.log" "$WORK/logs/$id.memtick.log" 2>/dev/null || true
	remove "$id"
	FULL_CP=$prev FULL_TICK_BEFORE=$tick_before
	jq -n -c --argjson x "$x" --argjson interval "$interval" --arg pct "$pct" --argjson pages "$(pages_per_tick "$pct")" \
		--slurpfile cps "$cps" --arg kept "$prev" --argjson tick_before "$tick_before" '
		{dirty_percent: $x, interval_s: $interval, memtick_dirty_percent_per_tick: ($pct | tonumber), memtick_pages_per_tick: $pages,
		 checkpoints: $cps, kept_for_restores: {id: $kept, tick_before: $tick_before}}' >"$WORK/res/full-$x.json"
}

# ----------------------------------------------------------------- ticker

# ticker STORE LEVEL: TICKS versions of memtick into a fresh store, then RUNS
# restores of the newest. Writes $WORK/res/STORE-LEVEL.json.
ticker_level() {
	local store=$1 x=$2 interval=$3 id=tk-$1-$2 pct url storage_dir newest last=-1 deadline stall status tick_before=0 err=""
	case $store in
	file)
		storage_dir=$WORK/store-$x
		mkdir -p "$storage_dir"
		url=file://$storage_dir
		;;
	oci)
		REG_DIR=$WORK/registry-$x
		start_registry "$REG_DIR"
		storage_dir=$REG_DIR/data
		url=oci://127.0.0.1:$REG_PORT/bench-ticker
		;;
	esac
	pct=$(per_tick_percent "$x" "$interval")
	local restores=$WORK/res/$id.restores.jsonl full_restores=$WORK/res/$id.full-restores.jsonl run
	: >"$restores"
	: >"$full_restores"
	say "ticker into $store ($url), $x % per ${interval} s: memtick --dirty-percent $pct, $TICKS versions"
	wait_for_memory
	local t_start
	t_start=$(now_ms)
	start_memtick "$id" "$pct" \
		--annotation "$A.interval=${interval}s" --annotation "$A.version-group=$VERSION_GROUP" \
		--annotation "$A.keep-groups=$KEEP_GROUPS" --annotation "$A.store=$url" ||
		die "memtick $id did not start: $(tail -n 3 "$WORK/ctr.log" "$WORK/logs/$id.log" 2>/dev/null | tr '\n' ' ')"
	# Until version TICKS-1 is stored; a stall (no new version for a long
	# while) or too many failed ticks ends the level.
	stall=$((3 * interval + 600))
	deadline=$((SECONDS + stall))
	while :; do
		newest=$(newest_logged "$id")
		if ((newest > last)); then
			printf '    %s\n' "$(grep -F "msg=\"$id: version $newest " "$CTRD_LOG" | sed 's/.*msg="[^:]*: //; s/"$//' | tail -1)" >&2
			last=$newest
			deadline=$((SECONDS + stall))
			# The counter before the newest version's dump: read when the one
			# before it is stored (ticks never overlap).
			if ((last == TICKS - 2)) && parse_tick "$(host_tick "$id")"; then tick_before=$TICK; fi
		fi
		((last >= TICKS - 1)) && break
		if (($(failed_ticks "$id") > TICKS)); then
			err="more than $TICKS failed ticks"
			break
		fi
		if ((SECONDS >= deadline)); then
			err="no new version for $stall s (newest $last, task $(task_status "$id"))"
			break
		fi
		# PAUSED: a tick holds it frozen across its dump and rootfs diff.
		status=$(task_status "$id")
		[[ $status == RUNNING || $status == PAUSED ]] || {
			err="the container stopped (task ${status:-gone}): $(tail -n 2 "$WORK/logs/$id.log" | tr '\n' ' ')"
			break
		}
		sleep 0.5
	done
	local kill_ms
	kill_ms=$(now_ms)
	remove "$id"
	[[ -z $err ]] || say "WARNING: $id: $err"
	((last >= 0)) || tick_before=0
	sleep 0.3
	# Everything the versions are measured with, before the restores (whose
	# containers carry the ticker annotations too, and would tick after an interval).
	mctl checkpoint ls --store "$url" --container "$id" --json >"$WORK/out/$id.ls.json" 2>"$WORK/out/$id.ls.err" ||
		say "WARNING: checkpoint ls --store failed: $(tail -n 1 "$WORK/out/$id.ls.err")"
	local du_bytes
	du_bytes=$(du -sb "$storage_dir" 2>/dev/null | cut -f1)
	ticker_lines "$id" >"$WORK/res/$id.log.jsonl"
	memtick_ticks "$id" >"$WORK/res/$id.ticks.json"
	# The counter before the newest version's dump, more exactly: the tick
	# before the one that ended its freeze (read live above as a fallback;
	# an overrunning tick can start the next dump right after a version).
	local exact
	exact=$(jq -n -r --slurpfile log "$WORK/res/$id.log.jsonl" --slurpfile ticks "$WORK/res/$id.ticks.json" \
		--argjson v "$last" --argjson m "$MEMTICK_MS" '
		($log | map(select(.version == $v))[0]) as $l | if $l == null then empty else
		($l.log_ms - $l.total_ms) as $b |
		([$ticks[0][] | select(.[2] >= $b and .[2] <= $b + $l.dump_ms + 2 * $m + 300)] | max_by(.[1])) as $f |
		if $f == null then empty else $f[0] - 1 end end' 2>/dev/null || true)
	[[ -z $exact ]] || tick_before=$exact
	# The newest version and the level's full checkpoint, alternately (the
	# order flips each run), so that load drift hits both alike.
	say "restores of version $last of $id, alternating with the full checkpoint ${FULL_CP:-(none)}"
	for ((run = 0; run < RUNS; run++)); do
		if ((run % 2 == 1)) && [[ -n $FULL_CP ]]; then
			restore_one "$full_restores" "$FULL_TICK_BEFORE" "$id-f$run" "$run" full restore --root "$WORK/full" --checkpoint "$FULL_CP"
		fi
		if ((last >= 0)); then
			restore_one "$restores" "$tick_before" "$id-r$run" "$run" chain \
				restore --store "$url" --container "$id" --version "$last" --image "$IMAGE"
		fi
		if ((run % 2 == 0)) && [[ -n $FULL_CP ]]; then
			restore_one "$full_restores" "$FULL_TICK_BEFORE" "$id-f$run" "$run" full restore --root "$WORK/full" --checkpoint "$FULL_CP"
		fi
	done
	jq -n -c --arg store "$store" --argjson x "$x" --argjson interval "$interval" --arg pct "$pct" \
		--argjson pages_per_tick "$(pages_per_tick "$pct")" --argjson pages "$((MIB * 256))" \
		--arg url "$url" --arg storage_dir "$storage_dir" --argjson du_bytes "${du_bytes:-null}" \
		--argjson t_start "$t_start" --argjson kill_ms "$kill_ms" --arg error "$err" --argjson memtick_ms "$MEMTICK_MS" --argjson page "$PAGE" \
		--slurpfile log "$WORK/res/$id.log.jsonl" --slurpfile ticks "$WORK/res/$id.ticks.json" \
		--slurpfile ls <(jq -c . "$WORK/out/$id.ls.json" 2>/dev/null || echo '[]') --slurpfile restores "$restores" --slurpfile full_restores "$full_restores" '
		def epoch_ms: capture("^(?<s>[^.Z+]+)(\\.(?<f>[0-9]+))?(?<z>Z|[+-]00:00)$") |
			((.s + "Z" | fromdateiso8601) * 1000 + ((("0." + (.f // "0")) | tonumber) * 1000 | round));
		$ticks[0] as $t |
		# memtick measured: ms per tick over the whole run.
		(if ($t | length) > 1 then ($t[-1][2] - $t[0][2]) / ($t[-1][0] - $t[0][0]) else null end) as $period |
		[$log[] | select(.version != null)] as $stored |
		# A tick under way when the container is killed fails; not counted.
		[$log[] | select(.failed != null and .log_ms < $kill_ms)] as $failed |
		[$log[] | select(.failed != null and .log_ms >= $kill_ms)] as $failed_at_kill |
		($ls[0] | map({key: (.version | tostring), value: .}) | from_entries) as $listed |
		# Per version: the listing joined with the log line, and the memtick
		# tick that ended its freeze (largest gap in the dump window).
		[$stored | sort_by(.version)[] | . as $l | ($listed[$l.version | tostring] // {}) as $v |
			($l.log_ms - $l.total_ms) as $began |
			([$t[] | select(.[2] >= $began and .[2] <= $began + $l.dump_ms + 2 * $memtick_ms + 300)] | max_by(.[1])) as $f |
			$l + {created: ($v.created // null), created_ms: (if $v.created then $v.created | epoch_ms else null end),
				bytes_new: ($v.bytesNew // null), bytes_total: ($v.bytesTotal // null), listed_chunks_new: ($v.chunksNew // null),
				mode: ($v.mode // null), valid: ($v.valid // null),
				freeze_tick: ($f[0] // null), memtick_gap_ms: ($f[1] // null)}] as $vs |
		[range(0; $vs | length) | . as $i | $vs[$i] |
			if $i == 0 then . + {dirtied_bytes: null, dirtied_source: "base"}
			else $vs[$i - 1] as $p |
				(if .created_ms != null and $p.created_ms != null and $period != null
				 then [((.created_ms - $p.created_ms) / $period * $pages_per_tick | floor), $pages] | min * $page else null end) as $by_time |
				(if .freeze_tick != null and $p.freeze_tick != null and .version == $p.version + 1
				 then [(.freeze_tick - $p.freeze_tick) * $pages_per_tick, $pages] | min * $page else null end) as $by_ticks |
				. + {dirtied_bytes: ($by_ticks // $by_time), dirtied_source: (if $by_ticks then "memtick ticks between the freezes" elif $by_time then "created stamps x memtick rate" else null end),
					dirtied_bytes_by_ticks: $by_ticks, dirtied_bytes_by_created: $by_time,
					since_previous_ms: (if .created_ms and $p.created_ms then .created_ms - $p.created_ms else null end)}
			end |
			if .dirtied_bytes != null and .bytes_new != null then
				(.dirtied_bytes * 1.5 + 1048576) as $bound | . + {bound_bytes: $bound, bytes_over_bound: (.bytes_new / $bound * 1000 | round / 1000)}
			else . end] as $versions |
		{store: $store, dirty_percent: $x, interval_s: $interval, url: $url, storage_dir: $storage_dir,
		 memtick: {interval_ms: $memtick_ms, dirty_percent_per_tick: ($pct | tonumber), pages_per_tick: $pages_per_tick,
		   pages: $pages, measured_ms_per_tick: (if $period then $period * 100 | round / 100 else null end),
		   ticks_logged: ($t | length)},
		 error: (if $error == "" then null else $error end),
		 started_ms: $t_start, killed_ms: $kill_ms,
		 versions: $versions, failed_ticks: $failed, failed_at_kill: $failed_at_kill,
		 stored_bytes: ([$versions[].bytes_new | select(. != null)] | add),
		 store_du_bytes: $du_bytes,
		 restores: $restores, full_restores: $full_restores}' >"$WORK/res/$id.json"
	if [[ $store == oci ]]; then
		stop_registry
	fi
	# Removing some 100,000 chunk files takes minutes here: at the end, not
	# between the measurements.
	mv "$storage_dir" "$WORK/trash/$id"
}

# ------------------------------------------------------------------ the runs

say "dirty ${DIRTY_LIST[*]} % per tick, stores ${STORE_LIST[*]}, $TICKS ticks of $MIB MiB (intervals: file ${INTERVAL} s, oci ${OCI_INTERVAL} s), $RUNS full checkpoints and restores"
say "work dir $WORK ($(bench_fs_type "$WORK")); $STAGING_NOTE"
for i in "${!DIRTY_LIST[@]}"; do
	x=${DIRTY_LIST[$i]}
	# The baseline's workload dirties at the rate of the first store's ticker.
	full_level "$x" "$(interval_of "${STORE_LIST[0]}" "$i")"
	for store in "${STORE_LIST[@]}"; do
		ticker_level "$store" "$x" "$(interval_of "$store" "$i")"
	done
	[[ -z $FULL_CP ]] || rm -rf "${WORK:?}/full/$FULL_CP"
done
LOAD_AFTER=$(bench_loadavg)
FINISHED=$(date -u +%FT%TZ)
declare -p LOAD_AFTER FINISHED >>"$WORK/meta.env"
write_results

