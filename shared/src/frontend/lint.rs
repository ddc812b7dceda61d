//! Build checks: BuildKit's Dockerfile lint rules, with its rule names, messages and links,
//! run on the syntax tree (`kiln build --call=check`, and as warnings after every build).
//!
//! `# check=skip=RULE,..|all;error=true;experimental=RULE,..|all` at the top of the file
//! configures them as it does BuildKit. Pure: the caller hands in what it knows about base
//! images (their environment) and the context's ignore rules.

use super::ast::{CommandLine, Instruction, Located};
use super::dockerignore::DockerIgnore;
use super::instructions::Dockerfile;
use super::shell::{Env, ShellLex};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

/// One rule: its name, what it checks, where it is documented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    pub url: &'static str,
    /// Off unless `# check=experimental=` names it.
    pub experimental: bool,
}

const fn rule(name: &'static str, description: &'static str, url: &'static str) -> Rule {
    Rule { name, description, url, experimental: false }
}

pub const STAGE_NAME_CASING: Rule =
    rule("StageNameCasing", "Stage names should be lowercase", "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/");
pub const FROM_AS_CASING: Rule = rule(
    "FromAsCasing",
    "The 'as' keyword should match the case of the 'from' keyword",
    "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
);
pub const NO_EMPTY_CONTINUATION: Rule = rule(
    "NoEmptyContinuation",
    "Empty continuation lines will become errors in a future release",
    "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/",
);
pub const CONSISTENT_INSTRUCTION_CASING: Rule = rule(
    "ConsistentInstructionCasing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)",
    "https://docs.docker.com/go/dockerfile/rule/consistent-instruction-casing/",
);
pub const DUPLICATE_STAGE_NAME: Rule =
    rule("DuplicateStageName", "Stage names should be unique", "https://docs.docker.com/go/dockerfile/rule/duplicate-stage-name/");
pub const RESERVED_STAGE_NAME: Rule = rule(
    "ReservedStageName",
    "Reserved words should not be used as stage names",
    "https://docs.docker.com/go/dockerfile/rule/reserved-stage-name/",
);
pub const JSON_ARGS_RECOMMENDED: Rule = rule(
    "JSONArgsRecommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
    "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
);
pub const MAINTAINER_DEPRECATED: Rule = rule(
    "MaintainerDeprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
    "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
);
pub const UNDEFINED_ARG_IN_FROM: Rule =
    rule("UndefinedArgInFrom", "FROM command must use declared ARGs", "https://docs.docker.com/go/dockerfile/rule/undefined-arg-in-from/");
pub const WORKDIR_RELATIVE_PATH: Rule = rule(
    "WorkdirRelativePath",
    "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes",
    "https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/",
);
pub const UNDEFINED_VAR: Rule =
    rule("UndefinedVar", "Variables should be defined before their use", "https://docs.docker.com/go/dockerfile/rule/undefined-var/");
pub const MULTIPLE_INSTRUCTIONS_DISALLOWED: Rule = rule(
    "MultipleInstructionsDisallowed",
    "Multiple instructions of the same type should not be used in the same stage",
    "https://docs.docker.com/go/dockerfile/rule/multiple-instructions-disallowed/",
);
pub const LEGACY_KEY_VALUE_FORMAT: Rule = rule(
    "LegacyKeyValueFormat",
    "Legacy key/value format with whitespace separator should not be used",
    "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/",
);
pub const REDUNDANT_TARGET_PLATFORM: Rule = rule(
    "RedundantTargetPlatform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
    "https://docs.docker.com/go/dockerfile/rule/redundant-target-platform/",
);
pub const SECRETS_USED_IN_ARG_OR_ENV: Rule = rule(
    "SecretsUsedInArgOrEnv",
    "Sensitive data should not be used in the ARG or ENV commands",
    "https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/",
);
pub const INVALID_DEFAULT_ARG_IN_FROM: Rule = rule(
    "InvalidDefaultArgInFrom",
    "Default value for global ARG results in an empty or invalid base image name",
    "https://docs.docker.com/go/dockerfile/rule/invalid-default-arg-in-from/",
);
pub const FROM_PLATFORM_FLAG_CONST_DISALLOWED: Rule = rule(
    "FromPlatformFlagConstDisallowed",
    "FROM --platform flag should not use a constant value",
    "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/",
);
pub const COPY_IGNORED_FILE: Rule = Rule {
    name: "CopyIgnoredFile",
    description: "Attempting to Copy file that is excluded by .dockerignore",
    url: "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/",
    experimental: true,
};

