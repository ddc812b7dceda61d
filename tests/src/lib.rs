//! kiln-tests: helpers for the end-to-end tests in `tests/tests/`.

use std::path::PathBuf;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The `kiln` binary of this build profile. `make test` builds it before the tests run; a
/// test binary lives in `target/<profile>/deps/`, so the binary is two levels up.
pub fn kiln_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).map(PathBuf::from).unwrap_or_default();
    let bin = profile_dir.join("kiln");
    assert!(bin.exists(), "{} is missing: run `cargo build --bin kiln` first (make test does)", bin.display());
    bin
}
