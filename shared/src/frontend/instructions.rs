//! Typed Dockerfile instructions and the per-instruction argument parsers.
//!
//! Each instruction keeps its arguments as written (quotes and `$VAR` intact), because Docker
//! expands them later with the stage's variables; `resolve` does that. What can be checked
//! without variables (arity, flags, JSON form, stage names, durations) is checked here, and
//! every failure points at the byte that caused it.

pub use super::ast::*;
use super::error::{ErrorKind, FrontendError, Result};
use super::flags::{self, FlagWord, Flags, Kind};
use super::line::LogicalLine;
use super::mount::Mount;

/// True for the instructions whose lines may open heredocs.
pub fn may_have_heredocs(text: &str) -> bool {
    let mut words = text.split_whitespace();
    let mut kw = words.next().unwrap_or("");
    if kw.eq_ignore_ascii_case("ONBUILD") {
        kw = words.next().unwrap_or("");
    }
    let (_, rest) = flags::extract(text.trim_start().get(kw.len()..).unwrap_or(""));
    // Heredocs are not recognised in JSON (exec) form.
    let json = text.trim_start().get(kw.len()..).is_some_and(|t| t[rest..].trim_start().starts_with('['));
    ["RUN", "COPY", "ADD"].iter().any(|k| k.eq_ignore_ascii_case(kw)) && !json
}

/// Everything an argument parser needs about one logical line.
struct Line<'a> {
    ll: &'a LogicalLine,
    keyword: String,
    flags: Vec<FlagWord>,
    /// The arguments after the flags, trimmed, and their byte offset in `ll.text`.
    rest: &'a str,
    rest_off: usize,
    escape: char,
}

impl Line<'_> {
    fn err(&self, offset: usize, kind: ErrorKind) -> FrontendError {
        self.ll.error(offset, kind)
    }
    fn at_keyword(&self, kind: ErrorKind) -> FrontendError {
        self.err(self.keyword_off(), kind)
    }
    fn keyword_off(&self) -> usize {
        self.ll.text.len() - self.ll.text.trim_start().len()
    }
    fn arity(&self, expected: &str) -> FrontendError {
        self.at_keyword(ErrorKind::WrongArgCount { instruction: self.keyword.clone(), expected: expected.to_string() })
    }
    fn flags(&self, spec: &[(&'static str, Kind)]) -> Result<Flags> {
        Flags::parse(&self.keyword, &self.flags, spec).map_err(|(off, kind)| self.err(off, kind))
    }
    fn no_flags(&self) -> Result<()> {
        self.flags(&[]).map(|_| ())
    }
    /// Offset of the flag `name` in the line, for errors about its value.
    fn flag_off(&self, flags: &Flags, name: &str) -> usize {
        flags.offset(name).unwrap_or(self.rest_off)
    }
}

/// Parses one logical line into a located instruction.
pub fn parse_line(ll: LogicalLine, escape: char) -> Result<Located> {
    let inst = parse_instruction(&ll, escape)?;
    Ok(Located { pos: ll.start(), end_line: ll.end_line, source: ll.text.trim().to_string(), instruction: inst })
}

fn parse_instruction(ll: &LogicalLine, escape: char) -> Result<Instruction> {
    let text = &ll.text;
    let kw_off = text.len() - text.trim_start().len();
    let kw_end = text[kw_off..].find(char::is_whitespace).map_or(text.len(), |e| kw_off + e);
    let keyword = text[kw_off..kw_end].to_ascii_uppercase();
    let (flag_words, rest_rel) = flags::extract(&text[kw_end..]);
    let flag_words = flag_words.into_iter().map(|w| FlagWord { offset: w.offset + kw_end, ..w }).collect();
    let rest_start = kw_end + rest_rel;
    let rest = text[rest_start..].trim();
    let rest_off = rest_start + (text[rest_start..].len() - text[rest_start..].trim_start().len());
    let line = Line { ll, keyword: keyword.clone(), flags: flag_words, rest, rest_off, escape };
    match keyword.as_str() {
        "FROM" => parse_from(&line),
        "RUN" => parse_run(&line),
        "CMD" => {
            line.no_flags()?;
            Ok(Instruction::Cmd { command: command_line(&line)? })
        }
        "ENTRYPOINT" => {
            line.no_flags()?;
            Ok(Instruction::Entrypoint { command: command_line(&line)? })
        }
        "LABEL" => Ok(Instruction::Label(name_values(&line)?)),
        "ENV" => Ok(Instruction::Env(name_values(&line)?)),
        "EXPOSE" => {
            line.no_flags()?;
            let ports: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            if ports.is_empty() {
                return Err(line.arity("at least one argument"));
            }
            Ok(Instruction::Expose { ports })
        }
        "COPY" => parse_copy(&line),
        "ADD" => parse_add(&line),
        "VOLUME" => {
            line.no_flags()?;
            let (paths, json) = json_or_words(&line)?;
            if paths.is_empty() {
                return Err(line.arity("at least one argument"));
            }
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err(line.err(
                    rest_off,
                    ErrorKind::BadArgument { instruction: keyword, reason: "VOLUME specified can not be an empty string".into() },
                ));
            }
            Ok(Instruction::Volume { paths, json })
        }
        "USER" => Ok(Instruction::User { user: single_string(&line)? }),
        "WORKDIR" => Ok(Instruction::Workdir { path: single_string(&line)? }),
        "STOPSIGNAL" => Ok(Instruction::Stopsignal { signal: single_string(&line)? }),
        "MAINTAINER" => Ok(Instruction::Maintainer { name: single_string(&line)? }),
        "ARG" => parse_arg(&line),
        "SHELL" => {
            line.no_flags()?;
            match parse_json(rest) {
                Ok(Some(shell)) if !shell.is_empty() => Ok(Instruction::Shell { shell }),
                Ok(Some(_)) => Err(line.arity("at least one argument")),
                Ok(None) => Err(line.err(rest_off, ErrorKind::JsonRequired { instruction: keyword })),
                Err(kind) => Err(line.err(rest_off, kind)),
            }
        }
        "HEALTHCHECK" => parse_healthcheck(&line),
        "ONBUILD" => parse_onbuild(&line),
        _ => Err(line.at_keyword(ErrorKind::UnknownInstruction { suggestion: suggest(&keyword), name: text[kw_off..kw_end].to_string() })),
    }
}

