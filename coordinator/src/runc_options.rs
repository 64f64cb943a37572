//! containerd's runc `CheckpointOptions` (`containerd.runc.v1.CheckpointOptions`
//! in containerd's `core/runtime/v2/runc/options/oci.proto`).
//!
//! containerd-client ships only containerd's API protos, not the runc
//! options, so the message is declared here. It is the only options type
//! that goes through containerd's Tasks.Checkpoint: the daemon decodes the
//! Any with its type registry to find `image_path` and refuses types it does
//! not know.

use prost_types::Any;

/// The type URL containerd registers the message under (its proto full
/// name, without the `type.googleapis.com/` prefix).
pub const CHECKPOINT_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.CheckpointOptions";

#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointOptions {
    /// Stop the container after the dump.
    #[prost(bool, tag = "1")]
    pub exit: bool,
    /// Dump established TCP connections (CRIU `--tcp-established`).
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    /// Where CRIU writes the images; with it set, containerd writes nothing
    /// to its content store.
    #[prost(string, tag = "8")]
    pub image_path: String,
    #[prost(string, tag = "9")]
    pub work_path: String,
}

impl CheckpointOptions {
    pub fn to_any(&self) -> Any {
        Any { type_url: CHECKPOINT_OPTIONS_TYPE_URL.to_string(), value: prost::Message::encode_to_vec(self) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message as _;
    use containerd_shim_protos::shim::oci::CheckpointOptions as ShimSide;

    #[test]
    fn encodes_the_wire_format_of_containerds_message() {
        let opts = CheckpointOptions { exit: true, image_path: "/x".into(), ..Default::default() };
        let any = opts.to_any();
        assert_eq!(any.type_url, "containerd.runc.v1.CheckpointOptions");
        // field 1 varint 1, field 8 length-delimited "/x"
        assert_eq!(any.value, [0x08, 0x01, 0x42, 0x02, b'/', b'x']);
        assert!(CheckpointOptions::default().to_any().value.is_empty());
    }

    /// The shim decodes the options with the generated containerd type; every
    /// field set here must come out the same there.
    #[test]
    fn the_shims_generated_type_reads_every_field() {
        let opts = CheckpointOptions {
            exit: true,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into(), "ipc".into()],
            cgroups_mode: "soft".into(),
            image_path: "/run/containerd-migrate/staging/c1-1".into(),
            work_path: "/tmp/work".into(),
        };
        let shim = ShimSide::parse_from_bytes(&opts.to_any().value).unwrap();
        assert!(shim.exit && shim.open_tcp && shim.external_unix_sockets && shim.terminal && shim.file_locks);
        assert_eq!(shim.empty_namespaces, ["network", "ipc"]);
        assert_eq!(shim.cgroups_mode, "soft");
        assert_eq!(shim.image_path, "/run/containerd-migrate/staging/c1-1");
        assert_eq!(shim.work_path, "/tmp/work");
    }
}
