//! Variable expansion with the rules of Docker's shell lexer (BuildKit `frontend/dockerfile/shell`).
//!
//! Docker does not run a shell to expand `$VAR` in ENV, COPY, WORKDIR and friends: it has its
//! own small lexer, and users depend on its exact behaviour (quotes are removed, `\` escapes the
//! next character outside quotes, inside double quotes only `"`, `$` and the escape token can be
//! escaped, unset variables expand to nothing, unquoted values split into words). This module is
//! that lexer. It is pure: the environment comes in through [`Env`].

/// Where variable values come from.
pub trait Env {
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        // Later entries win, as with repeated ENV instructions.
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// An environment with no variables (used to find heredoc words).
pub struct NoEnv;

impl Env for NoEnv {
    fn lookup(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// Why an expansion failed; the caller adds the position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpandError(pub String);

type Res<T> = Result<T, ExpandError>;

fn err<T>(msg: impl Into<String>) -> Res<T> {
    Err(ExpandError(msg.into()))
}

/// The lexer with its options.
#[derive(Clone, Copy, Debug)]
pub struct ShellLex {
    pub escape: char,
    /// Keep quote characters in the output (used to tell quoted heredoc words apart).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Leave `$NAME` untouched when NAME is unset.
    pub skip_unset: bool,
}

impl ShellLex {
    pub fn new(escape: char) -> ShellLex {
        ShellLex { escape, raw_quotes: false, raw_escapes: false, skip_unset: false }
    }

    /// Expands `input` as one word: whitespace is kept, quotes removed.
    pub fn process_word(&self, input: &str, env: &dyn Env) -> Res<String> {
        Ok(self.run(input, env)?.0)
    }

    /// Expands `input` and splits it into words on unquoted whitespace.
    pub fn process_words(&self, input: &str, env: &dyn Env) -> Res<Vec<String>> {
        Ok(self.run(input, env)?.1)
    }

    fn run(&self, input: &str, env: &dyn Env) -> Res<(String, Vec<String>)> {
        let mut w = Word { lex: self, env, chars: input.chars().collect(), pos: 0, raw_escapes: self.raw_escapes };
        w.process_stop_on(None, self.raw_escapes)
    }
}

#[derive(Default)]
struct Words {
    words: Vec<String>,
    word: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }
    fn add_raw_char(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

struct Word<'a> {
    lex: &'a ShellLex,
    env: &'a dyn Env,
    chars: Vec<char>,
    pos: usize,
    /// Whether escapes are kept, for the word being read now. BuildKit switches this per
    /// nested word: on for `#`, `%` and `/` patterns and replacements, off for `-`, `+`, `?`
    /// words, whatever the lexer's own setting.
    raw_escapes: bool,
}

impl Word<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Reads up to `stop` (consumed) or the end, with escapes kept or not for this word only.
    fn process_stop_on(&mut self, stop: Option<char>, raw_escapes: bool) -> Res<(String, Vec<String>)> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.stop_on(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on(&mut self, stop: Option<char>) -> Res<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match c {
                '\'' => {
                    let s = self.single_quote()?;
                    result.push_str(&s);
                    words.add_raw_string(&s);
                }
                '"' => {
                    let s = self.double_quote()?;
                    result.push_str(&s);
                    words.add_raw_string(&s);
                }
                '$' => {
                    let s = self.dollar()?;
                    result.push_str(&s);
                    words.add_string(&s);
                }
                '<' => {
                    let s = self.possible_heredoc();
                    result.push_str(&s);
                    words.add_raw_string(&s);
                }
                _ => {
                    self.next();
                    if c == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(c);
                            result.push(c);
                        }
                        // An escape at the very end is dropped.
                        let Some(n) = self.next() else { break };
                        words.add_raw_char(n);
                        result.push(n);
                    } else {
                        words.add_char(c);
                        result.push(c);
                    }
                }
            }
        }
        if let Some(s) = stop {
            return err(format!("unexpected end of statement while looking for matching {s}"));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Res<String> {
        // Everything up to the next ' is literal; nothing can be escaped.
        self.next();
        let mut out = String::new();
        if self.lex.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.next() {
                None => return err("unexpected end of statement while looking for matching single-quote"),
                Some('\'') => break,
                Some(c) => out.push(c),
            }
        }
        if self.lex.raw_quotes {
            out.push('\'');
        }
        Ok(out)
    }