/// Every rule kiln checks.
pub const RULES: &[Rule] = &[
    STAGE_NAME_CASING,
    FROM_AS_CASING,
    NO_EMPTY_CONTINUATION,
    CONSISTENT_INSTRUCTION_CASING,
    DUPLICATE_STAGE_NAME,
    RESERVED_STAGE_NAME,
    JSON_ARGS_RECOMMENDED,
    MAINTAINER_DEPRECATED,
    UNDEFINED_ARG_IN_FROM,
    WORKDIR_RELATIVE_PATH,
    UNDEFINED_VAR,
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    LEGACY_KEY_VALUE_FORMAT,
    REDUNDANT_TARGET_PLATFORM,
    SECRETS_USED_IN_ARG_OR_ENV,
    INVALID_DEFAULT_ARG_IN_FROM,
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    COPY_IGNORED_FILE,
];

/// A rule broken at a place in the Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub rule: Rule,
    pub message: String,
    /// 1-based, inclusive.
    pub start_line: u32,
    pub end_line: u32,
}

/// The `# check=` directive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub skip_all: bool,
    pub skip: BTreeSet<String>,
    pub experimental_all: bool,
    pub experimental: BTreeSet<String>,
    /// `error=true`: a build with warnings fails.
    pub error: bool,
}

impl CheckConfig {
    /// Parses `skip=A,B;error=true;experimental=C`. Unknown keys are an error, as in BuildKit.
    pub fn parse(directive: Option<&str>) -> Result<CheckConfig, String> {
        let mut c = CheckConfig::default();
        let Some(text) = directive else { return Ok(c) };
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("invalid check directive {part:?}: expected key=value"))?;
            let names = || value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
            match key.trim().to_ascii_lowercase().as_str() {
                "skip" if value.trim() == "all" => c.skip_all = true,
                "skip" => c.skip.extend(names()),
                "experimental" if value.trim() == "all" => c.experimental_all = true,
                "experimental" => c.experimental.extend(names()),
                "error" => {
                    c.error = value
                        .trim()
                        .parse::<bool>()
                        .map_err(|_| format!("invalid check directive error={value:?}: expected true or false"))?
                }
                other => return Err(format!("invalid check directive key {other:?} (expected skip, error or experimental)")),
            }
        }
        Ok(c)
    }

    pub fn enabled(&self, r: &Rule) -> bool {
        if self.skip_all || self.skip.contains(r.name) {
            return false;
        }
        !r.experimental || self.experimental_all || self.experimental.contains(r.name)
    }
}

/// What the checks know from outside the Dockerfile.
pub struct Inputs<'a> {
    /// The environment of an external base image (`None`: unknown; checks that need it skip).
    pub base_env: &'a dyn Fn(&str) -> Option<Vec<String>>,
    pub ignore: Option<&'a DockerIgnore>,
}

/// Platform args every FROM line may use without declaring them.
const AUTOMATIC_ARGS: &[&str] =
    &["BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT", "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT"];
const RESERVED_STAGE_NAMES: &[&str] = &["scratch", "context"];
const SECRET_WORDS: &[&str] = &["apikey", "auth", "credential", "credentials", "key", "password", "pword", "passwd", "secret", "token"];

/// Records which variables a word uses and which of them are unknown.
struct Recorder<'a> {
    known: &'a BTreeSet<String>,
    unknown: RefCell<Vec<String>>,
}

impl Env for Recorder<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        if self.known.contains(name) {
            return Some("x");
        }
        let mut u = self.unknown.borrow_mut();
        if !u.iter().any(|n| n == name) {
            u.push(name.to_string());
        }
        None
    }
}

/// Global ARGs with their defaults only (no build args), as the FROM checks expand them.
struct Defaults<'a>(&'a HashMap<String, Option<String>>);

impl Env for Defaults<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.as_deref().unwrap_or(""))
    }
}

fn unknown_vars(lex: &ShellLex, word: &str, known: &BTreeSet<String>) -> Vec<String> {
    if !word.contains('$') {
        return vec![];
    }
    let r = Recorder { known, unknown: RefCell::new(vec![]) };
    let _ = lex.process_word(word, &r);
    r.unknown.into_inner()
}

