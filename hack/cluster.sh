#!/usr/bin/env bash
# A local cluster for tests and the demo (issue 14): hosts h1..hN on this
# machine, each with its own network, file system, cgroup and containerd,
# linked by a bridge. Data crosses between hosts only over that network.
#
#   hack/cluster.sh up [N] [--etcd]     hosts h1..hN (default 2); prints a summary;
#                                       --etcd (N >= 3): the control plane
#                                       replicated on the hosts (below)
#   hack/cluster.sh status              the summary again
#   hack/cluster.sh exec HOST -- CMD... CMD on HOST, ctr pointed at its containerd
#   hack/cluster.sh fail HOST           HOST loses power: links cut, every process
#                                       SIGKILLed, nothing cleaned up
#   hack/cluster.sh partition HOST      HOST cut off the cluster's network; its
#                                       processes and containers run on
#   hack/cluster.sh heal HOST           HOST's link back
#   hack/cluster.sh store               the URL of the cluster's version store,
#                                       oci://BRIDGE-IP:5000/checkpoints
#   hack/cluster.sh store pause|resume  the store stops answering (SIGSTOP), and
#                                       answers again (SIGCONT)
#   hack/cluster.sh down                remove everything the cluster made
#
# As root, after hack/setup.sh (`store` alone needs neither). `up` keeps the
# hosts that are up and builds the missing ones; `down` also clears what a
# failed host or a crashed run left. Every command can be run again.
#
# Environment:
#   CLUSTER_NAME    the cluster (default "local"; a letter, then up to 7 of
#                   a-z 0-9), so tests and the demo can have one each
#   CLUSTER_SUBNET  its network, a /24 such as 10.88.7.0/24 (default: the first
#                   /24 of 10.88.0.0/16 that no interface of the machine uses)
#   SHIM_DIR        where the hosts' containerd finds the shim (hack/containerd.sh)
#   FAIL_TIMEOUT    seconds a killed host's processes may take to go (default 10)
#   READY_TIMEOUT   seconds a started agent may take to show as ready (default 20)
#   SNAPSHOTTER_TIMEOUT  seconds a started snapshotter may take to listen (default 10)
#   START_TIMEOUT   seconds a host's containerd may take to answer (hack/containerd.sh)
#                   The three are for slow machines, such as the emulated CPU of
#                   hack/softdirty-vm.sh, which raises them inside its VM.
#   CLUSTER_STORE   "registry" (default): `up` runs the version store below;
#                   "none": no store, for machines without docker-registry
#                   (the emulated VM of hack/softdirty-vm.sh)
#   REGISTRY_TIMEOUT  seconds the started version store may take to answer
#                   (default 10)
#   ETCD_TIMEOUT    with --etcd, seconds the started etcd members may take to
#                   be healthy, all three (default 20)
#
# What a host is
#
# Namespaces. A network namespace (`ip netns` cm-CLUSTER-HOST), a mount
# namespace and a cgroup namespace, kept by bind mounts of their files
# (/run/netns/, and /run/containerd-migrate-cluster/CLUSTER/ns/HOST.{mnt,cgroup}),
# so that no process has to hold them and a crashed run leaves files that
# `down` finds. `exec` and the host's daemons enter all three with nsenter.
#
# Files. Inside, the machine's file system is read-only, and a host writes
# only to its own directories: /run, /tmp, /var/tmp and
# /var/lib/containerd-migrate are bind mounts of its "disk",
# /var/lib/containerd-migrate-cluster/CLUSTER/HOST/<the same path>. /dev/shm is
# a tmpfs of its own, and an empty tmpfs hides every host's disk. So
# containerd's root and state, runc's root (/run/containerd/runc), the shims'
# sockets, CRIU's files and checkpoints are the host's own at their usual
# paths, and a write anywhere else fails (EROFS) instead of reaching another
# host. The one directory a host shares with the machine is
# /run/containerd-migrate-cluster/CLUSTER/HOST, bound at the same path inside:
# its containerd socket, so that tests and tools on the machine reach it, and
# its host.env. Other hosts' directories are not there. (`ctr --address
# SOCKET` on the machine works but for attached I/O, `ctr run` without -d or
# `ctr task exec`: their FIFOs would be in the machine's /run, out of the
# host's reach; run those with `exec`.) /sys is a sysfs of the host's network
# namespace, with the cgroup file systems mounted anew (below). Of the
# machine's other mounts the disk file systems, /proc and /dev stay; the rest
# (other containers' root file systems, tmpfs, namespace files) would only be
# kept alive by the copy, and goes.
#
# cgroups. A host has a cgroup, containerd-migrate-cluster/CLUSTER/HOST, in
# every hierarchy, and its cgroup namespace is rooted there; the cgroup file
# systems mounted inside show that root. So a container's cgroup path
# (/default/ID from ctr) lands under its host's cgroup, and the same id on two
# hosts never collides. The host's own processes (daemons, exec) run in the
# leaf HOST/system, so that HOST itself holds none and cgroup v2 controllers
# can be enabled under it. Every process of a host is in HOST's subtree, and
# HOST's cgroup.kill kills them all at once, forks included; so the machine
# needs a cgroup2 hierarchy (cgroup v2, or the unified one of a hybrid setup).
#
# Network. A bridge cm-CLUSTER in the machine's network namespace with .1 of
# the cluster's /24; host hN has eth0, a veth whose other end is on that
# bridge, under a bridge cm0 of its own that holds the host's address .(10+N)
# (as a real host with a bridge over its NIC; cm0 keeps eth0's MAC, so the
# host's address does not change MAC as ports come and go). The machine
# reaches every host and the hosts reach each other and the machine. No
# default route, no NAT: nothing else. Containers run through the cluster
# get .100 to .249 from the coordinator (--container-subnet and
# --container-range), each in a network namespace whose veth joins its
# host's cm0 (the agent's --bridge): one L2 segment, so a container is
# reached at the same address from the machine and every host, whichever
# host it runs on.
#
# Daemons. Started in the order of HOST_DAEMONS (below; ETCD_HOST_DAEMONS
# with --etcd, where each daemon is started on every new host before the
# next, see "Replicated control plane"), each by
# start_daemon_NAME, inside its host, with the host's env file
# /run/containerd-migrate-cluster/CLUSTER/HOST/host.env in its environment
# (and its path as CLUSTER_HOST_ENV). They need no stop: `fail` and `down`
# kill the host's cgroup. containerd is hack/containerd.sh's instance
# cluster-CLUSTER-HOST, run inside the host; a daemon it must know of (a
# proxy snapshotter) goes before it, its plugin into the configuration that
# hack/containerd.sh writes: the migrate snapshotter
# (containerd-snapshotter-migrate, snapshotter/README.md), its root
# /var/lib/containerd-migrate/snapshotter and its socket under /run, both the
# host's own, its log snapshotter.log in the directory shared with the
# machine; containerd has it as the proxy plugin `migrate`. Then the host
# agent (migrate-agent), which
# `up` waits for until the coordinator has the host ready; its log is
# agent.log in the directory shared with the machine.
#
# Control plane. Without --etcd, the coordinator (migrate-coordinator) runs
# on the machine at the bridge's .1, port 7400, its state and log in
# /run/containerd-migrate-cluster/CLUSTER/; `fail` leaves it, `down` stops
# it. `up` makes the cluster's CA there (tls/, with the coordinator's and
# the machine migratectl's certificates) and gives each host, in its shared
# directory, the CA's certificate and its own, never the CA's key. On a host
# (`exec`) and in host.env, MIGRATE_COORDINATOR, MIGRATE_TLS_DIR and
# MIGRATE_TLS_NAME point migratectl at the coordinator; `status` prints the
# machine's.
#
# Replicated control plane (`up N --etcd`, N >= 3). The machine runs no
# coordinator (the version store stays there): the cluster's state is in an
# etcd cluster of three members, on h1, h2 and h3, and every host runs a
# coordinator replica on it; any one host can fail, and the two members left
# are a quorum. On each host, daemon etcd (h1 to h3 only) and daemon
# coordinator come before the agent. A member is named as its host, serves
# clients at http://HOST-IP:2379 and its peers at http://HOST-IP:2380, keeps
# its data on the host's disk (/var/lib/containerd-migrate/etcd inside) and
# logs to etcd.log in the host's shared directory. Its Raft timing is set for
# hosts a bridge apart (etcd's tuning guide: a heartbeat near the round
# trip, an election timeout ten of them): a 50 ms heartbeat and a 500 ms
# election timeout instead of 100 and 1000. When the lost host held etcd's
# leader too, the coordinator's fail-over waits for etcd's election and
# then a whole lease TTL more (a new etcd leader extends every lease by its
# election timeout), so the defaults alone made it up to 6 s; these keep it
# under the 5 s the HA issue asks. Since a member answers
# only once a quorum runs, `up` starts the three, then waits until each says
# it is healthy (`etcdctl endpoint health`, at most ETCD_TIMEOUT seconds).
# The members are bootstrapped once (--initial-cluster h1=...,h2=...,h3=...,
# --initial-cluster-state new): `up` again keeps running members, and refuses
# to build one of h1 to h3 anew beside members that hold the state (down,
# then up). Plain HTTP on the cluster's network, without authentication: a
# real deployment gives etcd TLS (--cert-file, --client-cert-auth,
# --peer-cert-file, ...), as it gives the coordinator. A replica
# (migrate-coordinator --store etcd --name HOST) listens at HOST-IP:7400 with
# a certificate of its own, coordinator-HOST (valid for the host's IP), in
# the host's tls/ beside the agent's; its log is coordinator.log in the
# shared directory, and `up` waits until it listens (READY_TIMEOUT). Agents,
# and migratectl on the hosts (host.env's MIGRATE_COORDINATOR) and on the
# machine (`status`), get every replica: https://IP1:7400,https://IP2:7400,...
# host.env also has CLUSTER_CONTROL_PLANE=etcd and ETCDCTL_ENDPOINTS (the
# three members), for `exec HOST -- etcdctl ...`. `fail` kills the host's
# member and replica with everything else of it. The mode ("machine" or
# "etcd") is recorded in /run/containerd-migrate-cluster/CLUSTER/control-plane:
# `up` on an existing cluster must be given the same, `status` prints the
# replicas and the members with their health.
#
# Version store. The cluster's remote storage server for versions (the
# ticker's oci:// stores): Debian's distribution registry (docker-registry),
# run by `up` on the machine at the bridge's .1, port 5000 (that address
# only, so that every cluster has its own), reached from every host and
# container; losing a host never loses it. `store` prints the URL to put in
# a container's annotation as is, oci://BRIDGE-IP:5000/checkpoints (a
# repository prefix). Its data is in
# /var/lib/containerd-migrate-cluster/CLUSTER/registry, its configuration,
# pid file and log (registry.yml, registry.pid, registry.log) in
# /run/containerd-migrate-cluster/CLUSTER/; `fail` leaves it, `down` stops it
# and removes its data. `store pause` stops the registry (SIGSTOP) until
# `store resume` (SIGCONT): the kernel still accepts connections, but
# nothing answers, so clients time out as they would with a store beyond a
# dead link.
#
# Failure. `fail HOST` deletes the host's veth first, so that no FIN or RST of
# the dying processes' sockets gets out (a power loss sends none), then kills
# its cgroup and waits until it is empty. Its namespaces and disk stay as they
# were, and `exec` refuses it. A real power loss would also clear /run; here
# it stays, to be looked at.
#
# Partition. `partition HOST` sets the machine's end of the host's veth (the
# one `fail` deletes) down: the host and its containers, on cm0 behind that
# veth's eth0, no longer reach the cluster, nor it them, while every process
# keeps running and every socket stays open; `status` shows the host as
# partitioned, `exec` still works. `heal HOST` sets the link up again; TCP
# connections that have not timed out meanwhile carry on. `up` leaves a
# partition as it is.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$REPO/hack/cluster.sh
CLUSTER_NAME=${CLUSTER_NAME:-local}
FAIL_TIMEOUT=${FAIL_TIMEOUT:-10}
RUN_BASE=/run/containerd-migrate-cluster
DISK_BASE=/var/lib/containerd-migrate-cluster
CGROUP_TOP=containerd-migrate-cluster
MAX_HOSTS=50
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The containerd namespace `exec` points ctr at.
CONTAINERD_NS=default
# What a host may write to, each a bind mount of the same path under its
# disk. A daemon that writes elsewhere needs its directory added here.
PRIVATE_DIRS=(/run /tmp /var/tmp /var/lib/containerd-migrate)
# A host's daemons, started in this order by start_daemon_NAME; with --etcd,
# ETCD_HOST_DAEMONS (etcd on the members only).
HOST_DAEMONS=(snapshotter containerd agent)
ETCD_HOST_DAEMONS=(etcd snapshotter containerd coordinator agent)
# The migrate snapshotter's root and socket, inside every host.
SNAPSHOTTER_ROOT=/var/lib/containerd-migrate/snapshotter
SNAPSHOTTER_SOCK=/run/containerd-migrate-snapshotter/snapshotter.sock
# How long a started snapshotter may take to listen.
SNAPSHOTTER_TIMEOUT=${SNAPSHOTTER_TIMEOUT:-10}
# The control plane (coordinator/README.md#cluster): the coordinator runs on
# the machine at the bridge's address, an agent on every host.
COORDINATOR_PORT=7400
AGENT_PORT=7401
# The bridge in every host over its eth0, which containers' veths join, and
# the host numbers of the cluster's /24 that containers get.
HOST_BRIDGE=cm0
CONTAINER_RANGE=100-249
# How long a started agent may take to show as ready at the coordinator
# (and, with --etcd, a started coordinator replica to listen).
READY_TIMEOUT=${READY_TIMEOUT:-20}
# With --etcd: the hosts of the etcd members, their ports, their data inside
# each, and how long they may take to be healthy.
ETCD_HOSTS=(h1 h2 h3)
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
ETCD_DATA=/var/lib/containerd-migrate/etcd
ETCD_TIMEOUT=${ETCD_TIMEOUT:-20}
# The version store: the registry on the machine at the bridge's address,
# and the repository prefix the store's URL names.
REGISTRY_BIN=docker-registry
REGISTRY_PORT=5000
STORE_REPOSITORY=checkpoints
# How long the started registry may take to answer.
REGISTRY_TIMEOUT=${REGISTRY_TIMEOUT:-10}
CLUSTER_STORE=${CLUSTER_STORE:-registry}

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

