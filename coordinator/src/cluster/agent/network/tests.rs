use super::*;
use crate::ipam::mac_for;

/// The bridge the tests' containers join, in the test's own network
/// namespace: nothing of the machine's network is touched.
const BRIDGE: &str = "cmtest0";

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs root, and CI=true requires every test to run");
    eprintln!("skipping {test}: it needs root");
    false
}

/// Runs `f` on a thread of its own in a new network namespace with a
/// bridge: `ip` run from it (and its veths) are in that namespace, which
/// goes with the thread. The containers' namespaces are files in
/// /run/netns, named after this process so that runs do not collide.
fn on_test_network<T: Send + 'static>(f: impl FnOnce(&str) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace of the test's own");
        run(&["link", "add", BRIDGE, "type", "bridge"]);
        run(&["link", "set", BRIDGE, "up"]);
        f(BRIDGE)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn run(args: &[&str]) -> String {
    ip_output(args, "").unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run(args)).unwrap()
}

/// Removes the containers' networks however the test ends. Names are
/// unique across the tests, which run at once in one process.
struct Containers(Vec<String>);

impl Containers {
    fn id(&mut self, name: &str) -> String {
        let id = format!("nettest{}-{name}", std::process::id());
        self.0.push(id.clone());
        id
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = destroy(id);
        }
    }
}

fn identity(host: u8) -> NetworkIdentity {
    let ip = Ipv4Addr::new(192, 0, 2, host);
    NetworkIdentity { ip: ip.to_string(), prefix_len: 24, mac: mac_for(ip) }
}

/// (MAC, "IP/LEN" addresses) of the container's eth0.
fn eth0(id: &str) -> (String, Vec<String>) {
    let link = &json(&["-n", &netns_name(id), "-j", "addr", "show", "dev", "eth0"])[0];
    let addrs = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    (link["address"].as_str().unwrap().to_string(), addrs)
}

fn routes(id: &str) -> Vec<String> {
    let routes = json(&["-n", &netns_name(id), "-j", "route", "show"]);
    routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} dev {}", r["dst"].as_str().unwrap(), r["dev"].as_str().unwrap()))
        .collect()
}

fn host_end(id: &str) -> serde_json::Value {
    json(&["-j", "link", "show", &host_veth(id)])[0].clone()
}

#[test]
fn a_container_keeps_its_address_and_routes_behind_a_lockable_link() {
    if !root_or_skip("a_container_keeps_its_address_and_routes_behind_a_lockable_link") {
        return;
    }
    on_test_network(|bridge| {
        let mut containers = Containers(Vec::new());
        let id = containers.id("lock");
        let path = create(&id, &identity(10), bridge, Link::Down).unwrap();
        assert_eq!(path, Path::new("/run/netns").join(format!("cmc-{id}")));
        assert!(path.exists());
        let err = create(&id, &identity(10), bridge, Link::Down).unwrap_err().to_string();
        assert!(err.contains("already has a network on this host") && err.contains("destroy it first"), "{err}");

        let expected = ("02:42:c0:00:02:0a".to_string(), vec!["192.0.2.10/24".to_string()]);
        let end = host_end(&id);
        assert_eq!(end["master"], bridge);
        assert!(!end["flags"].as_array().unwrap().contains(&"UP".into()), "created down: {end}");
        assert_eq!(eth0(&id), expected);
        assert_eq!(routes(&id), ["192.0.2.0/24 dev eth0"]);

        set_link(&id, Link::Up).unwrap();
        assert!(host_end(&id)["flags"].as_array().unwrap().contains(&"UP".into()));
        // Locked again, as a migration's source is: address and route stay,
        // so a resume after an abort finds them.
        set_link(&id, Link::Down).unwrap();
        assert_eq!(eth0(&id), expected);
        assert_eq!(routes(&id), ["192.0.2.0/24 dev eth0"]);

        destroy(&id).unwrap();
        assert!(!path.exists());
        assert!(ip(&["link", "show", &host_veth(&id)], "").is_err(), "the veth went with it");
        destroy(&id).unwrap();
    });
}

