//! From Dockerfile text to positioned instructions.
//!
//! This is the line layer of Docker's parser: parser directives at the top, comments, line
//! continuations (also across comment and blank lines), and heredoc bodies. It produces one
//! [`LogicalLine`] per instruction, which knows where every byte of its text came from so that
//! errors deeper down can still say `LINE:COL`. Typing the instruction is `instructions`' job.

use super::error::{ErrorKind, FrontendError, Pos, Result};
use super::instructions::{self, Dockerfile, Heredoc};
use super::shell::{NoEnv, ShellLex};
use serde::Serialize;

/// Parser directives (`# syntax=`, `# escape=`, `# check=`), valid only at the top of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Directives {
    pub syntax: Option<String>,
    pub escape: char,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives { syntax: None, escape: '\\', check: None }
    }
}

pub use super::line::LogicalLine;

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let mut directives = Directives::default();
    let mut i = read_directives(&lines, &mut directives)?;
    let mut out = Vec::new();
    while i < lines.len() {
        let Some((mut logical, next)) = join_continuations(&lines, i, directives.escape) else {
            i += 1;
            continue;
        };
        i = next;
        if instructions::may_have_heredocs(&logical.text) {
            i = read_heredocs(&lines, i, &mut logical)?;
        }
        out.push(instructions::parse_line(logical, directives.escape)?);
    }
    Ok(Dockerfile { directives, instructions: out })
}

fn read_directives(lines: &[&str], d: &mut Directives) -> Result<usize> {
    let mut seen: Vec<String> = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let Some((name, value, col)) = directive(raw) else { return Ok(i) };
        let pos = Pos::new(i as u32 + 1, col);
        if seen.contains(&name) {
            return Err(FrontendError::at(pos, ErrorKind::DuplicateDirective { name }));
        }
        match name.as_str() {
            "escape" => {
                let mut chars = value.chars();
                match (chars.next(), chars.next()) {
                    (Some(c @ ('\\' | '`')), None) => d.escape = c,
                    _ => return Err(FrontendError::at(pos, ErrorKind::InvalidEscape { value })),
                }
            }
            "syntax" => d.syntax = Some(value),
            _ => d.check = Some(value),
        }
        seen.push(name);
    }
    Ok(lines.len())
}

/// Matches `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` on the left-trimmed line, for the
/// directive names Docker knows; anything else ends the directive block.
fn directive(raw: &str) -> Option<(String, String, u32)> {
    let lead = raw.len() - raw.trim_start().len();
    let rest = raw.trim_start().strip_prefix('#')?.trim_start();
    let name_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let name = &rest[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[name_len..].trim_start().strip_prefix('=')?.trim();
    let name = name.to_ascii_lowercase();
    if value.is_empty() || !matches!(name.as_str(), "syntax" | "escape" | "check") {
        return None;
    }
    Some((name, value.to_string(), raw[..lead].chars().count() as u32 + 1))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a trailing escape token (followed only by spaces/tabs); true if one was there.
/// An escaped escape (`\\\\` at the end) is not a continuation.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(body) if !body.ends_with(escape) => (body, true),
        _ => (line, false),
    }
}

/// Joins the instruction starting at line `i` with its continuation lines. Returns None for a
/// blank or comment line, else the logical line and the index of the next unread line.
fn join_continuations(lines: &[&str], i: usize, escape: char) -> Option<(LogicalLine, usize)> {
    let first = lines[i];
    let lead = first.len() - first.trim_start().len();
    let body = &first[lead..];
    if body.is_empty() || is_comment(body) {
        return None;
    }
    let (part, mut cont) = trim_continuation(body, escape);
    let col = first[..lead].chars().count() as u32 + 1;
    let mut ll = LogicalLine { text: part.to_string(), segments: vec![(0, i as u32 + 1, col)], end_line: i as u32 + 1, heredocs: vec![] };
    let mut j = i + 1;
    while cont && j < lines.len() {
        let line = lines[j];
        j += 1;
        // Comment and blank lines inside a continuation are skipped, as Docker does.
        if is_comment(line) || line.trim().is_empty() {
            continue;
        }
        let (part, more) = trim_continuation(line, escape);
        ll.segments.push((ll.text.len(), j as u32, 1));
        ll.text.push_str(part);
        ll.end_line = j as u32;
        cont = more;
    }
    if ll.text.trim().is_empty() {
        return None;
    }
    Some((ll, j))
}

