//! Generates the server of containerd's Snapshots service. containerd-client
//! generates clients only, and `containerd-snapshots` on crates.io pulls an
//! older tonic; so the server comes from the same proto containerd-client
//! vendors (copied into proto/, with its import path kept), with the
//! generator it uses. The Mount message is containerd-client's own type.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".containerd.types", "::containerd_client::types")
        .compile_protos(
        &["proto/github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto"],
        &["proto"],
    )?;
    Ok(())
}
