//! The start-up benchmark's own app: a JVM service that takes seconds to
//! initialise, started cold against started from a ready-point checkpoint,
//! under io.containerd.migrate.v1, in one run.
//!
//! The service is hack/bench/startup/SlowStart.java (builds an in-memory
//! index and warms up for seconds, then listens on 8080; GET / answers with
//! the index's checksum and a request counter); its image is built by
//! hack/bench/startup-image.sh.
//!
//! - ready point: one container started with the annotations
//!   `io.containerd.migrate.checkpoint-when-ready=tcp:8080` and
//!   `...checkpoint-when-ready.store=file://DIR`; the shim checkpoints it the
//!   moment it listens, into DIR/<id>-ready (the benchmark waits for its
//!   manifest.json); reported: time to the checkpoint, its size and the
//!   frozen, dump and persist times of the manifest's `timings`.
//! - cold: `ctr run -d --runtime io.containerd.migrate.v1 IMAGE ID CMD`
//!   until the first successful HTTP answer on port 8080;
//! - restored: the same with `io.containerd.migrate.restore-from=file://DIR/<id>-ready`,
//!   whose first answer must equal a cold start's; `--runs` of each, interleaved.
//! - clones: `--clones` containers restored from the one checkpoint, one
//!   after the other, then all launched at once; each must then answer a
//!   second request with its own counter at 2.
//!
//! Every start is polled the same way: a thread in the container's network
//! namespace connects every 2 ms (`--poll exec` polls with `ctr t exec ID sh
//! -c 'until wget ...'` instead). A restored start that fell back to a cold
//! one shows the app's "slowstart: initialising" line and is reported.
//! Goal: restored >= 10x faster than cold (ratio of the medians).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use clap::ValueEnum;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::super::http_probe;
use super::super::memtick_workload::tail;
use super::super::plot::{self, Labels, Series};
use super::super::report::{self, Goal, Table};
use super::super::session::Session;
use super::super::stats::{self, Stats, median};
use super::super::{machine, ms_since, say};
use super::Options;
use super::launch::{Image, Launcher, annotation, restore_from};

const PORT: u16 = 8080;
const GOAL_SPEEDUP: f64 = 10.0;

/// How a SlowStart start is waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Poll {
    /// A thread in the container's network namespace connects every 2 ms.
    Nsenter,
    /// `ctr t exec ID sh -c 'until wget ...'` (about 0.15 s more per start).
    Exec,
}

impl Poll {
    fn as_str(self) -> &'static str {
        match self {
            Poll::Nsenter => "nsenter",
            Poll::Exec => "exec",
        }
    }
}

/// One start; the JSON keys are the bash script's.
#[derive(Debug, Default, Serialize)]
struct Sample {
    kind: &'static str,
    i: u64,
    id: String,
    ok: bool,
    error: Option<String>,
    run_returned_ms: Option<f64>,
    first_response_ms: Option<f64>,
    restored: Option<bool>,
    body_matches: bool,
    loadavg_1m: Option<f64>,
    /// The app's own start-up report (cold) or CRIU's restore time (restored).
    #[serde(flatten)]
    extra: Map<String, Value>,
    #[serde(skip)]
    body: String,
}

/// A clone's second answer, which must say `requests=2`.
#[derive(Debug, Serialize)]
struct SecondRequest {
    kind: String,
    id: String,
    ok: bool,
    body: String,
}

struct Bench<'a> {
    session: &'a Session,
    launcher: Launcher<'a>,
    poll: Poll,
}

/// Measures SlowStart in `session`: cold against restored, then clones.
pub fn run(session: &Session, opts: &Options) -> Result<()> {
    let bench = Bench {
        session,
        launcher: Launcher {
            session,
            image: Image::prepare("startup-image.sh", session)?,
            timeout: Duration::from_secs(opts.start_timeout),
        },
        poll: opts.poll,
    };
    bench.measure_all(opts)
}