/// Heredoc words of a line: `<<EOF`, `<<-EOF`, `<<'EOF'`, `<<"EOF"`, `3<<EOF`, `<< EOF`.
pub fn heredoc_words(line: &str) -> Vec<(String, bool, bool)> {
    if !line.contains("<<") {
        return vec![];
    }
    let lex = ShellLex { escape: '\\', raw_quotes: true, raw_escapes: true, skip_unset: true };
    let Ok(words) = lex.process_words(line, &NoEnv) else { return vec![] };
    words.iter().filter_map(|w| heredoc_word(w)).collect()
}

/// Parses one word as a heredoc opener: (name, expand, chomp). This is BuildKit's
/// `^(\d*)<<(-?)\s*([^<]*)$`: whitespace may follow `<<` or `<<-` (the lexer keeps it in the
/// word), so `<<  EOF` names `EOF` and `<< -EOF` names `-EOF`.
pub fn heredoc_word(word: &str) -> Option<(String, bool, bool)> {
    let digits = word.find(|c: char| !c.is_ascii_digit()).unwrap_or(word.len());
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // Go's `\s`: ASCII space, \t, \n, \f, \r (not \v).
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\x0c', '\r']);
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    // Lex the delimiter with and without quotes: if they differ, part of it was quoted and the
    // body must not be expanded (as in a shell).
    let mut lex = ShellLex { escape: '\\', raw_quotes: false, raw_escapes: false, skip_unset: true };
    let cooked = lex.process_words(rest, &NoEnv).ok()?;
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &NoEnv).ok()?;
    if cooked.len() != 1 || raw.len() != 1 {
        return None;
    }
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    Some((cooked[0].clone(), quotes(&cooked[0]) == quotes(&raw[0]), chomp))
}