/// The closest known name, BuildKit-style: a case-insensitive match, else a close spelling.
fn suggest<'a>(name: &str, options: impl Iterator<Item = &'a String>) -> Option<String> {
    let mut best: Option<(usize, &String)> = None;
    for o in options {
        if o.eq_ignore_ascii_case(name) {
            return Some(o.clone());
        }
        let d = super::instructions::edit_distance(name, o);
        if d <= 2 && d < name.len() && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, o));
        }
    }
    best.map(|(_, o)| o.clone())
}

fn is_secret_name(name: &str) -> bool {
    let tokens: Vec<String> = name.split('_').map(str::to_ascii_lowercase).collect();
    tokens.iter().any(|t| SECRET_WORDS.contains(&t.as_str())) && !tokens.iter().any(|t| t == "public")
}

/// The keyword as written (the first word of the logical line).
fn written_keyword(l: &Located) -> &str {
    l.source.split_whitespace().next().unwrap_or("")
}

fn casing(word: &str) -> Option<bool> {
    if word == word.to_ascii_uppercase() {
        Some(true)
    } else if word == word.to_ascii_lowercase() {
        Some(false)
    } else {
        None
    }
}

/// What a stage has established, for the stages built on it.
#[derive(Clone, Default)]
struct StageFacts {
    known: BTreeSet<String>,
    /// `None`: the base image's environment is unknown.
    env_known: bool,
    shell_set: bool,
    abs_workdir: bool,
}

