//! Docker's rules for what an expanded instruction means: paths against the working
//! directory, the process a RUN or CMD starts (shell form, heredoc scripts), heredoc bodies,
//! and the values EXPOSE and STOPSIGNAL accept. Used by `resolve`; pure.

use super::instructions::{CommandLine, Heredoc};
use super::parser::heredoc_word;
use super::shell::{Env, ExpandError, ShellLex};

/// Expands `$VAR` in a heredoc body without treating quotes as quoting.
pub(crate) fn expand_raw(lex: &ShellLex, body: &str, env: &dyn Env) -> std::result::Result<String, ExpandError> {
    // Only `$` and the escape need care; quotes are kept as written by `raw_quotes`, but an
    // unbalanced quote (an apostrophe in prose) must not fail, so expand line by line around them.
    let mut out = String::new();
    for piece in body.split_inclusive(['\'', '"']) {
        let (text, quote) = match piece.char_indices().last() {
            Some((i, c @ ('\'' | '"'))) => (&piece[..i], Some(c)),
            _ => (piece, None),
        };
        out.push_str(&lex.process_word(text, env)?);
        if let Some(q) = quote {
            out.push(q);
        }
    }
    Ok(out)
}

/// `path` joined to the working directory `dir` (absolute paths replace it).
pub fn join_path(dir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') { path.to_string() } else { format!("{}/{}", dir.trim_end_matches('/'), path) };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

pub(crate) fn command_argv(cmd: &CommandLine, shell: &[String]) -> Vec<String> {
    match cmd {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => shell.iter().cloned().chain(std::iter::once(s.clone())).collect(),
    }
}

/// The process of a RUN, with BuildKit's heredoc rules: a lone heredoc is the script itself
/// (run by the shell, or directly when it starts with `#!`); otherwise the heredoc bodies
/// follow the command line, as a shell would read them.
pub(crate) fn run_argv(cmd: &CommandLine, heredocs: &[Heredoc], shell: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let CommandLine::Shell(line) = cmd else { return (command_argv(cmd, shell), vec![]) };
    if heredocs.is_empty() {
        return (command_argv(cmd, shell), vec![]);
    }
    if let [h] = heredocs {
        if heredoc_word(line.trim()).is_some_and(|w| w.0 == h.name) {
            let body = h.body();
            if body.starts_with("#!") {
                let path = format!("/dev/pipes/{}", h.name);
                return (vec![path.clone()], vec![(path, body)]);
            }
            return (command_argv(&CommandLine::Shell(body), shell), vec![]);
        }
    }
    let mut script = line.clone();
    script.push('\n');
    for h in heredocs {
        script.push_str(&h.content);
        script.push_str(&h.name);
        script.push('\n');
    }
    (command_argv(&CommandLine::Shell(script), shell), vec![])
}

pub(crate) fn valid_port(p: &str) -> bool {
    let (range, proto) = match p.split_once('/') {
        Some((r, proto)) => (r, Some(proto)),
        None => (p, None),
    };
    let port_ok = |s: &str| s.parse::<u16>().is_ok();
    let range_ok = match range.split_once('-') {
        Some((a, b)) => port_ok(a) && port_ok(b) && a.parse::<u16>().ok() <= b.parse::<u16>().ok(),
        None => port_ok(range),
    };
    range_ok && proto.is_none_or(|p| matches!(p.to_ascii_lowercase().as_str(), "tcp" | "udp" | "sctp"))
}

const SIGNALS: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT",
    "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
];

/// Signal names (with or without SIG), numbers, and SIGRTMIN+n / SIGRTMAX-n.
pub(crate) fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&name) {
        return true;
    }
    let rt = |prefix: &str, sep: char| {
        name.strip_prefix(prefix)
            .is_some_and(|r| r.is_empty() || r.strip_prefix(sep).is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n <= 30)))
    };
    rt("RTMIN", '+') || rt("RTMAX", '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(join_path("/", "app"), "/app");
        assert_eq!(join_path("/app", "src/../lib"), "/app/lib");
        assert_eq!(join_path("/app", "/abs"), "/abs");
        assert_eq!(join_path("/app", "."), "/app");
    }

    #[test]
    fn ports_and_signals() {
        for ok in ["80", "80/tcp", "53/udp", "8000-8010", "9000-9001/sctp"] {
            assert!(valid_port(ok), "{ok}");
        }
        for bad in ["", "http", "80/xyz", "70000", "90-80"] {
            assert!(!valid_port(bad), "{bad}");
        }
        for ok in ["SIGTERM", "TERM", "9", "SIGRTMIN+3", "sigquit"] {
            assert!(valid_signal(ok), "{ok}");
        }
        for bad in ["SIGFOO", "0", "99", "SIGRTMIN+99"] {
            assert!(!valid_signal(bad), "{bad}");
        }
    }
}