fn read_heredocs(lines: &[&str], mut i: usize, ll: &mut LogicalLine) -> Result<usize> {
    for (name, expand, chomp) in heredoc_words(&ll.text) {
        let mut content = String::new();
        let mut closed = false;
        while i < lines.len() {
            let line = lines[i];
            i += 1;
            // Tabs are stripped for the comparison only; the body keeps them until it is used.
            let candidate = if chomp { line.trim_start_matches('\t') } else { line };
            if candidate == name {
                closed = true;
                break;
            }
            content.push_str(line);
            content.push('\n');
        }
        if !closed {
            let offset = ll.text.find(&format!("<<{}", if chomp { "-" } else { "" })).unwrap_or(0);
            return Err(ll.error(offset, ErrorKind::UnterminatedHeredoc { name }));
        }
        ll.end_line = i as u32;
        ll.heredocs.push(Heredoc { name, expand, chomp, content });
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<LogicalLine> {
        let lines: Vec<&str> = text.split('\n').collect();
        let mut out = vec![];
        let mut i = 0;
        while i < lines.len() {
            match join_continuations(&lines, i, '\\') {
                Some((l, n)) => {
                    out.push(l);
                    i = n;
                }
                None => i += 1,
            }
        }
        out
    }

    #[test]
    fn continuation_skips_comments_and_blank_lines() {
        let l = lines("RUN a \\\n# comment\n\n   b \\\n  c\nCMD x");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].text, "RUN a    b   c");
        // An escaped escape at the end does not continue the line.
        assert_eq!(lines("RUN echo \\\\\nCMD x").len(), 2);
        assert_eq!(l[0].end_line, 5);
        assert_eq!(l[1].start(), Pos::new(6, 1));
    }

    #[test]
    fn positions_map_back_through_continuations() {
        let l = lines("  RUN a \\\n  bb");
        assert_eq!(l[0].start(), Pos::new(1, 3));
        let off = l[0].text.find("bb").unwrap();
        assert_eq!(l[0].pos_at(off), Pos::new(2, 3));
    }

    #[test]
    fn directives() {
        let mut d = Directives::default();
        let src = ["# syntax=docker/dockerfile:1", "#escape=`", "# check=skip=all", "FROM x"];
        assert_eq!(read_directives(&src, &mut d).unwrap(), 3);
        assert_eq!(d.escape, '`');
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(d.check.as_deref(), Some("skip=all"));
        // A blank line or another comment ends the block.
        let mut d = Directives::default();
        assert_eq!(read_directives(&["", "# escape=`"], &mut d).unwrap(), 0);
        assert_eq!(d.escape, '\\');
        let mut d = Directives::default();
        assert_eq!(read_directives(&["# hello", "# escape=`"], &mut d).unwrap(), 0);
        // Unknown directive names end it too.
        assert_eq!(read_directives(&["# foo=bar", "# escape=`"], &mut d).unwrap(), 0);
    }

    #[test]
    fn heredoc_words_are_recognised() {
        assert_eq!(heredoc_word("<<EOF"), Some(("EOF".into(), true, false)));
        assert_eq!(heredoc_word("<<-EOF"), Some(("EOF".into(), true, true)));
        assert_eq!(heredoc_word("<<'EOF'"), Some(("EOF".into(), false, false)));
        assert_eq!(heredoc_word("<<\"EOF\""), Some(("EOF".into(), false, false)));
        assert_eq!(heredoc_word("3<<EOF"), Some(("EOF".into(), true, false)));
        assert_eq!(heredoc_word("<<"), None);
        assert_eq!(heredoc_word("a<<EOF"), None);
        assert_eq!(heredoc_word("<<<EOF"), None);
        let words: Vec<String> = heredoc_words("RUN cat <<A > /a && cat <<-'B' > /b").into_iter().map(|w| w.0).collect();
        assert_eq!(words, vec!["A", "B"]);
    }

    #[test]
    fn heredoc_words_after_whitespace() {
        // BuildKit's `^(\d*)<<(-?)\s*([^<]*)$`: blanks may follow `<<` or `<<-`.
        assert_eq!(heredoc_word("<<  EOF"), Some(("EOF".into(), true, false)));
        assert_eq!(heredoc_word("<<\t\r EOF"), Some(("EOF".into(), true, false)));
        assert_eq!(heredoc_word("<<- EOF"), Some(("EOF".into(), true, true)));
        assert_eq!(heredoc_word("3<< 'EOF'"), Some(("EOF".into(), false, false)));
        // `-` after the blanks is part of the name, not the chomp marker.
        assert_eq!(heredoc_word("<< -EOF"), Some(("-EOF".into(), true, false)));
        assert_eq!(heredoc_word("<<  "), None);
        assert_eq!(heredoc_word("<< <EOF"), None);
        let names = |line: &str| heredoc_words(line).into_iter().map(|w| w.0).collect::<Vec<_>>();
        assert_eq!(names("RUN <<  EOF"), vec!["EOF"]);
        assert_eq!(names("RUN <<  EOF  > foo"), vec!["EOF"]);
        assert_eq!(names("RUN << -EOF"), vec!["-EOF"]);
        assert_eq!(names("RUN cat << A <<\tB"), vec!["A", "B"]);
        // The lexer splits `<<-` from a following word, so BuildKit finds no heredoc here.
        assert!(names("RUN <<- EOF").is_empty());
        assert!(names("RUN '<< EOF'").is_empty());
        assert!(names("RUN \\<< EOF").is_empty());
    }
}