/// The closest known keyword, if the typo is small.
fn suggest(word: &str) -> Option<String> {
    let best = KEYWORDS.iter().map(|k| (edit_distance(word, k), *k)).min()?;
    (best.0 <= 2 && best.0 < word.len()).then(|| best.1.to_string())
}

/// Levenshtein distance (also the build checks' suggestions).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Docker's `parseJSON`: `Ok(None)` when the text is not a JSON array at all (callers fall
/// back to shell form), an error when it is an array of something other than strings.
pub fn parse_json(rest: &str) -> std::result::Result<Option<Vec<String>>, ErrorKind> {
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(rest) {
        Err(_) => Ok(None),
        Ok(values) => values
            .into_iter()
            .map(|v| if let serde_json::Value::String(s) = v { Ok(s) } else { Err(ErrorKind::NotStringArray) })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
    }
}

fn command_line(line: &Line) -> Result<CommandLine> {
    match parse_json(line.rest) {
        Ok(Some(argv)) => Ok(CommandLine::Exec(argv)),
        Ok(None) => Ok(CommandLine::Shell(line.rest.to_string())),
        Err(kind) => Err(line.err(line.rest_off, kind)),
    }
}

fn json_or_words(line: &Line) -> Result<(Vec<String>, bool)> {
    match parse_json(line.rest) {
        Ok(Some(v)) => Ok((v, true)),
        Ok(None) => Ok((line.rest.split_whitespace().map(str::to_string).collect(), false)),
        Err(kind) => Err(line.err(line.rest_off, kind)),
    }
}

fn single_string(line: &Line) -> Result<String> {
    line.no_flags()?;
    if line.rest.is_empty() {
        return Err(line.arity("exactly one argument"));
    }
    Ok(line.rest.to_string())
}

/// Docker's `parseWords`: splits on whitespace outside quotes, keeping quotes and escapes in
/// the words (they are removed later, by expansion).
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
            }
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    blank_ok = true;
                }
                if c == escape {
                    // An escape takes the next character along, even a quote.
                    if let Some(n) = chars.next() {
                        word.push(c);
                        word.push(n);
                    }
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                } else if c == escape && q != '\'' {
                    match chars.next() {
                        Some(n) => {
                            word.push(c);
                            word.push(n);
                        }
                        None => quote = None,
                    }
                    continue;
                }
                word.push(c);
            }
        }
    }
    if blank_ok || !word.is_empty() {
        words.push(word);
    }
    words
}

