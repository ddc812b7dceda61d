//! RUN steps: the step's filesystem (the stage's snapshots under a fresh upper directory),
//! its environment, user, working directory and mounts, run through the agent's
//! [`Executor`](crate::executor::Executor); the upper directory becomes the step's layer.

use super::{mounts, EngineError, Event, SliceRun, State};
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
            // Secrets and ssh sockets: on a tmpfs of this step's own, gone when it ends.
            let mut private = mounts::Private::new(&*self.agent.executor, dir.join("private"));
            let mut relays = Vec::new();
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
                    MountType::Secret => mounts::secret(self.req.session, m, &mut private, &mut binds, &mut env)?,
                    MountType::Ssh => {
                        if let Some(relay) = mounts::ssh(self.req.session, m, relays.len(), &mut private, &mut binds, &mut env)? {
                            relays.push(relay);
                        }
                    }
                }
            }
            let args = step.argv.clone().unwrap_or_default();
            let opts = self.req.run;
            let network = run.network.clone().or_else(|| opts.network.clone()).unwrap_or_else(|| "default".into());
            if run.network.as_deref() == Some("host") && !opts.entitlements.iter().any(|e| e == "network.host") {
                return Err(EngineError::Copy(
                    "RUN --network=host needs the network.host entitlement: kiln build --allow network.host".to_string(),
                ));
            }
            // A secret in the environment is in the bundle's config.json: keep the bundle on
            // the private tmpfs too.
            let bundle = if private.used() { private.dir()?.join("bundle") } else { dir.join("bundle") };
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
                hosts: &opts.hosts,
                shm_bytes: opts.shm_bytes.unwrap_or(crate::runc::DEFAULT_SHM_BYTES),
                ulimits: &opts.ulimits,
                cancelled: self.req.cancelled,
            };
            let events = self.events;
            let stop = std::sync::atomic::AtomicBool::new(false);
            let session = self.req.session;
            let res = std::thread::scope(|scope| {
                for (listener, _, ssh_id) in &relays {
                    let stop = &stop;
                    scope.spawn(move || mounts::relay(listener, ssh_id, session, stop));
                }
                let res = self.agent.executor.run(&format!("kiln-{}-{id}", std::process::id()), &bundle, &spec, &mut |line| {
                    events(Event::Log { id, line: line.to_string() })
                });
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                for (_, path, _) in &relays {
                    mounts::wake(path);
                }
                res
            });
            drop(relays);
            drop(private);
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
