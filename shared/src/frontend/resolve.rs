//! Resolution: a parsed Dockerfile plus one target platform and the build arguments become a
//! [`BuildPlan`]: the stages the target needs, in an order where every stage follows the stages
//! it depends on, with every instruction's variables expanded as Docker expands them.
//!
//! The rules, from BuildKit's `dockerfile2llb`: ARGs before the first FROM are global and usable
//! in FROM lines (with the automatic `TARGET*`/`BUILD*` platform args); inside a stage an ARG
//! takes the build-arg, else its default, else the global value; ENV wins over ARG when both
//! name a variable; `FROM <name>` refers to an earlier stage, `COPY --from` and
//! `RUN --mount=from=` to any stage by name or index, or else to an image.

use super::error::{ErrorKind, FrontendError, Pos, Result};
use super::instructions::{ArgDecl, CommandLine, Dockerfile, Heredoc, Instruction, KeyValue, KeyValues, Located};
use super::parser::{heredoc_word, LogicalLine};
pub use super::semantics::join_path;
use super::semantics::{command_argv, expand_raw, run_argv, valid_port, valid_signal};
use super::shell::{Env, ExpandError, ShellLex};
use crate::platform::Platform;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};

/// Build arguments that need no ARG declaration and never count as unused.
pub const PROXY_ARGS: &[&str] =
    &["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"];

pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// The PATH every Linux stage gets when its base image sets none (as BuildKit does).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What resolution needs to know about a base image; `None` from [`BaseImages`] means unknown
/// (a dry run does not pull images), in which case the image is taken to set nothing.
#[derive(Clone, Debug, Default)]
pub struct BaseConfig {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub shell: Option<Vec<String>>,
    pub onbuild: Vec<String>,
}

pub trait BaseImages {
    fn config(&self, image: &str, platform: &Platform) -> Option<BaseConfig>;
}

/// No image metadata (dry runs).
pub struct NoImages;

impl BaseImages for NoImages {
    fn config(&self, _image: &str, _platform: &Platform) -> Option<BaseConfig> {
        None
    }
}

pub struct Options<'a> {
    pub platform: Platform,
    pub build_platform: Platform,
    /// `--build-arg` values, in the order given (a later one wins).
    pub build_args: &'a [(String, String)],
    pub target: Option<&'a str>,
    pub images: &'a dyn BaseImages,
    /// `--build-context NAME=...`: what a name in FROM or `--from` stands for when no stage
    /// has it (before any image of that name).
    pub contexts: &'a [(String, NamedContext)],
}

/// What a named context is, as resolution needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedContext {
    /// `docker-image://REF` (or an OCI layout or another build, once the client made it an image).
    Image(String),
    /// A directory (local, or a fetched git repository or URL).
    Local,
}

impl Options<'_> {
    fn named(&self, name: &str) -> Option<&NamedContext> {
        self.contexts.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "ref", rename_all = "lowercase")]
