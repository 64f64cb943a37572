//! The start-up benchmark on a real server: Debian bookworm's Tomcat 10
//! with its examples webapp (hack/bench/tomcat-image.sh). Tomcat binds 8080
//! when its connector initialises, about half a second into its start, then
//! deploys its webapps and serves only after that: the moment it listens is
//! not the moment it is ready.
//!
//! Every start waits for the first 2xx answer to GET [`PATH`], a JSP of the
//! examples. Its first request makes Jasper compile it (with the Eclipse
//! compiler, loading hundreds of classes): a 2xx means the examples are
//! deployed and the page a user asks for is compiled, the wait a user's
//! first request would see. The same path is the http: probe's, so the
//! http: ready points hold the compiled page.
//!
//! - ready points, one container each, waited for without touching the app
//!   (a connection Tomcat has not accepted yet would be an in-flight
//!   connection CRIU refuses to dump): `tcp:8080`, `http:8080/PATH` and
//!   `http:8080/PATH` with `warm-up=N` (`--warm-up`); reported: time to the
//!   committed checkpoint, when the condition fired, its attempts, the
//!   warm-up's time, memory and size, and the manifest's timings.
//! - cold against restored: `--runs` rounds, each a cold start and a start
//!   from each ready point, in an order rotating per round; each timed from
//!   just before `ctr run -d` to the first 2xx, polled every 2 ms from a
//!   thread in the container's network namespace (a connection Tomcat
//!   accepts before it serves waits for its answer). Every answer must
//!   equal the first ready-point container's. A start that printed Tomcat's
//!   start-up banner (VersionLoggerListener) started cold and is reported.
//! - clones: `--clones` containers from the warm-up ready point, then as
//!   many from the http: one, one after the other, all running until the
//!   last; for each, the time of its first successful request and of a
//!   second one (request written to answer read), and the session cookie
//!   its first answer set (every request of the JSP opens a session).
//!
//! Goals: restored from the http: ready point >= 10x faster than cold
//! (ratio of the medians); with warm-up, a clone's first and second
//! requests within 10 ms of each other (median over the clones of
//! |first - second|); every clone answers.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use serde_json::{Value, json};

use super::super::http_probe::{self, Answer};
use super::super::plot::{self, Labels, Series};
use super::super::report::{self, Goal, Table};
use super::super::session::Session;
use super::super::stats::{self, Stats, median};
use super::super::{machine, ms_since, say};
use super::Options;
use super::launch::{Image, Launcher, ReadyPoint, annotation, restore_from};

const PORT: u16 = 8080;
/// See the module's doc: a JSP of Debian's tomcat10-examples.
const PATH: &str = "/examples/jsp/jsp2/el/basic-arithmetic.jsp";
const GOAL_SPEEDUP: f64 = 10.0;
const GOAL_FIRST_SECOND_MS: f64 = 10.0;
/// Printed by Tomcat's VersionLoggerListener as it starts from scratch; a
/// restored process is past it.
const COLD_BANNER: &str = "Server version name:";

/// A ready point to take: its name in results and its probe annotations.
struct PointSpec {
    name: &'static str,
    probe: Vec<String>,
}

fn point_specs(warm_up: u64) -> Vec<PointSpec> {
    let http = annotation("checkpoint-when-ready", format!("http:{PORT}{PATH}"));
    let mut warm = http.to_vec();
    warm.extend(annotation("checkpoint-when-ready.warm-up", warm_up));
    vec![
        PointSpec {
            name: "tcp",
            probe: annotation("checkpoint-when-ready", format!("tcp:{PORT}")).to_vec(),
        },
        PointSpec {
            name: "http",
            probe: http.to_vec(),
        },
        PointSpec {
            name: "warm-up",
            probe: warm,
        },
    ]
}

