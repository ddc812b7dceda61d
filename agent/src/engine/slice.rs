//! Running a slice: resolving the Dockerfile, building its stages in waves (every stage whose
//! dependencies are built runs beside the others), and each stage step by step, through the
//! step cache.

use super::config_ops;
use super::history;
use super::pull::RegistryImages;
use super::step_cache::{cache_key, write_record};
use super::{record_name, rfc3339, Agent, EngineError, Event, SliceRequest, SliceResult, SliceRun, State};
use crate::copy::{self, CopyEnv};
use crate::executor::Mounted;
use crate::layers::Layer;
use kiln_shared::api::{StepRecord, StepSource};
use kiln_shared::frontend;
use kiln_shared::frontend::dockerignore::DockerIgnore;
use kiln_shared::frontend::instructions::Instruction;
use kiln_shared::frontend::print::{self, Style};
use kiln_shared::frontend::resolve::{self, Base, Options, Stage, Step};
use kiln_shared::oci::{History, ImageConfig};
use kiln_shared::store::ContentStore;
use kiln_shared::Platform;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

impl Agent {
    /// Builds one slice: the stages its target needs, every step through the step cache;
    /// `events` hears each step start, finish, fail or come from the cache, and its output.
    pub fn run_slice(&self, req: &SliceRequest, events: &(dyn Fn(Event) + Sync)) -> Result<SliceResult, EngineError> {
        let started = Instant::now();
        let _in_use = crate::gc::BuildLock::shared(&self.root)?;
        if !self.platforms.can_run(&req.platform) {
            let runs: Vec<String> = self.platforms.native.iter().chain(&self.platforms.emulated).map(|p| p.to_string()).collect();
            return Err(EngineError::CannotExecute { platform: req.platform.to_string(), runs: runs.join(", ") });
        }
        let df = frontend::parse(req.dockerfile).map_err(|e| e.in_file(req.dockerfile_name))?;
        // A tag resolved in the last minute is used again; `--pull` resolves it for this slice.
        let fresh_since = if req.pull { started } else { started.checked_sub(super::pull::REUSE_PULL).unwrap_or(started) };
        let images = RegistryImages { agent: self, since: fresh_since, errors: Mutex::new(Vec::new()) };
        // The build platform is this machine's own: the host's, unless the agent declared
        // other native platforms (then the first of those).
        let host = Platform::host();
        let build_platform = if req.native.is_empty() || req.native.contains(&host) { host } else { req.native[0].clone() };
        let contexts: Vec<(String, resolve::NamedContext)> = req
            .named
            .iter()
            .map(|(n, c)| {
                (
                    n.clone(),
                    match c {
                        super::Named::Image(r) => resolve::NamedContext::Image(r.clone()),
                        super::Named::Dir(_) => resolve::NamedContext::Local,
                    },
                )
            })
            .collect();
        let opts = Options {
            platform: req.platform.clone(),
            build_platform: build_platform.clone(),
            build_args: req.build_args,
            target: req.target,
            images: &images,
            contexts: &contexts,
        };
        let plan = resolve::resolve(&df, &opts).map_err(|e| e.in_file(req.dockerfile_name));
        if let Some(e) = images.errors.lock().ok().and_then(|mut e| e.pop()) {
            return Err(e);
        }
        let plan = plan?;
        let mut run = SliceRun {
            agent: self,
            req,
            plan: &plan,
            events,
            finished: HashMap::new(),
            hits: AtomicU32::new(0),
            misses: AtomicU32::new(0),
            peer_hits: AtomicU32::new(0),
            records: Mutex::new(Vec::new()),
            emulated_steps: Mutex::new(Vec::new()),
            steps: Mutex::new(Vec::new()),
            started,
            fresh_since,
            materials: Mutex::new(Vec::new()),
            named_dirs: Mutex::new(HashMap::new()),
        };
        // Stages run in waves: every stage whose dependencies are built runs now, side by side.
        let mut pending: Vec<&Stage> = plan.stages.iter().collect();
        while !pending.is_empty() {
            let (ready, later): (Vec<&Stage>, Vec<&Stage>) =
                pending.into_iter().partition(|s| s.deps.iter().all(|d| run.finished.contains_key(d)));
            if ready.is_empty() {
                return Err(EngineError::Copy("stages wait on each other (a dependency cycle)".into()));
            }
            let shared = &run;
            let results: Vec<(usize, Result<State, EngineError>)> = std::thread::scope(|scope| {
                let handles: Vec<_> = ready.iter().map(|stage| (stage.index, scope.spawn(move || shared.stage(stage)))).collect();
                handles
                    .into_iter()
                    .map(|(i, h)| (i, h.join().unwrap_or_else(|_| Err(EngineError::Copy("a stage panicked".into())))))
                    .collect()
            });
            for (i, r) in results {
                run.finished.insert(i, r?);
            }
            pending = later;
        }
        let mut final_state =
            run.finished.get(&plan.target).cloned().ok_or_else(|| EngineError::Copy("the target stage was not built".into()))?;
        // `--label` goes on the image, not into any step (and so not into the step cache).
        for (k, v) in req.labels {
            final_state.config.config.labels.insert(k.clone(), v.clone());
        }
        let (manifest, blobs) = self.write_image(&final_state, &req.platform, req.epoch())?;
        // The final image's chain: the target stage and the stages it builds on.
        let mut chain = vec![plan.target];
        while let Some(Base::Stage(i)) = chain.last().and_then(|&s| plan.stages.iter().find(|st| st.index == s)).map(|st| &st.base) {
            if chain.contains(i) {
                break;
            }
            chain.push(*i);
        }
        let records = std::mem::take(&mut *run.records.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(|(stage, key, state_json)| kiln_shared::api::CacheRecord { key, state_json, in_final: chain.contains(&stage) })
            .collect();
        let emulated_steps = std::mem::take(&mut *run.emulated_steps.lock().unwrap_or_else(|e| e.into_inner()));
        let steps = std::mem::take(&mut *run.steps.lock().unwrap_or_else(|e| e.into_inner()));
        let materials = std::mem::take(&mut *run.materials.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(SliceResult {
            platform: req.platform.clone(),
            emulated: !emulated_steps.is_empty(),
            emulated_steps,
            steps,
            manifest,
            blobs,
            layers: final_state.layers.clone(),
            cache_hits: run.hits.load(Ordering::Relaxed),
            cache_misses: run.misses.load(Ordering::Relaxed),
            cache_peer_hits: run.peer_hits.load(Ordering::Relaxed),
            duration_ms: started.elapsed().as_millis() as u64,
            records,
            materials,
            build_platform,
            hermetic: plan.stages.iter().all(|s| s.steps.iter().all(|st| !matches!(st.instruction, Instruction::Run(_)))),
        })
    }
}

impl SliceRun<'_> {
    fn stage(&self, stage: &Stage) -> Result<State, EngineError> {
        let label = stage.display_name();
        let total = stage.steps.len() + 1;
        let name = format!("[{} {label} 1/{total}] {}", self.req.platform, print::instruction(&stage.from, Style::Expanded));
        let id = self.agent.next_id();
        (self.events)(Event::Start { id, name });
        let t = Instant::now();
        let mut base_digest = String::new();
        let mut state = match &stage.base {
            Base::Scratch => {
                State { config: ImageConfig::empty(&stage.platform), layers: vec![], key: format!("scratch {}", stage.platform) }
            }
            Base::Stage(i) => {
                let mut s =
                    self.finished.get(i).cloned().ok_or_else(|| EngineError::Copy(format!("stage {i} was not built before {label}")))?;
                // The base stage's ONBUILD triggers run in this stage (resolve put them first).
                s.config.config.on_build = None;
                s
            }
            Base::Context(name) => self.named_dir(name, &stage.platform)?,
            Base::Image(image) => {
                let (mut s, digest) =
                    self.agent.pull(image, &stage.platform, self.fresh_since).map_err(|e| self.step_err(stage, stage.pos.line, e))?;
                base_digest = digest.to_string();
                self.material(image, &stage.platform, digest);
                // ONBUILD triggers run in this stage; the new image does not carry them.
                s.config.config.on_build = None;
                s
            }
        };
        // Every Linux image gets a PATH when its base has none (BuildKit's rule).
        if !state.config.config.env.iter().any(|e| e.starts_with("PATH=")) {
            state.config.config.set_env("PATH", resolve::DEFAULT_PATH);
        }
        (self.events)(Event::Done { id, secs: t.elapsed().as_secs_f64() });
        let from_text = print::instruction(&stage.from, Style::Expanded);
        let mut from = self.step_record(&label, 1, total, &from_text, t);
        from.key = state.key.clone();
        from.base_digest = base_digest;
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).push(from);
        let emulated = self.req.emulates(&stage.platform, &self.agent.platforms);
        for (n, step) in stage.steps.iter().enumerate() {
            let text = print::instruction(&step.instruction, Style::Expanded);
            let mut name = format!("[{} {label} {}/{total}] {text}", self.req.platform, n + 2);
            if emulated && matches!(step.instruction, Instruction::Run(_)) {
                // Which steps ran under qemu, in the progress and (collected) the metadata.
                self.emulated_steps.lock().unwrap_or_else(|e| e.into_inner()).push(format!("[{label} {}/{total}] {text}", n + 2));
                name.push_str(" (emulated)");
            }
            let id = self.agent.next_id();
            (self.events)(Event::Start { id, name });
            let t = Instant::now();
            if self.req.cancelled.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            let mut record = self.step_record(&label, n as u32 + 2, total, &text, t);
            record.emulated = emulated && matches!(step.instruction, Instruction::Run(_));
            record.parent = state.key.clone();
            let ran = self.step(stage, step, &text, &mut state, id, &mut record);
            record.duration_ms = t.elapsed().as_millis() as u64;
            record.key = state.key.clone();
            self.steps.lock().unwrap_or_else(|e| e.into_inner()).push(record);
            match ran {
                Ok(true) => (self.events)(Event::Cached { id }),
                Ok(false) => (self.events)(Event::Done { id, secs: t.elapsed().as_secs_f64() }),
                Err(e) => {
                    let e = self.step_err(stage, step.pos.line, e);
                    (self.events)(Event::Failed { id, message: e.to_string() });
                    return Err(e);
                }
            }
        }
        Ok(state)
    }

