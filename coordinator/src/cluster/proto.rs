//! The code generated from `proto/cluster/v1/cluster.proto` (build.rs).

tonic::include_proto!("cluster.v1");
