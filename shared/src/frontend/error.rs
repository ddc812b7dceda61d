//! Errors of the Dockerfile frontend.
//!
//! Every error names where it happened (`FILE:LINE:COL`) and what was wrong; each distinct
//! problem is its own variant of [`ErrorKind`] so that callers and tests can match on it.

use serde::Serialize;
use std::fmt;

/// A 1-based position in a Dockerfile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub fn new(line: u32, col: u32) -> Pos {
        Pos { line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// What went wrong. The message is one sentence a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("unknown instruction: {name}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownInstruction { name: String, suggestion: Option<String> },
    #[error("unterminated heredoc: no line `{name}` closes the heredoc opened here")]
    UnterminatedHeredoc { name: String },
    #[error("only one {name} parser directive can be used")]
    DuplicateDirective { name: String },
    #[error("invalid escape token '{value}' does not match ` or \\")]
    InvalidEscape { value: String },
    #[error("{instruction} instruction before the first FROM: only ARG may come before FROM (expected FROM)")]
    InstructionBeforeFrom { instruction: String },
    #[error("unknown flag: --{flag} for {instruction}{}", expected_list(allowed))]
    UnknownFlag { instruction: String, flag: String, allowed: Vec<String> },
    #[error("empty flag: `--` must be followed by a flag name, e.g. --{}", allowed.first().map(String::as_str).unwrap_or("flag"))]
    EmptyFlagName { allowed: Vec<String> },
    #[error("missing a value on flag: --{flag} (expected --{flag}=VALUE)")]
    MissingFlagValue { flag: String },
    #[error("empty value for flag --{flag} (expected --{flag}=VALUE)")]
    EmptyFlagValue { flag: String },
    #[error("duplicate flag specified: --{flag}")]
    DuplicateFlag { flag: String },
    #[error("expecting boolean value for flag --{flag}, not: {value}")]
    BadBoolFlag { flag: String, value: String },
    #[error("bad value for flag --{flag}: {reason}")]
    BadFlagValue { flag: String, reason: String },
    #[error("{instruction} requires {expected}")]
    WrongArgCount { instruction: String, expected: String },
    #[error("{instruction}: {reason}")]
    BadArgument { instruction: String, reason: String },
    #[error("invalid name for build stage: {name:?}, name can't start with a number or contain symbols")]
    BadStageName { name: String },
    #[error("duplicate stage name {name:?} (first defined at line {first_line})")]
    DuplicateStageName { name: String, first_line: u32 },
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
    #[error("{instruction} requires the arguments to be in JSON form, e.g. {instruction} [\"/bin/sh\", \"-c\"]")]
    JsonRequired { instruction: String },
    #[error("ONBUILD: {reason}")]
    BadOnbuild { reason: String },
    #[error("bad --mount: {reason}")]
    BadMount { reason: String },
    #[error("variable expansion: {reason}")]
    Expansion { reason: String },
    #[error("{reason}")]
    BadPlatform { reason: String },
    #[error("target stage {target:?} could not be found (stages: {})", if stages.is_empty() { "none named".to_string() } else { stages.join(", ") })]
    TargetNotFound { target: String, stages: Vec<String> },
    #[error("circular dependency between stages: {}", cycle.join(" -> "))]
    StageCycle { cycle: Vec<String> },
    #[error("invalid stage index {index} in --from (the file has {count} stages)")]
    BadStageIndex { index: usize, count: usize },
    #[error("the Dockerfile has no FROM instruction (expected at least one build stage)")]
    NoStages,
    #[error("Dockerfile is not valid UTF-8 near byte {offset}")]
    NotUtf8 { offset: usize },
}

fn expected_list(allowed: &[String]) -> String {
    if allowed.is_empty() {
        " (it takes no flags)".to_string()
    } else {
        let flags: Vec<String> = allowed.iter().map(|f| format!("--{f}")).collect();
        format!(" (expected one of {})", flags.join(", "))
    }
}

/// An error with the file and position it refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendError {
    pub file: String,
    pub pos: Option<Pos>,
    pub kind: ErrorKind,
}

impl FrontendError {
    pub fn at(pos: Pos, kind: ErrorKind) -> FrontendError {
        FrontendError { file: String::new(), pos: Some(pos), kind }
    }

    pub fn global(kind: ErrorKind) -> FrontendError {
        FrontendError { file: String::new(), pos: None, kind }
    }

    /// Names the file the error refers to (the parser does not know it).
    pub fn in_file(mut self, file: &str) -> FrontendError {
        self.file = file.to_string();
        self
    }
}

impl fmt::Display for FrontendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = if self.file.is_empty() { "Dockerfile" } else { &self.file };
        match self.pos {
            Some(pos) => write!(f, "{file}:{}:{}: {}", pos.line, pos.col, self.kind),
            None => write!(f, "{file}: {}", self.kind),
        }
    }
}

// The kind is part of the message already, so it is not reported again as a source.
impl std::error::Error for FrontendError {}

pub type Result<T, E = FrontendError> = std::result::Result<T, E>;