fn name_values(line: &Line) -> Result<KeyValues> {
    line.no_flags()?;
    let words = parse_words(line.rest, line.escape);
    let Some(first) = words.first() else {
        return Err(line.arity("at least one argument"));
    };
    if !first.contains('=') {
        // Legacy form: `ENV key value with spaces`.
        let Some((key, value)) = line.rest.split_once(char::is_whitespace) else {
            return Err(line.arity("two arguments (KEY VALUE) or KEY=VALUE pairs"));
        };
        return Ok(KeyValues { pairs: vec![KeyValue { key: key.to_string(), value: value.trim_start().to_string() }], legacy: true });
    }
    let mut pairs = Vec::new();
    for w in words {
        let Some((key, value)) = w.split_once('=') else {
            return Err(line.err(
                line.rest_off + line.rest.find(&w).unwrap_or(0),
                ErrorKind::BadArgument {
                    instruction: line.keyword.clone(),
                    reason: format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"),
                },
            ));
        };
        if key.is_empty() {
            return Err(line.err(
                line.rest_off,
                ErrorKind::BadArgument { instruction: line.keyword.clone(), reason: format!("{} names can not be blank", line.keyword) },
            ));
        }
        pairs.push(KeyValue { key: key.to_string(), value: value.to_string() });
    }
    Ok(KeyValues { pairs, legacy: false })
}

fn parse_arg(line: &Line) -> Result<Instruction> {
    line.no_flags()?;
    let words = parse_words(line.rest, line.escape);
    if words.is_empty() {
        return Err(line.arity("at least one argument"));
    }
    let mut args = Vec::new();
    for w in words {
        let (name, default) = match w.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (w, None),
        };
        if name.is_empty() {
            return Err(
                line.err(line.rest_off, ErrorKind::BadArgument { instruction: "ARG".into(), reason: "ARG names can not be blank".into() })
            );
        }
        args.push(ArgDecl { name, default });
    }
    Ok(Instruction::Arg { args })
}

/// Stage names: `^[a-z][a-z0-9-_.]*$` after lowercasing.
pub fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn parse_from(line: &Line) -> Result<Instruction> {
    let flags = line.flags(&[("platform", Kind::String)])?;
    let args: Vec<&str> = line.rest.split_whitespace().collect();
    let name = match args.as_slice() {
        [_] => None,
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
            let lower = name.to_ascii_lowercase();
            if !valid_stage_name(&lower) {
                let off = line.rest_off + line.rest.rfind(name).unwrap_or(0);
                return Err(line.err(off, ErrorKind::BadStageName { name: name.to_string() }));
            }
            Some(lower)
        }
        _ => return Err(line.arity("either one or three arguments (FROM [--platform=P] IMAGE [AS NAME])")),
    };
    Ok(Instruction::From(From { platform: flags.string("platform"), image: args[0].to_string(), name }))
}

fn parse_run(line: &Line) -> Result<Instruction> {
    let flags = line.flags(&[("mount", Kind::Strings), ("network", Kind::String), ("security", Kind::String)])?;
    let mut mounts = Vec::new();
    for m in flags.strings("mount") {
        let mount = Mount::parse(&m).map_err(|reason| line.err(line.flag_off(&flags, "mount"), ErrorKind::BadMount { reason }))?;
        mounts.push(mount);
    }
    let network = flags.string("network");
    if let Some(n) = &network {
        if !matches!(n.as_str(), "default" | "none" | "host") {
            return Err(line.err(
                line.flag_off(&flags, "network"),
                ErrorKind::BadFlagValue {
                    flag: "network".into(),
                    reason: format!("network mode {n:?} not supported (expected default, none or host)"),
                },
            ));
        }
    }
    let security = flags.string("security");
    if let Some(s) = &security {
        if !matches!(s.as_str(), "sandbox" | "insecure") {
            return Err(line.err(
                line.flag_off(&flags, "security"),
                ErrorKind::BadFlagValue {
                    flag: "security".into(),
                    reason: format!("security mode {s:?} not supported (expected sandbox or insecure)"),
                },
            ));
        }
    }
    if line.rest.is_empty() {
        return Err(line.arity("at least one argument"));
    }
    Ok(Instruction::Run(Run { mounts, network, security, command: command_line(line)?, heredocs: line.ll.heredocs.clone() }))
}

/// Sources and destination of COPY/ADD; needs at least one source.
fn sources_and_dest(line: &Line) -> Result<(Vec<String>, String, bool)> {
    let (mut args, json) = json_or_words(line)?;
    if args.len() < 2 {
        return Err(line.arity("at least two arguments, but only one was provided. Destination could not be determined"));
    }
    let dest = args.pop().unwrap_or_default();
    Ok((args, dest, json))
}

