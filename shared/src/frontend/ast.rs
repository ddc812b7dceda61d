//! The Dockerfile's syntax tree: a parsed file, its located instructions, and the typed
//! arguments of each instruction, as written (quotes and `$VAR` intact until `resolve`).

use super::error::Pos;
use super::mount::Mount;
use super::parser::Directives;
use serde::Serialize;

/// A parsed Dockerfile: directives and instructions in file order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Located>,
}

/// An instruction with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Located {
    pub pos: Pos,
    pub end_line: u32,
    /// The instruction's logical line as written (continuations joined, heredoc bodies not included).
    pub source: String,
    pub instruction: Instruction,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", rename_all = "UPPERCASE")]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd { command: CommandLine },
    Entrypoint { command: CommandLine },
    Label(KeyValues),
    Expose { ports: Vec<String> },
    Env(KeyValues),
    Copy(Copy),
    Add(Add),
    Volume { paths: Vec<String>, json: bool },
    User { user: String },
    Workdir { path: String },
    Arg { args: Vec<ArgDecl> },
    Onbuild { trigger: Box<Instruction>, expression: String },
    Stopsignal { signal: String },
    Healthcheck(Healthcheck),
    Shell { shell: Vec<String> },
    Maintainer { name: String },
}

impl Instruction {
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd { .. } => "CMD",
            Instruction::Entrypoint { .. } => "ENTRYPOINT",
            Instruction::Label(_) => "LABEL",
            Instruction::Expose { .. } => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Volume { .. } => "VOLUME",
            Instruction::User { .. } => "USER",
            Instruction::Workdir { .. } => "WORKDIR",
            Instruction::Arg { .. } => "ARG",
            Instruction::Onbuild { .. } => "ONBUILD",
            Instruction::Stopsignal { .. } => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell { .. } => "SHELL",
            Instruction::Maintainer { .. } => "MAINTAINER",
        }
    }
}

/// Every instruction keyword Docker knows.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct From {
    pub platform: Option<String>,
    pub image: String,
    /// The stage name, lowercased as Docker does.
    pub name: Option<String>,
}

/// Exec form (a JSON string array) or shell form (the text, run with the stage's SHELL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandLine {
    Exec(Vec<String>),
    Shell(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    pub name: String,
    /// False when the delimiter was quoted: the body is then taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs were stripped from the body and the delimiter line.
    pub chomp: bool,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Run {
    pub mounts: Vec<Mount>,
    pub network: Option<String>,
    pub security: Option<String>,
    pub command: CommandLine,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValues {
    pub pairs: Vec<KeyValue>,
    /// The legacy `ENV key value` form (one pair, the value is the rest of the line).
    pub legacy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Copy {
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
    pub sources: Vec<String>,
    pub dest: String,
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Add {
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    pub exclude: Vec<String>,
    pub sources: Vec<String>,
    pub dest: String,
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum Healthcheck {
    None,
    Cmd {
        interval: Option<String>,
        timeout: Option<String>,
        start_period: Option<String>,
        start_interval: Option<String>,
        retries: Option<u32>,
        command: CommandLine,
    },
}

/// The body of a `<<-` heredoc with its leading tabs removed, as BuildKit does when it uses it.
pub fn chomp(content: &str) -> String {
    content.split_inclusive('\n').map(|l| l.trim_start_matches('\t')).collect()
}

impl Heredoc {
    /// The body as the build uses it (tabs stripped for `<<-`).
    pub fn body(&self) -> String {
        if self.chomp {
            chomp(&self.content)
        } else {
            self.content.clone()
        }
    }
}