    fn double_quote(&mut self) -> Res<String> {
        self.next();
        let mut out = String::new();
        if self.lex.raw_quotes {
            out.push('"');
        }
        loop {
            let Some(c) = self.peek() else {
                return err("unexpected end of statement while looking for matching double-quote");
            };
            if c == '"' {
                self.next();
                break;
            }
            if c == '$' {
                let v = self.dollar()?;
                out.push_str(&v);
                continue;
            }
            self.next();
            if c == self.lex.escape {
                if self.raw_escapes {
                    out.push(c);
                }
                match self.peek() {
                    None => continue,
                    // Only these can be escaped inside double quotes; other escapes stay as-is
                    // (so with raw escapes, BuildKit writes that escape twice).
                    Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                        self.next();
                        out.push(n);
                    }
                    Some(_) => out.push(c),
                }
                continue;
            }
            out.push(c);
        }
        if self.lex.raw_quotes {
            out.push('"');
        }
        Ok(out)
    }

    /// `<` outside quotes: `<<` takes the spaces, tabs and CRs after it into the same word, so
    /// that `<<  EOF` stays one word for heredoc detection (BuildKit's processPossibleHeredoc).
    fn possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut out = String::from("<<");
        while let Some(c) = self.peek().filter(|c| matches!(c, ' ' | '\t' | '\r')) {
            self.next();
            out.push(c);
        }
        out
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(c) {
                self.next();
                return c.to_string();
            }
            if !(c.is_alphanumeric() || c == '_') {
                break;
            }
            self.next();
            name.push(c);
        }
        name
    }

    fn get(&self, name: &str) -> Option<String> {
        self.env.lookup(name).map(str::to_string)
    }

    fn dollar(&mut self) -> Res<String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get(&name) {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return err("syntax error: missing '}'"),
            Some('{' | '}' | ':') => return err("syntax error: bad substitution"),
            _ => {}
        }
        let name = self.name();
        let Some(op) = self.next() else {
            return err("syntax error: missing '}'");
        };
        let value = self.get(&name);
        match op {
            '}' => Ok(match value {
                Some(v) => v,
                None if self.lex.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' => {
                let Some(modifier) = self.next() else {
                    return err("syntax error: missing '}'");
                };
                let word = self.modifier_word(false)?;
                if self.lex.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}:{modifier}{word}}}"));
                }
                let v = value.unwrap_or_default();
                match modifier {
                    '+' => Ok(if v.is_empty() { String::new() } else { word }),
                    '-' => Ok(if v.is_empty() { word } else { v }),
                    '?' if v.is_empty() => {
                        let msg = if word.is_empty() { "is not allowed to be unset or empty".into() } else { word };
                        err(format!("{name}: {msg}"))
                    }
                    '?' => Ok(v),
                    m => err(format!("unsupported modifier ({m}) in substitution")),
                }
            }
            '-' | '+' | '?' => {
                let word = self.modifier_word(false)?;
                if self.lex.skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{op}{word}}}"));
                }
                match (op, value) {
                    ('-', Some(v)) => Ok(v),
                    ('-', None) => Ok(word),
                    ('+', Some(_)) => Ok(word),
                    ('+', None) => Ok(String::new()),
                    (_, Some(v)) => Ok(v),
                    (_, None) => {
                        let msg = if word.is_empty() { "is not allowed to be unset".into() } else { word };
                        err(format!("{name}: {msg}"))
                    }
                }
            }
            '#' | '%' => {
                let greedy = self.peek() == Some(op);
                if greedy {
                    self.next();
                }
                let pattern = self.modifier_word(true)?;
                if self.lex.skip_unset && value.is_none() {
                    let ops = if greedy { format!("{op}{op}") } else { op.to_string() };
                    return Ok(format!("${{{name}{ops}{pattern}}}"));
                }
                let v = value.unwrap_or_default();
                Ok(if op == '#' { trim_prefix(&v, &pattern, greedy) } else { trim_suffix(&v, &pattern, greedy) })
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true) {
                    Ok((w, _)) => w,
                    Err(_) if self.peek().is_none() => return err("syntax error: missing '/' in ${}"),
                    Err(e) => return Err(e),
                };
                let replacement = self.modifier_word(true)?;
                if self.lex.skip_unset && value.is_none() {
                    // As BuildKit writes it back: one `/` even for `//`.
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let glob = Glob::parse(&pattern).map_err(|e| ExpandError(format!("invalid pattern ({pattern}) in substitution: {e}")))?;
                let v: Vec<char> = value.unwrap_or_default().chars().collect();
                Ok(if replace_all { glob.replace_all(&v, &replacement) } else { glob.replace_first(&v, &replacement) })
            }
            c => err(format!("unsupported modifier ({c}) in substitution")),
        }
    }

    fn modifier_word(&mut self, raw_escapes: bool) -> Res<String> {
        match self.process_stop_on(Some('}'), raw_escapes) {
            Ok((w, _)) => Ok(w),
            Err(_) if self.peek().is_none() => err("syntax error: missing '}'"),
            Err(e) => Err(e),
        }
    }
}

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Shell-style pattern match (`*`, `?`, `\` escapes) of a whole string.
fn glob_match(pattern: &[char], s: &[char]) -> bool {
    match pattern.first() {
        None => s.is_empty(),
        Some('*') => (0..=s.len()).any(|i| glob_match(&pattern[1..], &s[i..])),
        Some('?') => !s.is_empty() && glob_match(&pattern[1..], &s[1..]),
        Some('\\') if pattern.len() > 1 => s.first() == Some(&pattern[1]) && glob_match(&pattern[2..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob_match(&pattern[1..], &s[1..]),
    }
}

fn trim_prefix(value: &str, pattern: &str, greedy: bool) -> String {
    let (v, p): (Vec<char>, Vec<char>) = (value.chars().collect(), pattern.chars().collect());
    let mut ends: Box<dyn Iterator<Item = usize>> = if greedy { Box::new((0..=v.len()).rev()) } else { Box::new(0..=v.len()) };
    match ends.find(|&i| glob_match(&p, &v[..i])) {
        Some(i) => v[i..].iter().collect(),
        None => value.to_string(),
    }
}

fn trim_suffix(value: &str, pattern: &str, greedy: bool) -> String {
    let (v, p): (Vec<char>, Vec<char>) = (value.chars().collect(), pattern.chars().collect());
    let mut starts: Box<dyn Iterator<Item = usize>> = if greedy { Box::new(0..=v.len()) } else { Box::new((0..=v.len()).rev()) };
    match starts.find(|&i| glob_match(&p, &v[i..])) {
        Some(i) => v[..i].iter().collect(),
        None => value.to_string(),
    }
}

/// One element of a `${VAR/pattern/replacement}` pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GlobTok {
    Lit(char),
    /// `?`: any one character but a newline (BuildKit makes it the regexp `.`).
    Any,
    /// `*`: greedy, any run of characters without a newline (the regexp `.*`).
    Star,
}

/// The pattern of `${VAR/pattern/replacement}` and `${VAR//pattern/replacement}`.
///
/// BuildKit turns it into a Go regexp (`convertShellPatternToRegex`, greedy, not anchored) and
/// uses that regexp's leftmost-first match: the leftmost start at which the pattern matches,
/// and from there each `*` takes the longest run after which the rest still matches (what a
/// backtracking matcher prefers). That regexp can only be a sequence of literals, `.` and
/// `.*`, so it is run here directly rather than through a regexp engine. There are no bracket
/// expressions: `[`, `]` and all other characters are literal.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Glob(Vec<GlobTok>);

/// A match in progress: at token `.0` (or done), started at `.1`.
#[derive(Clone, Copy, Debug)]
enum Thread {
    At(usize, usize),
    Done(usize),
}

impl Glob {
    /// Reads the pattern as BuildKit does: `\*`, `\?` and `\\` are literal; the `\` of `\}`
    /// and `\/` is dropped (they had to be escaped in `${}`); any other escape is an error.
    fn parse(pattern: &str) -> Result<Glob, String> {
        let mut toks = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            toks.push(match c {
                '*' => GlobTok::Star,
                '?' => GlobTok::Any,
                '\\' if matches!(chars.peek(), Some('}' | '/')) => continue,
                '\\' => match chars.next() {
                    Some(e @ ('*' | '?' | '\\')) => GlobTok::Lit(e),
                    // Go prints the scanner's EOF with %c as U+FFFD.
                    e => return Err(format!("invalid escape '\\{}'", e.unwrap_or('\u{fffd}'))),
                },
                c => GlobTok::Lit(c),
            });
        }
        Ok(Glob(toks))
    }

    /// Adds the thread at token `j` to `list`, with what it reaches without reading: a `*` is
    /// tried first as one more character (greedy), then as done. `seen` stamps the tokens
    /// already in this list, so a thread of lower priority does not come in twice.
    fn add(&self, list: &mut Vec<Thread>, seen: &mut [usize], stamp: usize, mut j: usize, start: usize) {
        loop {
            if seen[j] == stamp {
                return;
            }
            seen[j] = stamp;
            if j == self.0.len() {
                list.push(Thread::Done(start));
                return;
            }
            list.push(Thread::At(j, start));
            if self.0[j] != GlobTok::Star {
                return;
            }
            j += 1;
        }
    }

    /// The leftmost-first match starting at `from` or later, as (start, end). This runs the
    /// pattern the way Go's regexp NFA does: threads in priority order, a new start (of lowest
    /// priority) at each position until something matched, and the threads after a finished
    /// one dropped. Time is value length times pattern length, memory only pattern length.
    fn find_at(&self, s: &[char], from: usize) -> Option<(usize, usize)> {
        let mut seen = vec![usize::MAX; self.0.len() + 1];
        let (mut now, mut next) = (Vec::new(), Vec::new());
        let mut found = None;
        let mut p = from;
        loop {
            if found.is_none() {
                self.add(&mut now, &mut seen, p, 0, p);
            }
            if now.is_empty() {
                break;
            }
            let c = s.get(p).copied();
            next.clear();
            for &t in &now {
                let (j, start) = match t {
                    Thread::Done(start) => {
                        found = Some((start, p));
                        break;
                    }
                    Thread::At(j, start) => (j, start),
                };
                let reads = match (self.0[j], c) {
                    (GlobTok::Lit(l), Some(c)) => l == c,
                    (GlobTok::Any | GlobTok::Star, Some(c)) => c != '\n',
                    (_, None) => false,
                };
                if reads {
                    let to = if self.0[j] == GlobTok::Star { j } else { j + 1 };
                    self.add(&mut next, &mut seen, p + 1, to, start);
                }
            }
            std::mem::swap(&mut now, &mut next);
            if p == s.len() {
                break;
            }
            p += 1;
        }
        found
    }

    /// `${VAR/pattern/replacement}`: the first match replaced, the replacement taken as is.
    fn replace_first(&self, s: &[char], replacement: &str) -> String {
        let mut out: String = s.iter().collect();
        if let Some((a, b)) = self.find_at(s, 0) {
            out = s[..a].iter().collect();
            out.push_str(replacement);
            out.extend(&s[b..]);
        }
        out
    }

    /// `${VAR//pattern/replacement}`: Go's `Regexp.ReplaceAllString`, so every match is replaced,
    /// an empty match right after a match is not, and `$0`/`${0}` in the replacement is the match
    /// (`$$` is `$`, any other `$name` is empty).
    fn replace_all(&self, s: &[char], replacement: &str) -> String {
        let mut out = String::new();
        let (mut last_end, mut search) = (0, 0);
        while search <= s.len() {
            let Some((a, b)) = self.find_at(s, search) else { break };
            out.extend(&s[last_end..a]);
            if b > last_end || a == 0 {
                let matched: String = s[a..b].iter().collect();
                expand_template(&mut out, replacement, &matched);
            }
            last_end = b;
            // Always move on by at least one character.
            search = if search + 1 > b { search + 1 } else { b };
        }
        out.extend(&s[last_end..]);
        out
    }
}

/// Go's `Regexp.Expand` for a regexp without groups: `$$` is `$`; `$name` and `${name}` (letters,
/// digits, `_`) are the match for `0` and empty otherwise; a `$` that starts neither is kept.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (brace, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let len = body.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(body.len());
        let after = if brace { body[len..].strip_prefix('}') } else { Some(&body[len..]) };
        match after {
            Some(after) if len > 0 => {
                if &body[..len] == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            _ => out.push('$'),
        }
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        [("A", "a"), ("E", ""), ("SP", "x  y"), ("P", "dir/file.tar.gz")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn word(s: &str) -> String {
        ShellLex::new('\\').process_word(s, &env()).unwrap()
    }

    fn words(s: &str) -> Vec<String> {
        ShellLex::new('\\').process_words(s, &env()).unwrap()
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(word("$A"), "a");
        assert_eq!(word("${A}b"), "ab");
        assert_eq!(word("$Ab"), "");
        assert_eq!(word("x$UNSET-y"), "x-y");
        assert_eq!(word("$"), "$");
        assert_eq!(word("a$ b"), "a$ b");
        assert_eq!(word("$1x"), "x");
    }

    #[test]
    fn modifiers() {
        assert_eq!(word("${A:-w}"), "a");
        assert_eq!(word("${E:-w}"), "w");
        assert_eq!(word("${U:-w}"), "w");
        assert_eq!(word("${E-w}"), "");
        assert_eq!(word("${U-w}"), "w");
        assert_eq!(word("${A:+w}"), "w");
        assert_eq!(word("${E:+w}"), "");
        assert_eq!(word("${E+w}"), "w");
        assert_eq!(word("${U+w}"), "");
        assert_eq!(word("${U:-$A/x}"), "a/x");
        assert_eq!(word("${U:-\"q w\"}"), "q w");
        assert_eq!(word("${A?}"), "a");
    }

    #[test]
    fn pattern_trims() {
        assert_eq!(word("${P#*.}"), "tar.gz");
        assert_eq!(word("${P##*.}"), "gz");
        assert_eq!(word("${P%.*}"), "dir/file.tar");
        assert_eq!(word("${P%%.*}"), "dir/file");
        assert_eq!(word("${P#nomatch}"), "dir/file.tar.gz");
    }

    #[test]
    fn errors() {
        let lex = ShellLex::new('\\');
        let e = |s: &str| lex.process_word(s, &env()).unwrap_err().0;
        assert_eq!(e("${U?}"), "U: is not allowed to be unset");
        assert_eq!(e("${U:?must set}"), "U: must set");
        assert_eq!(e("${A"), "syntax error: missing '}'");
        assert_eq!(e("${}"), "syntax error: bad substitution");
        assert_eq!(e("${A:=x}"), "unsupported modifier (=) in substitution");
        assert_eq!(e("'abc"), "unexpected end of statement while looking for matching single-quote");
        assert_eq!(e("\"abc"), "unexpected end of statement while looking for matching double-quote");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(word("'$A'"), "$A");
        assert_eq!(word("\"$A b\""), "a b");
        assert_eq!(word("\\$A"), "$A");
        assert_eq!(word("\"\\$A\""), "$A");
        assert_eq!(word("\"a\\nb\""), "a\\nb");
        assert_eq!(word("\"a\\\"b\""), "a\"b");
        assert_eq!(word("a\\ b"), "a b");
        assert_eq!(word("abc\\"), "abc");
        assert_eq!(word("'a\\b'"), "a\\b");
    }

    #[test]
    fn word_splitting() {
        assert_eq!(words("a b  c"), vec!["a", "b", "c"]);
        assert_eq!(words("$SP"), vec!["x", "y"]);
        assert_eq!(words("\"$SP\""), vec!["x  y"]);
        assert_eq!(words("'a b' c"), vec!["a b", "c"]);
        assert_eq!(words("a\\ b"), vec!["a b"]);
        assert_eq!(words("\"\""), Vec::<String>::new());
    }

    #[test]
    fn backtick_escape() {
        let lex = ShellLex::new('`');
        assert_eq!(lex.process_word("`$A", &env()).unwrap(), "$A");
        assert_eq!(lex.process_word("c:\\dir", &env()).unwrap(), "c:\\dir");
    }

    fn penv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sub(s: &str, pairs: &[(&str, &str)]) -> String {
        ShellLex::new('\\').process_word(s, &penv(pairs)).unwrap_or_else(|e| panic!("{s}: {}", e.0))
    }

    fn sub_err(s: &str, pairs: &[(&str, &str)]) -> String {
        ShellLex::new('\\').process_word(s, &penv(pairs)).unwrap_err().0
    }

    #[test]
    fn replace_first_and_all() {
        let e = [("P", "dir/file.tar.gz"), ("R", "aXbXc")];
        assert_eq!(sub("${P/file/x}", &e), "dir/x.tar.gz");
        assert_eq!(sub("${P/./_}", &e), "dir/file_tar.gz");
        assert_eq!(sub("${P//./_}", &e), "dir/file_tar_gz");
        assert_eq!(sub("${R//X/}", &e), "abc");
        assert_eq!(sub("${R/nomatch/y}", &e), "aXbXc");
        // The replacement is a word of its own: variables, quotes and `/` in it are fine.
        assert_eq!(sub("${R//X/$P}", &e), "adir/file.tar.gzbdir/file.tar.gzc");
        assert_eq!(sub("${R//X/' '}", &e), "a b c");
        assert_eq!(sub("${R/X/a/b}", &e), "aa/bbXc");
    }

    #[test]
    fn replace_glob_star_and_question_mark() {
        let e = [("P", "dir/file.tar.gz"), ("A", "aaa"), ("U8", "ÄbÄc")];
        // `*` is greedy, and the leftmost match wins.
        assert_eq!(sub("${P/*./X}", &e), "Xgz");
        assert_eq!(sub("${P/.*/X}", &e), "dir/fileX");
        assert_eq!(sub("${P/f*r/X}", &e), "dir/X.gz");
        assert_eq!(sub("${P//*/X}", &e), "X");
        assert_eq!(sub("${A//a*/b}", &e), "b");
        assert_eq!(sub("${A/*b/X}", &e), "aaa");
        assert_eq!(sub("${A/*/X}", &e), "X");
        assert_eq!(sub("${A/b*/X}", &e), "aaa");
        assert_eq!(sub("${A//?/b}", &e), "bbb");
        assert_eq!(sub("${A/??/b}", &e), "ba");
        assert_eq!(sub("${U8//?c/x}", &e), "Äbx");
        assert_eq!(sub("${U8//Ä?/x}", &e), "xx");
        // A pattern that comes from a variable is a pattern too (BuildKit expands it first).
        assert_eq!(sub("${P/$S/X}", &[("P", "a.b"), ("S", "*.")]), "Xb");
        // Quotes do not make a glob character literal: they are gone before the pattern is read.
        assert_eq!(sub("${P/'*'/X}", &[("P", "a*b")]), "X");
        // No bracket expressions: `[`, `]` and regexp characters are literal.
        assert_eq!(sub("${B/[a]/x}", &[("B", "[a]b")]), "xb");
        assert_eq!(sub("${B/[a]/x}", &[("B", "ab")]), "ab");
        assert_eq!(sub("${B//[ab]/x}", &[("B", "ab")]), "ab");
        assert_eq!(sub("${B//(a|b)+^$.{1}/x}", &[("B", "-(a|b)+^$.{1}-")]), "-x-");
    }

    #[test]
    fn replace_does_not_cross_newlines() {
        // `*` and `?` are the regexp's `.`, which does not match a newline.
        let e = [("NL", "ab\ncd")];
        assert_eq!(sub("${NL/*/x}", &e), "x\ncd");
        assert_eq!(sub("${NL//*/x}", &e), "x\nx");
        assert_eq!(sub("${NL//b?c/x}", &e), "ab\ncd");
        assert_eq!(sub("${NL//b*d/x}", &e), "ab\ncd");
        assert_eq!(sub("${NL//?/x}", &e), "xx\nxx");
    }

    #[test]
    fn replace_escapes() {
        let e = [("S", "a*b?c\\d"), ("T", "/tmp/foo.txt"), ("C", "}x}")];
        assert_eq!(sub("${S/\\*/x}", &e), "axb?c\\d");
        assert_eq!(sub("${S/\\?/x}", &e), "a*bxc\\d");
        assert_eq!(sub("${S/\\\\/x}", &e), "a*b?cxd");
        // `\/` and `\}` are needed inside `${}`; the escape is not part of the pattern.
        assert_eq!(sub("${T//\\//_}", &e), "_tmp_foo.txt");
        assert_eq!(sub("${C//\\}/_}", &e), "_x_");
        // The replacement keeps its escapes as written.
        assert_eq!(sub("${T//\\//\\/}", &e), "\\/tmp\\/foo.txt");
        assert_eq!(sub("${T/foo/\\n}", &e), "/tmp/\\n.txt");
        // Any other escape in the pattern is an error.
        assert_eq!(sub_err("${S/\\d/x}", &e), "invalid pattern (\\d) in substitution: invalid escape '\\d'");
        assert_eq!(sub_err("${S/$B/x}", &[("B", "\\")]), "invalid pattern (\\) in substitution: invalid escape '\\\u{fffd}'");
        // In double quotes with raw escapes, BuildKit keeps an escape before an ordinary
        // character twice: `"\d"` is the pattern `\\d`, a literal backslash and `d`.
        assert_eq!(sub("${S/\"\\d\"/x}", &e), "a*b?cx");
    }

    #[test]
    fn replace_empty_pattern_and_unset_variable() {
        let e = [("A", "ab"), ("E", "")];
        // `${A//x}` is `//` without its second `/`: an empty pattern for one replacement can
        // only come from quotes or a variable.
        assert_eq!(sub_err("${A//x}", &e), "syntax error: missing '/' in ${}");
        assert_eq!(sub("${A/''/x}", &e), "xab");
        assert_eq!(sub("${A/$E/x}", &e), "xab");
        assert_eq!(sub("${A///x}", &e), "xaxbx");
        assert_eq!(sub("${A///}", &e), "ab");
        assert_eq!(sub("${E///x}", &e), "x");
        assert_eq!(sub("${E/a/x}", &e), "");
        assert_eq!(sub("${U/a/x}", &e), "");
        assert_eq!(sub("${U//a/x}", &e), "");
        assert_eq!(sub("${U///}", &e), "");
        assert_eq!(sub("${U/''/x}", &e), "x");
        let lex = ShellLex { escape: '\\', raw_quotes: false, raw_escapes: false, skip_unset: true };
        // BuildKit writes an unset `//` back with a single `/`.
        assert_eq!(lex.process_word("${U/a/b}-${U//a/b}", &penv(&e)).unwrap(), "${U/a/b}-${U/a/b}");
        assert_eq!(lex.process_word("${A//a/b}", &penv(&e)).unwrap(), "bb");
    }

    #[test]
    fn replace_all_expands_dollar_zero() {
        // `//` goes through Go's ReplaceAllString: `$0` is the match, `$$` a `$`, other names
        // are empty. `/` inserts the replacement as is.
        let e = [("A", "ab")];
        assert_eq!(sub("${A//?/<'$0'>}", &e), "<a><b>");
        assert_eq!(sub("${A//?/<'${0}'>}", &e), "<a><b>");
        assert_eq!(sub("${A/?/<'$0'>}", &e), "<$0>b");
        assert_eq!(sub("${A//a/'$$'}", &e), "$b");
        assert_eq!(sub("${A//a/'$1$x${y}'}", &e), "b");
        assert_eq!(sub("${A//a/'$'}", &e), "$b");
        assert_eq!(sub("${A//a/'${0'}", &e), "${0b");
        assert_eq!(sub("${A//a/\\$0}", &e), "\\ab");
        // An empty match right after a match is not replaced.
        assert_eq!(sub("${A//*/x}", &e), "x");
    }

    #[test]
    fn replace_syntax_errors() {
        let e = [("A", "ab")];
        assert_eq!(sub_err("${A/a}", &e), "syntax error: missing '/' in ${}");
        assert_eq!(sub_err("${A//}", &e), "syntax error: missing '/' in ${}");
        assert_eq!(sub_err("${A/'a/b}", &e), "syntax error: missing '/' in ${}");
        assert_eq!(sub_err("${A/a/b", &e), "syntax error: missing '}'");
        assert_eq!(sub_err("${A/a/'b}", &e), "syntax error: missing '}'");
    }

    #[test]
    fn heredoc_operator_keeps_following_blanks_in_its_word() {
        // BuildKit's lexer takes spaces, tabs and CRs after `<<` into the same word.
        assert_eq!(words("<<  EOF"), vec!["<<  EOF"]);
        assert_eq!(words("cat <<\tEOF > f"), vec!["cat", "<<\tEOF", ">", "f"]);
        assert_eq!(words("a<< b"), vec!["a<< b"]);
        // Not after `<<-`, a single `<`, or an escaped or quoted `<<`.
        assert_eq!(words("<<- EOF"), vec!["<<-", "EOF"]);
        assert_eq!(words("< EOF"), vec!["<", "EOF"]);
        assert_eq!(words("\\<< EOF"), vec!["<<", "EOF"]);
        assert_eq!(words("'<<' EOF"), vec!["<<", "EOF"]);
        // Expansion itself is unchanged.
        assert_eq!(word("<<  $A"), "<<  a");
    }

    #[test]
    fn raw_modes_and_skip_unset() {
        let lex = ShellLex { escape: '\\', raw_quotes: true, raw_escapes: true, skip_unset: true };
        assert_eq!(lex.process_word("'EOF'", &NoEnv).unwrap(), "'EOF'");
        assert_eq!(lex.process_word("$X${Y}", &NoEnv).unwrap(), "$X${Y}");
        assert_eq!(lex.process_word("a\\b", &NoEnv).unwrap(), "a\\b");
    }
}