fn validate_chmod(line: &Line, flags: &Flags) -> Result<Option<String>> {
    let chmod = flags.string("chmod");
    if let Some(c) = &chmod {
        if !c.contains('$') && !valid_chmod(c) {
            return Err(line.err(
                line.flag_off(flags, "chmod"),
                ErrorKind::BadFlagValue {
                    flag: "chmod".into(),
                    reason: format!("invalid chmod parameter {c:?} (expected octal like 0755 or symbolic like u+x)"),
                },
            ));
        }
    }
    Ok(chmod)
}

/// Octal (`0755`) or symbolic (`u+x,g-w`) modes.
pub fn valid_chmod(c: &str) -> bool {
    if c.chars().all(|d| d.is_ascii_digit()) {
        return u32::from_str_radix(c, 8).is_ok_and(|m| m <= 0o7777);
    }
    c.split(',').all(|clause| {
        let who_len = clause.find(|ch: char| !"ugoa".contains(ch)).unwrap_or(clause.len());
        let ops = &clause[who_len..];
        !ops.is_empty() && ops.starts_with(['+', '-', '=']) && ops.chars().all(|ch| "+-=rwxXst".contains(ch))
    })
}

fn parse_copy(line: &Line) -> Result<Instruction> {
    let flags = line.flags(&[
        ("from", Kind::String),
        ("chown", Kind::String),
        ("chmod", Kind::String),
        ("link", Kind::Bool),
        ("parents", Kind::Bool),
        ("exclude", Kind::Strings),
    ])?;
    let chmod = validate_chmod(line, &flags)?;
    let (sources, dest, json) = sources_and_dest(line)?;
    Ok(Instruction::Copy(Copy {
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod,
        link: flags.bool("link"),
        parents: flags.bool("parents"),
        exclude: flags.strings("exclude"),
        sources,
        dest,
        json,
        heredocs: line.ll.heredocs.clone(),
    }))
}

fn parse_add(line: &Line) -> Result<Instruction> {
    let flags = line.flags(&[
        ("chown", Kind::String),
        ("chmod", Kind::String),
        ("link", Kind::Bool),
        ("checksum", Kind::String),
        ("keep-git-dir", Kind::Bool),
        ("exclude", Kind::Strings),
    ])?;
    let chmod = validate_chmod(line, &flags)?;
    let (sources, dest, json) = sources_and_dest(line)?;
    let checksum = flags.string("checksum");
    if let Some(c) = &checksum {
        if !c.contains('$') && !valid_checksum(c) {
            return Err(line.err(
                line.flag_off(&flags, "checksum"),
                ErrorKind::BadFlagValue {
                    flag: "checksum".into(),
                    reason: format!("{c:?} is not a digest (expected sha256:<64 hex digits>)"),
                },
            ));
        }
        let remote = |s: &String| s.starts_with("http://") || s.starts_with("https://") || s.starts_with("git@");
        if !sources.iter().all(remote) {
            return Err(line.err(
                line.flag_off(&flags, "checksum"),
                ErrorKind::BadFlagValue { flag: "checksum".into(), reason: "checksum can't be specified for non-HTTP(S) sources".into() },
            ));
        }
    }
    Ok(Instruction::Add(Add {
        chown: flags.string("chown"),
        chmod,
        link: flags.bool("link"),
        checksum,
        keep_git_dir: flags.bool("keep-git-dir"),
        exclude: flags.strings("exclude"),
        sources,
        dest,
        json,
        heredocs: line.ll.heredocs.clone(),
    }))
}

pub fn valid_checksum(c: &str) -> bool {
    let hex_len = |h: &str, n: usize| h.len() == n && h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    match c.split_once(':') {
        Some(("sha256", h)) => hex_len(h, 64),
        Some(("sha384", h)) => hex_len(h, 96),
        Some(("sha512", h)) => hex_len(h, 128),
        _ => false,
    }
}

/// Go's `time.ParseDuration`, in nanoseconds (non-negative durations only).
pub fn parse_go_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * scale;
    }
    (total <= u64::MAX as f64).then_some(total as u64)
}

