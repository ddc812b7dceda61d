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
        Instruction::Expose { ports } => ports.iter().flat_map(|p| super::history::expose_ports(p)).for_each(|p| {
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
        Instruction::Cmd { .. } => {
            cfg.cmd = step.argv.clone();
            // BuildKit sets the (deprecated) flag on every CMD, for Docker's image spec.
            cfg.args_escaped = true;
        }
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

#[cfg(test)]
mod tests {
    use super::apply;
    use kiln_shared::frontend;
    use kiln_shared::frontend::resolve::{self, NoImages, Options};
    use kiln_shared::oci::RunConfig;
    use kiln_shared::Platform;

    /// The config a scratch stage of `body` ends with, starting from `base`.
    fn config(base: RunConfig, body: &str) -> RunConfig {
        let df = frontend::parse(&format!("FROM scratch\n{body}")).expect("parse");
        let opts = Options {
            platform: Platform::host(),
            build_platform: Platform::host(),
            build_args: &[],
            target: None,
            images: &NoImages,
            contexts: &[],
        };
        let plan = resolve::resolve(&df, &opts).expect("resolve");
        let mut cfg = base;
        let stage = plan.stages.iter().find(|s| s.index == plan.target).expect("target stage");
        for step in &stage.steps {
            apply(&mut cfg, step);
        }
        cfg
    }

    #[test]
    fn entrypoint_clears_the_inherited_cmd_but_a_later_cmd_stays() {
        let base = RunConfig { cmd: Some(vec!["bash".into()]), ..Default::default() };
        let c = config(base.clone(), "ENTRYPOINT [\"/init\"]\n");
        assert_eq!(c.entrypoint, Some(vec!["/init".to_string()]));
        assert_eq!(c.cmd, None);
        let c = config(base, "ENTRYPOINT [\"/init\"]\nCMD [\"serve\"]\n");
        assert_eq!(c.cmd, Some(vec!["serve".to_string()]));
    }

    #[test]
    fn ports_labels_volumes_and_signals() {
        let c = config(
            RunConfig::default(),
            "EXPOSE 80 53/UDP\nLABEL a=b\nMAINTAINER someone\nVOLUME /data\nSTOPSIGNAL SIGINT\nUSER app\nENV K=v\n",
        );
        assert_eq!(c.exposed_ports.keys().collect::<Vec<_>>(), ["53/udp", "80/tcp"]);
        assert_eq!(c.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(c.labels.get("maintainer").map(String::as_str), Some("someone"));
        assert!(c.volumes.contains_key("/data"));
        assert_eq!(c.stop_signal, "SIGINT");
        assert_eq!(c.user, "app");
        assert!(c.env.iter().any(|e| e == "K=v"), "{:?}", c.env);
    }

    #[test]
    fn healthcheck_durations_are_nanoseconds() {
        let c = config(RunConfig::default(), "HEALTHCHECK --interval=30s --retries=3 CMD [\"check\"]\n");
        let h = c.healthcheck.expect("healthcheck");
        assert_eq!(h["Test"], serde_json::json!(["CMD", "check"]));
        assert_eq!(h["Interval"], serde_json::json!(30_000_000_000u64));
        assert_eq!(h["Retries"], serde_json::json!(3));
        let c = config(RunConfig::default(), "HEALTHCHECK NONE\n");
        assert_eq!(c.healthcheck, Some(serde_json::json!({"Test": ["NONE"]})));
    }

    #[test]
    fn filesystem_steps_leave_the_config_alone() {
        let c = config(RunConfig::default(), "WORKDIR /w\nRUN true\nCOPY a /a\n");
        assert_eq!(c, RunConfig::default());
    }
}
