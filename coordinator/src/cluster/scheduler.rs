//! Where a container runs (seed 001 §2.2.2, as Docker Swarm's scheduler):
//! filters drop the hosts that cannot run it, then a strategy ranks the
//! rest. Pure: the coordinator gathers the hosts' facts, this decides.
//!
//! Filters, in this order, each host keeping the first reason it fails:
//! - health: the host is ready;
//! - not the same host: a migration excludes the container's own host
//!   (seed 001 §3.3 step 3);
//! - constraint: `KEY==VALUE` / `KEY!=VALUE` on the host's labels, with
//!   `node.name` as the host's name (a missing label is unequal to any
//!   value);
//! - affinity: `container==ID` on the host running container ID,
//!   `container!=ID` not there;
//! - port: no container of the host claims one of the container's ports;
//! - image: the hosts that have the image, when any of those left does.
//!   When none does, every host left stays: an agent gets an image from
//!   its registry or from another host's agent, so a missing image costs
//!   time, never the container. (Seed 001 lists image availability as a
//!   filter; a hard one would refuse every migration whose image only the
//!   source has.)
//!
//! Strategies: spread (fewest containers), binpack (most containers; with no
//! resource limits every host that passes the filters fits), random
//! (uniform). Ties go to the first host by name, so a decision can be
//! replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::proto::{Placement, Strategy};

/// What the scheduler needs to know of a host.
#[derive(Debug, Clone, Default)]
pub struct Candidate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    /// Containers on it (the ranking of spread and binpack).
    pub containers: u32,
    /// Image references in its content store.
    pub images: Vec<String>,
    /// Host ports its containers claim, and which container claims each.
    pub ports: BTreeMap<u32, String>,
    /// Ids of the cluster's containers on it (for affinities).
    pub container_ids: BTreeSet<String>,
}

/// `KEY==VALUE` or `KEY!=VALUE` on a host's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub equal: bool,
    pub value: String,
}

/// `container==ID` or `container!=ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    pub container: String,
    pub together: bool,
}

/// A malformed constraint, affinity or strategy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlacementError(String);

/// The label that stands for the host's name in constraints.
pub const NODE_NAME: &str = "node.name";

/// Splits `KEY==VALUE` or `KEY!=VALUE` at its operator.
fn split_rule<'a>(what: &str, rule: &'a str, example: &str) -> Result<(&'a str, bool, &'a str), PlacementError> {
    let bad = |why: &str| PlacementError(format!("{what} {rule:?} {why}; write it as {example}"));
    let (at, equal) = match (rule.find("=="), rule.find("!=")) {
        (Some(e), Some(n)) if n < e => (n, false),
        (Some(e), _) => (e, true),
        (None, Some(n)) => (n, false),
        (None, None) => return Err(bad("has no == or !=")),
    };
    let (key, value) = (rule[..at].trim(), rule[at + 2..].trim());
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
        return Err(bad("needs a key of letters, digits and . _ - / before the operator"));
    }
    if value.is_empty() {
        return Err(bad("needs a value after the operator"));
    }
    if value.contains("==") || value.contains("!=") {
        return Err(bad("has more than one operator"));
    }
    Ok((key, equal, value))
}

impl Constraint {
    pub fn parse(rule: &str) -> Result<Constraint, PlacementError> {
        let (key, equal, value) = split_rule("constraint", rule, "KEY==VALUE or KEY!=VALUE (node.name is the host)")?;
        Ok(Constraint { key: key.to_string(), equal, value: value.to_string() })
    }

    /// None if `host` meets it, else why not.
    fn unmet(&self, host: &Candidate) -> Option<String> {
        let actual = if self.key == NODE_NAME { Some(&host.name) } else { host.labels.get(&self.key) };
        if (actual == Some(&self.value)) == self.equal {
            return None;
        }
        let has = match actual {
            Some(v) => format!("{}={v}", self.key),
            None => format!("no label {}", self.key),
        };
        Some(format!("constraint {self} not met ({has})"))
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.key, if self.equal { "==" } else { "!=" }, self.value)
    }
}

impl Affinity {
    pub fn parse(rule: &str) -> Result<Affinity, PlacementError> {
        let example = "container==ID or container!=ID";
        let (key, together, container) = split_rule("affinity", rule, example)?;
        if key != "container" {
            return Err(PlacementError(format!(
                "affinity {rule:?}: only affinities to containers are supported; write it as {example}"
            )));
        }
        Ok(Affinity { container: container.to_string(), together })
    }