/// Runs every enabled rule. `source` is the Dockerfile's text (for continuation lines).
pub fn check(df: &Dockerfile, source: &str, config: &CheckConfig, inputs: &Inputs) -> Vec<Warning> {
    let mut out = Vec::new();
    let lex = ShellLex::new(df.directives.escape);
    let mut warn = |rule: Rule, message: String, l: &Located| {
        if config.enabled(&rule) {
            out.push(Warning { rule, message, start_line: l.pos.line, end_line: l.end_line.max(l.pos.line) });
        }
    };

    // Casing across the file.
    let (mut upper, mut lower) = (0, 0);
    for l in &df.instructions {
        match casing(written_keyword(l)) {
            Some(true) => upper += 1,
            Some(false) => lower += 1,
            None => {}
        }
    }
    let majority_upper = upper >= lower;
    for l in &df.instructions {
        let kw = written_keyword(l);
        if casing(kw) != Some(majority_upper) {
            let which = if majority_upper { "uppercase" } else { "lowercase" };
            warn(CONSISTENT_INSTRUCTION_CASING, format!("Command '{kw}' should match the case of the command majority ({which})"), l);
        }
    }

    // Empty continuation lines.
    let lines: Vec<&str> = source.lines().collect();
    for l in &df.instructions {
        if matches!(&l.instruction, Instruction::Run(r) if !r.heredocs.is_empty())
            || matches!(&l.instruction, Instruction::Copy(c) if !c.heredocs.is_empty())
            || matches!(&l.instruction, Instruction::Add(a) if !a.heredocs.is_empty())
        {
            continue;
        }
        let range = (l.pos.line as usize).saturating_sub(1)..(l.end_line as usize).min(lines.len());
        if range.len() > 1 && lines[range].iter().any(|s| s.trim().is_empty()) {
            warn(NO_EMPTY_CONTINUATION, "Empty continuation line".into(), l);
        }
    }

    // Global ARGs and their defaults.
    let mut globals: HashMap<String, Option<String>> = HashMap::new();
    let mut global_names: BTreeSet<String> = AUTOMATIC_ARGS.iter().map(|s| s.to_string()).collect();
    let mut stages: HashMap<String, StageFacts> = HashMap::new();
    let mut seen_names: BTreeSet<String> = BTreeSet::new();
    let mut facts = StageFacts::default();
    let mut in_stage = false;
    let mut current: Option<String> = None;
    let mut singles: Vec<(&'static str, &Located)> = Vec::new();
    let flush_singles = |singles: &mut Vec<(&'static str, &Located)>, warn: &mut dyn FnMut(Rule, String, &Located)| {
        for kind in ["CMD", "ENTRYPOINT", "HEALTHCHECK"] {
            let of_kind: Vec<&Located> = singles.iter().filter(|(k, _)| *k == kind).map(|(_, l)| *l).collect();
            for l in of_kind.iter().take(of_kind.len().saturating_sub(1)) {
                warn(
                    MULTIPLE_INSTRUCTIONS_DISALLOWED,
                    format!("Multiple {kind} instructions should not be used in the same stage because only the last one will be used"),
                    l,
                );
            }
        }
        singles.clear();
    };

    for l in &df.instructions {
        match &l.instruction {
            Instruction::From(f) => {
                if in_stage {
                    flush_singles(&mut singles, &mut warn);
                }
                in_stage = true;
                let words: Vec<&str> = l.source.split_whitespace().collect();
                let as_at = words.iter().rposition(|w| w.eq_ignore_ascii_case("as"));
                if let (Some(i), Some(name)) = (as_at, f.name.as_ref()) {
                    let (from_kw, as_kw) = (words[0], words[i]);
                    let written = words.get(i + 1).copied().unwrap_or(name);
                    if casing(from_kw).is_some() && casing(from_kw) != casing(as_kw) {
                        warn(FROM_AS_CASING, format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"), l);
                    }
                    if written != written.to_ascii_lowercase() {
                        warn(STAGE_NAME_CASING, format!("Stage name '{written}' should be lowercase"), l);
                    }
                    if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
                        warn(RESERVED_STAGE_NAME, format!("Stage name should not use the same name as reserved stage {name:?}"), l);
                    }
                    if !seen_names.insert(name.clone()) {
                        warn(DUPLICATE_STAGE_NAME, format!("Duplicate stage name {name:?}, stage names should be unique"), l);
                    }
                }
                for var in unknown_vars(&lex, &f.image, &global_names) {
                    let others = global_names.iter().filter(|n| !AUTOMATIC_ARGS.contains(&n.as_str()));
                    let hint = suggest(&var, others).map(|s| format!(" (did you mean {s}?)")).unwrap_or_default();
                    warn(UNDEFINED_ARG_IN_FROM, format!("FROM argument '{var}' is not declared{hint}"), l);
                }
                if f.image.contains('$') {
                    let expanded = lex.process_word(&f.image, &Defaults(&globals)).unwrap_or_default();
                    let valid = !expanded.is_empty() && (expanded == "scratch" || expanded.parse::<crate::registry::Reference>().is_ok());
                    if !valid {
                        warn(
                            INVALID_DEFAULT_ARG_IN_FROM,
                            format!("Default value for ARG {} results in empty or invalid base image name", f.image),
                            l,
                        );
                    }
                }
                if let Some(p) = &f.platform {
                    let trimmed = p.trim_start_matches('$').trim_start_matches('{').trim_end_matches('}');
                    if trimmed == "TARGETPLATFORM" && p.starts_with('$') {
                        warn(
                            REDUNDANT_TARGET_PLATFORM,
                            format!("Setting platform to predefined {p} in FROM is redundant as this is the default behavior"),
                            l,
                        );
                    } else if !p.contains('$') {
                        let stage = f.name.clone().unwrap_or_default();
                        let parts: Vec<&str> = p.split('/').collect();
                        if !parts.iter().any(|part| !part.is_empty() && stage.contains(part)) {
                            warn(
                                FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                                format!("FROM --platform flag should not use constant value {p:?}"),
                                l,
                            );
                        }
                    }
                }
                let base = f.image.to_ascii_lowercase();
                facts = if let Some(parent) = stages.get(&base) {
                    parent.clone()
                } else if base == "scratch" {
                    StageFacts { env_known: true, ..StageFacts::default() }
                } else {
                    let expanded = lex.process_word(&f.image, &Defaults(&globals)).unwrap_or_default();
                    match (inputs.base_env)(&expanded) {
                        Some(env) => StageFacts {
                            known: env.iter().map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_string()).collect(),
                            env_known: true,
                            ..StageFacts::default()
                        },
                        None => StageFacts::default(),
                    }
                };
                current = f.name.clone();
                if let Some(name) = &current {
                    stages.insert(name.clone(), facts.clone());
                }
                continue;
            }
            Instruction::Arg { args } if !in_stage => {
                for a in args {
                    globals.insert(a.name.clone(), a.default.clone());
                    global_names.insert(a.name.clone());
                    if is_secret_name(&a.name) {
                        warn(
                            SECRETS_USED_IN_ARG_OR_ENV,
                            format!("Do not use ARG or ENV instructions for sensitive data (ARG {:?})", a.name),
                            l,
                        );
                    }
                }
                continue;
            }
            _ => {}
        }

        // Inside a stage: the words this instruction expands, checked before it defines names.
        let words: Vec<&str> = match &l.instruction {
            Instruction::Env(kv) | Instruction::Label(kv) => kv.pairs.iter().flat_map(|p| [p.key.as_str(), p.value.as_str()]).collect(),
            Instruction::Arg { args } => args.iter().filter_map(|a| a.default.as_deref()).collect(),
            Instruction::Copy(c) => c
                .sources
                .iter()
                .map(String::as_str)
                .chain([c.dest.as_str()])
                .chain(c.chown.as_deref())
                .chain(c.chmod.as_deref())
                .chain(c.from.as_deref())
                .collect(),
            Instruction::Add(a) => {
                a.sources.iter().map(String::as_str).chain([a.dest.as_str()]).chain(a.chown.as_deref()).chain(a.chmod.as_deref()).collect()
            }
            Instruction::Workdir { path } => vec![path.as_str()],
            Instruction::User { user } => vec![user.as_str()],
            Instruction::Expose { ports } => ports.iter().map(String::as_str).collect(),
            Instruction::Volume { paths, .. } => paths.iter().map(String::as_str).collect(),
            Instruction::Stopsignal { signal } => vec![signal.as_str()],
            _ => vec![],
        };
        if facts.env_known {
            let mut reported = BTreeSet::new();
            for w in words {
                for var in unknown_vars(&lex, w, &facts.known) {
                    if reported.insert(var.clone()) {
                        let hint = suggest(&var, facts.known.iter()).map(|s| format!(" (did you mean ${s}?)")).unwrap_or_default();
                        warn(UNDEFINED_VAR, format!("Usage of undefined variable '${var}'{hint}"), l);
                    }
                }
            }
        }

        match &l.instruction {
            Instruction::Env(kv) | Instruction::Label(kv) => {
                let kw = if matches!(l.instruction, Instruction::Env(_)) { "ENV" } else { "LABEL" };
                if kv.legacy {
                    warn(
                        LEGACY_KEY_VALUE_FORMAT,
                        format!("\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format"),
                        l,
                    );
                }
                if kw == "ENV" {
                    for p in &kv.pairs {
                        if is_secret_name(&p.key) {
                            warn(
                                SECRETS_USED_IN_ARG_OR_ENV,
                                format!("Do not use ARG or ENV instructions for sensitive data (ENV {:?})", p.key),
                                l,
                            );
                        }
                        facts.known.insert(p.key.clone());
                    }
                }
            }
            Instruction::Arg { args } => {
                for a in args {
                    if is_secret_name(&a.name) {
                        warn(
                            SECRETS_USED_IN_ARG_OR_ENV,
                            format!("Do not use ARG or ENV instructions for sensitive data (ARG {:?})", a.name),
                            l,
                        );
                    }
                    facts.known.insert(a.name.clone());
                }
            }
            Instruction::Cmd { command } | Instruction::Entrypoint { command } => {
                let kind = if matches!(l.instruction, Instruction::Cmd { .. }) { "CMD" } else { "ENTRYPOINT" };
                if matches!(command, CommandLine::Shell(_)) && !facts.shell_set {
                    warn(
                        JSON_ARGS_RECOMMENDED,
                        format!("JSON arguments recommended for {kind} to prevent unintended behavior related to OS signals"),
                        l,
                    );
                }
                singles.push((kind, l));
            }
            Instruction::Healthcheck(_) => singles.push(("HEALTHCHECK", l)),
            Instruction::Shell { .. } => facts.shell_set = true,
            Instruction::Maintainer { .. } => {
                warn(MAINTAINER_DEPRECATED, "Maintainer instruction is deprecated in favor of using label".into(), l)
            }
            Instruction::Workdir { path } => {
                if path.starts_with('/') || path.starts_with('$') {
                    facts.abs_workdir = true;
                } else if !facts.abs_workdir {
                    warn(
                        WORKDIR_RELATIVE_PATH,
                        format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                        l,
                    );
                }
            }
            Instruction::Copy(c) if c.from.is_none() => copy_ignored(&mut warn, "Copy", &c.sources, inputs.ignore, l),
            Instruction::Add(a) => copy_ignored(&mut warn, "Add", &a.sources, inputs.ignore, l),
            _ => {}
        }
        // Later stages built on this one see what it has established so far.
        if let Some(name) = &current {
            stages.insert(name.clone(), facts.clone());
        }
    }
    if in_stage {
        flush_singles(&mut singles, &mut warn);
    }
    out.sort_by_key(|w| w.start_line);
    out
}

