//! The OCI runtime spec of a container the cluster runs: runc's defaults
//! (oci-spec's) with containerd's capabilities, the image's config (command, environment, working
//! directory, user), then what the user asked (arguments, environment,
//! annotations), in the network namespace the agent made for it. As
//! containerd's Go client builds it for `ctr run`, so the container behaves
//! the same run either way.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceType, Spec,
    UserBuilder,
};

use crate::proto::ContainerSpec;

/// The spec of container `spec.id` in containerd namespace `namespace`,
/// from its image's `config` (None: the image has none), joining the
/// network namespace at `netns`.
pub fn build(spec: &ContainerSpec, config: Option<&ImageConfig>, namespace: &str, netns: &Path) -> Result<Spec> {
    let mut oci = Spec::default();
    oci.set_hostname(Some(spec.id.clone()));
    let mut root = oci.root().clone().unwrap_or_default();
    root.set_path("rootfs".into()).set_readonly(Some(false));
    oci.set_root(Some(root));

    let mut process = oci.process().clone().unwrap_or_default();
    process.set_terminal(Some(false));
    let mut env: Vec<String> = config.and_then(|c| c.env().clone()).unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
    }
    env.extend(spec.env.iter().cloned());
    process.set_env(Some(env));
    process.set_args(Some(args(spec, config)?));
    process.set_capabilities(Some(default_capabilities()?));
    if let Some(cwd) = config.and_then(|c| c.working_dir().clone()).filter(|d| !d.is_empty()) {
        process.set_cwd(cwd.into());
    }
    if let Some(user) = config.and_then(|c| c.user().clone()).filter(|u| !u.is_empty()) {
        let (uid, gid) = numeric_user(&user)?;
        process.set_user(UserBuilder::default().uid(uid).gid(gid).build().context("the spec's user")?);
    }
    oci.set_process(Some(process));

    let mut linux = oci.linux().clone().unwrap_or_default();
    let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
    let mut network = LinuxNamespace::default();
    network.set_typ(LinuxNamespaceType::Network).set_path(Some(netns.to_path_buf()));
    namespaces.push(network);
    linux.set_namespaces(Some(namespaces));
    // As containerd's client names it, so the cgroup is /NAMESPACE/ID on
    // every host.
    linux.set_cgroups_path(Some(format!("/{namespace}/{}", spec.id).into()));
    oci.set_linux(Some(linux));

    let annotations: HashMap<String, String> = spec.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    oci.set_annotations(Some(annotations));
    Ok(oci)
}

/// The command: the user's arguments replace the image's Cmd, after its
/// Entrypoint, as `docker run IMAGE ARGS` does.
/// containerd's default capabilities (its `oci.WithDefaultSpec`, as for
/// `ctr run`), not runc's three: a Debian package's daemon that chowns its
/// files or drops to its user needs them.
fn default_capabilities() -> Result<LinuxCapabilities> {
    use Capability::*;
    let set: Capabilities = [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .build()
        .context("the spec's capabilities")
}

fn args(spec: &ContainerSpec, config: Option<&ImageConfig>) -> Result<Vec<String>> {
    let entrypoint = config.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd =
        if spec.args.is_empty() { config.and_then(|c| c.cmd().clone()).unwrap_or_default() } else { spec.args.clone() };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        bail!("image {} names no command, and none was given: add one after the container's id", spec.image);
    }
    Ok(args)
}

/// "UID" or "UID:GID". Names would need the image's /etc/passwd, which the
/// agent does not read.
fn numeric_user(user: &str) -> Result<(u32, u32)> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    match (uid.parse(), gid.parse()) {
        (Ok(uid), Ok(gid)) => Ok((uid, gid)),
        _ => bail!(
            "the image's user {user:?} is a name: running such images through the cluster is not supported yet \
             (numeric UID[:GID] only)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: "web-1".into(),
            image: "docker.io/library/busybox:latest".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["MODE=test".into()],
            annotations: [("io.containerd.migrate.checkpoint-every".to_string(), "5s".to_string())].into(),
            placement: None,
        }
    }

    fn config(json: &str) -> ImageConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn user_arguments_replace_cmd_after_the_entrypoint() {
        let c = config(r#"{"Entrypoint":["/init"],"Cmd":["serve"],"Env":["PATH=/bin","A=1"],"WorkingDir":"/srv"}"#);
        let oci = build(&spec(&["sh", "-c", "true"]), Some(&c), "default", Path::new("/run/netns/x")).unwrap();
        let p = oci.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/init", "sh", "-c", "true"]);
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/bin", "A=1", "MODE=test"]);
        assert_eq!(p.cwd(), Path::new("/srv"));
        let oci = build(&spec(&[]), Some(&c), "default", Path::new("/run/netns/x")).unwrap();
        assert_eq!(oci.process().as_ref().unwrap().args().as_ref().unwrap(), &["/init", "serve"]);
    }

    #[test]
    fn the_network_namespace_is_the_agents_and_the_cgroup_is_named_for_containerd() {
        let oci = build(&spec(&["top"]), None, "default", Path::new("/run/netns/cmc-web-1")).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        let nets: Vec<_> =
            linux.namespaces().as_ref().unwrap().iter().filter(|n| n.typ() == LinuxNamespaceType::Network).collect();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].path().as_deref(), Some(Path::new("/run/netns/cmc-web-1")));
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/default/web-1")));
        let caps = oci.process().as_ref().unwrap().capabilities().clone().unwrap();
        let bounding = caps.bounding().clone().unwrap();
        assert_eq!(bounding.len(), 14, "containerd's defaults: {bounding:?}");
        assert!(bounding.contains(&Capability::Chown) && bounding.contains(&Capability::Setuid));
        assert_eq!(oci.hostname().as_deref(), Some("web-1"));
        assert_eq!(oci.root().as_ref().unwrap().readonly(), Some(false));
        assert_eq!(oci.annotations().as_ref().unwrap()["io.containerd.migrate.checkpoint-every"], "5s");
    }

    #[test]
    fn no_command_and_named_users_are_refused_clearly() {
        let e = build(&spec(&[]), None, "default", Path::new("/n")).unwrap_err().to_string();
        assert!(e.contains("names no command"), "{e}");
        let c = config(r#"{"User":"nobody","Cmd":["x"]}"#);
        let e = build(&spec(&[]), Some(&c), "default", Path::new("/n")).unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
        let c = config(r#"{"User":"0:0","Cmd":["x"]}"#);
        assert!(build(&spec(&[]), Some(&c), "default", Path::new("/n")).is_ok());
    }
}