fn parse_healthcheck(line: &Line) -> Result<Instruction> {
    let flags = line.flags(&[
        ("interval", Kind::String),
        ("timeout", Kind::String),
        ("start-period", Kind::String),
        ("start-interval", Kind::String),
        ("retries", Kind::String),
    ])?;
    let (kind, after) = match line.rest.split_once(char::is_whitespace) {
        Some((k, a)) => (k, a.trim()),
        None => (line.rest, ""),
    };
    let bad = |reason: String| line.err(line.rest_off, ErrorKind::BadArgument { instruction: "HEALTHCHECK".into(), reason });
    match kind.to_ascii_uppercase().as_str() {
        "NONE" if after.is_empty() => Ok(Instruction::Healthcheck(Healthcheck::None)),
        "NONE" => Err(bad("HEALTHCHECK NONE takes no arguments".into())),
        "CMD" => {
            if after.is_empty() {
                return Err(bad("Missing command after HEALTHCHECK CMD".into()));
            }
            let mut durations = Vec::new();
            for name in ["interval", "timeout", "start-period", "start-interval"] {
                let value = flags.string(name);
                if let Some(v) = &value {
                    let off = line.flag_off(&flags, name);
                    match parse_go_duration(v) {
                        None => {
                            return Err(line.err(
                                off,
                                ErrorKind::BadFlagValue {
                                    flag: name.into(),
                                    reason: format!("{v:?} is not a duration (expected e.g. 30s, 1m30s)"),
                                },
                            ))
                        }
                        Some(ns) if ns != 0 && ns < 1_000_000 => {
                            return Err(line
                                .err(off, ErrorKind::BadFlagValue { flag: name.into(), reason: format!("{v:?} cannot be less than 1ms") }))
                        }
                        Some(_) => {}
                    }
                }
                durations.push(value);
            }
            let retries = match flags.string("retries") {
                None => None,
                Some(r) => Some(r.parse::<u32>().map_err(|_| {
                    line.err(
                        line.flag_off(&flags, "retries"),
                        ErrorKind::BadFlagValue { flag: "retries".into(), reason: format!("{r:?} is not a non-negative integer") },
                    )
                })?),
            };
            let after_off = line.rest_off + (line.rest.len() - after.len());
            let command = match parse_json(after) {
                Ok(Some(argv)) => CommandLine::Exec(argv),
                Ok(None) => CommandLine::Shell(after.to_string()),
                Err(kind) => return Err(line.err(after_off, kind)),
            };
            let mut d = durations.into_iter();
            Ok(Instruction::Healthcheck(Healthcheck::Cmd {
                interval: d.next().flatten(),
                timeout: d.next().flatten(),
                start_period: d.next().flatten(),
                start_interval: d.next().flatten(),
                retries,
                command,
            }))
        }
        "" => Err(line.arity("at least one argument (NONE or CMD)")),
        other => Err(bad(format!("unknown type {other:?} in HEALTHCHECK (expected CMD or NONE)"))),
    }
}

fn parse_onbuild(line: &Line) -> Result<Instruction> {
    line.no_flags()?;
    if line.rest.is_empty() {
        return Err(line.arity("at least one argument"));
    }
    let trigger_kw = line.rest.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    let reason = match trigger_kw.as_str() {
        "ONBUILD" => Some("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string()),
        "FROM" | "MAINTAINER" => Some(format!("{trigger_kw} isn't allowed as an ONBUILD trigger")),
        _ => None,
    };
    if let Some(reason) = reason {
        return Err(line.err(line.rest_off, ErrorKind::BadOnbuild { reason }));
    }
    let sub = line.ll.slice(line.rest_off);
    let trigger = parse_instruction(&sub, line.escape)?;
    Ok(Instruction::Onbuild { trigger: Box::new(trigger), expression: line.rest.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes() {
        assert_eq!(parse_words(r#"a="b c" d='e f' g=h\ i"#, '\\'), vec![r#"a="b c""#, "d='e f'", r"g=h\ i"]);
        assert_eq!(parse_words(r#"a="" b"#, '\\'), vec![r#"a="""#, "b"]);
        assert_eq!(parse_words("  ", '\\'), Vec::<String>::new());
    }

    #[test]
    fn json_forms() {
        assert_eq!(parse_json(r#"["a", "b"]"#), Ok(Some(vec!["a".into(), "b".into()])));
        assert_eq!(parse_json(r#"[ "a", "#), Ok(None));
        assert_eq!(parse_json("echo [x]"), Ok(None));
        assert_eq!(parse_json("[1, 2]"), Err(ErrorKind::NotStringArray));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("500us"), Some(500_000));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("5 s"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn chmod_and_checksum() {
        assert!(valid_chmod("0755"));
        assert!(valid_chmod("u+x,go-w"));
        assert!(!valid_chmod("0899"));
        assert!(!valid_chmod("rwx"));
        assert!(valid_checksum(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_checksum("sha256:abc"));
        assert!(!valid_checksum("md5:abc"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("RUNN").as_deref(), Some("RUN"));
        assert_eq!(suggest("CPY").as_deref(), Some("COPY"));
        assert_eq!(suggest("FROB").as_deref(), Some("FROM"));
        assert_eq!(suggest("XYZZYQ"), None);
    }
}