/// One start or clone.
#[derive(Debug, Default, Serialize)]
struct Start {
    /// "cold", or the ready point it was restored from ("tcp", "http",
    /// "warm-up"); clones: "clone-warm-up", "clone-http".
    kind: String,
    /// The round (starts, from 0) or the clone's number (from 1).
    i: u64,
    id: String,
    ok: bool,
    error: Option<String>,
    run_returned_ms: Option<f64>,
    first_response_ms: Option<f64>,
    /// The successful request's own time (written to answer read).
    first_request_ms: Option<f64>,
    /// Clones: a second request right after the first.
    second_request_ms: Option<f64>,
    criu_restore_ms: Option<f64>,
    /// Of which reading the memory pages into place.
    criu_pages_ms: Option<f64>,
    /// Cold: Tomcat's own "Server startup in [N] milliseconds".
    tomcat_startup_ms: Option<f64>,
    started_cold: Option<bool>,
    body_matches: bool,
    session_cookie: Option<String>,
    loadavg_1m: Option<f64>,
}

/// A ready point as taken (or not).
#[derive(Debug, Serialize)]
struct PointResult {
    name: &'static str,
    id: String,
    error: Option<String>,
    checkpoint_after_ms: Option<f64>,
    shim_cpu_s: Option<f64>,
    checkpoint_dir_bytes: Option<u64>,
    manifest: Value,
}

struct Bench<'a> {
    launcher: Launcher<'a>,
    session: &'a Session,
    /// The first ready-point container's answer, which every start must give.
    reference: String,
}

