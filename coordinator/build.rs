//! Generates the cluster's gRPC code (`proto/cluster/v1/cluster.proto`) with
//! the generator containerd-client uses, so both share one tonic and prost.
//! It runs protoc, which containerd-client needs as well (hack/setup.sh
//! installs protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["proto/cluster/v1/cluster.proto"], &["proto"])?;
    Ok(())
}
