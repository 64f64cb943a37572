# shellcheck shell=bash
# Shared pieces of the hack/bench-*.sh scripts: timing helpers, the machine
# description every result file carries, and the jq statistics definitions.
# Source it: . "$REPO/hack/lib/bench.sh" (REPO set first).

# Microseconds since the epoch, from bash itself (no fork).
bench_now_us() {
	local t=$EPOCHREALTIME
	echo "${t/./}"
}

# Milliseconds between two bench_now_us values, 3 decimals.
bench_ms() {
	local d=$(($2 - $1))
	printf '%d.%03d' $((d / 1000)) $((d % 1000))
}

# The file system type of path $1 (tmpfs, ext2/ext3, xfs, ...).
bench_fs_type() { stat -f -c %T "$1" 2>/dev/null || echo unknown; }

bench_loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# A JSON object describing the machine and the build: kernel, CPUs, memory,
# the container stack's versions, the commit and which of the paths "$@"
# (default: the code that goes into the binaries) have uncommitted changes.
bench_machine_json() {
	local paths=("$@")
	((${#paths[@]})) || paths=(shim oci coordinator Cargo.toml Cargo.lock)
	local commit dirty
	commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
	dirty=$(git -C "$REPO" status --porcelain -- "${paths[@]}" 2>/dev/null | jq -R -s -c 'split("\n") | map(select(. != ""))')
	jq -n -c \
		--arg kernel "$(uname -r)" --argjson nproc "$(nproc)" \
		--arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
		--argjson mem_total_kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)" \
		--arg containerd "$(containerd --version 2>/dev/null || echo unknown)" \
		--arg runc "$(runc --version 2>/dev/null | head -1 || echo unknown)" \
		--arg criu "$(criu --version 2>/dev/null | head -1 || echo unknown)" \
		--arg git_commit "$commit" --argjson git_dirty "$dirty" \
		'{kernel: $kernel, nproc: $nproc, cpu: $cpu, mem_total_kib: $mem_total_kib,
		  containerd: $containerd, runc: $runc, criu: $criu, git_commit: $git_commit, git_dirty: $git_dirty}'
}

# jq definitions for summaries; use as jq "$BENCH_JQ_DEFS ..." .
#   pct($q)   percentile with linear interpolation between closest ranks (numpy's default), null if empty
#   r1, r3    round to 1 or 3 decimals (null stays null)
#   stats     {n, median, p90, min, max, mean} of the non-null numbers of an array, null if none
#   ratio($a; $b)   $a / $b to 3 decimals, null if either is null or $b is 0
# shellcheck disable=SC2016,SC2034
BENCH_JQ_DEFS='
	def pct($q): sort as $s | ($s | length) as $n | if $n == 0 then null else (($n - 1) * $q) as $h | ($h | floor) as $lo
		| $s[$lo] + ($h - $lo) * ($s[[$lo + 1, $n - 1] | min] - $s[$lo]) end;
	def r1: if . == null then null else . * 10 | round / 10 end;
	def r3: if . == null then null else . * 1000 | round / 1000 end;
	def stats: map(select(. != null)) | if length == 0 then null
		else {n: length, median: (pct(0.5) | r1), p90: (pct(0.9) | r1), min: min, max: max, mean: (add / length | r1)} end;
	def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else $a / $b | r3 end;
'
