//! Printing instructions back as Dockerfile text.
//!
//! [`Style::Source`] prints a parsed instruction so that parsing the text again gives the same
//! instruction (the property tests hold us to that). [`Style::Expanded`] prints an instruction
//! whose values were already expanded, quoting values so a reader sees where each one ends;
//! it is what `kiln build --dry-run` shows.

use super::instructions::{CommandLine, Dockerfile, Healthcheck, Heredoc, Instruction, KeyValues};
use std::fmt::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Source,
    Expanded,
}

/// The whole file, directives first.
pub fn dockerfile(df: &Dockerfile) -> String {
    let mut out = String::new();
    let d = &df.directives;
    if let Some(s) = &d.syntax {
        let _ = writeln!(out, "# syntax={s}");
    }
    if d.escape != '\\' {
        let _ = writeln!(out, "# escape={}", d.escape);
    }
    if let Some(c) = &d.check {
        let _ = writeln!(out, "# check={c}");
    }
    for l in &df.instructions {
        out.push_str(&instruction(&l.instruction, Style::Source));
        out.push('\n');
        out.push_str(&heredoc_bodies(&l.instruction));
    }
    out
}

/// Heredoc bodies with their closing lines, as they follow the instruction line.
pub fn heredoc_bodies(inst: &Instruction) -> String {
    let docs: &[Heredoc] = match inst {
        Instruction::Run(r) => &r.heredocs,
        Instruction::Copy(c) => &c.heredocs,
        Instruction::Add(a) => &a.heredocs,
        _ => &[],
    };
    docs.iter().map(|h| format!("{}{}\n", h.content, h.name)).collect()
}

/// Quotes a flag value so that flag extraction gives it back unchanged.
fn flag_value(v: &str) -> String {
    if v.is_empty() || v.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\')) {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        v.to_string()
    }
}

/// Quotes an expanded value for display when it would otherwise be ambiguous.
pub fn display_word(v: &str) -> String {
    if v.is_empty() || v.contains(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '\\')) {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        v.to_string()
    }
}

/// A JSON string array in Docker's documentation style: `["a", "b"]`.
fn json(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| serde_json::to_string(s).unwrap_or_default()).collect();
    format!("[{}]", items.join(", "))
}

/// Arguments that start with `--` were written after a `--` (which ends the flags); keep it.
fn guard(s: String) -> String {
    if s.starts_with("--") {
        format!("-- {s}")
    } else {
        s
    }
}

fn command(c: &CommandLine) -> String {
    match c {
        CommandLine::Exec(v) => json(v),
        CommandLine::Shell(s) => guard(s.clone()),
    }
}

fn key_values(kw: &str, kv: &KeyValues, style: Style) -> String {
    let word = |v: &str| if style == Style::Expanded { display_word(v) } else { v.to_string() };
    if kv.legacy && style == Style::Source {
        return kv.pairs.iter().map(|p| format!("{kw} {}", guard(format!("{} {}", p.key, p.value)))).collect();
    }
    let pairs: Vec<String> = kv.pairs.iter().map(|p| format!("{}={}", word(&p.key), word(&p.value))).collect();
    format!("{kw} {}", guard(pairs.join(" ")))
}

fn args(list: &[String], json_form: bool, style: Style) -> String {
    if json_form {
        json(list)
    } else if style == Style::Expanded {
        guard(list.iter().map(|s| if s.starts_with("<<") { s.clone() } else { display_word(s) }).collect::<Vec<_>>().join(" "))
    } else {
        let joined = list.join(" ");
        // Words that look like a JSON array once joined came from text that was not valid JSON
        // (Docker then splits on whitespace). A form feed is whitespace to the splitter but
        // never JSON whitespace, so the words stay words.
        if !matches!(super::instructions::parse_json(&joined), Ok(None)) {
            return guard(list.join("\u{c}"));
        }
        guard(joined)
    }
}