    /// A step's history record, before it runs (the caller fills in what the step decides).
    fn step_record(&self, label: &str, position: u32, total: usize, text: &str, t: Instant) -> StepRecord {
        StepRecord {
            name: format!("[{label} {position}/{total}] {text}"),
            stage: label.to_string(),
            position,
            text: text.to_string(),
            source: StepSource::Executed,
            emulated: false,
            start_ms: t.duration_since(self.started).as_millis() as u64,
            duration_ms: t.elapsed().as_millis() as u64,
            key: String::new(),
            parent: String::new(),
            base_digest: String::new(),
            sources: vec![],
            args: vec![],
        }
    }

    fn step_err(&self, stage: &Stage, line: u32, e: EngineError) -> EngineError {
        EngineError::Step {
            platform: self.req.platform.to_string(),
            stage: stage.display_name(),
            file: self.req.dockerfile_name.to_string(),
            line,
            error: Box::new(e),
        }
    }

    /// Runs one step; true when it came from the cache.
    fn step(
        &self,
        stage: &Stage,
        step: &Step,
        text: &str,
        state: &mut State,
        id: u64,
        step_rec: &mut StepRecord,
    ) -> Result<bool, EngineError> {
        let extra = self.cache_extra(stage, step)?;
        step_rec.sources = context_sources(step);
        if matches!(step.instruction, Instruction::Run(_)) {
            step_rec.args = step.args.clone();
        }
        // The epoch changes every timestamp a step writes: it is part of the key.
        let extra = match self.req.epoch() {
            Some(e) => format!("{extra}\nSOURCE_DATE_EPOCH={e}"),
            None => extra,
        };
        let key = cache_key(&state.key, text, &stage.platform, &extra);
        let name = record_name(self.req.cache_scope, &key);
        let record = self.agent.root.join("cache").join(format!("{name}.json"));
        let filtered = stage.name.as_deref().is_some_and(|n| self.req.no_cache_filter.iter().any(|f| f.eq_ignore_ascii_case(n)));
        if !self.req.no_cache && !filtered {
            if let Some((cached, source)) = self.cached(&record, &name, &key) {
                *state = cached;
                step_rec.source = source;
                self.note(stage, &key, state);
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        crate::metrics::get().step_cache_misses.inc(&[]);
        let layer = self.execute(stage, step, state, id)?;
        // BuildKit records no history for ONBUILD.
        if let Some(created_by) = history::created_by(step, &state.config.config) {
            let mut history =
                History { created_by: Some(created_by), comment: Some("buildkit.dockerfile.v0".into()), ..Default::default() };
            history.created = self.req.epoch().map(rfc3339);
            match layer {
                Some(l) => {
                    state.config.rootfs.diff_ids.push(l.diff_id.clone());
                    state.layers.push(l);
                }
                None => history.empty_layer = true,
            }
            state.config.history.push(history);
        }
        state.key = key.clone();
        write_record(&record, &serde_json::to_vec(state).unwrap_or_default())?;
        self.note(stage, &key, state);
        Ok(false)
    }

    /// The state a `--from` value names: a built stage, or a pulled image.
    pub(super) fn source_state(&self, from: &str, platform: &Platform) -> Result<Option<State>, EngineError> {
        let index = if from.chars().all(|c| c.is_ascii_digit()) {
            from.parse::<usize>().ok()
        } else {
            self.plan.stages.iter().find(|s| s.name.as_deref() == Some(&from.to_ascii_lowercase())).map(|s| s.index)
        };
        match index {
            Some(i) => Ok(self.finished.get(&i).cloned()),
            None if self.req.named.iter().any(|(n, c)| n == from && matches!(c, super::Named::Dir(_))) => {
                Ok(Some(self.named_dir(from, platform)?))
            }
            None => {
                let (state, digest) = self.agent.pull(from, platform, self.fresh_since)?;
                self.material(from, platform, digest);
                Ok(Some(state))
            }
        }
    }

    /// Notes an image the slice used, once.
    fn material(&self, image: &str, platform: &Platform, digest: kiln_shared::digest::Digest) {
        let m = super::Material { image: image.to_string(), platform: platform.clone(), digest };
        let mut all = self.materials.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains(&m) {
            all.push(m);
        }
    }

    /// A named directory context as a one-layer filesystem (BuildKit's local source), packed
    /// once per slice however many stages and `COPY --from`s use it.
    fn named_dir(&self, name: &str, platform: &Platform) -> Result<State, EngineError> {
        if let Some(s) = self.named_dirs.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            let mut s = s.clone();
            s.config = ImageConfig::empty(platform);
            return Ok(s);
        }
        let dir = self.req.named.iter().find_map(|(n, c)| match c {
            super::Named::Dir(d) if n == name => Some(d.clone()),
            _ => None,
        });
        let dir = dir.ok_or_else(|| EngineError::Copy(format!("no build context named {name:?}")))?;
        let layer = crate::layers::diff(&dir, &self.agent.store, self.req.epoch())?;
        let key = format!("context {name} {}", layer.as_ref().map(|l| l.diff_id.to_string()).unwrap_or_default());
        let state = State { config: ImageConfig::empty(platform), layers: layer.into_iter().collect(), key };
        self.named_dirs.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), state.clone());
        Ok(state)
    }

    /// Carries out a step that missed the cache; the layer it adds, if any.
    fn execute(&self, stage: &Stage, step: &Step, state: &mut State, id: u64) -> Result<Option<Layer>, EngineError> {
        match &step.instruction {
            Instruction::Workdir { .. } => {
                state.config.config.working_dir = step.workdir.clone();
                // BuildKit commits a layer for every WORKDIR, empty when the directory was there.
                match copy::workdir(self, state, &step.workdir, self.req.epoch())? {
                    Some(l) => Ok(Some(l)),
                    None => Ok(Some(crate::layers::empty(&self.agent.store)?)),
                }
            }
            Instruction::Copy(_) | Instruction::Add(_) => copy::copy(self, stage, step, state),
            Instruction::Run(_) => self.run(stage, step, state, id),
            _ => {
                config_ops::apply(&mut state.config.config, step);
                Ok(None)
            }
        }
    }
}