pub enum Base {
    Scratch,
    Image(String),
    /// A local directory given as `--build-context NAME=DIR`, by name: its files are the
    /// stage's filesystem.
    Context(String),
    /// Another stage, by index.
    Stage(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub pos: Option<Pos>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BuildPlan {
    pub platform: Platform,
    pub build_platform: Platform,
    /// Index of the target stage.
    pub target: usize,
    pub global_args: Vec<ArgDecl>,
    /// The stages the target needs, dependencies first.
    pub stages: Vec<Stage>,
    /// How many stages the file has (the rest were pruned as unreachable).
    pub total_stages: usize,
    pub warnings: Vec<Warning>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    /// The platform the stage's steps run for (its `FROM --platform`, else the target's).
    pub platform: Platform,
    pub pos: Pos,
    /// The FROM instruction with its variables expanded.
    pub from: Instruction,
    /// Stages this one reads from (base, COPY --from, RUN --mount from), by index.
    pub deps: Vec<usize>,
    /// Images read by COPY --from / RUN --mount from= (not stages).
    pub image_deps: Vec<String>,
    pub steps: Vec<Step>,
}

impl Stage {
    /// `name`, or `stage-N` as BuildKit calls unnamed stages.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub pos: Pos,
    pub end_line: u32,
    /// The instruction with its variables expanded where Docker expands them.
    pub instruction: Instruction,
    /// True for steps that came from a base image's ONBUILD triggers.
    pub onbuild: bool,
    /// Build arguments in scope (name, value) when the step runs; RUN sees them as environment.
    pub args: Vec<(String, String)>,
    /// Every ARG the stage declared before this step, in order, with or without a value (the
    /// `RUN |N NAME=VALUE ...` prefix of BuildKit's history names them all).
    pub declared_args: Vec<String>,
    /// The working directory when the step runs.
    pub workdir: String,
    /// The process a RUN starts, or the command CMD/ENTRYPOINT/HEALTHCHECK record.
    pub argv: Option<Vec<String>>,
    /// Files a RUN heredoc script is written to before it runs: (path, content).
    pub files: Vec<(String, String)>,
}

/// Resolves `df` for one platform.
pub fn resolve(df: &Dockerfile, opts: &Options) -> Result<BuildPlan> {
    Resolver::new(df, opts)?.run()
}

struct RawStage<'a> {
    from: &'a Located,
    body: Vec<&'a Located>,
    name: Option<String>,
}

/// What a finished stage hands to a stage built FROM it.
#[derive(Clone, Default)]
struct Inherited {
    env: Vec<(String, String)>,
    shell: Vec<String>,
    workdir: String,
    onbuild: Vec<String>,
    /// False when the base image's config is not known (a dry run): variables this Dockerfile
    /// does not set are then left as written instead of expanding to nothing.
    env_unknown: bool,
}

struct Resolver<'a> {
    df: &'a Dockerfile,
    opts: &'a Options<'a>,
    lex: ShellLex,
    globals: Vec<&'a Located>,
    stages: Vec<RawStage<'a>>,
    /// Global scope: platform args and global ARGs with values.
    meta: Vec<(String, String)>,
    global_decls: Vec<ArgDecl>,
    consumed: BTreeSet<String>,
    warnings: Vec<Warning>,
    /// Stage names to indices (a later duplicate wins).
    names: HashMap<String, usize>,
}

fn expand_err(pos: Pos, word: &str) -> impl FnOnce(ExpandError) -> FrontendError + '_ {
    move |e| FrontendError::at(pos, ErrorKind::Expansion { reason: format!("failed to process {word:?}: {}", e.0) })
}

fn platform_args(target: &Platform, build: &Platform) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (prefix, p) in [("BUILD", build), ("TARGET", target)] {
        out.push((format!("{prefix}PLATFORM"), p.to_string()));
        out.push((format!("{prefix}OS"), p.os().to_string()));
        out.push((format!("{prefix}ARCH"), p.arch().to_string()));
        out.push((format!("{prefix}VARIANT"), p.variant().unwrap_or("").to_string()));
    }
    out
}