/// One instruction on one line (heredoc bodies not included).
pub fn instruction(inst: &Instruction, style: Style) -> String {
    let mut out = String::from(inst.keyword());
    let flag = |out: &mut String, name: &str, v: &Option<String>| {
        if let Some(v) = v {
            let _ = write!(out, " --{name}={}", flag_value(v));
        }
    };
    match inst {
        Instruction::From(f) => {
            flag(&mut out, "platform", &f.platform);
            let _ = write!(out, " {}", f.image);
            if let Some(n) = &f.name {
                let _ = write!(out, " AS {n}");
            }
        }
        Instruction::Run(r) => {
            for m in &r.mounts {
                let _ = write!(out, " --mount={}", flag_value(&m.to_string()));
            }
            flag(&mut out, "network", &r.network);
            flag(&mut out, "security", &r.security);
            let _ = write!(out, " {}", command(&r.command));
        }
        Instruction::Cmd { command: c } | Instruction::Entrypoint { command: c } => {
            let _ = write!(out, " {}", command(c));
        }
        Instruction::Label(kv) => return key_values("LABEL", kv, style),
        Instruction::Env(kv) => return key_values("ENV", kv, style),
        Instruction::Expose { ports } => {
            let _ = write!(out, " {}", guard(ports.join(" ")));
        }
        Instruction::Copy(c) => {
            flag(&mut out, "from", &c.from);
            flag(&mut out, "chown", &c.chown);
            flag(&mut out, "chmod", &c.chmod);
            if c.link {
                out.push_str(" --link");
            }
            if c.parents {
                out.push_str(" --parents");
            }
            for e in &c.exclude {
                let _ = write!(out, " --exclude={}", flag_value(e));
            }
            let all: Vec<String> = c.sources.iter().chain(std::iter::once(&c.dest)).cloned().collect();
            let _ = write!(out, " {}", args(&all, c.json, style));
        }
        Instruction::Add(a) => {
            flag(&mut out, "chown", &a.chown);
            flag(&mut out, "chmod", &a.chmod);
            if a.link {
                out.push_str(" --link");
            }
            flag(&mut out, "checksum", &a.checksum);
            if a.keep_git_dir {
                out.push_str(" --keep-git-dir");
            }
            for e in &a.exclude {
                let _ = write!(out, " --exclude={}", flag_value(e));
            }
            let all: Vec<String> = a.sources.iter().chain(std::iter::once(&a.dest)).cloned().collect();
            let _ = write!(out, " {}", args(&all, a.json, style));
        }
        Instruction::Volume { paths, json } => {
            let _ = write!(out, " {}", args(paths, *json, style));
        }
        Instruction::User { user: v }
        | Instruction::Workdir { path: v }
        | Instruction::Stopsignal { signal: v }
        | Instruction::Maintainer { name: v } => {
            let _ = write!(out, " {v}");
        }
        Instruction::Arg { args } => {
            for a in args {
                match &a.default {
                    Some(d) if style == Style::Expanded => {
                        let _ = write!(out, " {}={}", a.name, display_word(d));
                    }
                    Some(d) => {
                        let _ = write!(out, " {}={d}", a.name);
                    }
                    None => {
                        let _ = write!(out, " {}", a.name);
                    }
                }
            }
        }
        Instruction::Onbuild { trigger, .. } => {
            let _ = write!(out, " {}", instruction(trigger, style));
        }
        Instruction::Healthcheck(Healthcheck::None) => out.push_str(" NONE"),
        Instruction::Healthcheck(Healthcheck::Cmd { interval, timeout, start_period, start_interval, retries, command: c }) => {
            flag(&mut out, "interval", interval);
            flag(&mut out, "timeout", timeout);
            flag(&mut out, "start-period", start_period);
            flag(&mut out, "start-interval", start_interval);
            flag(&mut out, "retries", &retries.map(|r| r.to_string()));
            let _ = write!(out, " CMD {}", command(c));
        }
        Instruction::Shell { shell } => {
            let _ = write!(out, " {}", json(shell));
        }
    }
    out
}