impl CopyEnv for SliceRun<'_> {
    fn store(&self) -> &ContentStore {
        &self.agent.store
    }

    fn run_dir(&self) -> PathBuf {
        self.agent.root.join("run")
    }

    fn lowers(&self, state: &State) -> Result<Vec<PathBuf>, EngineError> {
        self.agent.lowers(state)
    }

    fn mount_ro(&self, state: &State) -> Result<(Mounted, PathBuf), EngineError> {
        self.agent.mount_ro(state)
    }

    fn source_state(&self, from: &str, platform: &Platform) -> Result<Option<State>, EngineError> {
        SliceRun::source_state(self, from, platform)
    }

    fn context(&self) -> &Path {
        self.req.context
    }

    fn ignore(&self) -> &DockerIgnore {
        self.req.ignore
    }

    fn epoch(&self) -> Option<u64> {
        self.req.epoch()
    }
}

/// The context paths a step reads (COPY/ADD without --from, RUN bind mounts of the context).
fn context_sources(step: &Step) -> Vec<String> {
    match &step.instruction {
        Instruction::Copy(c) if c.from.is_none() => c.sources.clone(),
        Instruction::Add(a) => a.sources.clone(),
        Instruction::Run(r) => r
            .mounts
            .iter()
            .filter(|m| m.from.is_none() && m.kind == kiln_shared::frontend::mount::MountType::Bind)
            .map(|m| m.source.clone().unwrap_or_else(|| ".".into()))
            .collect(),
        _ => vec![],
    }
}
