//! RUN steps: the step's filesystem (the stage's snapshots under a fresh upper directory),
//! its environment, user, working directory and mounts, run through the agent's
//! [`Executor`](crate::executor::Executor); the upper directory becomes the step's layer.

use super::{EngineError, Event, SliceRun, State};
use crate::copy;
use crate::error::io_err;
use crate::layers::{self, Layer};
use crate::runc::RunSpec;
use kiln_shared::digest::Digest;
use kiln_shared::frontend::instructions::Instruction;
use kiln_shared::frontend::resolve::{self, Stage, Step};

impl SliceRun<'_> {
    pub(super) fn run(&self, stage: &Stage, step: &Step, state: &State, id: u64) -> Result<Option<Layer>, EngineError> {
        let Instruction::Run(run) = &step.instruction else { return Ok(None) };
        let dir = self.agent.scratch("step");
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        let lowers = self.agent.lowers(state)?;
        let result = (|| {
            let overlay = self.agent.executor.mount(&lowers, Some((&upper, &work)), &merged)?;
            let cfg = &state.config.config;
            let mut env = cfg.env.clone();
            for (k, v) in &step.args {
                if !env.iter().any(|e| e.split('=').next() == Some(k)) {
                    env.push(format!("{k}={v}"));
                }
            }
            if !env.iter().any(|e| e.starts_with("PATH=")) {
                env.push(format!("PATH={}", resolve::DEFAULT_PATH));
            }
            let (uid, gid) = copy::resolve_user(&merged, &cfg.user)?;
            let groups = copy::supplementary_groups(&merged, &cfg.user, gid);
            let cwd = if cfg.working_dir.is_empty() { "/".to_string() } else { cfg.working_dir.clone() };
            // Created inside the rootfs: a symlink on the way is followed within it, never to
            // the host's own directories.
            let inside = copy::resolve_rel(&merged, cwd.trim_start_matches('/'), true);
            std::fs::create_dir_all(merged.join(&inside)).map_err(io_err(format!("creating the working directory {cwd}")))?;
            let mut binds = Vec::new();
            let mut keep = Vec::new();
            for (path, content) in &step.files {
                let host = dir.join(format!("file-{}", binds.len()));
                std::fs::write(&host, content).map_err(io_err("writing a heredoc script"))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).map_err(io_err("writing a heredoc script"))?;
                binds.push((host, path.clone(), true));
            }
            for m in &run.mounts {
                use kiln_shared::frontend::mount::MountType;
                let target = m.target.clone().unwrap_or_else(|| cwd.clone());
                match m.kind {
                    MountType::Cache => {
                        let id = m.id.clone().unwrap_or_else(|| target.clone());
                        let host =
                            self.agent.root.join("cachemounts").join(Digest::of(format!("{}\n{id}", stage.platform).as_bytes()).hex());
                        std::fs::create_dir_all(&host).map_err(io_err("creating a cache mount"))?;
                        // mode, uid and gid apply to the cache directory (BuildKit: 0755, 0:0).
                        let mode = m.mode.as_deref().and_then(|v| u32::from_str_radix(v, 8).ok()).unwrap_or(0o755);
                        let id = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode)).map_err(io_err("creating a cache mount"))?;
                        std::os::unix::fs::chown(&host, Some(id(&m.uid)), Some(id(&m.gid))).map_err(io_err("creating a cache mount"))?;
                        binds.push((host, target, m.readonly == Some(true)));
                    }
                    MountType::Bind => {
                        let src = m.source.clone().unwrap_or_else(|| ".".into());
                        let host = match &m.from {
                            Some(from) => {
                                let Some(src_state) = self.source_state(from, &stage.platform)? else { continue };
                                let (ov, root) = self.agent.mount_ro(&src_state)?;
                                keep.push(ov);
                                copy::secure_join(&root, &src)
                            }
                            None => {
                                // Bind sources stay inside the context, and runc needs absolute paths.
                                let ctx = std::fs::canonicalize(self.req.context)
                                    .map_err(io_err(format!("reading the build context {}", self.req.context.display())))?;
                                let host = std::fs::canonicalize(ctx.join(src.trim_start_matches('/')))
                                    .map_err(|_| EngineError::Copy(format!("bind mount source {src:?} not found in the build context")))?;
                                if !host.starts_with(&ctx) {
                                    return Err(EngineError::Copy(format!("bind mount source {src:?} is outside the build context")));
                                }
                                host
                            }
                        };
                        binds.push((host, target, m.readonly != Some(false)));
                    }
                    MountType::Tmpfs => {
                        let host = dir.join(format!("tmpfs-{}", binds.len()));
                        std::fs::create_dir_all(&host).map_err(io_err("creating a tmpfs mount"))?;
                        binds.push((host, target, false));
                    }
                    MountType::Secret | MountType::Ssh if m.required == Some(true) => {
                        return Err(EngineError::Copy(format!(
                            "{} mount {} is required but kiln has no {}s to provide yet",
                            m.kind.as_str(),
                            m.id.clone().unwrap_or_default(),
                            m.kind.as_str()
                        )));
                    }
                    MountType::Secret | MountType::Ssh => {}
                }
            }
            let args = step.argv.clone().unwrap_or_default();
            let network = run.network.clone().unwrap_or_else(|| "default".into());
            let spec = RunSpec {
                rootfs: &merged,
                upper: &upper,
                args: &args,
                env: &env,
                cwd: &cwd,
                uid,
                gid,
                groups: &groups,
                network: &network,
                binds: &binds,
            };
            let events = self.events;
            let res = self.agent.executor.run(&format!("kiln-{}-{id}", std::process::id()), &dir.join("bundle"), &spec, &mut |line| {
                events(Event::Log { id, line: line.to_string() })
            });
            drop(keep);
            drop(overlay);
            res?;
            // BuildKit commits a layer for every RUN, the empty one when nothing changed.
            match layers::diff(&upper, &self.agent.store, self.req.epoch())? {
                Some(l) => Ok(Some(l)),
                None => Ok(Some(layers::empty(&self.agent.store)?)),
            }
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}