/// Measures Tomcat in `session` and writes its results to `out`.
pub fn run(session: &Session, opts: &Options, out: &Path) -> Result<()> {
    let launcher = Launcher {
        session,
        image: Image::prepare("tomcat-image.sh", session)?,
        timeout: Duration::from_secs(opts.start_timeout),
    };
    let store = session.work.join("store");
    std::fs::create_dir_all(&store)?;
    let load_before = machine::loadavg();
    let started = machine::now_utc();
    let mut bench = Bench {
        launcher,
        session,
        reference: String::new(),
    };

    let points = bench.ready_points(&point_specs(opts.warm_up), &store);
    let restorable: Vec<(&'static str, &Path)> = points
        .iter()
        .filter_map(|(r, p)| Some((r.name, p.as_ref()?.dir.as_path())))
        .collect();
    let mut starts = bench.cold_and_restored(opts.runs, &restorable);
    for name in ["warm-up", "http"] {
        if let Some((_, dir)) = restorable.iter().find(|(n, _)| *n == name) {
            starts.extend(bench.clones(name, dir, opts.clones));
        }
    }
    let results: Vec<PointResult> = points.into_iter().map(|(r, _)| r).collect();

    let doc = report_all(&bench, opts, &results, &starts, (&load_before, &started));
    report::write_json(out, &doc)?;
    print_tables(&doc, opts);
    plot_all(session, &starts)?;
    Ok(())
}

impl Bench<'_> {
    /// Takes each ready point in turn. The first that is taken gives the
    /// reference answer, asked of its container after the checkpoint.
    fn ready_points(
        &mut self,
        specs: &[PointSpec],
        store: &Path,
    ) -> Vec<(PointResult, Option<ReadyPoint>)> {
        specs
            .iter()
            .map(|spec| {
                let id = format!("tc-ready-{}", spec.name);
                say(format!(
                    "Tomcat ready point {}: {}",
                    spec.name,
                    spec.probe.join(" ")
                ));
                let taken = self.launcher.ready_point(&id, &spec.probe, store);
                if let Ok(p) = &taken {
                    say(format!(
                        "  checkpoint after {} ms: {}",
                        p.after_ms, p.manifest["ready"]
                    ));
                    if self.reference.is_empty() {
                        match self.poll(&id) {
                            Ok(a) => self.reference = a.body,
                            Err(e) => say(format!(
                                "  WARNING: {id} does not answer after its checkpoint: {e}"
                            )),
                        }
                    }
                }
                self.session.remove(&[&id]);
                let result = PointResult {
                    name: spec.name,
                    error: taken.as_ref().err().cloned(),
                    checkpoint_after_ms: taken.as_ref().ok().map(|p| p.after_ms),
                    shim_cpu_s: taken.as_ref().ok().and_then(|p| p.shim_cpu_s),
                    checkpoint_dir_bytes: taken.as_ref().ok().and_then(|p| p.dir_bytes),
                    manifest: taken.as_ref().map_or(Value::Null, |p| p.manifest.clone()),
                    id,
                };
                if let Some(e) = &result.error {
                    say(format!("  FAILED: {e}"));
                }
                (result, taken.ok())
            })
            .collect()
    }

    /// `runs` rounds of a cold start and a start from each ready point, in
    /// an order that rotates per round.
    fn cold_and_restored(&self, runs: u64, points: &[(&'static str, &Path)]) -> Vec<Start> {
        let mut kinds: Vec<(&'static str, Vec<String>)> = vec![("cold", Vec::new())];
        kinds.extend(points.iter().map(|(name, dir)| (*name, restore_from(dir))));
        say(format!(
            "Tomcat: {runs} rounds of {} starts each",
            kinds.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
        ));
        let mut starts = Vec::new();
        for round in 0..runs {
            for k in 0..kinds.len() {
                let (kind, opts) = &kinds[(k + round as usize) % kinds.len()];
                let id = format!("tc-{kind}-{round}");
                let s = self.timed_start(kind, round, &id, opts);
                eprintln!(
                    "    {kind:<8} {round}  ctr run {:>8} ms  first 2xx {:>9} ms  {}",
                    report::num(s.run_returned_ms, 1),
                    report::num(s.first_response_ms, 1),
                    s.error.as_deref().unwrap_or("ok")
                );
                starts.push(s);
                self.session.remove(&[&id]);
            }
        }
        starts
    }

    /// `n` clones from the ready point `name` in `dir`, one after the other,
    /// each asked twice; removed once the last has answered.
    fn clones(&self, name: &str, dir: &Path, n: u64) -> Vec<Start> {
        say(format!("Tomcat: {n} clones from the {name} ready point"));
        let kind = format!("clone-{name}");
        let opts = restore_from(dir);
        let clones: Vec<Start> = (1..=n)
            .map(|c| {
                let mut s = self.timed_start(&kind, c, &format!("tc-{kind}-{c}"), &opts);
                if s.ok {
                    match self.get(&s.id) {
                        Ok(a) => s.second_request_ms = Some(a.request_ms),
                        Err(e) => self.fail(&mut s, format!("second request: {e}")),
                    }
                }
                eprintln!(
                    "    {kind} {c}  first 2xx {:>8} ms  requests {} / {} ms  {}",
                    report::num(s.first_response_ms, 1),
                    report::num(s.first_request_ms, 1),
                    report::num(s.second_request_ms, 1),
                    s.error.as_deref().unwrap_or("ok")
                );
                s
            })
            .collect();
        let ids: Vec<&str> = clones.iter().map(|s| s.id.as_str()).collect();
        self.session.remove(&ids);
        clones
    }

    /// One start of container `id` with `opts`, timed from just before
    /// `ctr run` to the first 2xx.
    fn timed_start(&self, kind: &str, i: u64, id: &str, opts: &[String]) -> Start {
        let mut s = Start {
            kind: kind.to_string(),
            i,
            id: id.to_string(),
            loadavg_1m: machine::loadavg_1m(),
            ..Start::default()
        };
        let t0 = Instant::now();
        let answer = self.launcher.start(id, opts).and_then(|()| {
            s.run_returned_ms = Some(ms_since(t0));
            self.poll(id)
        });
        let log = std::fs::read_to_string(self.launcher.log(id)).unwrap_or_default();
        s.started_cold = Some(log.contains(COLD_BANNER));
        s.tomcat_startup_ms = tomcat_startup_ms(&log);
        if kind != "cold"
            && let Some(r) = self.launcher.criu_restore(id)
        {
            s.criu_restore_ms = Some(stats::round(r.total_s * 1000.0, 3));
            s.criu_pages_ms = Some(stats::round(r.pages_s * 1000.0, 3));
        }
        match answer {
            Ok(a) => {
                s.first_response_ms = Some(ms_since(t0));
                s.first_request_ms = Some(a.request_ms);
                s.body_matches = a.body == self.reference;
                s.session_cookie = a.cookie;
                s.ok = true;
                if !s.body_matches {
                    self.fail(
                        &mut s,
                        format!("the answer differs from the reference: {}", a.body),
                    );
                } else if kind != "cold" && s.started_cold == Some(true) {
                    self.fail(&mut s, "the restore fell back to a cold start".into());
                }
            }
            Err(e) => self.fail(&mut s, e),
        }
        s
    }

    fn fail(&self, s: &mut Start, error: String) {
        s.ok = false;
        s.error = Some(error);
    }

    /// Polls container `id` until GET [`PATH`] answers 2xx.
    fn poll(&self, id: &str) -> Result<Answer, String> {
        let pid = self
            .session
            .init_pid(id)
            .ok_or_else(|| format!("{id} has no init.pid"))?;
        http_probe::poll_ok(pid, PORT, PATH, self.launcher.timeout).map_err(|e| {
            format!(
                "{e} (task {}, {})",
                self.session.status_word(id),
                super::super::memtick_workload::tail(&self.launcher.log(id), 2)
            )
        })
    }

    /// One GET [`PATH`] of container `id`, which must answer 2xx.
    fn get(&self, id: &str) -> Result<Answer, String> {
        let pid = self
            .session
            .init_pid(id)
            .ok_or_else(|| format!("{id} has no init.pid"))?;
        http_probe::get_ok(pid, PORT, PATH, self.launcher.timeout)
    }
}

/// Tomcat's own start-up time, from its line
/// `... Catalina.start Server startup in [1118] milliseconds`.
fn tomcat_startup_ms(log: &str) -> Option<f64> {
    let rest = log
        .lines()
        .find_map(|l| l.split_once("Server startup in ["))?
        .1;
    rest.split(']').next()?.trim().parse().ok()
}

/// The successful starts of `kind`.
fn ok<'a>(starts: &'a [Start], kind: &'a str) -> impl Iterator<Item = &'a Start> + 'a {
    starts.iter().filter(move |s| s.kind == kind && s.ok)
}

fn stats_of(starts: &[Start], kind: &str, field: fn(&Start) -> Option<f64>) -> Option<Stats> {
    Stats::of(ok(starts, kind).map(field))
}

/// Per clone kind: what the clones' two requests and cookies say.
fn clone_summary(starts: &[Start], kind: &str) -> Value {
    let all = starts.iter().filter(|s| s.kind == kind).count();
    let gaps =
        || ok(starts, kind).map(|s| Some((s.first_request_ms? - s.second_request_ms?).abs()));
    let cookies: BTreeSet<&str> = ok(starts, kind)
        .filter_map(|s| s.session_cookie.as_deref())
        .collect();
    json!({
        "of": all,
        "answered": ok(starts, kind).count(),
        "answered_twice": ok(starts, kind).filter(|s| s.second_request_ms.is_some()).count(),
        "first_response_ms": stats_of(starts, kind, |s| s.first_response_ms),
        "run_returned_ms": stats_of(starts, kind, |s| s.run_returned_ms),
        "first_request_ms": stats_of(starts, kind, |s| s.first_request_ms),
        "second_request_ms": stats_of(starts, kind, |s| s.second_request_ms),
        "first_second_gap_ms": Stats::of(gaps()),
        "distinct_session_cookies": cookies.len(),
    })
}

/// The JSON document: summary, goals, configuration, machine, samples.
fn report_all(
    bench: &Bench,
    opts: &Options,
    points: &[PointResult],
    starts: &[Start],
    (load_before, started): (&str, &str),
) -> Value {
    let cold = stats_of(starts, "cold", |s| s.first_response_ms);
    let mut restored = serde_json::Map::new();
    for p in points {
        let first = stats_of(starts, p.name, |s| s.first_response_ms);
        let speedup = stats::ratio(median(&cold), median(&first)).map(|r| stats::round(r, 2));
        let paired = stats::paired_median((0..opts.runs).map(|round| {
            let at = |kind: &str| {
                ok(starts, kind)
                    .find(|s| s.i == round)
                    .and_then(|s| s.first_response_ms)
            };
            (at("cold"), at(p.name))
        }))
        .map(|r| stats::round(r, 2));
        restored.insert(
            p.name.into(),
            json!({
                "first_response_ms": first,
                "run_returned_ms": stats_of(starts, p.name, |s| s.run_returned_ms),
                "criu_restore_ms": stats_of(starts, p.name, |s| s.criu_restore_ms),
                "criu_pages_ms": stats_of(starts, p.name, |s| s.criu_pages_ms),
                "first_request_ms": stats_of(starts, p.name, |s| s.first_request_ms),
                "speedup_median": speedup,
                "speedup_paired_median": paired,
                "failed": starts.iter().filter(|s| s.kind == p.name && !s.ok).count(),
            }),
        );
    }
    let summary = json!({
        "cold": {
            "first_response_ms": cold,
            "run_returned_ms": stats_of(starts, "cold", |s| s.run_returned_ms),
            "tomcat_startup_ms": stats_of(starts, "cold", |s| s.tomcat_startup_ms),
            "failed": starts.iter().filter(|s| s.kind == "cold" && !s.ok).count(),
        },
        "restored": restored,
        "ready_points": points,
        "clones": {
            "warm-up": clone_summary(starts, "clone-warm-up"),
            "http": clone_summary(starts, "clone-http"),
        },
    });
    let warm = &summary["clones"]["warm-up"];
    let n = opts.clones;
    let goals = json!({
        "http_speedup": Goal::number(
            summary["restored"]["http"]["speedup_median"].as_f64(),
            format!(">= {GOAL_SPEEDUP}x faster than cold (medians), restored from the http: ready point"),
            |v| v >= GOAL_SPEEDUP,
        ),
        "warm_up_first_second": Goal::number(
            warm["first_second_gap_ms"]["median"].as_f64(),
            format!("<= {GOAL_FIRST_SECOND_MS} ms between a warm-up clone's first and second request (median over clones)"),
            |v| v <= GOAL_FIRST_SECOND_MS,
        ),
        "clones_answer": Goal {
            value: json!([warm["answered_twice"], summary["clones"]["http"]["answered_twice"]]),
            goal: format!("all {n} clones of each point answer twice with the reference page"),
            met: [warm, &summary["clones"]["http"]].iter().all(|c| c["answered_twice"] == n),
        },
    });
    let mut machine_json = bench.session.machine(
        &["shim", "oci", "Cargo.toml", "Cargo.lock", "hack/bench"],
        load_before,
        &machine::loadavg(),
    );
    machine_json["image_packages"] = image_packages();
    let samples: Vec<Value> = starts
        .iter()
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
        .collect();
    json!({
        "summary": summary,
        "goals": goals,
        "config": {
            "runs": opts.runs, "clones": opts.clones, "warm_up": opts.warm_up,
            "port": PORT, "path": PATH,
            "image": bench.launcher.image.name, "command": bench.launcher.image.command,
            "reference_body_bytes": bench.reference.len(),
            "measured": "from just before `ctr run -d` to the first 2xx answer to GET PATH on 127.0.0.1:8080 inside the container, polled every 2 ms; a request's time runs from writing it to reading its answer's end",
            "order": "per round a cold start and one from each ready point, the order rotating by one each round; each start is a fresh container, removed afterwards; clones stay up until the last of their point has answered",
        },
        "machine": machine_json,
        "started": started, "finished": machine::now_utc(),
        "samples": samples,
    })
}

/// The versions of Tomcat and the Java runtime in the image, from the
/// package list its build wrote.
fn image_packages() -> Value {
    let list = containerd_migrate_tests::fixture::repo_root().join("target/images/tomcat.packages");
    let text = std::fs::read_to_string(list).unwrap_or_default();
    let versions: serde_json::Map<String, Value> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| name.starts_with("tomcat10") || name.starts_with("openjdk"))
        .map(|(name, version)| (name.to_string(), version.into()))
        .collect();
    versions.into()
}

fn print_tables(doc: &Value, opts: &Options) {
    let s = &doc["summary"];
    let med = |v: &Value| report::num(v["median"].as_f64(), 1);
    println!("Tomcat: ctr run to the first 2xx of GET PATH = {PATH}");
    let mut t = Table::new(&[
        "start",
        "n",
        "median ms",
        "p10",
        "p90",
        "min",
        "max",
        "ctr run",
        "CRIU",
        "pages",
        "x cold",
        "paired",
    ]);
    let mut row = |name: String, v: &Value, speedups: (&Value, &Value)| {
        let f = &v["first_response_ms"];
        let num = |k: &str| report::num(f[k].as_f64(), 1);
        t.row(vec![
            name,
            f["n"].as_u64().map_or("-".into(), |n| n.to_string()),
            num("median"),
            num("p10"),
            num("p90"),
            num("min"),
            num("max"),
            med(&v["run_returned_ms"]),
            med(&v["criu_restore_ms"]),
            med(&v["criu_pages_ms"]),
            report::num(speedups.0.as_f64(), 2),
            report::num(speedups.1.as_f64(), 2),
        ]);
    };
    row("cold".into(), &s["cold"], (&Value::Null, &Value::Null));
    for p in s["ready_points"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        let r = &s["restored"][name];
        row(
            format!("restored from {}", point_label(name, opts.warm_up)),
            r,
            (&r["speedup_median"], &r["speedup_paired_median"]),
        );
    }
    print!("{}", t.render());
    println!(
        "({} rounds; ctr run (returned), CRIU (its restore) and pages (CRIU reading memory into place): medians, ms; x cold: ratio of the medians, paired: median of the per-round ratios; Tomcat itself reported starting in {} ms, cold)\n",
        opts.runs,
        med(&s["cold"]["tomcat_startup_ms"])
    );

    let mut t = Table::new(&[
        "ready point",
        "taken after ms",
        "fired after ms",
        "attempts",
        "warm-up ms",
        "memory MiB",
        "threads",
        "size MiB",
        "frozen ms",
        "dump ms",
        "persist ms",
    ]);
    for p in s["ready_points"].as_array().into_iter().flatten() {
        let m = &p["manifest"];
        let ms = |v: &Value| report::num(v.as_f64(), 1);
        let mib = |v: &Value| report::num(v.as_f64().map(|b| b / 1_048_576.0), 1);
        t.row(vec![
            point_label(p["name"].as_str().unwrap_or(""), opts.warm_up),
            ms(&p["checkpoint_after_ms"]),
            ms(&m["ready"]["afterMs"]),
            m["ready"]["attempts"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
            ms(&m["ready"]["warmUp"]["ms"]),
            mib(&m["memoryBytes"]),
            m["threads"].as_u64().map_or("-".into(), |n| n.to_string()),
            mib(&m["bytes"]),
            ms(&m["timings"]["frozenMs"]),
            ms(&m["timings"]["dumpMs"]),
            ms(&m["timings"]["persistMs"]),
        ]);
    }
    print!("{}", t.render());
    for p in s["ready_points"].as_array().into_iter().flatten() {
        if let Some(e) = p["error"].as_str() {
            println!("ready point {} FAILED: {e}", p["name"]);
        }
    }
    println!();

    let mut t = Table::new(&[
        "clones from",
        "answered",
        "first 2xx ms",
        "1st request ms",
        "2nd request ms",
        "|1st - 2nd| ms",
        "distinct session ids",
    ]);
    for name in ["warm-up", "http"] {
        let c = &s["clones"][name];
        t.row(vec![
            point_label(name, opts.warm_up),
            format!("{}/{}", c["answered_twice"], c["of"]),
            med(&c["first_response_ms"]),
            med(&c["first_request_ms"]),
            med(&c["second_request_ms"]),
            med(&c["first_second_gap_ms"]),
            format!("{}/{}", c["distinct_session_cookies"], c["answered"]),
        ]);
    }
    print!("{}", t.render());
    println!("(medians over the clones; a request: written to answer read)\n");

    let g = &doc["goals"];
    for (key, label) in [
        (
            "http_speedup",
            "restored from http: >= 10x faster than cold",
        ),
        (
            "warm_up_first_second",
            "warm-up clones: |1st - 2nd request| <= 10 ms",
        ),
        ("clones_answer", "every clone answers twice"),
    ] {
        println!(
            "goal: {label:<46} {:>8}  {}",
            match &g[key]["value"] {
                Value::Number(n) => format!("{n}"),
                Value::Null => "-".into(),
                v => v.to_string(),
            },
            report::verdict(g[key]["met"] == true)
        );
    }
    let failed: Vec<&Value> = doc["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["ok"] == false)
        .collect();
    if !failed.is_empty() {
        say(format!("{} Tomcat start(s) failed:", failed.len()));
        for s in failed {
            eprintln!("    {} {} {}: {}", s["kind"], s["i"], s["id"], s["error"]);
        }
    }
}

/// How a ready point reads in tables.
fn point_label(name: &str, warm_up: u64) -> String {
    match name {
        "tcp" => format!("tcp:{PORT}"),
        "http" => format!("http:{PORT}/PATH"),
        "warm-up" => format!("http:{PORT}/PATH + warm-up={warm_up}"),
        other => other.to_string(),
    }
}

fn plot_all(session: &Session, starts: &[Start]) -> Result<()> {
    let series = |kind: &str, name: &str, field: fn(&Start) -> Option<f64>, from_one: u64| Series {
        name: name.into(),
        points: ok(starts, kind)
            .filter_map(|s| Some(((s.i + from_one) as f64, field(s)?)))
            .collect(),
    };
    let first = |s: &Start| s.first_response_ms;
    plot::lines(
        &session.plot_path("tomcat-first-response"),
        &Labels {
            title: "Tomcat: ctr run to the first 2xx",
            x: "round",
            y: "first 2xx (ms)",
        },
        &[
            series("cold", "cold", first, 1),
            series("tcp", "restored from tcp:", first, 1),
            series("http", "restored from http:", first, 1),
            series("warm-up", "restored from http: + warm-up", first, 1),
        ],
    )?;
    let (first_req, second_req) = (
        |s: &Start| s.first_request_ms,
        |s: &Start| s.second_request_ms,
    );
    plot::lines(
        &session.plot_path("tomcat-clone-requests"),
        &Labels {
            title: "Tomcat clones: first and second request",
            x: "clone",
            y: "request (ms)",
        },
        &[
            series("clone-warm-up", "warm-up clone, 1st", first_req, 0),
            series("clone-warm-up", "warm-up clone, 2nd", second_req, 0),
            series("clone-http", "http: clone, 1st", first_req, 0),
            series("clone-http", "http: clone, 2nd", second_req, 0),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tomcat_reports_its_start_up() {
        let log = "07-Dec-2026 07:29:30.742 INFO [main] org.apache.coyote.AbstractProtocol.start Starting ProtocolHandler [\"http-nio-8080\"]\n\
                   07-Dec-2026 07:29:30.763 INFO [main] org.apache.catalina.startup.Catalina.start Server startup in [1118] milliseconds\n";
        assert_eq!(tomcat_startup_ms(log), Some(1118.0));
        assert_eq!(tomcat_startup_ms("nothing"), None);
    }

    #[test]
    fn clones_first_second_gap() {
        let clone = |first: f64, second: f64, cookie: &str| Start {
            kind: "clone-http".into(),
            ok: true,
            first_request_ms: Some(first),
            second_request_ms: Some(second),
            session_cookie: Some(cookie.into()),
            ..Start::default()
        };
        let starts = [
            clone(12.0, 4.0, "A"),
            clone(6.0, 5.0, "A"),
            clone(3.0, 5.0, "B"),
        ];
        let c = clone_summary(&starts, "clone-http");
        assert_eq!(c["first_second_gap_ms"]["median"], 2.0);
        assert_eq!(c["distinct_session_cookies"], 2);
        assert_eq!(c["answered_twice"], 3);
    }
}