    fn unmet(&self, host: &Candidate) -> Option<String> {
        let here = host.container_ids.contains(&self.container);
        match (self.together, here) {
            (true, false) => Some(format!("affinity container=={} not met (it is not here)", self.container)),
            (false, true) => Some(format!("affinity container!={} not met (it is here)", self.container)),
            _ => None,
        }
    }
}

/// A [`Placement`] checked: what [`schedule`] applies. Parse it when a
/// container is submitted, so a malformed rule fails the request at once
/// rather than its first scheduling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub constraints: Vec<Constraint>,
    pub affinities: Vec<Affinity>,
    pub strategy: Strategy,
    pub ports: Vec<u32>,
}

impl Rules {
    pub fn parse(placement: &Placement) -> Result<Rules, PlacementError> {
        let strategy = match Strategy::try_from(placement.strategy) {
            Ok(Strategy::Unspecified) => Strategy::Spread,
            Ok(s) => s,
            Err(_) => return Err(PlacementError(format!("unknown strategy {}", placement.strategy))),
        };
        if let Some(p) = placement.ports.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(PlacementError(format!("port {p} is not 1 to 65535")));
        }
        Ok(Rules {
            constraints: placement.constraints.iter().map(|c| Constraint::parse(c)).collect::<Result<_, _>>()?,
            affinities: placement.affinities.iter().map(|a| Affinity::parse(a)).collect::<Result<_, _>>()?,
            strategy,
            ports: placement.ports.clone(),
        })
    }
}

/// The strategy a user names: `spread`, `binpack` or `random`.
pub fn parse_strategy(name: &str) -> Result<Strategy, PlacementError> {
    match name {
        "spread" => Ok(Strategy::Spread),
        "binpack" => Ok(Strategy::Binpack),
        "random" => Ok(Strategy::Random),
        _ => Err(PlacementError(format!("unknown strategy {name:?}: spread, binpack or random"))),
    }
}

/// What is to be placed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub container: &'a str,
    pub image: &'a str,
    pub rules: &'a Rules,
    /// A host it must not go to: the one a migration moves it from.
    pub exclude: Option<&'a str>,
}

/// No host can run the container; why, host by host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct NoHost {
    pub container: String,
    /// (host, why it was filtered out), in host name order.
    pub reasons: Vec<(String, String)>,
}

impl fmt::Display for NoHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no host can run {}: ", self.container)?;
        if self.reasons.is_empty() {
            return write!(f, "the cluster has no hosts");
        }
        let reasons: Vec<String> = self.reasons.iter().map(|(h, why)| format!("{h}: {why}")).collect();
        write!(f, "{}", reasons.join("; "))
    }
}

/// The host to run `request` on. `random` is a uniform draw in [0, 1)
/// ([`crate::random::unit`]), used by the random strategy only; a
/// parameter so that tests can fix it.
pub fn schedule<'h>(request: &Request, hosts: &'h [Candidate], random: f64) -> Result<&'h Candidate, NoHost> {
    let mut hosts: Vec<&Candidate> = hosts.iter().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut reasons = Vec::new();
    let mut fit = Vec::new();
    for host in hosts {
        match filtered_out(request, host) {
            Some(why) => reasons.push((host.name.clone(), why)),
            None => fit.push(host),
        }
    }
    // Soft: it only narrows a non-empty set, so it never empties it.
    let image = normalize_image(request.image);
    if fit.iter().any(|h| has_image(h, &image)) {
        fit.retain(|h| has_image(h, &image));
    }
    let chosen = match request.rules.strategy {
        // Earliest name among equals: min_by_key and max_by_key take the
        // first and the last of equals respectively.
        Strategy::Spread | Strategy::Unspecified => fit.iter().min_by_key(|h| h.containers),
        Strategy::Binpack => fit.iter().rev().max_by_key(|h| h.containers),
        Strategy::Random => {
            let i = (random.clamp(0.0, 1.0) * fit.len() as f64) as usize;
            fit.get(i.min(fit.len().saturating_sub(1)))
        }
    };
    chosen.copied().ok_or_else(|| NoHost { container: request.container.to_string(), reasons })
}

