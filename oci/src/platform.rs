//! The platform this build runs on, as OCI image platforms (and Go's
//! `GOOS`/`GOARCH`) name it: what a checkpoint records as its host's
//! architecture, and what an image index is searched for.

use oci_spec::image::{Arch, Os, Platform, PlatformBuilder};

/// This build's architecture. oci-spec's `Arch::default` maps Rust's names
/// to Go's for the common targets but passes `x86` and `loongarch64`
/// through under Rust's names, which no image index uses.
pub fn arch() -> Arch {
    match std::env::consts::ARCH {
        "x86" => Arch::i386,
        "loongarch64" => Arch::LoongArch64,
        _ => Arch::default(),
    }
}

/// linux on this build's architecture.
pub fn platform() -> Platform {
    PlatformBuilder::default().os(Os::Linux).architecture(arch()).build().expect("os and architecture are set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_build_has_a_go_name() {
        assert!(!matches!(arch(), Arch::Other(_)), "{} has no Go name here", std::env::consts::ARCH);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(arch().to_string(), "amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(arch().to_string(), "arm64");
        }
        let json = serde_json::to_string(&platform()).unwrap();
        assert_eq!(json, format!(r#"{{"architecture":"{}","os":"linux"}}"#, arch()));
    }
}