usage() {
	die "usage: hack/cluster.sh up [N] [--etcd] | status | exec HOST -- CMD... | fail HOST | partition HOST | heal HOST | store [pause|resume] | down"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ------------------------------------------------------------------- names

cluster_names() {
	# Interface names have at most 15 bytes: cm-CLUSTER-hNN.
	[[ $CLUSTER_NAME =~ ^[a-z][a-z0-9]{0,7}$ ]] ||
		die "bad CLUSTER_NAME '$CLUSTER_NAME': a letter, then up to 7 of a-z 0-9"
	CDIR=$RUN_BASE/$CLUSTER_NAME
	CDISK=$DISK_BASE/$CLUSTER_NAME
	NSDIR=$CDIR/ns
	BRIDGE=cm-$CLUSTER_NAME
	SUBNET_FILE=$CDIR/subnet
	REGISTRY_DIR=$CDISK/registry
	REGISTRY_CONFIG=$CDIR/registry.yml
	REGISTRY_PID=$CDIR/registry.pid
	REGISTRY_LOG=$CDIR/registry.log
	CONTROL_PLANE_FILE=$CDIR/control-plane
}

# Sets the names and paths of host $1.
host_names() {
	H=$1
	if ! [[ $H =~ ^h([1-9][0-9]?)$ ]] || ((BASH_REMATCH[1] > MAX_HOSTS)); then
		die "bad host '$H': h1 to h$MAX_HOSTS"
	fi
	HNUM=${BASH_REMATCH[1]}
	PUB=$CDIR/$H
	DISK=$CDISK/$H
	NETNS=cm-$CLUSTER_NAME-$H
	VETH=$NETNS
	MNT_NS=$NSDIR/$H.mnt
	CGROUP_NS=$NSDIR/$H.cgroup
	SOCK=$PUB/containerd.sock
	ENV_FILE=$PUB/host.env
	STATE_FILE=$PUB/state
	INSTANCE=cluster-$CLUSTER_NAME-$H
}

# The first three octets of the cluster's /24, as recorded by `up`.
subnet_prefix() {
	[[ -f $SUBNET_FILE ]] || die "cluster $CLUSTER_NAME has no network (hack/cluster.sh up)"
	cat "$SUBNET_FILE"
}

host_ip() { echo "$(subnet_prefix).$((10 + HNUM))"; }

# The IP of host $1, whichever host $H is.
ip_of() { echo "$(subnet_prefix).$((10 + ${1#h}))"; }

# The cluster's control plane as `up` recorded it: "machine" (the
# coordinator on the machine) or "etcd" (`up N --etcd`).
control_plane() {
	cat "$CONTROL_PLANE_FILE" 2>/dev/null || echo machine
}

# Whether host $1 runs an etcd member (with --etcd).
etcd_member() {
	local m
	for m in "${ETCD_HOSTS[@]}"; do
		[[ $m == "$1" ]] && return 0
	done
	return 1
}

# The etcd members' client URLs, comma-separated.
etcd_endpoints() {
	local urls=() m
	for m in "${ETCD_HOSTS[@]}"; do
		urls+=("http://$(ip_of "$m"):$ETCD_CLIENT_PORT")
	done
	(
		IFS=,
		echo "${urls[*]}"
	)
}

# The members with their peer URLs, as etcd's --initial-cluster.
etcd_initial_cluster() {
	local peers=() m
	for m in "${ETCD_HOSTS[@]}"; do
		peers+=("$m=http://$(ip_of "$m"):$ETCD_PEER_PORT")
	done
	(
		IFS=,
		echo "${peers[*]}"
	)
}

# The hosts that anything of is left: directories, namespaces, links, cgroups.
known_hosts() {
	{
		find "$CDIR" "$CDISK" -mindepth 1 -maxdepth 1 -name 'h*' -printf '%f\n' 2>/dev/null || true
		ip netns list 2>/dev/null | awk -v p="cm-$CLUSTER_NAME-" 'index($1, p) == 1 { print substr($1, length(p) + 1) }'
		ip -o link show 2>/dev/null | awk -F': ' -v p="cm-$CLUSTER_NAME-" 'index($2, p) == 1 { sub(/@.*/, "", $2); print substr($2, length(p) + 1) }'
		local mp
		for mp in $(cgroup_mounts); do
			find "$mp/$CGROUP_TOP/$CLUSTER_NAME" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null || true
		done
	} | grep -E '^h[1-9][0-9]?$' | sort -u -V
}

# ----------------------------------------------------------------- cgroups

# Mount points of the machine's cgroup hierarchies, v1 and v2.
cgroup_mounts() {
	awk '{ for (i = 7; $i != "-"; i++); if ($(i + 1) == "cgroup" || $(i + 1) == "cgroup2") print $5 }' \
		/proc/self/mountinfo
}

# The cgroup2 hierarchy, whose cgroup.kill ends a host.
unified_mount() {
	awk '{ for (i = 7; $i != "-"; i++); if ($(i + 1) == "cgroup2") { print $5; exit } }' /proc/self/mountinfo
}

# Creates cgroup $1 and its missing parents. A new cgroup v1 cpuset has no
# cpus and mems, and takes no process, until given its parent's.
make_cgroup() {
	local dir=$1 f
	[[ -d $dir ]] && return 0
	make_cgroup "${dir%/*}"
	mkdir "$dir"
	[[ -f $dir/cgroup.controllers ]] && return 0 # cgroup v2 inherits them
	for f in cpuset.cpus cpuset.mems; do
		if [[ -f $dir/$f && -z $(<"$dir/$f") ]]; then
			cat "${dir%/*}/$f" >"$dir/$f"
		fi
	done
}

create_host_cgroups() {
	local mp
	for mp in $(cgroup_mounts); do
		make_cgroup "$mp/$CGROUP_TOP/$CLUSTER_NAME/$H/system"
	done
}

# Moves the calling (sub)shell into host $H's cgroup $1 (relative to the
# host's; "" is the host's own) in every hierarchy.
join_host_cgroup() {
	local mp
	for mp in $(cgroup_mounts); do
		echo "$BASHPID" >"$mp/$CGROUP_TOP/$CLUSTER_NAME/$H${1:+/$1}/cgroup.procs"
	done
}

# Removes host $H's cgroups (empty by then), deepest first.
remove_host_cgroups() {
	local mp dir
	for mp in $(cgroup_mounts); do
		dir=$mp/$CGROUP_TOP/$CLUSTER_NAME/$H
		[[ -d $dir ]] || continue
		find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null ||
			log "could not remove cgroup $dir: $(find "$dir" -name cgroup.procs -exec cat {} + | wc -l) processes in it"
	done
}

# v1 freezer: a frozen task dies of SIGKILL only once thawed.
thaw_host() {
	local mp f
	for mp in $(cgroup_mounts); do
		[[ -d $mp/$CGROUP_TOP/$CLUSTER_NAME/$H ]] || continue
		while IFS= read -r f; do
			[[ $(<"$f") == THAWED ]] || echo THAWED >"$f" 2>/dev/null || true
		done < <(find "$mp/$CGROUP_TOP/$CLUSTER_NAME/$H" -name freezer.state)
	done
}

# Polls until cgroup $1 (v2) and its subtree hold no process.
wait_cgroup_empty() {
	local dir=$1 deadline=$((SECONDS + FAIL_TIMEOUT))
	until grep -qx 'populated 0' "$dir/cgroup.events"; do
		if ((SECONDS >= deadline)); then
			die "processes of $H still alive ${FAIL_TIMEOUT}s after SIGKILL: $(find "$dir" -name cgroup.procs -exec cat {} + | tr '\n' ' ')"
		fi
		sleep 0.02
	done
}

# ------------------------------------------------------------ a host's end

# Cuts host $H's link at once: its end of the veth goes with it.
cut_link() {
	ip link del "$VETH" 2>/dev/null || true
}

# Whether the machine's end of host $H's veth is set down (`partition`).
partitioned() {
	ip -j link show dev "$VETH" 2>/dev/null | jq -e '.[0].flags | index("UP") | not' >/dev/null
}

# Prints the inode of namespace file $1 if it is a live namespace (a bind
# mount of one), so processes in it can be found by their /proc/PID/ns/*.
namespace_inode() {
	mountpoint -q "$1" 2>/dev/null && stat -L -c %i "$1"
	return 0
}

# SIGKILLs every process of host $H: its cgroup subtree at once, then any
# that got into its namespaces some other way than `exec` (a bare nsenter).
kill_host() {
	local uni
	uni=$(unified_mount)/$CGROUP_TOP/$CLUSTER_NAME/$H
	if [[ -d $uni ]]; then
		echo 1 >"$uni/cgroup.kill"
		thaw_host
		wait_cgroup_empty "$uni"
	fi
	local ns inode p
	for ns in mnt:"$MNT_NS" net:"/run/netns/$NETNS"; do
		inode=$(namespace_inode "${ns#*:}")
		[[ -n $inode ]] || continue
		for p in $(stat -L -c '%i %n' /proc/[0-9]*/ns/"${ns%%:*}" 2>/dev/null | awk -v i="$inode" '$1 == i { split($2, f, "/"); print f[3] }'); do
			log "killing $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)): in $H's namespaces but not its cgroup"
			kill -KILL "$p" 2>/dev/null || true
		done
	done
}

# Unmounts everything at or below the given paths on the machine, deepest first.
unmount_under() {
	local prefix mp
	for prefix in "$@"; do
		awk -v p="$prefix" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo |
			sort -r | while read -r mp; do
			umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || log "could not unmount $mp"
		done
	done
}

# Removes all of host $H, whatever state it is in.
remove_host() {
	cut_link
	kill_host
	# The mount namespace goes with its last reference, and with it the
	# container root file systems mounted inside.
	unmount_under "$MNT_NS" "$CGROUP_NS"
	if [[ -e /run/netns/$NETNS ]]; then
		ip netns del "$NETNS" 2>/dev/null || log "could not delete network namespace $NETNS"
	fi
	remove_host_cgroups
	unmount_under "$PUB" "$DISK"
	rm -rf "$PUB" "$DISK" "$MNT_NS" "$CGROUP_NS"
}

# ---------------------------------------------------------- a host's start

# Makes host $H's directories: what it shares with the machine, and its disk.
make_host_dirs() {
	local d
	mkdir -p "$PUB"
	for d in "${PRIVATE_DIRS[@]}"; do
		mkdir -p "$d" "$DISK$d" # the machine's is the mount point
		chmod --reference="$d" "$DISK$d"
	done
	# Where the shared directory is bound inside the host's /run.
	mkdir -p "$DISK$PUB"
}

# The host's eth0 on the cluster's bridge, and its own bridge over eth0
# holding its address, for containers' veths to join.
make_host_network() {
	local ip mac
	ip=$(host_ip)
	ip netns add "$NETNS"
	ip -n "$NETNS" link set lo up
	ip link add "$VETH" type veth peer name eth0 netns "$NETNS"
	ip link set "$VETH" master "$BRIDGE" up
	mac=$(ip -n "$NETNS" -j link show eth0 | jq -r '.[0].address')
	ip -n "$NETNS" link add "$HOST_BRIDGE" type bridge
	# Set, not inherited: a bridge takes its lowest port's MAC otherwise.
	ip -n "$NETNS" link set "$HOST_BRIDGE" address "$mac"
	ip -n "$NETNS" link set eth0 master "$HOST_BRIDGE" up
	ip -n "$NETNS" addr add "$ip/24" dev "$HOST_BRIDGE"
	ip -n "$NETNS" link set "$HOST_BRIDGE" up
}

# The mount and cgroup namespaces: unshare in the host's cgroup (the cgroup
# namespace is rooted where it is made) and network namespace (the new
# sysfs shows the network namespace it is mounted in), which runs
# `cluster.sh _mount-host` inside to lay out the host's file system.
make_host_namespaces() {
	touch "$MNT_NS" "$CGROUP_NS"
	(
		join_host_cgroup ""
		exec nsenter --net="/run/netns/$NETNS" -- \
			unshare --mount="$MNT_NS" --cgroup="$CGROUP_NS" --propagation private -- \
			bash "$SELF" _mount-host "$H"
	) || die "could not make $H's mount and cgroup namespaces"
}

# Whether the copy of the machine's mount at $1 (type $2, from $3) stays in
# a new host. Disk file systems, /proc and /dev stay; /sys, /dev/shm and the
# private directories are replaced; the rest goes: other containers' root
# file systems, tmpfs and proc mounts (a copy would keep them alive after
# their owner unmounts them), namespace files (they would keep the
# namespaces alive).
wanted_in_host() {
	local mp=$1 fstype=$2 source=$3 d
	for d in "${PRIVATE_DIRS[@]}" /sys /dev/shm "$DISK_BASE"; do
		[[ $mp == "$d" || $mp == "$d"/* ]] && return 1
	done
	[[ $mp == / || $mp == /proc || $mp == /proc/* || $mp == /dev || $mp == /dev/* ]] && return 0
	[[ $source == /dev/* && $fstype != overlay ]]
}

# Runs `cluster.sh _mount-host HOST` inside its new namespaces (see the
# header, "Files").
cmd_mount_host() {
	local fields mp fstype opts d
	# The machine's cgroup file systems, to mount again under the new sysfs.
	local cgroup_fs=()
	mapfile -t cgroup_fs < <(awk '{ for (i = 7; $i != "-"; i++);
		if ($5 == "/sys/fs/cgroup" || index($5, "/sys/fs/cgroup/") == 1) print $5, $(i + 1), $6 "," $(i + 3) }' \
		/proc/self/mountinfo)
	# The shared directory is bound into the host's disk before the
	# machine's mounts go: where /run is a file system of its own (a tmpfs,
	# as in the soft-dirty VM of hack/softdirty-vm.sh), it goes with them.
	mount --bind "$PUB" "$DISK$PUB"
	local drop=()
	local source
	while read -r mp fstype source; do
		# mountinfo escapes blanks as \040; printf %b reads octal as \0040.
		# (-v: no subshell per mount, which is slow under emulation.)
		printf -v mp '%b' "${mp//\\/\\0}"
		[[ $mp == "$DISK$PUB" ]] && continue
		wanted_in_host "$mp" "$fstype" "$source" || drop+=("$mp")
	done < <(awk '{ for (i = 7; $i != "-"; i++); print $5, $(i + 1), $(i + 2) }' /proc/self/mountinfo)
	# Deepest first; lazily, as nothing in here uses them.
	if [[ ${#drop[@]} -gt 0 ]]; then
		printf '%s\n' "${drop[@]}" | sort -r | while read -r mp; do
			umount -l "$mp" 2>/dev/null || true
		done
	fi

	for d in "${PRIVATE_DIRS[@]}"; do
		mount --rbind "$DISK$d" "$d"
	done
	umount "$DISK$PUB" # /run has its copy
	# Every host's disk out of sight, this one's too: its directories are
	# at their usual paths now.
	mount -t tmpfs -o ro,mode=0755,size=4k tmpfs "$DISK_BASE"
	mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm
	mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
	for fields in "${cgroup_fs[@]}"; do
		read -r mp fstype opts <<<"$fields"
		mkdir -p "$mp"
		mount -t "$fstype" -o "$opts" "$fstype" "$mp"
	done
	# This mount only: the host's own directories are mounts of their own
	# and stay writable.
	mount -o remount,bind,ro /
}

# ------------------------------------------------------- a host's daemons

# Runs CMD... in host $H: in its cgroup (the leaf system) and namespaces.
enter() {
	join_host_cgroup system
	exec 9>&- # the lock of `up` stays with `up`
	exec nsenter --net="/run/netns/$NETNS" --mount="$MNT_NS" --cgroup="$CGROUP_NS" -- "$@"
}

# The environment `exec` and the host's daemons get: host.env and PATH,
# with the shim and migratectl first.
host_env() {
	local shim_dir=${SHIM_DIR:-$REPO/target/release}
	grep -E '^[A-Z][A-Z0-9_]*=' "$ENV_FILE"
	echo "CLUSTER_HOST_ENV=$ENV_FILE"
	echo "PATH=$shim_dir:$SYSTEM_PATH"
	echo "SHIM_DIR=$shim_dir"
}

# Starts daemon $1 of host $H through start_daemon_$1, inside the host.
start_daemon() {
	local env=()
	mapfile -t env < <(host_env)
	("start_daemon_$1" "${env[@]}") || die "could not start $1 on $H"
}

# containerd: hack/containerd.sh's instance, its socket in the directory the
# machine shares; returns once containerd answers.
start_daemon_containerd() {
	enter env "$@" INSTANCE_SOCKET="$SOCK" SNAPSHOTTER_SOCKET="$SNAPSHOTTER_SOCK" bash "$REPO/hack/containerd.sh" start "$INSTANCE" >/dev/null
}

# The migrate snapshotter, which containerd needs listening when it starts
# (a proxy plugin is connected to at its first use, but fails then if
# absent); its log in the directory the machine shares. Returns once its
# socket is there.
start_daemon_snapshotter() {
	# shellcheck disable=SC2016 # the inner shell expands them
	enter env "$@" sh -c '
		log=$1 sock=$2 timeout=$3
		shift 3
		rm -f "$sock"
		setsid "$@" </dev/null >>"$log" 2>&1 &
		deadline=$(($(date +%s) + timeout))
		while [ ! -S "$sock" ]; do
			kill -0 $! 2>/dev/null || { echo "the snapshotter exited; see $log" >&2; exit 1; }
			[ "$(date +%s)" -lt "$deadline" ] || { echo "no socket $sock after ${timeout}s; see $log" >&2; exit 1; }
			sleep 0.05
		done' sh "$PUB/snapshotter.log" "$SNAPSHOTTER_SOCK" "$SNAPSHOTTER_TIMEOUT" \
		containerd-snapshotter-migrate --root "$SNAPSHOTTER_ROOT" --socket "$SNAPSHOTTER_SOCK"
}

# The host agent: registers with the coordinator and beats; its log in the
# directory the machine shares. Returns once the coordinator has it ready.
start_daemon_agent() {
	host_tls
	# In a subshell: enter execs.
	# shellcheck disable=SC2016 # the inner shell expands them
	(enter env "$@" setsid sh -c 'exec "$@" </dev/null >>"$0" 2>&1 &' "$PUB/agent.log" \
		migrate-agent --name "$H" --listen "$(host_ip):$AGENT_PORT" \
		--coordinator "$(coordinator_url)" --tls-dir "$PUB/tls" --bridge "$HOST_BRIDGE" \
		--failpoints "$PUB/failpoints")
	wait_host_ready
}

# Runs CMD... in host $H in the background, detached, its output appended
# to log $1 and its pid (the machine's: a host has no PID namespace of its
# own) written to file $2.
start_in_host() {
	local log=$1 pidfile=$2
	shift 2
	# shellcheck disable=SC2016 # the inner shell expands them
	(enter setsid sh -c 'log=$1 pidfile=$2; shift 2; "$@" </dev/null >>"$log" 2>&1 & echo $! >"$pidfile"' \
		sh "$log" "$pidfile" "$@")
}

# Whether the process in pid file $1 runs.
pid_alive() {
	local pid
	pid=$(cat "$1" 2>/dev/null || true)
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# An etcd member (--etcd), on the hosts of ETCD_HOSTS only: named as the
# host, its data on the host's disk, plain HTTP at the host's address; its
# log etcd.log in the directory the machine shares. Does not wait: a member
# answers only once a quorum of them runs (wait_etcd).
start_daemon_etcd() {
	etcd_member "$H" || return 0
	local ip
	ip=$(host_ip)
	start_in_host "$PUB/etcd.log" "$PUB/etcd.pid" env "$@" \
		etcd --name "$H" --data-dir "$ETCD_DATA" \
		--listen-client-urls "http://$ip:$ETCD_CLIENT_PORT" --advertise-client-urls "http://$ip:$ETCD_CLIENT_PORT" \
		--listen-peer-urls "http://$ip:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://$ip:$ETCD_PEER_PORT" \
		--initial-cluster "$(etcd_initial_cluster)" --initial-cluster-state new \
		--initial-cluster-token "cm-$CLUSTER_NAME" --heartbeat-interval 50 --election-timeout 500 \
		--logger zap --log-outputs stderr
}

# Whether the etcd member at client URL $1 says it is healthy (it has a
# leader and commits), asked from the machine.
etcd_healthy() {
	ETCDCTL_API=3 etcdctl --endpoints "$1" --dial-timeout 1s --command-timeout 2s \
		endpoint health >/dev/null 2>&1
}

# Waits until every etcd member is healthy, ETCD_TIMEOUT seconds at most
# from now. Sets $H and the rest to the last member's.
wait_etcd() {
	local deadline=$((SECONDS + ETCD_TIMEOUT)) m url
	for m in "${ETCD_HOSTS[@]}"; do
		host_names "$m"
		url=http://$(host_ip):$ETCD_CLIENT_PORT
		until etcd_healthy "$url"; do
			pid_alive "$PUB/etcd.pid" || die "etcd on $H exited; see $PUB/etcd.log"
			((SECONDS < deadline)) ||
				die "etcd on $H ($url) is not healthy after ${ETCD_TIMEOUT}s (ETCD_TIMEOUT); see etcd.log in $CDIR/h1, h2 and h3"
			sleep 0.1
		done
	done
}

# A coordinator replica (--etcd): its state in the etcd members, served at
# the host's address with a certificate of its own, coordinator-HOST, in
# the host's TLS directory; its log coordinator.log in the directory the
# machine shares. Returns once it listens.
start_daemon_coordinator() {
	local ip
	ip=$(host_ip)
	install_host_cert "coordinator-$H"
	start_in_host "$PUB/coordinator.log" "$PUB/coordinator.pid" env "$@" \
		migrate-coordinator --store etcd --etcd-endpoints "$(etcd_endpoints)" --name "$H" \
		--listen "$ip:$COORDINATOR_PORT" --advertise "https://$ip:$COORDINATOR_PORT" \
		--tls-dir "$PUB/tls" --tls-name "coordinator-$H" \
		--container-subnet "$(subnet_prefix).0/24" --container-range "$CONTAINER_RANGE"
	local deadline=$((SECONDS + READY_TIMEOUT))
	until replica_listens; do
		pid_alive "$PUB/coordinator.pid" || die "the coordinator replica on $H exited; see $PUB/coordinator.log"
		((SECONDS < deadline)) ||
			die "the coordinator replica on $H does not listen on $ip:$COORDINATOR_PORT after ${READY_TIMEOUT}s; see $PUB/coordinator.log"
		sleep 0.05
	done
}

# Whether host $H's coordinator replica runs and listens on its port, as
# its network namespace's /proc/PID/net/tcp shows (state 0A: LISTEN).
replica_listens() {
	local pid port
	pid=$(cat "$PUB/coordinator.pid" 2>/dev/null || true)
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
	port=$(printf '%04X' "$COORDINATOR_PORT")
	awk -v p=":$port" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
		"/proc/$pid/net/tcp" "/proc/$pid/net/tcp6" 2>/dev/null
}

# Host $H's TLS directory, shared with it alone: the CA's certificate and
# its own (never the CA's key, which stays in $CDIR/tls on the machine),
# valid for its name and its IP (for peers that dial the address, as
# CRIU's TLS clients do).
host_tls() {
	install_host_cert "$H"
}

# Certificate $1 of the cluster's CA, valid for name $1 and host $H's IP,
# issued unless it was, into host $H's TLS directory with the CA's
# certificate.
install_host_cert() {
	local name=$1 mc
	mc=$(bin_dir)/migratectl
	[[ -f $CDIR/tls/$name.pem ]] || "$mc" cluster cert --dir "$CDIR/tls" --ip "$(host_ip)" "$name" >/dev/null
	mkdir -p "$PUB/tls"
	install -m 0644 "$CDIR/tls/ca.pem" "$CDIR/tls/$name.pem" "$PUB/tls/"
	install -m 0600 "$CDIR/tls/$name-key.pem" "$PUB/tls/"
}

# Polls the coordinator, as the machine's migratectl, until host $H is ready.
wait_host_ready() {
	local deadline=$((SECONDS + READY_TIMEOUT)) state
	while ((SECONDS < deadline)); do
		state=$(machine_migratectl hosts --json 2>/dev/null |
			jq -r --arg h "$H" '.[] | select(.name == $h) | .state' 2>/dev/null || true)
		[[ $state == ready ]] && return 0
		sleep 0.1
	done
	die "$H's agent is not ready at the coordinator after ${READY_TIMEOUT}s; see $PUB/agent.log and $CDIR/coordinator.log"
}

# migratectl on the machine, with the cluster's client certificate.
machine_migratectl() {
	MIGRATE_COORDINATOR=$(coordinator_url) MIGRATE_TLS_DIR=$CDIR/tls MIGRATE_TLS_NAME=migratectl \
		"$(bin_dir)/migratectl" "$@"
}

# The coordinator's URL; with --etcd every host's replica's,
# comma-separated.
coordinator_url() {
	if [[ $(control_plane) == etcd ]]; then
		local urls=() h
		for h in $(known_hosts); do
			urls+=("https://$(ip_of "$h"):$COORDINATOR_PORT")
		done
		(
			IFS=,
			echo "${urls[*]}"
		)
	else
		echo "https://$(subnet_prefix).1:$COORDINATOR_PORT"
	fi
}

bin_dir() { echo "${SHIM_DIR:-$REPO/target/release}"; }

# Refuses a checkout (or binary directory) under one of PRIVATE_DIRS: each
# host replaces those with its own, so its daemons would not find this
# checkout's scripts and binaries there.
check_visible_in_hosts() {
	local path d
	for path in "$REPO" "$(bin_dir)"; do
		for d in "${PRIVATE_DIRS[@]}"; do
			[[ $path == "$d" || $path == "$d"/* ]] &&
				die "$path is under $d, which every host of a local cluster replaces with a directory of its own, so the hosts cannot run this checkout's scripts and binaries: use a checkout elsewhere (e.g. under /root or /srv)"
		done
	done
	return 0
}

# The cluster's CA and the machine's certificates (without --etcd the
# coordinator's, for the bridge's address; migratectl's), made once.
make_cluster_tls() {
	local tls=$CDIR/tls mc
	mc=$(bin_dir)/migratectl
	[[ -x $mc && -x $(bin_dir)/migrate-coordinator && -x $(bin_dir)/migrate-agent &&
		-x $(bin_dir)/containerd-snapshotter-migrate ]] ||
		die "no migratectl, migrate-coordinator, migrate-agent and containerd-snapshotter-migrate in $(bin_dir): cargo build --release --workspace"
	[[ -f $tls/ca.pem ]] || "$mc" cluster init --dir "$tls" >/dev/null
	if [[ $(control_plane) == machine ]]; then
		[[ -f $tls/coordinator.pem ]] || "$mc" cluster cert --dir "$tls" --ip "$(subnet_prefix).1" coordinator >/dev/null
	fi
	[[ -f $tls/migratectl.pem ]] || "$mc" cluster cert --dir "$tls" migratectl >/dev/null
}

# The coordinator on the machine (without --etcd), unless it runs. Its
# state and log are in $CDIR.
start_coordinator() {
	local tls=$CDIR/tls pid
	pid=$(cat "$CDIR/coordinator.pid" 2>/dev/null || true)
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		return 0
	fi
	# Without the lock of `up` (fd 9), which it would otherwise hold for good.
	setsid "$(bin_dir)/migrate-coordinator" --listen "$(subnet_prefix).1:$COORDINATOR_PORT" --tls-dir "$tls" \
		--state "$CDIR/coordinator.redb" \
		--container-subnet "$(subnet_prefix).0/24" --container-range "$CONTAINER_RANGE" </dev/null >>"$CDIR/coordinator.log" 2>&1 9>&- &
	echo $! >"$CDIR/coordinator.pid"
}

stop_coordinator() {
	local pid
	pid=$(cat "$CDIR/coordinator.pid" 2>/dev/null || true)
	[[ -n $pid ]] || return 0
	kill -KILL "$pid" 2>/dev/null || true
	rm -f "$CDIR/coordinator.pid"
}

store_url() { echo "oci://$(subnet_prefix).1:$REGISTRY_PORT/$STORE_REPOSITORY"; }

# The processes of the cluster's registry: docker-registry with its
# configuration, whether the pid file names them or a crashed run lost it.
registry_pids() {
	local f args
	for f in /proc/[0-9]*/cmdline; do
		# Builtins only: a grep of the command lines would find itself.
		mapfile -d '' -t args <"$f" 2>/dev/null || continue
		[[ ${#args[@]} -ge 3 && ${args[0]##*/} == "$REGISTRY_BIN" && ${args[2]} == "$REGISTRY_CONFIG" ]] || continue
		f=${f#/proc/}
		echo "${f%/cmdline}"
	done
	return 0
}

# Whether the registry at $1 answers GET /v2/ with 200 (bash's /dev/tcp:
# hack/setup.sh installs no HTTP client).
registry_answers() {
	# shellcheck disable=SC2016 # the inner shell expands them
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1" &&
		printf "GET /v2/ HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$0" "$1" >&3 &&
		read -r _ code _ <&3 && [[ $code == 200 ]]' "$1" "$REGISTRY_PORT" 2>/dev/null
}

# The version store, unless it runs: the registry in the machine's network
# namespace at the bridge's address, its data in $REGISTRY_DIR; returns
# once it answers.
start_registry() {
	local ip bin pid deadline
	[[ -n $(registry_pids) ]] && return 0
	ip=$(subnet_prefix).1
	bin=$(command -v "$REGISTRY_BIN")
	mkdir -p "$REGISTRY_DIR"
	cat >"$REGISTRY_CONFIG" <<-EOF
		# Written by hack/cluster.sh: the version store of cluster $CLUSTER_NAME.
		version: 0.1
		log:
		  accesslog:
		    disabled: true
		  level: warn
		storage:
		  filesystem:
		    rootdirectory: $REGISTRY_DIR
		  delete:
		    enabled: true
		http:
		  addr: $ip:$REGISTRY_PORT
	EOF
	# A clean environment: the registry reads REGISTRY_* variables as
	# configuration. Without the lock of `up` (fd 9).
	setsid env -i PATH="$SYSTEM_PATH" "$bin" serve "$REGISTRY_CONFIG" </dev/null >>"$REGISTRY_LOG" 2>&1 9>&- &
	pid=$!
	echo "$pid" >"$REGISTRY_PID"
	deadline=$((SECONDS + REGISTRY_TIMEOUT))
	until registry_answers "$ip"; do
		kill -0 "$pid" 2>/dev/null || die "the registry exited; see $REGISTRY_LOG"
		((SECONDS < deadline)) ||
			die "the registry does not answer http://$ip:$REGISTRY_PORT/v2/ after ${REGISTRY_TIMEOUT}s; see $REGISTRY_LOG"
		sleep 0.05
	done
}

# Stops the registry (paused or not) and waits until it is gone, so that its
# data can go.
stop_registry() {
	local pids deadline=$((SECONDS + FAIL_TIMEOUT))
	while mapfile -t pids < <(registry_pids) && [[ ${#pids[@]} -gt 0 ]]; do
		((SECONDS < deadline)) || die "the registry is still alive ${FAIL_TIMEOUT}s after SIGKILL: ${pids[*]}"
		# Again each time: a process found by its command line may have
		# been in the middle of starting, or found late.
		kill -KILL "${pids[@]}" 2>/dev/null || true
		sleep 0.02
	done
	rm -f "$REGISTRY_PID"
}

# What host $H's daemons and `exec` get in their environment, and may read
# again from the file. KEY=VALUE lines, no quoting, so that a shell
# (set -a; .) and any parser read it alike.
write_host_env() {
	local hosts=() h all
	for h in $(known_hosts); do
		hosts+=("$h=$(subnet_prefix).$((10 + ${h#h}))")
	done
	all=$(
		IFS=,
		echo "${hosts[*]}"
	)
	cat >"$ENV_FILE.tmp" <<-EOF
		# Written by hack/cluster.sh: host $H of cluster $CLUSTER_NAME.
		CLUSTER_NAME=$CLUSTER_NAME
		CLUSTER_HOST=$H
		CLUSTER_HOST_IP=$(host_ip)
		CLUSTER_SUBNET=$(subnet_prefix).0/24
		CLUSTER_BRIDGE=$HOST_BRIDGE
		CLUSTER_CONTAINER_RANGE=$CONTAINER_RANGE
		CLUSTER_HOSTS=$all
		CONTAINERD_ADDRESS=$SOCK
		CONTAINERD_NAMESPACE=$CONTAINERD_NS
		MIGRATE_COORDINATOR=$(coordinator_url)
		MIGRATE_TLS_DIR=$PUB/tls
		MIGRATE_TLS_NAME=$H
	EOF
	if [[ $(control_plane) == etcd ]]; then
		cat >>"$ENV_FILE.tmp" <<-EOF
			CLUSTER_CONTROL_PLANE=etcd
			ETCDCTL_ENDPOINTS=$(etcd_endpoints)
		EOF
	fi
	mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# Builds host $H from nothing but its daemons.
make_host_base() {
	make_host_dirs
	echo building >"$STATE_FILE"
	create_host_cgroups
	make_host_network
	make_host_namespaces
	write_host_env
}

# Builds host $H from nothing.
make_host() {
	make_host_base
	local d
	for d in "${HOST_DAEMONS[@]}"; do
		start_daemon "$d"
	done
	echo up >"$STATE_FILE"
}

# With --etcd, builds hosts $@ (of h1..hN, the others up): each from
# nothing but its daemons, then daemon by daemon of ETCD_HOST_DAEMONS on
# every one of them, so that the three etcd members run together (each
# waits for a quorum) and are healthy before any coordinator replica starts,
# and every replica runs before any agent, which is given them all.
make_hosts_etcd() {
	local h d m kept=() anew=()
	for m in "${ETCD_HOSTS[@]}"; do
		if [[ " $* " == *" $m "* ]]; then anew+=("$m"); else kept+=("$m"); fi
	done
	if [[ ${#anew[@]} -gt 0 && ${#kept[@]} -gt 0 ]]; then
		die "${anew[*]} must be built anew, but the etcd members on ${kept[*]} hold the cluster's state, which a new member cannot join: hack/cluster.sh down, then up"
	fi
	for h in "$@"; do
		host_names "$h"
		remove_host
		make_host_base
	done
	# Every host's host.env names all the replicas now.
	for h in $(known_hosts); do
		host_names "$h"
		write_host_env
	done
	for d in "${ETCD_HOST_DAEMONS[@]}"; do
		for h in "$@"; do
			host_names "$h"
			start_daemon "$d"
		done
		[[ $d == etcd ]] && wait_etcd
	done
	for h in "$@"; do
		host_names "$h"
		echo up >"$STATE_FILE"
	done
}

host_state() {
	cat "$STATE_FILE" 2>/dev/null || echo missing
}

# ---------------------------------------------------------------- commands

need_root() {
	[[ $(id -u) -eq 0 ]] || die "run as root"
}

# What `up` needs; $1 is the control plane, machine or etcd.
need_tools() {
	local t
	for t in ip nsenter unshare mountpoint flock iptables containerd ctr runc jq; do
		command -v "$t" >/dev/null || die "$t is not installed (hack/setup.sh)"
	done
	if [[ $1 == etcd ]]; then
		for t in etcd etcdctl; do
			command -v "$t" >/dev/null ||
				die "$t is not installed: run hack/setup.sh (Debian's etcd-server), or up without --etcd"
		done
	fi
	[[ -n $(unified_mount) ]] ||
		die "no cgroup2 hierarchy mounted: a host's processes are killed with cgroup.kill (cgroup v2 or hybrid)"
	case $CLUSTER_STORE in
	registry)
		command -v "$REGISTRY_BIN" >/dev/null ||
			die "$REGISTRY_BIN (Debian's distribution registry, the cluster's version store) is not installed: run hack/setup.sh (or CLUSTER_STORE=none for a cluster without a store)"
		;;
	none) ;;
	*) die "CLUSTER_STORE=$CLUSTER_STORE: use registry or none" ;;
	esac
}

# One command that changes clusters at a time, on the whole machine: the
# subnets of clusters are chosen against each other.
lock() {
	mkdir -p "$RUN_BASE"
	exec 9>"$RUN_BASE/.lock"
	flock -w 120 9 || die "another hack/cluster.sh holds $RUN_BASE/.lock"
}

subnet_in_use() {
	ip -4 -o addr show | awk '{ print $4 }' | grep -q "^${1//./\\.}\." ||
		ip -4 route show | grep -q "^${1//./\\.}\."
}

# Records the cluster's /24 (its first three octets) in $SUBNET_FILE.
choose_subnet() {
	local prefix x
	if [[ -n ${CLUSTER_SUBNET:-} ]]; then
		[[ $CLUSTER_SUBNET =~ ^([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})\.0/24$ ]] ||
			die "CLUSTER_SUBNET '$CLUSTER_SUBNET' is not a /24 such as 10.88.7.0/24"
		prefix=${BASH_REMATCH[1]}
		subnet_in_use "$prefix" && die "CLUSTER_SUBNET $CLUSTER_SUBNET is in use on this machine (ip -4 addr, ip -4 route)"
	else
		for x in $(seq 0 255); do
			subnet_in_use "10.88.$x" || {
				prefix=10.88.$x
				break
			}
		done
		[[ -n ${prefix:-} ]] || die "every /24 of 10.88.0.0/16 is in use; set CLUSTER_SUBNET"
	fi
	echo "$prefix" >"$SUBNET_FILE"
}

# The bridge, and the namespace files' directory: a private mount, as a
# bind of a mount namespace file must not propagate into that namespace.
make_cluster() {
	mkdir -p "$CDIR" "$CDISK" "$NSDIR"
	[[ -f $SUBNET_FILE ]] || choose_subnet
	if [[ -n ${CLUSTER_SUBNET:-} && $CLUSTER_SUBNET != "$(subnet_prefix).0/24" ]]; then
		die "cluster $CLUSTER_NAME runs on $(subnet_prefix).0/24, not CLUSTER_SUBNET $CLUSTER_SUBNET: hack/cluster.sh down first"
	fi
	if ! mountpoint -q "$NSDIR"; then
		mount --bind "$NSDIR" "$NSDIR"
		mount --make-private "$NSDIR"
	fi
	ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
	# A MAC of its own, set, not inherited: a bridge otherwise takes its
	# lowest port's, and losing that host (`fail`) would move the
	# coordinator's and the store's address to another MAC behind every
	# host's ARP cache. 02:42 and the IP's bytes, as containers' MACs.
	local a b c
	IFS=. read -r a b c <<<"$(subnet_prefix)"
	ip link set "$BRIDGE" address "$(printf '02:42:%02x:%02x:%02x:01' "$a" "$b" "$c")"
	ip addr replace "$(subnet_prefix).1/24" dev "$BRIDGE"
	ip link set "$BRIDGE" up
	# With br_netfilter, bridged frames pass the FORWARD chain, which Docker
	# sets to DROP.
	iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null ||
		iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
}

cmd_up() {
	local n="" plane=machine arg start h have todo=()
	check_visible_in_hosts
	for arg in "$@"; do
		case $arg in
		--etcd) plane=etcd ;;
		*)
			[[ -z $n ]] || usage
			n=$arg
			;;
		esac
	done
	n=${n:-2}
	if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > MAX_HOSTS)); then
		die "bad host count '$n': 1 to $MAX_HOSTS"
	fi
	if [[ $plane == etcd ]] && ((n < ${#ETCD_HOSTS[@]})); then
		die "up --etcd needs 3 hosts or more (etcd members on ${ETCD_HOSTS[*]}, of which two are a quorum): hack/cluster.sh up 3 --etcd"
	fi
	need_root
	need_tools "$plane"
	lock
	start=$(now_ms)
	# What a crashed run left of a cluster that has no directory any more.
	[[ -d $CDIR ]] || remove_cluster
	for h in $(known_hosts); do
		((${h#h} <= n)) || die "cluster $CLUSTER_NAME has host $h, beyond h$n: hack/cluster.sh down first"
	done
	# The control plane is the cluster's: a cluster from before the file was
	# recorded has the machine's.
	have=""
	if [[ -f $CONTROL_PLANE_FILE ]]; then
		have=$(control_plane)
	elif [[ -n $(known_hosts) ]]; then
		have=machine
	fi
	if [[ -n $have && $have != "$plane" ]]; then
		if [[ $have == etcd ]]; then
			die "cluster $CLUSTER_NAME runs its control plane on etcd: hack/cluster.sh up $n --etcd, or down first"
		fi
		die "cluster $CLUSTER_NAME runs its coordinator on the machine: hack/cluster.sh up $n (without --etcd), or down first"
	fi
	make_cluster
	echo "$plane" >"$CONTROL_PLANE_FILE"
	[[ $CLUSTER_STORE == none ]] || start_registry
	make_cluster_tls
	[[ $plane == etcd ]] || start_coordinator
	for h in $(seq -f 'h%g' 1 "$n"); do
		host_names "$h"
		case $(host_state) in
		up)
			timeout 5 ctr --address "$SOCK" version >/dev/null 2>&1 ||
				die "$H is up but its containerd does not answer on $SOCK: hack/cluster.sh down, then up"
			if [[ $plane == etcd ]] && ! replica_listens; then
				die "$H is up but its coordinator replica does not listen (see $PUB/coordinator.log): hack/cluster.sh down, then up"
			fi
			;;
		failed) die "$H has failed (hack/cluster.sh fail); hack/cluster.sh down, then up" ;;
		*)
			if [[ $plane == etcd ]]; then
				todo+=("$H")
			else
				remove_host
				make_host
			fi
			;;
		esac
	done
	# Also when every host was up: it checks that the members are healthy.
	[[ $plane == machine ]] || make_hosts_etcd "${todo[@]}"
	for h in $(known_hosts); do
		host_names "$h"
		write_host_env
	done
	summary
	log "cluster $CLUSTER_NAME up in $(($(now_ms) - start)) ms"
}

summary() {
	local h
	printf 'cluster %s: bridge %s %s.1/24, containers .%s on each host'"'"'s bridge %s\n' \
		"$CLUSTER_NAME" "$BRIDGE" "$(subnet_prefix)" "${CONTAINER_RANGE/-/ to .}" "$HOST_BRIDGE"
	printf '%-5s %-11s %-15s %s\n' HOST STATE IP "CONTAINERD SOCKET"
	for h in $(known_hosts); do
		host_names "$h"
		printf '%-5s %-11s %-15s %s\n' "$H" "$(shown_state)" "$(host_ip)" "$SOCK"
	done
	if [[ $(control_plane) == etcd ]]; then
		summary_etcd
	else
		printf 'coordinator %s; on the machine: MIGRATE_COORDINATOR=%s MIGRATE_TLS_DIR=%s MIGRATE_TLS_NAME=migratectl\n' \
			"$(coordinator_url)" "$(coordinator_url)" "$CDIR/tls"
	fi
	printf 'store: %s\n' "$(store_url)"
	printf 'on a host: hack/cluster.sh exec HOST -- ctr ... | migratectl hosts  (CLUSTER_NAME=%s)\n' "$CLUSTER_NAME"
}

# With --etcd: every host's coordinator replica and etcd member, as the
# machine sees them (one `etcdctl endpoint health` of all three, 1 s at most).
summary_etcd() {
	local health h url replica member
	health=$(ETCDCTL_API=3 etcdctl --endpoints "$(etcd_endpoints)" --dial-timeout 1s --command-timeout 1s \
		endpoint health -w json 2>/dev/null || true)
	printf 'control plane: a coordinator replica on every host, its state in etcd on %s; logs coordinator.log and etcd.log in %s/HOST\n' \
		"${ETCD_HOSTS[*]}" "$CDIR"
	printf '%-5s %-26s %-10s %-24s %s\n' HOST COORDINATOR REPLICA ETCD MEMBER
	for h in $(known_hosts); do
		host_names "$h"
		if replica_listens; then
			replica=listening
		elif pid_alive "$PUB/coordinator.pid"; then
			replica=running
		else
			replica=down
		fi
		url=- member=""
		if etcd_member "$H"; then
			url=http://$(host_ip):$ETCD_CLIENT_PORT
			member=$(jq -r --arg u "$url" '.[] | select(.endpoint == $u) | if .health then "healthy" else "unhealthy" end' \
				<<<"$health" 2>/dev/null || true)
			member=${member:-unknown}
		fi
		printf '%-5s %-26s %-10s %-24s %s\n' "$H" "https://$(host_ip):$COORDINATOR_PORT" "$replica" "$url" "$member"
	done
	printf 'coordinator replicas %s; on the machine: MIGRATE_COORDINATOR=%s MIGRATE_TLS_DIR=%s MIGRATE_TLS_NAME=migratectl\n' \
		"$(coordinator_url)" "$(coordinator_url)" "$CDIR/tls"
	printf 'etcd %s (plain HTTP); on the machine: ETCDCTL_ENDPOINTS=%s\n' "$(etcd_endpoints)" "$(etcd_endpoints)"
}

# Host $H's state for the summary: an up host cut off by `partition` shows
# as partitioned.
shown_state() {
	local state
	state=$(host_state)
	if [[ $state == up ]] && partitioned; then
		state=partitioned
	fi
	echo "$state"
}

cmd_status() {
	[[ -d $CDIR ]] || die "no cluster $CLUSTER_NAME (hack/cluster.sh up)"
	summary
}

# The host must be up to run anything: a failed one has no processes left.
need_host_up() {
	local state
	state=$(host_state)
	case $state in
	up) ;;
	failed) die "$H has failed (hack/cluster.sh fail $H): nothing runs there any more" ;;
	missing) die "no host $H in cluster $CLUSTER_NAME (hack/cluster.sh up)" ;;
	*) die "$H is not up but $state (hack/cluster.sh up builds it again)" ;;
	esac
}

cmd_exec() {
	[[ $# -ge 1 ]] || usage
	host_names "$1"
	shift
	[[ ${1:-} == -- ]] && shift
	[[ $# -ge 1 ]] || usage
	need_root
	need_host_up
	local env=()
	mapfile -t env < <(host_env)
	# In the working directory if the host has it (the machine's files are
	# there, read-only; its private directories are not), else in /.
	# shellcheck disable=SC2016 # the inner shell expands them
	enter env "${env[@]}" sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' sh "$PWD" "$@"
}

cmd_fail() {
	[[ $# -eq 1 ]] || usage
	host_names "$1"
	need_root
	lock
	need_host_up
	local start
	start=$(now_ms)
	cut_link
	kill_host
	echo failed >"$STATE_FILE"
	log "$H failed: link cut, every process killed, in $(($(now_ms) - start)) ms; its disk stays at $DISK"
}

# `partition HOST` and `heal HOST`: the machine's end of its veth down or
# up. No lock: one change of a link of this cluster's, which `up` and
# `down` of other clusters (holding the lock for long) do not touch.
cmd_partition() {
	[[ $# -eq 1 ]] || usage
	host_names "$1"
	need_root
	need_host_up
	ip link show dev "$VETH" >/dev/null 2>&1 || die "$H has no link $VETH (hack/cluster.sh down, then up)"
	ip link set dev "$VETH" down
	log "$H partitioned: $VETH down; its processes and containers run on (hack/cluster.sh heal $H)"
}

cmd_heal() {
	[[ $# -eq 1 ]] || usage
	host_names "$1"
	need_root
	need_host_up
	ip link show dev "$VETH" >/dev/null 2>&1 || die "$H has no link $VETH (hack/cluster.sh down, then up)"
	ip link set dev "$VETH" up
	log "$H healed: $VETH up"
}

# `store`: the version store's URL; `store pause|resume`: SIGSTOP or SIGCONT
# to the registry (no lock, as for `partition`).
cmd_store() {
	[[ $# -le 1 ]] || usage
	local pids=()
	mapfile -t pids < <(registry_pids)
	case ${1:-} in
	"")
		store_url
		[[ ${#pids[@]} -gt 0 ]] || log "no registry runs for cluster $CLUSTER_NAME (hack/cluster.sh up)"
		;;
	pause | resume)
		need_root
		[[ ${#pids[@]} -gt 0 ]] || die "no registry runs for cluster $CLUSTER_NAME (hack/cluster.sh up)"
		if [[ $1 == pause ]]; then
			kill -STOP "${pids[@]}"
			log "store $(store_url) paused: connections are accepted, nothing answers (hack/cluster.sh store resume)"
		else
			kill -CONT "${pids[@]}"
			log "store $(store_url) answers again"
		fi
		;;
	*) usage ;;
	esac
}

remove_cluster() {
	local h mp
	stop_registry
	stop_coordinator
	for h in $(known_hosts); do
		host_names "$h"
		remove_host
	done
	ip link del "$BRIDGE" 2>/dev/null || true
	while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
	unmount_under "$CDIR" "$CDISK"
	rm -rf "$CDIR" "$CDISK"
	for mp in $(cgroup_mounts); do
		rmdir "$mp/$CGROUP_TOP/$CLUSTER_NAME" "$mp/$CGROUP_TOP" 2>/dev/null || true
	done
	rmdir "$DISK_BASE" 2>/dev/null || true
}

cmd_down() {
	[[ $# -eq 0 ]] || usage
	need_root
	lock
	local start
	start=$(now_ms)
	remove_cluster
	log "cluster $CLUSTER_NAME down in $(($(now_ms) - start)) ms"
}

main() {
	[[ $# -ge 1 ]] || usage
	local cmd=$1
	shift
	cluster_names
	case $cmd in
	up) cmd_up "$@" ;;
	status) cmd_status "$@" ;;
	exec) cmd_exec "$@" ;;
	fail) cmd_fail "$@" ;;
	partition) cmd_partition "$@" ;;
	heal) cmd_heal "$@" ;;
	store) cmd_store "$@" ;;
	down) cmd_down "$@" ;;
	_mount-host) # run by make_host_namespaces, inside the new namespaces
		host_names "$1"
		cmd_mount_host
		;;
	*) usage ;;
	esac
}

main "$@"
