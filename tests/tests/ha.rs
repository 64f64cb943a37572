//! High availability (issue 16), by injecting faults into a local cluster
//! (hack/cluster.sh) and checking, each time, that no state is lost beyond
//! the last version and that exactly one copy of each container runs.
//!
//! - A host is lost (`fail`: power off) with several containers: those
//!   with restore policy `checkpoint` come back on the other hosts, spread,
//!   at their IPs, each counting on from its newest version (one of them
//!   from the version before, its newest having been corrupted on the
//!   store's disk), and their tickers go on with the next versions; the one
//!   with `restart` starts afresh; the one with `none` stays where it was,
//!   unknown.
//! - A host is cut off (`partition`) but alive: its agent stops its
//!   container when the lease runs out, before it is restored elsewhere;
//!   when the partition heals, the agent removes its stale copy before the
//!   host is ready again.
//! - The store does not answer for a while (`store pause`): the ticks fail,
//!   the container counts on, and versions resume once the store is back.
//! - The coordinator replicated on etcd loses its leader's host, with a
//!   container on it: another replica leads within the lease's TTL and
//!   brings the container back.
//! - Two of five hosts lost at once; a migration's source lost mid-dump
//!   (the container comes back from its version) and its target lost
//!   mid-restore (the container counts on on its source).
//! - A host lost while its ticker writes a version: the container comes
//!   back from the version before, the half-written one never seen.
//! - On etcd, the leader lost while the host it chose restores a lost
//!   host's container: the next leader asks that host again, which answers
//!   with the restore it finished, and one copy runs.
//! - The agent process killed, its host alive: the container's shim
//!   freezes it when the agent's lease ends, before it runs elsewhere.
//!
//! Each test has a cluster of its own.

use std::process::Command;
use std::time::{Duration, Instant};

use containerd_migrate_tests::cluster::{self, Cluster, Host, OneCopy, OneProcess};
use containerd_migrate_tests::fixture::IMAGE;
use containerd_migrate_tests::memtick::{tick, wait_tick_above};
use containerd_migrate_tests::poll;
use containerd_migrate_tests::process::Background;
use serde_json::Value;