impl Bench<'_> {
    /// Polls container `id` until its service answers GET /; the body.
    fn poll_http(&self, id: &str) -> Result<String, String> {
        match self.poll {
            Poll::Nsenter => {
                let pid = self
                    .session
                    .init_pid(id)
                    .ok_or_else(|| format!("{id} has no init.pid"))?;
                http_probe::poll_ok(pid, PORT, "/", self.launcher.timeout).map(|a| a.body)
            }
            Poll::Exec => {
                static EXECS: AtomicUsize = AtomicUsize::new(0);
                let exec_id = format!("poll-{}-{id}", EXECS.fetch_add(1, Ordering::Relaxed));
                let script = format!(
                    "until wget -q -O- http://127.0.0.1:{PORT}/ 2>/dev/null; do usleep 10000; done"
                );
                let out = self.session.run_ctr(
                    &[
                        "tasks",
                        "exec",
                        "--exec-id",
                        &exec_id,
                        id,
                        "sh",
                        "-c",
                        &script,
                    ],
                    self.launcher.timeout,
                )?;
                if out.success() {
                    Ok(out.stdout_str())
                } else {
                    Err(format!("polling failed: {out}"))
                }
            }
        }
    }

    /// Whether the app started from scratch: its "initialising" line is in
    /// the container's output (a restored process never prints it).
    fn started_cold(&self, id: &str) -> bool {
        std::fs::read_to_string(self.launcher.log(id))
            .is_ok_and(|t| t.lines().any(|l| l.starts_with("slowstart: initialising")))
    }

    /// One timed start of kind `kind`, measured from just before `ctr run`.
    fn timed_start(
        &self,
        kind: &'static str,
        i: u64,
        id: &str,
        opts: &[String],
        reference: &str,
    ) -> Sample {
        let mut s = Sample {
            kind,
            i,
            id: id.to_string(),
            loadavg_1m: machine::loadavg_1m(),
            ..Sample::default()
        };
        let t0 = Instant::now();
        let result = self.launcher.start(id, opts).and_then(|()| {
            s.run_returned_ms = Some(ms_since(t0));
            self.poll_http(id).map_err(|e| {
                format!(
                    "no HTTP answer within {}s (task {}): {e}; {}",
                    self.launcher.timeout.as_secs(),
                    self.session.status_word(id),
                    tail(&self.launcher.log(id), 3)
                )
            })
        });
        if let Ok(body) = &result {
            s.first_response_ms = Some(ms_since(t0));
            s.restored = Some(!self.started_cold(id));
            s.body = body.clone();
        }
        self.finish(s, result.map(|_| ()), reference)
    }

    fn finish(&self, mut s: Sample, result: Result<(), String>, reference: &str) -> Sample {
        s.body_matches = s.body == reference;
        s.error = match result {
            Err(e) => Some(e),
            Ok(()) if !s.body_matches => {
                Some(format!("the body differs from the reference: {}", s.body))
            }
            Ok(()) => None,
        };
        s.ok = s.error.is_none();
        s
    }

    fn measure_all(&self, opts: &Options) -> Result<()> {
        let session = self.session;
        let store = session.work.join("store");
        std::fs::create_dir_all(&store)?;
        let load_before = machine::loadavg();
        let started = machine::now_utc();

        // ------------------------------------------------------ ready point
        let ready_id = "ss-ready";
        say(format!(
            "ready point: {ready_id} checkpoints itself into {} when it listens on {PORT}",
            store.display()
        ));
        let point = self
            .launcher
            .ready_point(
                ready_id,
                &annotation("checkpoint-when-ready", format!("tcp:{PORT}")),
                &store,
            )
            .map_err(|e| anyhow!("the ready-point container: {e}"))?;
        let (ready_ms, ready_shim_cpu_s, manifest, cp_du) = (
            point.after_ms,
            point.shim_cpu_s,
            point.manifest,
            point.dir_bytes,
        );
        // After the checkpoint, the ready container answers; its first answer
        // is the reference body every start must give (the checkpoint was
        // taken before any request, so a restored clone's first answer says
        // requests=1 too).
        let reference = self.poll_http(ready_id).map_err(|e| {
            anyhow!("the ready-point container does not answer after its checkpoint: {e}")
        })?;
        let ready_app = app_report(&self.launcher.log(ready_id));
        let t = &manifest["timings"];
        say(format!(
            "checkpoint after {ready_ms} ms: {:.0} MiB, frozen {} ms, dump {:.0} ms, persist {:.0} ms",
            manifest["bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
            t["frozenMs"],
            t["dumpMs"].as_f64().unwrap_or(f64::NAN),
            t["persistMs"].as_f64().unwrap_or(f64::NAN)
        ));
        say(format!(
            "reference body: {}",
            reference.lines().next().unwrap_or("")
        ));
        session.remove(&[ready_id]);
        let restore_from = restore_from(&point.dir);

        // ------------------------------------------ cold against restored
        let mut samples: Vec<Sample> = Vec::new();
        say(format!(
            "cold and restored starts: {} each, interleaved (polling: {})",
            opts.runs,
            self.poll.as_str()
        ));
        for i in 0..opts.runs {
            let order = if i % 2 == 0 {
                ["cold", "restored"]
            } else {
                ["restored", "cold"]
            };
            for kind in order {
                let id = format!("ss-{kind}-{i}");
                let mut s = if kind == "cold" {
                    let mut s = self.timed_start("cold", i, &id, &[], &reference);
                    s.extra = app_report(&self.launcher.log(&id))
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    s
                } else {
                    let mut s = self.timed_start("restored", i, &id, &restore_from, &reference);
                    if let Some(r) = self.launcher.criu_restore(&id) {
                        s.extra.insert("criu_restore_s".into(), r.total_s.into());
                    }
                    s
                };
                if s.restored == Some(false) && kind == "restored" {
                    s.ok = false;
                    s.error = Some(format!(
                        "the restore fell back to a cold start (see the shim's warning in {})",
                        session.instance.containerd_log().display()
                    ));
                }
                eprintln!(
                    "    {kind:<9} {i}  ctr run {:>8} ms  first answer {:>9} ms  {}",
                    report::num(s.run_returned_ms, 3),
                    report::num(s.first_response_ms, 3),
                    s.error.as_deref().unwrap_or("ok")
                );
                samples.push(s);
                session.remove(&[&id]);
            }
        }

        // ----------------------------------------------------------- clones
        let mut seconds: Vec<SecondRequest> = Vec::new();
        say(format!("{} clones, one after the other", opts.clones));
        let seq_ids: Vec<String> = (1..=opts.clones).map(|c| format!("ss-seq-{c}")).collect();
        let t_all = Instant::now();
        for (c, id) in (1..).zip(&seq_ids) {
            let s = self.timed_start("clone-sequential", c, id, &restore_from, &reference);
            samples.push(self.fell_back(s));
        }
        let seq_total = ms_since(t_all);
        seconds.extend(self.second_requests("clone-sequential", &seq_ids));
        session.remove(&seq_ids.iter().map(String::as_str).collect::<Vec<_>>());

        say(format!("{} clones, launched all at once", opts.clones));
        let par_ids: Vec<String> = (1..=opts.clones).map(|c| format!("ss-par-{c}")).collect();
        let t_all = Instant::now();
        let parallel: Vec<Sample> = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..)
                .zip(&par_ids)
                .map(|(c, id)| {
                    let (restore_from, reference) = (&restore_from, &reference);
                    scope.spawn(move || {
                        let mut s = Sample {
                            kind: "clone-parallel",
                            i: c,
                            id: id.clone(),
                            loadavg_1m: machine::loadavg_1m(),
                            ..Sample::default()
                        };
                        let result = self.launcher.start(id, restore_from).and_then(|()| {
                            s.run_returned_ms = Some(ms_since(t_all));
                            self.poll_http(id).map_err(|e| {
                                format!(
                                    "no HTTP answer within {}s: {e}",
                                    self.launcher.timeout.as_secs()
                                )
                            })
                        });
                        if let Ok(body) = &result {
                            s.first_response_ms = Some(ms_since(t_all));
                            s.restored = Some(!self.started_cold(id));
                            s.body = body.clone();
                        }
                        self.fell_back(self.finish(s, result.map(|_| ()), reference))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a clone thread panicked"))
                .collect()
        });
        let par_total = ms_since(t_all);
        samples.extend(parallel);
        seconds.extend(self.second_requests("clone-parallel", &par_ids));
        session.remove(&par_ids.iter().map(String::as_str).collect::<Vec<_>>());
        let load_after = machine::loadavg();

        // ---------------------------------------------------------- results
        let ok = |kind: &'static str| samples.iter().filter(move |s| s.kind == kind && s.ok);
        let failed = |kind: &str| samples.iter().filter(|s| s.kind == kind && !s.ok).count();
        let first = |kind: &'static str| Stats::of(ok(kind).map(|s| s.first_response_ms));
        let (cold, restored) = (first("cold"), first("restored"));
        let speedup = stats::ratio(median(&cold), median(&restored)).map(|r| stats::round(r, 2));
        let paired = stats::paired_median((0..opts.runs).map(|i| {
            let at = |kind: &'static str| {
                ok(kind)
                    .find(|s| s.i == i)
                    .and_then(|s| s.first_response_ms)
            };
            (at("cold"), at("restored"))
        }))
        .map(|r| stats::round(r, 2));
        let independent = |kind: &str| {
            seconds
                .iter()
                .filter(|s| s.kind == format!("{kind}-second-request") && s.ok)
                .count()
        };
        let clones_summary = |kind: &'static str, total: f64| {
            json!({
                "per_clone_first_response_ms": first(kind),
                "total_ms": total,
                "answered": ok(kind).count(),
                "of": opts.clones,
                "independent": independent(kind),
            })
        };
        let summary = json!({
            "cold_first_response_ms": cold,
            "restored_first_response_ms": restored,
            "cold_run_returned_ms": Stats::of(ok("cold").map(|s| s.run_returned_ms)),
            "restored_run_returned_ms": Stats::of(ok("restored").map(|s| s.run_returned_ms)),
            "cold_app_listening_after_ms": Stats::of(ok("cold").map(|s| s.extra.get("app_listening_after_ms").and_then(Value::as_f64))),
            "restored_criu_restore_ms": Stats::of(ok("restored").map(|s| s.extra.get("criu_restore_s").and_then(Value::as_f64).map(|x| x * 1000.0))),
            "speedup_median": speedup,
            "speedup_paired_median": paired,
            "failed": { "cold": failed("cold"), "restored": failed("restored") },
            "ready_point": {
                "checkpoint_after_ms": ready_ms, "shim_cpu_s_until_checkpoint": ready_shim_cpu_s,
                "checkpoint_dir_bytes": cp_du, "manifest": manifest, "app": ready_app,
            },
            "clones_sequential": clones_summary("clone-sequential", seq_total),
            "clones_parallel": clones_summary("clone-parallel", par_total),
        });
        let n = opts.clones as usize;
        let goals = json!({
            "restored_speedup": Goal::number(speedup, format!(">= {GOAL_SPEEDUP}"), |v| v >= GOAL_SPEEDUP),
            "clones_answer": Goal {
                value: (ok("clone-sequential").count() + ok("clone-parallel").count()).into(),
                goal: format!("all {} clones answer with the reference body, and each answers a second request with requests=2", 2 * n),
                met: ok("clone-sequential").count() == n && ok("clone-parallel").count() == n
                    && independent("clone-sequential") == n && independent("clone-parallel") == n,
            },
        });
        let java_home = std::env::var("JAVA_HOME")
            .unwrap_or_else(|_| "/usr/lib/jvm/java-17-openjdk-amd64".into());
        let java = java_version(&java_home);
        let mut machine_json = session.machine(
            &["shim", "oci", "Cargo.toml", "Cargo.lock", "hack/bench"],
            &load_before,
            &load_after,
        );
        machine_json["java"] = java.into();
        let all_samples: Vec<Value> = samples
            .iter()
            .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
            .chain(
                seconds
                    .iter()
                    .map(|s| serde_json::to_value(s).unwrap_or(Value::Null)),
            )
            .collect();
        let doc = json!({
            "summary": summary,
            "goals": goals,
            "config": {
                "runs": opts.runs, "clones": opts.clones, "poll": self.poll, "image": self.launcher.image.name, "command": self.launcher.image.command,
                "reference_body": reference,
                "measured": "from just before `ctr run -d` to the first HTTP 200 on 127.0.0.1:8080 inside the container (same polling for every start)",
                "order": "cold and restored alternate (cold first on even runs); each start is a fresh container, removed afterwards",
            },
            "machine": machine_json,
            "started": started, "finished": machine::now_utc(),
            "samples": all_samples,
        });
        report::write_json(&session.out, &doc)?;

        let mut t = Table::new(&["start", "n", "median ms", "p10", "p90", "min", "max"]);
        let seq = first("clone-sequential");
        let par = first("clone-parallel");
        for (name, st) in [
            ("cold (ctr run -> first answer)", &cold),
            ("restored from ready point", &restored),
            ("clone, sequential", &seq),
            ("clone, all at once", &par),
        ] {
            let f = |g: fn(&Stats) -> f64| report::num(st.as_ref().map(g), 1);
            t.row(vec![
                name.into(),
                st.as_ref().map_or("-".into(), |s| s.n.to_string()),
                f(|s| s.median),
                f(|s| s.p10),
                f(|s| s.p90),
                f(|s| s.min),
                f(|s| s.max),
            ]);
        }
        print!("{}", t.render());
        let s = &doc["summary"];
        let fmt = |v: &Value| {
            if v.is_null() {
                "-".to_string()
            } else {
                format!("{v}")
            }
        };
        let med = |v: &Value| fmt(&v["median"]);
        println!(
            "({} cold and {} restored starts, interleaved; failed: cold {}, restored {})",
            opts.runs, opts.runs, s["failed"]["cold"], s["failed"]["restored"]
        );
        println!(
            "ctr run -d returned after: cold {} ms, restored {} ms (of which criu restore {} ms); the app itself reported listening {} ms after it started (cold; medians)",
            med(&s["cold_run_returned_ms"]),
            med(&s["restored_run_returned_ms"]),
            med(&s["restored_criu_restore_ms"]),
            med(&s["cold_app_listening_after_ms"])
        );
        let m = &s["ready_point"]["manifest"];
        let mb = |v: &Value| {
            v.as_f64()
                .map_or("-".into(), |b| format!("{:.1}", b / 1_048_576.0))
        };
        let floor = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{}", x.floor()));
        println!(
            "ready-point checkpoint: {} MiB (memory {} MiB), frozen {} ms, dump {} ms, persist {} ms; taken {ready_ms} ms after ctr run (the app reported listening after {} ms; its shim had used {} s of CPU)",
            mb(&m["bytes"]),
            mb(&m["memoryBytes"]),
            fmt(&m["timings"]["frozenMs"]),
            floor(&m["timings"]["dumpMs"]),
            floor(&m["timings"]["persistMs"]),
            fmt(&s["ready_point"]["app"]["app_listening_after_ms"]),
            report::num(ready_shim_cpu_s, 2)
        );
        let (cs, cp_) = (&s["clones_sequential"], &s["clones_parallel"]);
        println!(
            "clones: sequential {}/{} answered in {} ms total, {} answered a 2nd request on their own; all at once {}/{} in {} ms total, {} independent\n",
            cs["answered"],
            cs["of"],
            cs["total_ms"],
            cs["independent"],
            cp_["answered"],
            cp_["of"],
            cp_["total_ms"],
            cp_["independent"]
        );
        let g = &doc["goals"];
        println!(
            "goal: restored >= {GOAL_SPEEDUP}x faster than cold (medians)   {}x (paired median {}x)  {}",
            report::num(speedup, 2),
            report::num(paired, 2),
            report::verdict(g["restored_speedup"]["met"] == true)
        );
        println!(
            "clones answer independently                                  {}",
            report::verdict(g["clones_answer"]["met"] == true)
        );
        let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
        if !failed.is_empty() {
            say(format!("{} sample(s) failed:", failed.len()));
            for s in failed {
                eprintln!(
                    "    {} {} {}: {}",
                    s.kind,
                    s.i,
                    s.id,
                    s.error.as_deref().unwrap_or("")
                );
            }
        }
        for s in seconds.iter().filter(|s| !s.ok) {
            eprintln!("    {} {}: {}", s.kind, s.id, s.body);
        }

        let points = |kind: &'static str| -> Vec<(f64, f64)> {
            // Runs count from 0, clones from 1: both plotted from 1.
            let from_one = u64::from(kind == "cold" || kind == "restored");
            ok(kind)
                .filter_map(|s| Some(((s.i + from_one) as f64, s.first_response_ms?)))
                .collect()
        };
        plot::lines(
            &session.plot_path("first-response"),
            &Labels {
                title: "Start-up: ctr run to first HTTP answer",
                x: "run / clone",
                y: "first answer (ms)",
            },
            &[
                Series {
                    name: "cold".into(),
                    points: points("cold"),
                },
                Series {
                    name: "restored from ready point".into(),
                    points: points("restored"),
                },
                Series {
                    name: "clone, sequential".into(),
                    points: points("clone-sequential"),
                },
                Series {
                    name: "clone, all at once".into(),
                    points: points("clone-parallel"),
                },
            ],
        )?;
        Ok(())
    }

    /// A restored start that printed the cold start-up line failed.
    fn fell_back(&self, mut s: Sample) -> Sample {
        if s.restored == Some(false) {
            s.ok = false;
            s.error = Some("the restore fell back to a cold start".into());
        }
        s
    }

    /// A second request to each clone: its own counter must say 2.
    fn second_requests(&self, kind: &str, ids: &[String]) -> Vec<SecondRequest> {
        ids.iter()
            .map(|id| {
                let body = self.poll_http(id).unwrap_or_default();
                let ok = body.trim_end_matches('\n').lines().last() == Some("requests=2");
                SecondRequest {
                    kind: format!("{kind}-second-request"),
                    id: id.clone(),
                    ok,
                    body,
                }
            })
            .collect()
    }
}

/// `java -version`'s second line (the runtime's name and build).
pub fn java_version(java_home: &str) -> String {
    std::process::Command::new(format!("{java_home}/bin/java"))
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .nth(1)
                .map(String::from)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The app's own start-up report, from its output line
/// `slowstart: listening on PORT after X ms (index Y ms, digest+warm-up Z ms)`.
fn app_report(log: &Path) -> Value {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().find_map(parse_app_line).unwrap_or(Value::Null)
}

fn parse_app_line(line: &str) -> Option<Value> {
    let rest = line.strip_prefix("slowstart: listening on ")?;
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers.as_slice() {
        [_port, after, index, warmup, ..] => Some(json!({
            "app_listening_after_ms": after, "app_index_ms": index, "app_warmup_ms": warmup,
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_line() {
        let v = parse_app_line(
            "slowstart: listening on 8080 after 5123 ms (index 3000 ms, digest+warm-up 2100 ms)",
        )
        .unwrap();
        assert_eq!(v["app_listening_after_ms"], 5123);
        assert_eq!(v["app_index_ms"], 3000);
        assert_eq!(v["app_warmup_ms"], 2100);
        assert!(parse_app_line("slowstart: initialising (docs=1, queries=2)").is_none());
    }
}
