//! Instructions that only edit the image config (ENV, LABEL, USER, EXPOSE, VOLUME, CMD,
//! HEALTHCHECK, ...): pure edits, no filesystem, no layer.

use kiln_shared::frontend::instructions::{Healthcheck, Instruction};
use kiln_shared::frontend::resolve::Step;
use kiln_shared::oci::RunConfig;

/// Applies a config-only step to `cfg`. WORKDIR, COPY, ADD and RUN change the filesystem and
/// are the caller's; here they change nothing.
pub(super) fn apply(cfg: &mut RunConfig, step: &Step) {
    match &step.instruction {
        Instruction::Env(kv) => kv.pairs.iter().for_each(|p| cfg.set_env(&p.key, &p.value)),
        Instruction::Label(kv) => kv.pairs.iter().for_each(|p| {
            cfg.labels.insert(p.key.clone(), p.value.clone());
        }),
        Instruction::User { user } => cfg.user = user.clone(),
        Instruction::Expose { ports } => ports.iter().for_each(|p| {
            let p = if p.contains('/') { p.to_ascii_lowercase() } else { format!("{p}/tcp") };
            cfg.exposed_ports.insert(p, serde_json::json!({}));
        }),
        Instruction::Volume { paths, .. } => paths.iter().for_each(|p| {
            cfg.volumes.insert(p.clone(), serde_json::json!({}));
        }),
        Instruction::Stopsignal { signal } => cfg.stop_signal = signal.clone(),
        Instruction::Shell { shell } => cfg.shell = Some(shell.clone()),
        Instruction::Entrypoint { .. } => {
            cfg.entrypoint = step.argv.clone();
            // ENTRYPOINT clears a CMD inherited from the base (Docker's rule).
            cfg.cmd = None;
        }
        Instruction::Cmd { .. } => cfg.cmd = step.argv.clone(),
        Instruction::Healthcheck(h) => cfg.healthcheck = Some(healthcheck_json(h, step)),
        Instruction::Onbuild { expression, .. } => cfg.on_build.get_or_insert_with(Vec::new).push(expression.clone()),
        Instruction::Maintainer { name } => {
            cfg.labels.insert("maintainer".into(), name.clone());
        }
        Instruction::Arg { .. } | Instruction::From(_) => {}
        Instruction::Workdir { .. } | Instruction::Copy(_) | Instruction::Add(_) | Instruction::Run(_) => {}
    }
}

fn healthcheck_json(h: &Healthcheck, step: &Step) -> serde_json::Value {
    let ns = |v: &Option<String>| v.as_deref().and_then(kiln_shared::frontend::instructions::parse_go_duration);
    match h {
        Healthcheck::None => serde_json::json!({"Test": ["NONE"]}),
        Healthcheck::Cmd { interval, timeout, start_period, start_interval, retries, .. } => {
            let mut v = serde_json::json!({"Test": step.argv.clone().unwrap_or_default()});
            for (k, d) in [
                ("Interval", ns(interval)),
                ("Timeout", ns(timeout)),
                ("StartPeriod", ns(start_period)),
                ("StartInterval", ns(start_interval)),
            ] {
                if let Some(d) = d {
                    v[k] = serde_json::json!(d);
                }
            }
            if let Some(r) = retries {
                v["Retries"] = serde_json::json!(r);
            }
            v
        }
    }
}