/// memtick's period: the ticks lost in a restore are the version's age
/// over this.
const TICK_MS: u64 = 20;
/// The checkpoint tickers' interval.
const INTERVAL: &str = "1s";
/// How long a lost host's containers may take to come back here (the
/// grace, then a restore on a loaded 2-core machine).
const BACK_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a ticker may take to store its first versions.
const VERSIONS_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn a_lost_hosts_containers_come_back_from_their_newest_versions() {
    let Some((cluster, store)) = cluster_for(
        "a_lost_hosts_containers_come_back_from_their_newest_versions",
        "ha",
        3,
        &[],
    ) else {
        return;
    };
    let (h1, h2, h3) = (cluster.host("h1"), cluster.host("h2"), cluster.host("h3"));
    let checkpointed = ["c1", "c2", "c3"];
    let mut ips = Vec::new();
    for id in checkpointed {
        ips.push((id, run_counter(h1, id, "checkpoint", &store)));
    }
    ips.push(("r1", run_counter(h1, "r1", "restart", &store)));
    let n1_ip = run_counter(h1, "n1", "none", &store);
    for id in checkpointed {
        wait_versions(h2, &store, id, 2);
    }
    // Where each counter was just before the loss.
    let before: Vec<(&str, u64)> = checkpointed
        .iter()
        .map(|id| {
            (
                *id,
                tick(h1.running_pid(id)).unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .collect();

    let watch = OneCopy::watch(&[h2, h3], &["c1", "c2", "c3", "r1"]);
    let lost = Instant::now();
    cluster.fail("h1").expect_success();
    // The newest version of c3, made unreadable on the store's disk before
    // the coordinator can declare h1 down (3 s).
    let corrupted = corrupt_newest(&cluster, "c3");
    eprintln!(
        "h1 lost; c3's version {corrupted} corrupted after {:?}",
        lost.elapsed()
    );

    let ps = back_elsewhere(h2, &["c1", "c2", "c3", "r1"], &["h1"]);
    eprintln!("back in {:?}:\n{}", lost.elapsed(), ps_table(h2));

    for (id, ip) in &ips {
        assert_eq!(
            find(&ps, id).unwrap()["ip"],
            ip.as_str(),
            "{id} kept its IP"
        );
    }
    let hosts: Vec<&str> = ["c1", "c2", "c3", "r1"]
        .iter()
        .map(|id| find(&ps, id).unwrap()["host"].as_str().unwrap())
        .collect();
    assert!(
        hosts.contains(&"h2") && hosts.contains(&"h3"),
        "the lost host's containers were not spread: {hosts:?}"
    );

    for (id, before) in &before {
        let c = find(&ps, id).unwrap();
        let recovery = &c["recovery"];
        assert_eq!(recovery["fromHost"], "h1", "{c:#}");
        let version = recovery["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("{id} was not restored from a version: {c:#}"));
        let age_ms = recovery["versionAgeMs"].as_u64().unwrap();
        let host = cluster.host(c["host"].as_str().unwrap());
        let first = wait_tick_above(
            host.running_pid(id),
            0,
            &format!("{id} to count on its new host"),
        );
        // Nothing lost beyond the version: the ticks from its taking to
        // the last heartbeat, and up to a heartbeat period of them to the
        // loss, when `before` was read.
        assert!(
            first + (age_ms + 1_000) / TICK_MS + 5 >= *before,
            "{id} restarted from {first}, but counted {before} before the loss and its version {version} was only \
             {age_ms} ms old: state lost beyond the version"
        );
        eprintln!(
            "{id}: version {version} ({age_ms} ms old), counted {before} before, {first} after"
        );
        if *id == "c3" {
            assert!(
                version < corrupted,
                "c3 came back from its corrupted version {corrupted}: {c:#}"
            );
            let skipped = recovery["skipped"].as_array().unwrap();
            assert!(
                skipped
                    .iter()
                    .any(|s| s["version"] == corrupted && !s["reason"].as_str().unwrap().is_empty()),
                "the corrupted version is not reported as skipped, with its reason: {c:#}"
            );
        } else {
            assert!(recovery["skipped"].as_array().unwrap().is_empty(), "{c:#}");
        }
    }
    let r1 = find(&ps, "r1").unwrap();
    assert_eq!(r1["recovery"]["version"], Value::Null, "{r1:#}");
    assert!(
        r1["recovery"]["coldReason"]
            .as_str()
            .unwrap()
            .contains("restore policy is restart"),
        "{r1:#}"
    );
    let n1 = find(&ps, "n1").unwrap();
    assert_eq!(
        (n1["host"].as_str(), n1["state"].as_str(), n1["ip"].as_str()),
        (Some("h1"), Some("unknown"), Some(n1_ip.as_str()))
    );
    assert!(n1.get("recovery").is_none(), "{n1:#}");

    let hosts = json(h2, &["migratectl", "hosts", "--json"]);
    let h1_row = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "h1")
        .unwrap();
    assert_eq!(h1_row["state"], "down");
    assert!(
        h1_row["downReason"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{h1_row:#}"
    );

    // c1's ticker goes on from its new host, with the next numbers.
    let restored = find(&ps, "c1").unwrap()["recovery"]["version"]
        .as_u64()
        .unwrap();
    let newest = versions(h2, &store, "c1");
    wait_versions_above(h2, &store, "c1", *newest.last().unwrap().max(&restored));
    watch.stop();
}

#[test]
fn a_partitioned_host_stops_its_containers_and_removes_them_when_it_returns() {
    let Some((cluster, store)) = cluster_for(
        "a_partitioned_host_stops_its_containers_and_removes_them_when_it_returns",
        "hb",
        2,
        &[],
    ) else {
        return;
    };
    let (h1, h2) = (cluster.host("h1"), cluster.host("h2"));
    let ip = run_counter(h1, "p1", "checkpoint", &store);
    wait_versions(h2, &store, "p1", 1);

    // The store away for a while: the ticks fail, the counter counts on,
    // and versions resume once it is back.
    let pid = h1.running_pid("p1");
    let stored = versions(h2, &store, "p1");
    cluster.store_do("pause");
    let paused_at = tick(pid).unwrap();
    wait_tick_above(
        pid,
        paused_at + 2_000 / TICK_MS,
        "p1 to count on while the store does not answer",
    );
    cluster.store_do("resume");
    wait_versions_above(h2, &store, "p1", *stored.last().unwrap());

    // Every process on h1 runs on; only its link is cut.
    let watch = OneProcess::watch(&[h1, h2], "memtick");
    let before = tick(pid).unwrap();
    let cut = Instant::now();
    cluster.partition("h1");
    let agent_log = h1.shared_dir().join("agent.log");
    poll::until(
        Duration::from_secs(15),
        "h1's agent to stop p1 when its lease runs out",
        || {
            let log = std::fs::read_to_string(&agent_log).map_err(|e| e.to_string())?;
            if log.contains("stopping p1") {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    );
    let fenced = cut.elapsed();
    let ps = poll::until(BACK_TIMEOUT, "p1 to run on h2", || {
        let ps = ps(h2);
        match find(&ps, "p1") {
            Some(c) if c["host"] == "h2" && c["state"] == "running" => Ok(ps),
            _ => Err(format!("{ps:#}")),
        }
    });
    let p1 = find(&ps, "p1").unwrap();
    eprintln!(
        "p1 stopped on h1 after {fenced:?}, runs on h2 after {:?}: {}",
        cut.elapsed(),
        p1["recovery"]
    );
    assert_eq!(p1["ip"], ip.as_str());
    let age_ms = p1["recovery"]["versionAgeMs"].as_u64().unwrap();
    let first = wait_tick_above(h2.running_pid("p1"), 0, "p1 to count on h2");
    assert!(
        first + (age_ms + 1_000) / TICK_MS + 5 >= before,
        "p1 restarted from {first}, counted {before} before"
    );
    assert_eq!(
        h1.ctr().task("p1").map(|t| t.status),
        Some("PAUSED".to_string()),
        "the stale copy runs again"
    );

    // Back: the agent learns its session ended, removes its stale copy and
    // registers again.
    cluster.heal("h1");
    poll::until(
        Duration::from_secs(30),
        "h1 to remove its stale copy and be ready again",
        || {
            let hosts = json(h2, &["migratectl", "hosts", "--json"]);
            let ready = hosts
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == "h1" && h["state"] == "ready");
            match (h1.ctr().task("p1"), ready) {
                (None, true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert!(log.contains("removing the stale copy of p1"), "{log}");
    // The one copy counts on.
    let now = tick(h2.running_pid("p1")).unwrap();
    wait_tick_above(
        h2.running_pid("p1"),
        now,
        "p1 to count on h2 after h1 came back",
    );
    watch.stop();
}

/// The agent process killed while its host, containerd and container run
/// on: nothing of the agent stops the container, but its shim sees the
/// agent's lease end and freezes it, its network down, before the
/// coordinator declares the host down and restores it elsewhere.
#[test]
fn a_killed_agents_container_stops_before_it_runs_elsewhere() {
    let Some((cluster, store)) = cluster_for(
        "a_killed_agents_container_stops_before_it_runs_elsewhere",
        "hh",
        2,
        &[],
    ) else {
        return;
    };
    let (h1, h2) = (cluster.host("h1"), cluster.host("h2"));
    run_counter(h1, "a1", "checkpoint", &store);
    wait_versions(h2, &store, "a1", 1);
    let pid = h1.running_pid("a1");
    let before = tick(pid).unwrap();
    let watch = OneProcess::watch(&[h1, h2], "memtick");
    kill_agent(h1);
    let ps = back_elsewhere(h2, &["a1"], &["h1"]);
    let a1 = find(&ps, "a1").unwrap();
    let age_ms = a1["recovery"]["versionAgeMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("a1 was not restored from a version: {a1:#}"));
    let first = wait_tick_above(h2.running_pid("a1"), 0, "a1 to count on on h2");
    assert!(
        first + (age_ms + 1_000) / TICK_MS + 5 >= before,
        "a1 restarted from {first}, counted {before} before"
    );
    watch.stop();
    let copy = h1.ctr().task("a1").expect("h1's copy of a1 is gone");
    assert_eq!(copy.status, "PAUSED", "h1's copy of a1 runs on");
    let log = std::fs::read_to_string(h1.containerd_log()).unwrap();
    assert!(
        log.contains("the agent did not stop this container"),
        "the shim did not fence a1:\n{log}"
    );
}

/// Kills (SIGKILL) the agent of host `h`, found by its TLS directory.
#[track_caller]
fn kill_agent(h: &Host) {
    use std::os::unix::ffi::OsStrExt;
    let tls = h.shared_dir().join("tls");
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"migrate-agent"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--tls-dir" && w[1] == tls.as_os_str().as_bytes())
        })
        .unwrap_or_else(|| panic!("no agent of {} runs", h.name));
    let out = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "kill -KILL {pid}: {out:?}");
}

/// Cluster `name` of `n` hosts (`hack/cluster.sh up`, with `flags`), the
/// test image on each, and its version store's URL; None (test `test`
/// skipped) without the prerequisites.
fn cluster_for(test: &str, name: &str, n: usize, flags: &[&str]) -> Option<(Cluster, String)> {
    if !cluster::prerequisites_met(test) {
        return None;
    }
    let cluster = Cluster::up_with(name, n, flags).unwrap_or_else(|e| panic!("{e}"));
    for i in 1..=n {
        cluster.host(&format!("h{i}")).import_test_image();
    }
    let store = cluster.store();
    Some((cluster, store))
}

/// `migratectl run` of a memtick counter on `h` with a ticker storing
/// into `store` every [`INTERVAL`] and restore policy `policy`; its IP.
#[track_caller]
fn run_counter(h: &Host, id: &str, policy: &str, store: &str) -> String {
    run_counter_with(h, id, policy, store, &[])
}

/// [`run_counter`] with more options of `migratectl run` (`--constraint`).
#[track_caller]
fn run_counter_with(h: &Host, id: &str, policy: &str, store: &str, options: &[&str]) -> String {
    let interval = format!("io.containerd.migrate.checkpoint.interval={INTERVAL}");
    let store = format!("io.containerd.migrate.checkpoint.store={store}");
    let tick_ms = TICK_MS.to_string();
    let mut argv = vec!["migratectl", "run", "--json"];
    argv.extend_from_slice(options);
    argv.extend_from_slice(&[
        "--host",
        &h.name,
        "--restore-policy",
        policy,
        "--annotation",
        &interval,
        "--annotation",
        &store,
        IMAGE,
        id,
        "memtick",
        "--mib",
        "16",
        "--interval-ms",
        &tick_ms,
        "--out",
        "/tmp/tick",
    ]);
    let out = h.run(&argv).expect_success();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    h.running_pid(id);
    json["ip"].as_str().unwrap().to_string()
}

#[track_caller]
fn json(h: &Host, argv: &[&str]) -> Value {
    let out = h.run(argv).expect_success();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"))
}

/// `migratectl ps --json` through `via` once every container of `ids`
/// runs on a host not in `lost`.
#[track_caller]
fn back_elsewhere(via: &Host, ids: &[&str], lost: &[&str]) -> Value {
    let what = format!(
        "{} to run on hosts other than {}",
        ids.join(", "),
        lost.join(", ")
    );
    poll::until(BACK_TIMEOUT, &what, || {
        let ps = ps(via);
        let back = ids.iter().all(|id| {
            find(&ps, id).is_some_and(|c| {
                c["state"] == "running" && !lost.contains(&c["host"].as_str().unwrap_or_default())
            })
        });
        if back { Ok(ps) } else { Err(format!("{ps:#}")) }
    })
}

fn ps(h: &Host) -> Value {
    json(h, &["migratectl", "ps", "--json"])
}

fn ps_table(h: &Host) -> String {
    h.run(&["migratectl", "ps"]).stdout_str()
}

fn find<'a>(ps: &'a Value, id: &str) -> Option<&'a Value> {
    ps.as_array()?.iter().find(|c| c["id"] == id)
}

/// The valid versions of `id` in `store`, oldest first.
#[track_caller]
fn versions(h: &Host, store: &str, id: &str) -> Vec<u64> {
    h.versions(store, id).unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
fn wait_versions(h: &Host, store: &str, id: &str, at_least: usize) {
    poll::until(
        VERSIONS_TIMEOUT,
        &format!("{id} to have {at_least} versions"),
        || {
            let v = versions(h, store, id);
            if v.len() >= at_least {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        },
    );
}

#[track_caller]
fn wait_versions_above(h: &Host, store: &str, id: &str, above: u64) {
    poll::until(
        VERSIONS_TIMEOUT,
        &format!("a version of {id} newer than {above}"),
        || {
            let v = versions(h, store, id);
            if v.last().is_some_and(|n| *n > above) {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        },
    );
}

/// Overwrites, on the registry's disk, the index of the newest version of
/// container `id` (namespace "default", where the agents run the cluster's
/// containers); returns that version.
#[track_caller]
fn corrupt_newest(cluster: &Cluster, id: &str) -> u64 {
    let v2 = cluster.store_dir().join("docker/registry/v2");
    let tags = v2.join("repositories/checkpoints/_manifests/tags");
    // The version store's tags: the first 32 hex digits of sha256 of
    // "NAMESPACE/ID", a dash, the version.
    let out = Command::new("sh")
        .args(["-c", &format!("printf %s default/{id} | sha256sum")])
        .output()
        .unwrap();
    let hash = String::from_utf8(out.stdout).unwrap()[..32].to_string();
    let newest = std::fs::read_dir(&tags)
        .unwrap_or_else(|e| panic!("{}: {e}", tags.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|tag| tag.strip_prefix(&format!("{hash}-"))?.parse::<u64>().ok())
        .max()
        .unwrap_or_else(|| panic!("no version tag of {id} in {}", tags.display()));
    let link = std::fs::read_to_string(tags.join(format!("{hash}-{newest}/current/link"))).unwrap();
    let digest = link.trim().strip_prefix("sha256:").unwrap().to_string();
    let blob = v2.join(format!("blobs/sha256/{}/{digest}/data", &digest[..2]));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&blob, &bytes).unwrap();
    newest
}

/// The coordinator replicated on etcd (`up 4 --etcd`: etcd on h1-h3, a
/// replica on every host): the leader's host is lost together with a
/// container of it; another replica leads within the lease's TTL, and
/// brings the container back from its newest version.
#[test]
fn a_new_leader_brings_back_the_containers_of_the_old_leaders_host() {
    let Some((cluster, store)) = cluster_for(
        "a_new_leader_brings_back_the_containers_of_the_old_leaders_host",
        "hc",
        4,
        &["--etcd"],
    ) else {
        return;
    };
    let hosts: Vec<&Host> = ["h1", "h2", "h3", "h4"]
        .iter()
        .map(|h| cluster.host(h))
        .collect();
    let replicas = json(hosts[3], &["migratectl", "coordinator", "--json"]);
    assert_eq!(replicas["store"], "etcd", "{replicas:#}");
    let leader = leader_of(hosts[3]).unwrap_or_else(|e| panic!("{e}"));
    let lost = cluster.host(&leader);
    let witness = hosts.iter().find(|h| h.name != leader).unwrap();
    let ip = run_counter(lost, "l1", "checkpoint", &store);
    wait_versions(witness, &store, "l1", 1);
    let before = tick(lost.running_pid("l1")).unwrap();
    // A migration the leader drives, held at its source's dump when the
    // leader is lost: the next leader undoes it.
    let others: Vec<&Host> = hosts.iter().copied().filter(|h| h.name != leader).collect();
    let (source, target) = (others[0], others[1]);
    run_counter(source, "m1", "none", &store);
    let m1_pid = source.running_pid("m1");
    let moving = held_migration(source, witness, "dump", "m1", &target.name);

    let cut = Instant::now();
    cluster.fail(&leader).expect_success();
    let new_leader = next_leader(witness, &leader);
    let failover = cut.elapsed();
    let ps = back_elsewhere(witness, &["l1"], &[&leader]);
    let l1 = find(&ps, "l1").unwrap();
    eprintln!(
        "{new_leader} leads {failover:?} after {leader} was lost; l1 back after {:?}: {}",
        cut.elapsed(),
        l1["recovery"]
    );
    assert_eq!(l1["ip"], ip.as_str());
    let age_ms = l1["recovery"]["versionAgeMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("l1 was not restored from a version: {l1:#}"));
    let host = cluster.host(l1["host"].as_str().unwrap());
    let first = wait_tick_above(host.running_pid("l1"), 0, "l1 to count on its new host");
    assert!(
        first + (age_ms + 1_000) / TICK_MS + 5 >= before,
        "l1 restarted from {first}, counted {before} before"
    );
    // The migration left half-done was undone: m1 counts on on its source,
    // the same process, and its record no longer says migrating.
    let out = moving.wait(Duration::from_secs(60));
    assert!(
        !out.success(),
        "the migration driven by the lost leader succeeded:\n{out}"
    );
    let m1 = poll::until(
        Duration::from_secs(30),
        "m1's migration to be undone",
        || {
            let listed = self::ps(witness);
            match find(&listed, "m1") {
                Some(c) if c.get("migratingTo").is_none() => Ok(c.clone()),
                other => Err(format!("{other:?}")),
            }
        },
    );
    assert_eq!(
        (m1["host"].as_str(), m1["state"].as_str()),
        (Some(source.name.as_str()), Some("running")),
        "{m1:#}"
    );
    assert_eq!(source.running_pid("m1"), m1_pid);
    let at = tick(m1_pid).unwrap();
    wait_tick_above(m1_pid, at, "m1 to count on on its source");
    assert!(target.ctr().task("m1").is_none(), "m1's target kept a copy");
    // The new leader writes: a container runs through it.
    run_counter(host, "after", "none", &store);
}

/// Two of five hosts lost at once, each with a container: both come back
/// on the three others, from their newest versions.
#[test]
fn two_of_five_hosts_lost_at_once() {
    let Some((cluster, store)) = cluster_for("two_of_five_hosts_lost_at_once", "hd", 5, &[]) else {
        return;
    };
    let hosts: Vec<&Host> = (1..=5).map(|i| cluster.host(&format!("h{i}"))).collect();
    let (h1, h2, witness) = (hosts[0], hosts[1], hosts[4]);
    let ips = [
        run_counter(h1, "t1", "checkpoint", &store),
        run_counter(h2, "t2", "checkpoint", &store),
    ];
    for id in ["t1", "t2"] {
        wait_versions(witness, &store, id, 1);
    }
    let before = [
        tick(h1.running_pid("t1")).unwrap(),
        tick(h2.running_pid("t2")).unwrap(),
    ];
    let watch = OneCopy::watch(&hosts[2..], &["t1", "t2"]);
    // At once: two `fail`s side by side.
    let fail = |host: &str| {
        let mut cmd = Command::new("bash");
        cmd.arg(containerd_migrate_tests::fixture::repo_root().join("hack/cluster.sh"))
            .args(["fail", host])
            .env("CLUSTER_NAME", cluster.name());
        Background::spawn(cmd, None)
    };
    let (one, two) = (fail("h1"), fail("h2"));
    one.wait(Duration::from_secs(60)).expect_success();
    two.wait(Duration::from_secs(60)).expect_success();
    let ps = back_elsewhere(witness, &["t1", "t2"], &["h1", "h2"]);
    for (i, id) in ["t1", "t2"].iter().enumerate() {
        let c = find(&ps, id).unwrap();
        assert_eq!(c["ip"], ips[i].as_str());
        let age_ms = c["recovery"]["versionAgeMs"]
            .as_u64()
            .unwrap_or_else(|| panic!("{id} was not restored from a version: {c:#}"));
        let host = cluster.host(c["host"].as_str().unwrap());
        let first = wait_tick_above(host.running_pid(id), 0, &format!("{id} to count on"));
        assert!(
            first + (age_ms + 1_000) / TICK_MS + 5 >= before[i],
            "{id}: {first} after, {} before",
            before[i]
        );
    }
    watch.stop();
}

/// A host lost in the middle of a migration. The source (held at its
/// dump): the migration fails and the container comes back elsewhere from
/// its newest version. The target (held at its restore): the migration
/// fails and the container counts on on its source, the same process.
#[test]
fn a_host_lost_during_a_migration() {
    let Some((cluster, store)) = cluster_for("a_host_lost_during_a_migration", "he", 4, &[]) else {
        return;
    };
    let hosts: Vec<&Host> = (1..=4).map(|i| cluster.host(&format!("h{i}"))).collect();
    let (h1, h2, h3, h4) = (hosts[0], hosts[1], hosts[2], hosts[3]);

    // The source lost.
    run_counter(h1, "s1", "checkpoint", &store);
    wait_versions(h4, &store, "s1", 1);
    let before = tick(h1.running_pid("s1")).unwrap();
    let moving = held_migration(h1, h3, "dump", "s1", "h2");
    cluster.fail("h1").expect_success();
    let out = moving.wait(Duration::from_secs(120));
    assert!(
        !out.success(),
        "the migration of s1 from a lost source succeeded:\n{out}"
    );
    let ps = back_elsewhere(h4, &["s1"], &["h1"]);
    let s1 = find(&ps, "s1").unwrap();
    let age_ms = s1["recovery"]["versionAgeMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("{s1:#}"));
    let host = cluster.host(s1["host"].as_str().unwrap());
    let first = wait_tick_above(host.running_pid("s1"), 0, "s1 to count on");
    assert!(
        first + (age_ms + 1_000) / TICK_MS + 5 >= before,
        "s1: {first} after, {before} before"
    );
    let others: Vec<&Host> = hosts[1..].to_vec();
    let watch = OneCopy::watch(&others, &["s1", "s2"]);

    // The target lost.
    run_counter(h3, "s2", "checkpoint", &store);
    let pid = h3.running_pid("s2");
    let moving = held_migration(h4, h2, "restore", "s2", "h4");
    let held_at = tick(pid).unwrap_or(0);
    cluster.fail("h4").expect_success();
    let out = moving.wait(Duration::from_secs(120));
    assert!(
        !out.success(),
        "the migration of s2 to a lost target succeeded:\n{out}"
    );
    assert_eq!(
        h3.running_pid("s2"),
        pid,
        "s2 is not the same process on its source"
    );
    wait_tick_above(pid, held_at, "s2 to count on on its source");
    let s2 = find(&ps_on(&[h2, h3]), "s2").cloned().unwrap();
    assert_eq!(
        (s2["host"].as_str(), s2["state"].as_str()),
        (Some("h3"), Some("running")),
        "{s2:#}"
    );
    watch.stop();
}

/// `migratectl migrate ID --to TO --mode stop-and-copy`, run on host `via`
/// (one that is not about to be lost), with step `step` held on `held` (a
/// host whose failpoints file it writes) until that host is lost; returns
/// once the step is held.
#[track_caller]
fn held_migration(held: &Host, via: &Host, step: &str, id: &str, to: &str) -> Background {
    let file = held.shared_dir().join("failpoints");
    std::fs::write(&file, format!("{step}=hold\n")).unwrap();
    let moving = Background::spawn(
        via.command(&[
            "migratectl",
            "migrate",
            "--json",
            "--mode",
            "stop-and-copy",
            "--to",
            to,
            id,
        ]),
        None,
    );
    let log = held.agent_log();
    poll::until(
        Duration::from_secs(60),
        &format!("{} to hold step {step}", held.name),
        || {
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            if text.contains(&format!("holding step {step}")) {
                Ok(())
            } else {
                Err(format!(
                    "migratectl says: {}",
                    String::from_utf8_lossy(&moving.stderr_so_far())
                ))
            }
        },
    );
    moving
}

/// `migratectl ps` through the first of `hosts` that answers.
fn ps_on(hosts: &[&Host]) -> Value {
    hosts
        .iter()
        .find_map(|h| {
            let out = h.run(&["migratectl", "ps", "--json"]);
            out.success()
                .then(|| serde_json::from_slice(&out.stdout).ok())
                .flatten()
        })
        .expect("no host answered migratectl ps")
}

/// A host lost while its ticker writes a version: the store is paused
/// once the tick has dumped (so its upload cannot finish), the host is
/// lost, the store comes back. The half-written version was never visible:
/// the container comes back from the one before, nothing reported skipped,
/// and its ticker goes on from the new host.
#[test]
fn a_host_lost_during_a_tick() {
    let Some((cluster, store)) = cluster_for("a_host_lost_during_a_tick", "hf", 3, &[]) else {
        return;
    };
    let (h1, h2, h3) = (cluster.host("h1"), cluster.host("h2"), cluster.host("h3"));
    run_counter(h1, "k1", "checkpoint", &store);
    wait_versions(h2, &store, "k1", 2);
    cluster.store_do("pause");
    // A tick's dump, committed in RAM on h1 and being stored: the ticker
    // keeps it there until the store has it.
    let ram = format!("{}/ticker-default-k1", TICKER_RAM);
    let writing: u64 = poll::until(
        Duration::from_secs(30),
        "a tick of k1 to be writing to the store",
        || {
            let out = h1.run(&["ls", &ram]);
            out.stdout_str()
                .lines()
                .filter_map(|name| name.strip_prefix('v')?.parse().ok())
                .max()
                .ok_or_else(|| format!("{ram} holds no dump: {out}"))
        },
    );
    let before = tick(h1.running_pid("k1")).unwrap();
    let watch = OneCopy::watch(&[h2, h3], &["k1"]);
    cluster.fail("h1").expect_success();
    cluster.store_do("resume");

    let ps = back_elsewhere(h2, &["k1"], &["h1"]);
    let k1 = find(&ps, "k1").unwrap();
    let recovery = &k1["recovery"];
    let version = recovery["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("k1 was not restored from a version: {k1:#}"));
    assert_eq!(
        version + 1,
        writing,
        "k1 came back from version {version}, not from the one before the version {writing} being written: {k1:#}"
    );
    assert!(
        recovery["skipped"].as_array().unwrap().is_empty(),
        "the half-written version was seen as one: {k1:#}"
    );
    let age_ms = recovery["versionAgeMs"].as_u64().unwrap();
    let host = cluster.host(k1["host"].as_str().unwrap());
    let first = wait_tick_above(host.running_pid("k1"), 0, "k1 to count on its new host");
    assert!(
        first + (age_ms + 1_000) / TICK_MS + 5 >= before,
        "k1 restarted from {first}, counted {before} before the loss, its version {version} {age_ms} ms old"
    );
    // The ticker writes the number the lost host never finished.
    wait_versions_above(h2, &store, "k1", version);
    assert_eq!(
        versions(h2, &store, "k1")
            .iter()
            .filter(|v| **v == writing)
            .count(),
        1
    );
    watch.stop();
}

/// Where a ticker's dumps wait in RAM for the store, on a cluster host
/// (/run is on its disk there, so the shim stages in /dev/shm).
const TICKER_RAM: &str = "/dev/shm/containerd-migrate-staging";

/// On etcd, the leader lost while a host it chose restores a lost host's
/// container (the restore held there): the next leader finds the record
/// saying where the container was going, asks that host again, and the
/// container runs there once, from its version.
#[test]
fn a_restore_outlives_the_leader_that_began_it() {
    let Some((cluster, store)) = cluster_for(
        "a_restore_outlives_the_leader_that_began_it",
        "hg",
        4,
        &["--etcd"],
    ) else {
        return;
    };
    let hosts: Vec<&Host> = (1..=4).map(|i| cluster.host(&format!("h{i}"))).collect();
    let leader = leader_of(hosts[3]).unwrap_or_else(|e| panic!("{e}"));
    // etcd runs on h1-h3: the two hosts lost must not both be members.
    let lost = if leader == "h4" { "h1" } else { "h4" };
    let others: Vec<&Host> = hosts
        .iter()
        .copied()
        .filter(|h| h.name != leader && h.name != lost)
        .collect();
    let x = cluster.host(lost);
    // Not back on the leader's host, which is lost next.
    let elsewhere = format!("node.name!={leader}");
    run_counter_with(x, "r1", "checkpoint", &store, &["--constraint", &elsewhere]);
    wait_versions(others[0], &store, "r1", 1);
    for h in &others {
        std::fs::write(h.shared_dir().join("failpoints"), "recover=hold\n").unwrap();
    }
    let before = tick(x.running_pid("r1")).unwrap();
    cluster.fail(lost).expect_success();
    let target = poll::until(BACK_TIMEOUT, "the leader's restore of r1 to begin", || {
        others
            .iter()
            .find(|h| {
                std::fs::read_to_string(h.agent_log())
                    .is_ok_and(|log| log.contains("holding step recover"))
            })
            .copied()
            .ok_or_else(|| "no agent holds it yet".to_string())
    });
    let witness = others
        .iter()
        .copied()
        .find(|h| h.name != target.name)
        .unwrap();
    let watch = OneCopy::watch(&others, &["r1"]);

    cluster.fail(&leader).expect_success();
    let next = next_leader(witness, &leader);
    // The next leader asks the same host again before the first request
    // (its sender lost) is let go.
    let asked = format!("bringing r1 of lost host {lost} back on {}", target.name);
    poll::until(BACK_TIMEOUT, "the next leader to ask again", || {
        let log =
            std::fs::read_to_string(cluster.host(&next).coordinator_log()).unwrap_or_default();
        if log.contains(&asked) {
            Ok(())
        } else {
            Err(format!("{next}'s log lacks {asked:?}"))
        }
    });
    for h in &others {
        std::fs::write(h.shared_dir().join("failpoints"), "").unwrap();
    }
    let ps = back_elsewhere(witness, &["r1"], &[lost]);
    let r1 = find(&ps, "r1").unwrap();
    eprintln!(
        "{next} leads; r1 back on {}: {}",
        r1["host"], r1["recovery"]
    );
    assert_eq!(r1["host"], target.name.as_str(), "{r1:#}");
    let age_ms = r1["recovery"]["versionAgeMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("r1 was not restored from a version: {r1:#}"));
    let first = wait_tick_above(target.running_pid("r1"), 0, "r1 to count on");
    assert!(
        first + (age_ms + 1_000) / TICK_MS + 5 >= before,
        "r1 restarted from {first}, counted {before} before"
    );
    assert!(
        witness.ctr().task("r1").is_none(),
        "r1 runs on {} too",
        witness.name
    );
    watch.stop();
}

/// The replica leading, as `migratectl coordinator` on `via` says, or
/// what it said instead.
fn leader_of(via: &Host) -> Result<String, String> {
    let out = via.run(&["migratectl", "coordinator", "--json"]);
    let replicas: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out}"))?;
    replicas["replicas"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["leader"] == true))
        .and_then(|r| r["name"].as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("no leader: {replicas:#}"))
}

/// Another replica than `old` leads, as seen from `via`: its name.
#[track_caller]
fn next_leader(via: &Host, old: &str) -> String {
    poll::until(Duration::from_secs(30), "another replica to lead", || {
        leader_of(via).and_then(|now| {
            if now != old {
                Ok(now)
            } else {
                Err(format!("{now} still leads"))
            }
        })
    })
}