#[test]
fn a_failed_create_leaves_nothing() {
    if !root_or_skip("a_failed_create_leaves_nothing") {
        return;
    }
    on_test_network(|_| {
        let mut containers = Containers(Vec::new());
        let id = containers.id("nobridge");
        let err = create(&id, &identity(11), "cmnosuch0", Link::Up).unwrap_err().to_string();
        assert!(
            err.contains("master cmnosuch0") && err.contains("is cmnosuch0 (the agent's --bridge) a bridge"),
            "{err}"
        );
        assert!(!netns_path(&id).exists());
        assert!(ip(&["link", "show", &host_veth(&id)], "").is_err());
    });
}

#[test]
fn announce_moves_peers_caches_and_the_bridge_to_the_container() {
    if !root_or_skip("announce_moves_peers_caches_and_the_bridge_to_the_container") {
        return;
    }
    on_test_network(|bridge| {
        let mut containers = Containers(Vec::new());
        let (a, b) = (containers.id("garp-a"), containers.id("garp-b"));
        let a_identity = identity(20);
        create(&a, &a_identity, bridge, Link::Up).unwrap();
        create(&b, &identity(21), bridge, Link::Up).unwrap();
        // b believes a is elsewhere, as a peer does right after a migration.
        run(&["-n", &netns_name(&b), "neigh", "replace", "192.0.2.20", "lladdr", "02:00:00:00:00:01", "dev", "eth0"]);
        run(&["-n", &netns_name(&b), "neigh", "change", "192.0.2.20", "dev", "eth0", "nud", "stale"]);

        announce(&a).unwrap();

        let neigh = json(&["-n", &netns_name(&b), "-j", "neigh", "show", "192.0.2.20"]);
        assert_eq!(neigh[0]["lladdr"], a_identity.mac.as_str(), "b's cache: {neigh}");
        let fdb: serde_json::Value = serde_json::from_slice(
            &Command::new("bridge").args(["-j", "fdb", "show", "br", bridge]).output().unwrap().stdout,
        )
        .unwrap();
        let learned = fdb.as_array().unwrap().iter().find(|e| e["mac"] == a_identity.mac.as_str());
        assert_eq!(learned.map(|e| e["ifname"].clone()), Some(host_veth(&a).into()), "the bridge's FDB: {fdb}");
    });
}

#[test]
fn bad_ids_and_identities_are_refused_before_anything_is_made() {
    for id in ["", "-a", "a..b", "a/b", &"x".repeat(77)] {
        assert!(matches!(create(id, &identity(1), BRIDGE, Link::Up), Err(NetworkError::BadId { .. })), "{id:?}");
    }
    for bad in [
        NetworkIdentity { ip: "10.0.0".into(), ..identity(1) },
        NetworkIdentity { prefix_len: 33, ..identity(1) },
        NetworkIdentity { mac: "02:42:0a".into(), ..identity(1) },
    ] {
        assert!(matches!(create("ok", &bad, BRIDGE, Link::Up), Err(NetworkError::BadIdentity { .. })), "{bad:?}");
    }
}

#[test]
fn veth_names_fit_and_differ() {
    let long = "x".repeat(76);
    let names = [host_veth("a"), host_veth("b"), host_veth(&long)];
    assert!(names.iter().all(|n| n.len() <= 15), "{names:?}");
    assert_ne!(names[0], names[1]);
}

#[test]
fn gratuitous_arp_frames_claim_the_address() {
    let mac = [0x02, 0x42, 0xc0, 0x00, 0x02, 0x0a];
    let request = garp_frame(mac, [192, 0, 2, 10], ARP_REQUEST);
    assert_eq!(&request[..6], &[0xff; 6]);
    assert_eq!(&request[6..12], &mac);
    assert_eq!(&request[12..22], &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    assert_eq!(&request[22..32], &[0x02, 0x42, 0xc0, 0x00, 0x02, 0x0a, 192, 0, 2, 10]);
    assert_eq!(&request[32..42], &[0, 0, 0, 0, 0, 0, 192, 0, 2, 10]);
    let reply = garp_frame(mac, [192, 0, 2, 10], ARP_REPLY);
    assert_eq!(&reply[20..22], &[0, 2]);
    assert_eq!(&reply[32..38], &mac);
}