fn copy_ignored(warn: &mut dyn FnMut(Rule, String, &Located), verb: &str, sources: &[String], ignore: Option<&DockerIgnore>, l: &Located) {
    let Some(ignore) = ignore else { return };
    for s in sources {
        let rel = s.trim_start_matches("./").trim_start_matches('/');
        if !rel.is_empty() && !rel.contains(['*', '?', '[', '$']) && ignore.is_excluded(rel) {
            warn(COPY_IGNORED_FILE, format!("Attempting to {verb} file {s:?} that is excluded by .dockerignore"), l);
        }
    }
}

/// `Check complete, ...` and each warning with the lines it points at, as buildx prints a
/// `--call=check` result.
pub fn report(warnings: &[Warning], file_name: &str, source: &str) -> String {
    let mut out = match warnings.len() {
        0 => return "Check complete, no warnings found.\n".into(),
        1 => "Check complete, 1 warning has been found!\n".to_string(),
        n => format!("Check complete, {n} warnings have been found!\n"),
    };
    let lines: Vec<&str> = source.lines().collect();
    for w in warnings {
        out.push_str(&format!("\nWARNING: {} - {}\n{}\n{file_name}:{}\n", w.rule.name, w.rule.url, w.message, w.start_line));
        out.push_str("--------------------\n");
        let first = w.start_line.saturating_sub(2).max(1);
        let last = (w.end_line + 1).min(lines.len() as u32);
        for n in first..=last {
            let text = lines.get(n as usize - 1).copied().unwrap_or("");
            let mark = if n >= w.start_line && n <= w.end_line { ">>>" } else { "   " };
            out.push_str(&format!(" {n:>3} | {mark} {text}\n"));
        }
        out.push_str("--------------------\n");
    }
    out
}