impl<'a> Resolver<'a> {
    fn new(df: &'a Dockerfile, opts: &'a Options<'a>) -> Result<Resolver<'a>> {
        let mut globals = Vec::new();
        let mut stages: Vec<RawStage> = Vec::new();
        for l in &df.instructions {
            match (&l.instruction, stages.last_mut()) {
                (Instruction::From(f), _) => stages.push(RawStage { from: l, body: vec![], name: f.name.clone() }),
                (Instruction::Arg { .. }, None) => globals.push(l),
                (other, None) => {
                    return Err(FrontendError::at(l.pos, ErrorKind::InstructionBeforeFrom { instruction: other.keyword().to_string() }))
                }
                (_, Some(stage)) => stage.body.push(l),
            }
        }
        if stages.is_empty() {
            return Err(FrontendError::global(ErrorKind::NoStages));
        }
        let lex = ShellLex::new(df.directives.escape);
        Ok(Resolver {
            df,
            opts,
            lex,
            globals,
            stages,
            meta: vec![],
            global_decls: vec![],
            consumed: BTreeSet::new(),
            warnings: vec![],
            names: HashMap::new(),
        })
    }

    fn build_arg(&self, name: &str) -> Option<String> {
        self.opts.build_args.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn word(&self, s: &str, env: &dyn Env, pos: Pos) -> Result<String> {
        self.lex.process_word(s, env).map_err(expand_err(pos, s))
    }

    fn run(mut self) -> Result<BuildPlan> {
        // Global scope: automatic platform args (a build-arg of the same name overrides them),
        // then the global ARGs in order, each default expanded with what came before.
        self.meta = platform_args(&self.opts.platform, &self.opts.build_platform);
        for (k, v) in self.meta.iter_mut() {
            if let Some(b) = self.opts.build_args.iter().rev().find(|(bk, _)| bk == k) {
                *v = b.1.clone();
            }
        }
        for l in self.globals.clone() {
            let Instruction::Arg { args } = &l.instruction else { continue };
            for a in args {
                let value = match (self.build_arg(&a.name), &a.default) {
                    (Some(v), _) => Some(v),
                    (None, Some(d)) => Some(self.word(d, &self.meta, l.pos)?),
                    (None, None) => None,
                };
                self.consumed.insert(a.name.clone());
                if let Some(v) = &value {
                    self.meta.push((a.name.clone(), v.clone()));
                }
                self.global_decls.push(ArgDecl { name: a.name.clone(), default: value });
            }
        }

        self.names = self.stage_names();
        let (bases, froms, platforms) = self.stage_headers()?;
        let deps = self.dependencies(&bases)?;
        let target = self.target()?;
        let order = self.order(target, &deps)?;

        let mut finished: HashMap<usize, Inherited> = HashMap::new();
        let mut stages = Vec::new();
        for &i in &order {
            let (stage, inherited) = self.stage(i, &bases[i], &froms[i], &platforms[i], &deps[i], &finished)?;
            finished.insert(i, inherited);
            stages.push(stage);
        }
        self.unused_args_warning();
        Ok(BuildPlan {
            platform: self.opts.platform.clone(),
            build_platform: self.opts.build_platform.clone(),
            target,
            global_args: self.global_decls,
            stages,
            total_stages: self.stages.len(),
            warnings: self.warnings,
        })
    }

    /// Stage names to indices; a later duplicate wins, as in BuildKit (which lints it).
    fn stage_names(&mut self) -> HashMap<String, usize> {
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, s) in self.stages.iter().enumerate() {
            if let Some(n) = &s.name {
                if let Some(prev) = names.insert(n.clone(), i) {
                    let line = self.stages[prev].from.pos.line;
                    self.warnings.push(Warning {
                        pos: Some(s.from.pos),
                        message: format!("duplicate stage name {n:?} (also at line {line}); stage names should be unique"),
                    });
                }
            }
        }
        names
    }

    /// Expands every FROM with the global scope and finds what each stage is based on.
    #[allow(clippy::type_complexity)]
    fn stage_headers(&self) -> Result<(Vec<Base>, Vec<Instruction>, Vec<Platform>)> {
        let mut bases = Vec::new();
        let mut froms = Vec::new();
        let mut platforms: Vec<Platform> = Vec::new();
        let mut earlier: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.stages.iter().enumerate() {
            let Instruction::From(f) = &s.from.instruction else { continue };
            let pos = s.from.pos;
            let image = self.word(&f.image, &self.meta, pos)?;
            if image.is_empty() {
                return Err(FrontendError::at(
                    pos,
                    ErrorKind::BadArgument { instruction: "FROM".into(), reason: format!("base name ({}) should not be blank", f.image) },
                ));
            }
            let platform_flag = f.platform.as_ref().map(|p| self.word(p, &self.meta, pos)).transpose()?;
            // FROM looks only at earlier stages, by the name as written.
            let base = match (earlier.get(image.as_str()), self.opts.named(&image)) {
                (Some(&j), _) => Base::Stage(j),
                (None, Some(NamedContext::Image(reference))) => Base::Image(reference.clone()),
                (None, Some(NamedContext::Local)) => Base::Context(image.clone()),
                (None, None) if image == "scratch" => Base::Scratch,
                (None, None) => Base::Image(image.clone()),
            };
            let platform = match (&platform_flag, &base) {
                (Some(p), _) => {
                    p.parse::<Platform>().map_err(|e| FrontendError::at(pos, ErrorKind::BadPlatform { reason: e.to_string() }))?
                }
                (None, Base::Stage(j)) => platforms[*j].clone(),
                (None, _) => self.opts.platform.clone(),
            };
            if let Some(n) = &s.name {
                earlier.insert(n.as_str(), i);
            }
            froms.push(Instruction::From(super::instructions::From { platform: platform_flag, image, name: f.name.clone() }));
            bases.push(base);
            platforms.push(platform);
        }
        Ok((bases, froms, platforms))
    }

    /// What `--from=value` names: a stage (by index or name) or an image.
    fn lookup(&self, value: &str, pos: Pos) -> Result<std::result::Result<usize, String>> {
        if value.contains('$') {
            return Err(FrontendError::at(pos, ErrorKind::BadFlagValue { flag: "from".into(), reason: "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround".into() }));
        }
        if !value.is_empty() && value.chars().all(|c| c.is_ascii_digit()) {
            let index: usize = value.parse().unwrap_or(usize::MAX);
            if index >= self.stages.len() {
                return Err(FrontendError::at(pos, ErrorKind::BadStageIndex { index, count: self.stages.len() }));
            }
            return Ok(Ok(index));
        }
        Ok(self.names.get(&value.to_ascii_lowercase()).copied().ok_or_else(|| value.to_string()))
    }

    /// A `--from` that names no stage: a named context's image (the reference it stands
    /// for), a named directory (kept by name), or an image. Images are noted in `deps`.
    fn image_source(&self, name: String, deps: &mut Vec<String>) -> Option<String> {
        match self.opts.named(&name) {
            Some(NamedContext::Local) => Some(name),
            Some(NamedContext::Image(reference)) => {
                deps.push(reference.clone());
                Some(reference.clone())
            }
            None => {
                deps.push(name.clone());
                Some(name)
            }
        }
    }

    fn dependencies(&self, bases: &[Base]) -> Result<Vec<Vec<usize>>> {
        let mut all = Vec::new();
        for (i, s) in self.stages.iter().enumerate() {
            let mut deps = BTreeSet::new();
            if let Base::Stage(j) = bases[i] {
                deps.insert(j);
            }
            for l in &s.body {
                for from in from_refs(&l.instruction) {
                    if let Ok(j) = self.lookup(from, l.pos)? {
                        deps.insert(j);
                    }
                }
            }
            all.push(deps.into_iter().collect());
        }
        Ok(all)
    }

    fn target(&self) -> Result<usize> {
        match self.opts.target {
            None => Ok(self.stages.len() - 1),
            Some(t) => self.names.get(&t.to_ascii_lowercase()).copied().ok_or_else(|| {
                let mut stages: Vec<String> = self.stages.iter().filter_map(|s| s.name.clone()).collect();
                stages.dedup();
                FrontendError::global(ErrorKind::TargetNotFound { target: t.to_string(), stages })
            }),
        }
    }

    fn stage_label(&self, i: usize) -> String {
        self.stages[i].name.clone().unwrap_or_else(|| format!("stage-{i}"))
    }

    /// The stages reachable from `target`, dependencies first (lowest index among the ready).
    fn order(&self, target: usize, deps: &[Vec<usize>]) -> Result<Vec<usize>> {
        // Depth-first search with an explicit path, to report a cycle as the user wrote it.
        let mut state = vec![0u8; self.stages.len()]; // 0 new, 1 on the path, 2 done
        let mut reachable = BTreeSet::new();
        let mut stack: Vec<(usize, usize)> = vec![(target, 0)];
        state[target] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = deps[node].get(*next) {
                *next += 1;
                match state[dep] {
                    0 => {
                        state[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => {
                        let start = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..].iter().map(|(n, _)| self.stage_label(*n)).collect();
                        cycle.push(self.stage_label(dep));
                        return Err(FrontendError::at(self.stages[node].from.pos, ErrorKind::StageCycle { cycle }));
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                reachable.insert(node);
                stack.pop();
            }
        }
        // Kahn's algorithm over the reachable stages, lowest index first among the ready ones.
        let mut waiting: HashMap<usize, usize> = reachable.iter().map(|&s| (s, deps[s].len())).collect();
        let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
        for &s in &reachable {
            for &d in &deps[s] {
                dependents.entry(d).or_default().push(s);
            }
        }
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> =
            waiting.iter().filter(|(_, n)| **n == 0).map(|(s, _)| std::cmp::Reverse(*s)).collect();
        let mut order = Vec::with_capacity(reachable.len());
        while let Some(std::cmp::Reverse(next)) = ready.pop() {
            order.push(next);
            for d in dependents.get(&next).into_iter().flatten() {
                if let Some(n) = waiting.get_mut(d) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push(std::cmp::Reverse(*d));
                    }
                }
            }
        }
        Ok(order)
    }

    fn stage(
        &mut self,
        i: usize,
        base: &Base,
        from: &Instruction,
        platform: &Platform,
        deps: &[usize],
        finished: &HashMap<usize, Inherited>,
    ) -> Result<(Stage, Inherited)> {
        let raw = &self.stages[i];
        let from_pos = raw.from.pos;
        let mut st = match base {
            Base::Stage(j) => finished.get(j).cloned().unwrap_or_default(),
            Base::Image(image) => {
                let cfg = self.opts.images.config(image, platform);
                let env_unknown = cfg.is_none();
                let cfg = cfg.unwrap_or_default();
                Inherited {
                    env: cfg.env,
                    shell: cfg.shell.unwrap_or_default(),
                    workdir: cfg.workdir.unwrap_or_default(),
                    onbuild: cfg.onbuild,
                    env_unknown,
                }
            }
            Base::Scratch | Base::Context(_) => Inherited::default(),
        };
        self.lex.skip_unset = st.env_unknown;
        if st.shell.is_empty() {
            st.shell = DEFAULT_SHELL.iter().map(|s| s.to_string()).collect();
        }
        if st.workdir.is_empty() {
            st.workdir = "/".into();
        }
        if !st.env_unknown && !st.env.iter().any(|(k, _)| k == "PATH") {
            st.env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        // A base's ONBUILD triggers run first; the new image does not inherit them.
        let mut body: Vec<(Located, bool)> = Vec::new();
        // As BuildKit: the triggers of an image, and of a stage of this build used as a base.
        let triggers = std::mem::take(&mut st.onbuild);
        for expr in triggers {
            let ll = LogicalLine::synthetic(&expr, from_pos);
            body.push((super::instructions::parse_line(ll, self.df.directives.escape)?, true));
        }
        body.extend(raw.body.iter().map(|l| ((*l).clone(), false)));

        let mut args: Vec<(String, String)> = Vec::new();
        let mut declared_args: Vec<String> = Vec::new();
        let mut image_deps = Vec::new();
        let mut steps = Vec::new();
        for (l, onbuild) in body {
            let pos = l.pos;
            let scope: Vec<(String, String)> = args.iter().chain(st.env.iter()).cloned().collect();
            let mut inst = l.instruction.clone();
            let mut argv = None;
            let mut files = Vec::new();
            match &mut inst {
                Instruction::Env(kv) => {
                    self.expand_pairs(kv, &scope, pos)?;
                    for p in &kv.pairs {
                        st.env.retain(|(k, _)| k != &p.key);
                        st.env.push((p.key.clone(), p.value.clone()));
                    }
                }
                Instruction::Label(kv) => self.expand_pairs(kv, &scope, pos)?,
                Instruction::Arg { args: decls } => {
                    for a in decls.iter_mut() {
                        if let Some(d) = &a.default {
                            a.default = Some(self.word(d, &scope, pos)?);
                        }
                        self.consumed.insert(a.name.clone());
                        // BuildKit lists a re-declared ARG again.
                        declared_args.push(a.name.clone());
                        let value = self
                            .build_arg(&a.name)
                            .or_else(|| a.default.clone())
                            .or_else(|| self.meta.iter().rev().find(|(k, _)| *k == a.name).map(|(_, v)| v.clone()));
                        args.retain(|(k, _)| *k != a.name);
                        if let Some(v) = value {
                            args.push((a.name.clone(), v));
                        }
                    }
                }
                Instruction::Run(r) => {
                    for m in r.mounts.iter_mut() {
                        for f in m.fields_mut() {
                            *f = self.word(f, &scope, pos)?;
                        }
                        m.validate().map_err(|reason| FrontendError::at(pos, ErrorKind::BadMount { reason }))?;
                        if let Some(t) = &m.target {
                            m.target = Some(join_path(&st.workdir, t));
                        }
                        if let Some(from) = &m.from {
                            if let Err(image) = self.lookup(from, pos)? {
                                m.from = self.image_source(image, &mut image_deps);
                            }
                        }
                    }
                    let (a, f) = run_argv(&r.command, &r.heredocs, &st.shell);
                    argv = Some(a);
                    files = f;
                }
                Instruction::Cmd { command } | Instruction::Entrypoint { command } => argv = Some(command_argv(command, &st.shell)),
                Instruction::Healthcheck(super::instructions::Healthcheck::Cmd { command, .. }) => {
                    argv = Some(match command {
                        CommandLine::Exec(v) => std::iter::once("CMD".to_string()).chain(v.iter().cloned()).collect(),
                        CommandLine::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
                    })
                }
                Instruction::Healthcheck(_) => argv = Some(vec!["NONE".into()]),
                Instruction::Copy(c) => {
                    c.chown = c.chown.as_ref().map(|v| self.word(v, &scope, pos)).transpose()?;
                    self.expand_sources(&mut c.sources, &mut c.dest, &mut c.heredocs, &scope, pos)?;
                    if let Some(from) = &c.from {
                        if let Err(image) = self.lookup(from, pos)? {
                            c.from = self.image_source(image, &mut image_deps);
                        }
                    }
                }
                Instruction::Add(a) => {
                    a.chown = a.chown.as_ref().map(|v| self.word(v, &scope, pos)).transpose()?;
                    a.checksum = a.checksum.as_ref().map(|v| self.word(v, &scope, pos)).transpose()?;
                    self.expand_sources(&mut a.sources, &mut a.dest, &mut a.heredocs, &scope, pos)?;
                }
                Instruction::Expose { ports } => {
                    let mut out = Vec::new();
                    for p in ports.iter() {
                        out.extend(self.lex.process_words(p, &scope).map_err(expand_err(pos, p))?);
                    }
                    if let Some(bad) = out.iter().find(|p| !valid_port(p)) {
                        return Err(FrontendError::at(
                            pos,
                            ErrorKind::BadArgument {
                                instruction: "EXPOSE".into(),
                                reason: format!("invalid port {bad:?} (expected PORT[-PORT][/tcp|udp|sctp])"),
                            },
                        ));
                    }
                    *ports = out;
                }
                Instruction::Volume { paths, .. } => {
                    for p in paths.iter_mut() {
                        *p = self.word(p, &scope, pos)?;
                        if p.is_empty() {
                            return Err(FrontendError::at(
                                pos,
                                ErrorKind::BadArgument {
                                    instruction: "VOLUME".into(),
                                    reason: "VOLUME specified can not be an empty string".into(),
                                },
                            ));
                        }
                    }
                }
                Instruction::User { user } => *user = self.word(user, &scope, pos)?,
                Instruction::Workdir { path } => {
                    *path = self.word(path, &scope, pos)?;
                    st.workdir = join_path(&st.workdir, path);
                }
                Instruction::Stopsignal { signal } => {
                    *signal = self.word(signal, &scope, pos)?;
                    if !valid_signal(signal) {
                        return Err(FrontendError::at(
                            pos,
                            ErrorKind::BadArgument { instruction: "STOPSIGNAL".into(), reason: format!("invalid signal {signal:?}") },
                        ));
                    }
                }
                Instruction::Shell { shell } => st.shell = shell.clone(),
                Instruction::Onbuild { expression, .. } => st.onbuild.push(expression.clone()),
                Instruction::From(_) | Instruction::Maintainer { .. } => {}
            }
            steps.push(Step {
                pos,
                end_line: l.end_line,
                instruction: inst,
                onbuild,
                args: args.clone(),
                declared_args: declared_args.clone(),
                workdir: st.workdir.clone(),
                argv,
                files,
            });
        }
        self.lex.skip_unset = false;
        let stage = Stage {
            index: i,
            name: raw.name.clone(),
            base: base.clone(),
            platform: platform.clone(),
            pos: from_pos,
            from: from.clone(),
            deps: deps.to_vec(),
            image_deps,
            steps,
        };
        Ok((stage, st))
    }

    fn expand_pairs(&self, kv: &mut KeyValues, scope: &dyn Env, pos: Pos) -> Result<()> {
        // Every pair is expanded with the variables as they were before the instruction.
        let mut out = Vec::new();
        for p in &kv.pairs {
            out.push(KeyValue { key: self.word(&p.key, scope, pos)?, value: self.word(&p.value, scope, pos)? });
        }
        kv.pairs = out;
        Ok(())
    }

    fn expand_sources(&self, sources: &mut [String], dest: &mut String, heredocs: &mut [Heredoc], scope: &dyn Env, pos: Pos) -> Result<()> {
        for s in sources.iter_mut() {
            if heredoc_word(s).is_none() {
                *s = self.word(s, scope, pos)?;
            }
        }
        if heredoc_word(dest).is_some() {
            return Err(FrontendError::at(
                pos,
                ErrorKind::BadArgument { instruction: "COPY".into(), reason: "COPY cannot accept a heredoc as a destination".into() },
            ));
        }
        *dest = self.word(dest, scope, pos)?;
        // An unquoted heredoc delimiter means the body is expanded; quotes in the body stay.
        let raw = ShellLex { skip_unset: self.lex.skip_unset, raw_quotes: true, raw_escapes: true, escape: self.lex.escape };
        for h in heredocs.iter_mut() {
            let body = h.body();
            h.content = if h.expand { expand_raw(&raw, &body, scope).map_err(expand_err(pos, &body))? } else { body };
            h.chomp = false;
        }
        Ok(())
    }

    fn unused_args_warning(&mut self) {
        let mut unused: Vec<&str> = self
            .opts
            .build_args
            .iter()
            .map(|(k, _)| k.as_str())
            // SOURCE_DATE_EPOCH is read by the builder itself, as in BuildKit.
            .filter(|k| *k != "SOURCE_DATE_EPOCH")
            .filter(|k| !self.consumed.contains(*k) && !PROXY_ARGS.contains(k) && !self.meta.iter().take(8).any(|(m, _)| m == k))
            .collect();
        unused.sort();
        unused.dedup();
        if !unused.is_empty() {
            self.warnings.push(Warning { pos: None, message: format!("One or more build-args [{}] were not consumed", unused.join(" ")) });
        }
    }
}

/// The `--from` values an instruction reads.
fn from_refs(inst: &Instruction) -> Vec<&str> {
    match inst {
        Instruction::Copy(c) => c.from.as_deref().into_iter().collect(),
        Instruction::Run(r) => r.mounts.iter().filter_map(|m| m.from.as_deref()).collect(),
        _ => vec![],
    }
}
