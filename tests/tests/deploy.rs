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
    assert!(
        out.status.success() && stderr(&out).is_empty() && stdout(&out).is_empty(),
        "systemd-analyze verify:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// systemd's exposure score (0 is the most locked down, 10 the least): the coordinator needs
/// almost nothing; the agent is root by necessity (overlayfs, runc) and is only reported.
#[test]
fn the_coordinator_unit_is_locked_down() {
    let dir = TempDir::new("units-security");
    let units = units(&dir);
    let exposure = |unit: &std::path::Path| -> f64 {
        let out =
            Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(unit).bounded().expect("systemd-analyze");
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

/// The Python of the venv scripts/setup-host.sh makes for kubernetes-validate.
const KUBE_VALIDATE_PYTHON: &str = "/opt/kiln-kubernetes-validate/bin/python";

/// deploy/kubernetes against the Kubernetes schemas and its own references
/// (scripts/check-kubernetes.py), then the kiln config files inside its ConfigMaps parsed and
/// validated by kiln, for every member the StatefulSet makes, with the Services' fixed IPs as
/// the members and the agents' coordinators.
#[test]
fn kubernetes_manifests_validate() {
    use kiln_coordinator::config::{load, AgentConfig, CoordinatorConfig};
    let out = TempDir::new("k8s");
    let run = Command::new(KUBE_VALIDATE_PYTHON)
        .arg(repo_root().join("scripts/check-kubernetes.py"))
        .arg(repo_root().join("deploy/kubernetes"))
        .arg(out.path())
        .bounded()
        .expect("kubernetes-validate's venv (bash scripts/setup-host.sh makes it)");
    assert!(run.status.success(), "check-kubernetes.py:\n{}{}", stdout(&run), stderr(&run));

    // The Services' fixed IPs, by Raft id (what the script found), and the members file the
    // StatefulSet's command reads: the same.
    let services: Vec<(u64, String)> = std::fs::read_to_string(out.path().join("member-ips"))
        .expect("member-ips")
        .lines()
        .map(|l| {
            let (id, ip) = l.split_once(' ').expect("id ip");
            (id.parse().expect("id"), format!("{ip}:7401"))
        })
        .collect();
    let members: Vec<(u64, std::net::SocketAddr)> = std::fs::read_to_string(out.path().join("kiln-coordinator/members"))
        .expect("the members key of the coordinator ConfigMap")
        .lines()
        .map(|l| {
            let (id, addr) = l.split_once(' ').expect("id addr");
            (id.parse().expect("id"), addr.parse().expect("addr"))
        })
        .collect();
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(members.iter().map(|(i, a)| (*i, a.to_string())).collect::<Vec<_>>(), services, "members are the Services");
    let coordinator: CoordinatorConfig =
        load(&out.path().join("kiln-coordinator/coordinator.toml")).unwrap_or_else(|e| panic!("the coordinator ConfigMap: {e}"));
    assert!(coordinator.metrics_listen.is_some(), "the probes need metrics_listen");
    for (id, addr) in &members {
        // As the StatefulSet's command starts each member: --id, --peers ID=ADDR (and --join
        // member 1 for the others).
        let mut cfg = coordinator.clone();
        cfg.id = *id;
        cfg.peers = [(*id, *addr)].into_iter().collect();
        cfg.validate().unwrap_or_else(|e| panic!("coordinator {id}: {e}"));
    }
    // The StatefulSet's start script, run as each pod would run it (its config dir here, and a
    // `kiln` that prints the arguments it was given).
    let script = std::fs::read_to_string(out.path().join("coordinator-command.sh")).expect("coordinator-command.sh");
    let script = script.replace("/etc/kiln", &out.path().join("kiln-coordinator").display().to_string());
    let bin = out.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::write(bin.join("kiln"), "#!/bin/sh\necho \"$@\"\n").expect("fake kiln");
    Command::new("chmod").arg("755").arg(bin.join("kiln")).bounded().expect("chmod");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    for (ordinal, (id, addr)) in members.iter().enumerate() {
        let run = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .env("HOSTNAME", format!("kiln-coordinator-{ordinal}"))
            .env("PATH", &path)
            .bounded()
            .expect("sh");
        assert!(run.status.success(), "the start script of pod {ordinal}:\n{}", stderr(&run));
        let mut want =
            format!("coordinator --config {}/kiln-coordinator/coordinator.toml --id {id} --peers {id}={addr}", out.path().display());
        if *id != 1 {
            want.push_str(&format!(" --join {}", members[0].1));
        }
        assert_eq!(stdout(&run).trim(), want, "pod {ordinal}");
    }
    let unknown =
        Command::new("/bin/sh").arg("-c").arg(&script).env("HOSTNAME", "kiln-coordinator-7").env("PATH", &path).bounded().expect("sh");
    assert!(!unknown.status.success() && stderr(&unknown).contains("no member 8"), "{}", stderr(&unknown));

    let agent: AgentConfig = load(&out.path().join("kiln-agent/agent.toml")).unwrap_or_else(|e| panic!("the agent ConfigMap: {e}"));
    agent.validate().unwrap_or_else(|e| panic!("the agent ConfigMap: {e}"));
    assert_eq!(agent.hosts, members.iter().map(|(_, a)| *a).collect::<Vec<_>>(), "agents register with the members' Services");
    assert!(agent.metrics_listen.is_some(), "the probes need metrics_listen");
    assert_eq!(agent.token_file, std::path::PathBuf::from("/etc/kiln/tokens/agent.token"), "the Secret's mount");
}