/// The short list printed after a build: ` - RULE: MESSAGE (line N)`.
pub fn summary(warnings: &[Warning]) -> String {
    let mut out = format!("{} warning{} found:\n", warnings.len(), if warnings.len() == 1 { "" } else { "s" });
    for w in warnings {
        out.push_str(&format!(" - {}: {} (line {})\n", w.rule.name, w.message, w.start_line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<(String, String)> {
        run_with(text, &|_| None)
    }

    fn run_with(text: &str, env: &dyn Fn(&str) -> Option<Vec<String>>) -> Vec<(String, String)> {
        let df = crate::frontend::parse(text).expect("parses");
        let config = CheckConfig::parse(df.directives.check.as_deref()).expect("directive");
        check(&df, text, &config, &Inputs { base_env: env, ignore: None })
            .into_iter()
            .map(|w| (w.rule.name.to_string(), w.message))
            .collect()
    }

    fn names(text: &str) -> Vec<String> {
        run(text).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn buildkit_messages() {
        let w = run("FROM busybox AS Build\nCMD echo hi\n");
        assert_eq!(
            w,
            [
                ("StageNameCasing".to_string(), "Stage name 'Build' should be lowercase".to_string()),
                (
                    "JSONArgsRecommended".into(),
                    "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals".into()
                ),
            ]
        );
        assert_eq!(run("FROM busybox as b\n")[0].1, "'as' and 'FROM' keywords' casing do not match");
        assert_eq!(
            run("FROM busybox\nfrom busybox\nRUN x\n")[0].1,
            "Command 'from' should match the case of the command majority (uppercase)"
        );
        assert_eq!(names("FROM a AS x\nFROM b AS x\n"), ["DuplicateStageName"]);
        assert_eq!(run("FROM a AS scratch\n")[0].1, "Stage name should not use the same name as reserved stage \"scratch\"");
        assert_eq!(names("FROM a\nMAINTAINER me\n"), ["MaintainerDeprecated"]);
        assert_eq!(run("FROM $BSE\n")[0].1, "FROM argument 'BSE' is not declared");
        assert_eq!(run("ARG BASE=busybox\nFROM $BASEE\n")[0].1, "FROM argument 'BASEE' is not declared (did you mean BASE?)");
        assert_eq!(run("FROM a\nWORKDIR app\n")[0].1, "Relative workdir \"app\" can have unexpected results if the base image changes");
        assert!(names("FROM a\nWORKDIR /srv\nWORKDIR app\n").is_empty());
        assert_eq!(
            names("FROM a\nCMD [\"a\"]\nCMD [\"b\"]\nHEALTHCHECK NONE\n"),
            ["MultipleInstructionsDisallowed"],
            "only the first of two CMDs"
        );
        assert_eq!(run("FROM a\nENV A b\n")[0].1, "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format");
        assert_eq!(run("FROM --platform=$TARGETPLATFORM a\n")[0].0, "RedundantTargetPlatform");
        assert_eq!(run("ARG GITHUB_TOKEN\nFROM a\n")[0].1, "Do not use ARG or ENV instructions for sensitive data (ARG \"GITHUB_TOKEN\")");
        assert!(names("FROM a\nENV PUBLIC_KEY=x\nENV KEYS=y\n").is_empty(), "public keys and plural words are not secrets");
        assert_eq!(
            run("ARG TAG\nFROM busybox:${TAG}\n")[0].1,
            "Default value for ARG busybox:${TAG} results in empty or invalid base image name"
        );
        assert_eq!(
            run("FROM --platform=linux/amd64 a AS base\n")[0].1,
            "FROM --platform flag should not use constant value \"linux/amd64\""
        );
        assert!(names("FROM --platform=linux/amd64 a AS build-amd64\n").is_empty());
        assert_eq!(names("FROM a\nRUN echo a \\\n\n  b\n"), ["NoEmptyContinuation"]);
    }

    #[test]
    fn undefined_vars_need_a_known_base() {
        assert!(names("FROM a\nCOPY $NOPE /x\n").is_empty(), "an unknown base image may define it");
        let env = |_: &str| Some(vec!["PATH=/bin".to_string()]);
        assert_eq!(
            run_with("FROM a\nARG VERSION=1\nENV P=$PATH V=$VERSON\n", &env)[0].1,
            "Usage of undefined variable '$VERSON' (did you mean $VERSION?)"
        );
        assert!(run_with("FROM scratch AS s\nENV A=1\nFROM s\nCOPY $A /x\n", &env).is_empty(), "a stage inherits its parent's names");
    }

    #[test]
    fn the_check_directive() {
        assert!(names("# check=skip=JSONArgsRecommended,MaintainerDeprecated;error=false\nFROM a\nMAINTAINER m\nCMD x\n").is_empty());
        assert!(names("# check=skip=all\nFROM a AS B\n").is_empty());
        let c = CheckConfig::parse(Some("error=true")).unwrap();
        assert!(c.error && c.enabled(&JSON_ARGS_RECOMMENDED) && !c.enabled(&COPY_IGNORED_FILE));
        assert!(CheckConfig::parse(Some("experimental=CopyIgnoredFile")).unwrap().enabled(&COPY_IGNORED_FILE));
        assert!(CheckConfig::parse(Some("bogus=1")).is_err());
    }

    #[test]
    fn reports_as_buildx() {
        let text = "FROM a\nCMD x\n";
        let df = crate::frontend::parse(text).unwrap();
        let w = check(&df, text, &CheckConfig::default(), &Inputs { base_env: &|_| None, ignore: None });
        let r = report(&w, "Dockerfile", text);
        assert!(r.starts_with("Check complete, 1 warning has been found!\n\nWARNING: JSONArgsRecommended - https://docs.docker.com/go/dockerfile/rule/json-args-recommended/\n"), "{r}");
        assert!(r.contains("Dockerfile:2\n--------------------\n   1 |     FROM a\n   2 | >>> CMD x\n--------------------\n"), "{r}");
        assert_eq!(report(&[], "Dockerfile", text), "Check complete, no warnings found.\n");
        assert_eq!(summary(&w), "1 warning found:\n - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)\n");
    }
}