/// Why the hard filters drop `host`, if they do.
fn filtered_out(request: &Request, host: &Candidate) -> Option<String> {
    if !host.ready {
        return Some("down".into());
    }
    if request.exclude == Some(host.name.as_str()) {
        return Some(format!("{} is already there", request.container));
    }
    let rules = request.rules;
    if let Some(why) = rules.constraints.iter().find_map(|c| c.unmet(host)) {
        return Some(why);
    }
    if let Some(why) = rules.affinities.iter().find_map(|a| a.unmet(host)) {
        return Some(why);
    }
    rules.ports.iter().find_map(|p| match host.ports.get(p) {
        Some(owner) if owner != request.container => Some(format!("port {p} taken by {owner}")),
        _ => None,
    })
}

fn has_image(host: &Candidate, normalized: &str) -> bool {
    host.images.iter().any(|i| normalize_image(i) == normalized)
}

/// A reference as containerd names it: `busybox` is
/// `docker.io/library/busybox:latest`, as Docker reads it.
pub fn normalize_image(reference: &str) -> String {
    let (name, suffix) = match reference.find('@') {
        Some(at) => (&reference[..at], &reference[at..]),
        None => (reference, ""),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let tagged = last.contains(':');
    let first = name.split('/').next().unwrap_or(name);
    let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut out = String::new();
    if !has_registry {
        out.push_str("docker.io/");
        if !name.contains('/') {
            out.push_str("library/");
        }
    }
    out.push_str(name);
    if !tagged && suffix.is_empty() {
        out.push_str(":latest");
    }
    out.push_str(suffix);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, containers: u32) -> Candidate {
        Candidate { name: name.into(), ready: true, containers, ..Default::default() }
    }

    fn rules(constraints: &[&str], affinities: &[&str], strategy: Strategy, ports: &[u32]) -> Rules {
        Rules::parse(&Placement {
            constraints: constraints.iter().map(|s| s.to_string()).collect(),
            affinities: affinities.iter().map(|s| s.to_string()).collect(),
            strategy: strategy as i32,
            ports: ports.to_vec(),
        })
        .unwrap()
    }

    fn pick(rules: &Rules, hosts: &[Candidate]) -> Result<String, String> {
        let request = Request { container: "web-1", image: "busybox", rules, exclude: None };
        schedule(&request, hosts, 0.0).map(|h| h.name.clone()).map_err(|e| e.to_string())
    }

    #[test]
    fn rules_parse_with_clear_errors() {
        let c = Constraint::parse("disk==ssd").unwrap();
        assert_eq!(c, Constraint { key: "disk".into(), equal: true, value: "ssd".into() });
        assert_eq!(Constraint::parse("node.name!=h1").unwrap().to_string(), "node.name!=h1");
        assert_eq!(Constraint::parse("zone != a=b").unwrap().value, "a=b");
        for (bad, says) in [
            ("disk=ssd", "has no == or !="),
            ("==ssd", "needs a key"),
            ("disk==", "needs a value"),
            ("a==b==c", "more than one operator"),
            ("a b==c", "needs a key"),
        ] {
            let err = Constraint::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("KEY==VALUE"), "{bad}: {err}");
        }
        assert_eq!(Affinity::parse("container!=db").unwrap(), Affinity { container: "db".into(), together: false });
        assert!(Affinity::parse("image==busybox").unwrap_err().to_string().contains("only affinities to containers"));
        let unknown = Placement { strategy: 9, ..Default::default() };
        assert!(Rules::parse(&unknown).unwrap_err().to_string().contains("unknown strategy 9"));
        assert_eq!(Rules::parse(&Placement::default()).unwrap().strategy, Strategy::Spread);
        assert!(Rules::parse(&Placement { ports: vec![0], ..Default::default() }).is_err());
        assert_eq!(parse_strategy("binpack").unwrap(), Strategy::Binpack);
        assert!(parse_strategy("fast").unwrap_err().to_string().contains("spread, binpack or random"));
    }

    #[test]
    fn strategies_rank_by_containers_and_break_ties_by_name() {
        let hosts = [host("h3", 1), host("h2", 3), host("h1", 1), host("h4", 3)];
        assert_eq!(pick(&rules(&[], &[], Strategy::Spread, &[]), &hosts).unwrap(), "h1");
        assert_eq!(pick(&rules(&[], &[], Strategy::Binpack, &[]), &hosts).unwrap(), "h2");
        let random = rules(&[], &[], Strategy::Random, &[]);
        let request = Request { container: "web-1", image: "busybox", rules: &random, exclude: None };
        let drawn: Vec<&str> =
            [0.0, 0.3, 0.6, 0.99].iter().map(|r| schedule(&request, &hosts, *r).unwrap().name.as_str()).collect();
        assert_eq!(drawn, ["h1", "h2", "h3", "h4"]);
    }

    #[test]
    fn every_filtered_host_is_named_with_its_reason() {
        let mut h1 = host("h1", 0);
        h1.ready = false;
        let mut h2 = host("h2", 0);
        h2.labels.insert("disk".into(), "hdd".into());
        let mut h3 = host("h3", 0);
        h3.labels.insert("disk".into(), "ssd".into());
        h3.ports.insert(8080, "db-1".into());
        let mut h4 = host("h4", 0);
        h4.labels.insert("disk".into(), "ssd".into());
        let err = pick(&rules(&["disk==ssd", "node.name!=h4"], &[], Strategy::Spread, &[8080]), &[h4, h3, h2, h1])
            .unwrap_err();
        assert_eq!(
            err,
            "no host can run web-1: h1: down; h2: constraint disk==ssd not met (disk=hdd); \
             h3: port 8080 taken by db-1; h4: constraint node.name!=h4 not met (node.name=h4)"
        );
        assert_eq!(
            pick(&rules(&[], &[], Strategy::Spread, &[]), &[]).unwrap_err(),
            "no host can run web-1: the cluster has no hosts"
        );
        let unlabelled = pick(&rules(&["disk==ssd"], &[], Strategy::Spread, &[]), &[host("h1", 0)]).unwrap_err();
        assert!(unlabelled.ends_with("h1: constraint disk==ssd not met (no label disk)"), "{unlabelled}");
    }

    #[test]
    fn affinities_follow_and_avoid_containers() {
        let mut h1 = host("h1", 0);
        let mut h2 = host("h2", 5);
        h2.container_ids.insert("db".into());
        h1.container_ids.insert("cache".into());
        let hosts = [h1, h2];
        assert_eq!(pick(&rules(&[], &["container==db"], Strategy::Spread, &[]), &hosts).unwrap(), "h2");
        assert_eq!(pick(&rules(&[], &["container!=cache"], Strategy::Spread, &[]), &hosts).unwrap(), "h2");
        let err = pick(&rules(&[], &["container==db", "container!=db"], Strategy::Spread, &[]), &hosts).unwrap_err();
        assert!(
            err.contains(
                "h1: affinity container==db not met (it is not here); h2: affinity container!=db not met (it is here)"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_migration_never_stays_on_its_host() {
        let r = rules(&[], &[], Strategy::Spread, &[]);
        let hosts = [host("h1", 0), host("h2", 4)];
        let request = Request { container: "web-1", image: "busybox", rules: &r, exclude: Some("h1") };
        assert_eq!(schedule(&request, &hosts, 0.0).unwrap().name, "h2");
        let alone = Request { exclude: Some("h1"), ..request };
        assert_eq!(
            schedule(&alone, &hosts[..1], 0.0).unwrap_err().to_string(),
            "no host can run web-1: h1: web-1 is already there"
        );
    }

    #[test]
    fn its_own_port_claim_does_not_filter_a_host() {
        let mut h1 = host("h1", 0);
        h1.ports.insert(8080, "web-1".into());
        assert_eq!(pick(&rules(&[], &[], Strategy::Spread, &[8080]), &[h1]).unwrap(), "h1");
    }

    #[test]
    fn hosts_with_the_image_are_preferred_but_not_required() {
        let mut h2 = host("h2", 9);
        h2.images.push("docker.io/library/busybox:latest".into());
        let hosts = [host("h1", 0), h2];
        // Only h2 has it: spread would pick h1, the image filter keeps h2.
        assert_eq!(pick(&rules(&[], &[], Strategy::Spread, &[]), &hosts).unwrap(), "h2");
        // When no host left has it, every host stays.
        let bare = [host("h1", 0), host("h3", 2)];
        assert_eq!(pick(&rules(&[], &[], Strategy::Spread, &[]), &bare).unwrap(), "h1");
        // Nor when the hosts that have it are filtered out.
        assert_eq!(pick(&rules(&["node.name!=h2"], &[], Strategy::Spread, &[]), &hosts).unwrap(), "h1");
    }

    #[test]
    fn image_references_are_compared_as_containerd_names_them() {
        assert_eq!(normalize_image("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_image("library/busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize_image("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize_image("registry.example/a/b:v1"), "registry.example/a/b:v1");
        assert_eq!(normalize_image("app@sha256:ab"), "docker.io/library/app@sha256:ab");
    }
}
