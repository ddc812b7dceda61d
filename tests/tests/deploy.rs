//! The deployment files: the systemd units pass `systemd-analyze verify` (with the binary of
//! this build in place of /usr/local/bin/kiln, which verify requires to exist), with no warning
//! at all, and the coordinator's hardening keeps its exposure low by systemd's own measure.

use kiln_tests::{kiln_bin, repo_root, stderr, stdout, Bounded, TempDir};
use std::process::Command;

/// The units as installed: the template as an instance, the binary where this build has it.
fn units(dir: &TempDir) -> Vec<std::path::PathBuf> {
    let bin = kiln_bin().display().to_string();
    let mut out = Vec::new();
    for (file, installed) in [("kiln-coordinator@.service", "kiln-coordinator@1.service"), ("kiln-agent.service", "kiln-agent.service")] {
        let text = std::fs::read_to_string(repo_root().join("deploy/systemd").join(file)).expect("unit file");
        assert!(text.contains("ExecStart=/usr/local/bin/kiln "), "{file}: ExecStart runs /usr/local/bin/kiln");
        assert!(text.contains("$KILN_FLAGS"), "{file}: flags (--metrics-listen) come from its environment file");
        let path = dir.path().join(installed);
        std::fs::write(&path, text.replace("/usr/local/bin/kiln", &bin)).expect("write unit");
        out.push(path);
    }
    out
}

#[test]
fn systemd_units_verify_cleanly() {
    let dir = TempDir::new("units");
    let units = units(&dir);
    let out = Command::new("systemd-analyze").arg("verify").args(&units).bounded().expect("systemd-analyze (Debian's systemd)");
    assert!(out.status.success() && stderr(&out).is_empty() && stdout(&out).is_empty(), "systemd-analyze verify:\n{}{}", stdout(&out), stderr(&out));
}

/// systemd's exposure score (0 is the most locked down, 10 the least): the coordinator needs
/// almost nothing; the agent is root by necessity (overlayfs, runc) and is only reported.
#[test]
fn the_coordinator_unit_is_locked_down() {
    let dir = TempDir::new("units-security");
    let units = units(&dir);
    let exposure = |unit: &std::path::Path| -> f64 {
        let out = Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(unit).bounded().expect("systemd-analyze");
        let text = format!("{}{}", stdout(&out), stderr(&out));
        let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
        let score = line.split(": ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok());
        score.unwrap_or_else(|| panic!("cannot read the score in {line:?}"))
    };
    let coordinator = exposure(&units[0]);
    let agent = exposure(&units[1]);
    eprintln!("exposure: coordinator {coordinator}, agent {agent}");
    assert!(coordinator <= 2.0, "the coordinator's exposure is {coordinator}");
    assert!(agent < 10.0, "the agent's exposure is {agent}");
}
