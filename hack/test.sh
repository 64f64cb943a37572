#!/usr/bin/env bash
# Sets everything up and runs every test of the workspace: unit tests and the
# end-to-end suites (conformance against io.containerd.runc.v2 and
# io.containerd.migrate.v1 through a private containerd), then the soft-dirty
# tests, which need a kernel with soft-dirty memory tracking, inside a QEMU VM
# (hack/softdirty-vm.sh; about two and a half minutes with its two-host
# cluster test, one more the first time, when it builds the VM's image).
# About 20 minutes in all on a 2-core machine, 14 of them the build.
#
#   sudo hack/test.sh
#
# With CI=true a test whose prerequisite (root, containerd, runc, CRIU, the
# VM's tools) is missing fails instead of skipping.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -d ${HOME:-/root}/.cargo/bin ]] && export PATH=${HOME:-/root}/.cargo/bin:$PATH

BUILD_TESTS=1 "$REPO/hack/setup.sh" all

cd "$REPO"
# Release, so that the end-to-end tests drive the same shim binary that
# setup.sh built and installed.
cargo test --workspace --release
# The soft-dirty tests are #[ignore]d above; they run in the VM.
"$REPO/hack/softdirty-vm.sh" run
