//! containerd restarts while a task runs: the shim and the container carry
//! on, and the new containerd finds the task again and can drive it. Each
//! test has its own containerd instance, since stopping a shared one would
//! disturb the scenarios running beside it.

use std::time::Duration;

use containerd_migrate_tests::events::Events;
use containerd_migrate_tests::footprint::Footprint;
use containerd_migrate_tests::memtick::wait_tick_above;
use containerd_migrate_tests::{Scenario, host, scenarios};

scenarios!(isolated: containerd_restart);

/// Stop containerd with a task running, start it again: the task is still
/// RUNNING with the same pid and shim, exec/pause/resume work, and a kill
/// is reported (event and exit code) and cleaned up as usual.
fn containerd_restart(t: &Scenario) {
    let c = t.container();
    let pid = t.run_detached(
        &c,
        &[],
        &[
            "memtick",
            "--mib",
            "8",
            "--interval-ms",
            "20",
            "--out",
            "/tmp/tick",
        ],
    );
    let first = wait_tick_above(pid, 0, "memtick to tick");
    let footprint = Footprint::capture(&t.ctr, &c.id);
    let shim = footprint.shim_pids[0];

    t.instance.stop();
    assert!(host::pid_alive(shim), "shim {shim} died with containerd");
    let while_down = wait_tick_above(pid, first, "memtick to tick on while containerd is down");
    t.instance.start_again();

    let row = t
        .ctr
        .task(&c.id)
        .unwrap_or_else(|| panic!("task {} is gone after the restart", c.id));
    assert_eq!(
        (row.pid, row.status.as_str()),
        (pid, "RUNNING"),
        "task after the restart"
    );
    assert_eq!(
        host::shim_pids(&c.id),
        vec![shim],
        "the same shim serves the task after the restart"
    );
    assert_eq!(t.ctr.task_pids(&c.id), vec![pid]);
    wait_tick_above(pid, while_down, "memtick to tick on after the restart");

    let exec = [
        "tasks",
        "exec",
        "--exec-id",
        "after-restart",
        &c.id,
        "sh",
        "-c",
        "echo hi; echo err >&2; exit 4",
    ];
    let out = t.ctr.run(&exec).expect_code(4);
    assert_eq!(out.stdout, b"hi\n", "{out}");
    assert_eq!(out.stderr, b"err\n", "{out}");
    t.ctr.ok(&["tasks", "pause", &c.id]);
    assert_eq!(t.ctr.task(&c.id).map(|r| r.status), Some("PAUSED".into()));
    t.ctr.ok(&["tasks", "resume", &c.id]);
    assert_eq!(t.ctr.task(&c.id).map(|r| r.status), Some("RUNNING".into()));

    let events = Events::subscribe(&t.ctr);
    t.ctr.ok(&["tasks", "kill", "--signal", "SIGKILL", &c.id]);
    let stopped = c.wait_status("STOPPED");
    assert_eq!(stopped.pid, pid);
    let exit = events.wait_for(&c.id, "/tasks/exit", Duration::from_secs(10), |e| {
        e.topic == "/tasks/exit"
    });
    assert_eq!(exit.payload["pid"], u64::from(pid), "{}", exit.line);
    assert_eq!(exit.payload["exit_status"], 137, "{}", exit.line);
    let out = t.ctr.ok(&["tasks", "delete", &c.id]);
    assert!(
        out.stderr_str().contains("exit code 137"),
        "ctr t delete should report exit code 137\n{out}"
    );
    t.ctr.ok(&["containers", "delete", &c.id]);
    footprint.assert_gone(&t.ctr);
}
