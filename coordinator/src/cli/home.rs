//! Where the CLI keeps its state: `$KILN_HOME`.

use std::path::PathBuf;

/// `$KILN_HOME`, else `~/.local/share/kiln`.
pub fn kiln_home() -> PathBuf {
    match std::env::var_os("KILN_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".local/share/kiln"),
    }
}
