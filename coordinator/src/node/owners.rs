//! Which tenant has uploaded which blob to this coordinator.
//!
//! A tenant owns a blob only once it has sent the blob's content here (or an agent returned it
//! for one of the tenant's builds); knowing a digest is not enough. `MissingBlobs` answers per
//! tenant, `GetBlob` serves a tenant only what it owns, and a build may only name context
//! blobs its tenant owns, so one tenant can never obtain another's context through the farm.
//! Kept as an append-only file of `tenant digest` lines, fsynced per addition.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

pub struct Owners {
    set: Mutex<(HashSet<(String, String)>, std::fs::File)>,
}

impl Owners {
    pub fn open(path: &Path) -> std::io::Result<Owners> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let set = text.lines().filter_map(|l| l.split_once(' ')).map(|(t, d)| (t.to_string(), d.to_string())).collect();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Owners { set: Mutex::new((set, file)) })
    }

    pub fn owns(&self, tenant: &str, digest: &str) -> bool {
        let g = self.set.lock().unwrap_or_else(|e| e.into_inner());
        g.0.contains(&(tenant.to_string(), digest.to_string()))
    }

    pub fn add(&self, tenant: &str, digest: &str) -> std::io::Result<()> {
        // Tenant names come from certificates: no spaces or newlines can split a line.
        if tenant.contains(|c: char| c.is_whitespace()) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "tenant names have no whitespace"));
        }
        let mut g = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.insert((tenant.to_string(), digest.to_string())) {
            writeln!(g.1, "{tenant} {digest}")?;
            g.1.sync_data()?;
        }
        Ok(())
    }
}
