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
        let mut w = Word { lex: self, env, chars: input.chars().collect(), pos: 0 };
        w.process_stop_on(None, false)
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

    fn process_stop_on(&mut self, stop: Option<char>, raw_escapes: bool) -> Res<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        let raw_escapes = raw_escapes || self.lex.raw_escapes;
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
                _ => {
                    self.next();
                    if c == self.lex.escape {
                        if raw_escapes {
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
                if self.lex.raw_escapes {
                    out.push(c);
                }
                match self.peek() {
                    None => continue,
                    // Only these can be escaped inside double quotes; other escapes stay as-is.
                    Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                        self.next();
                        out.push(n);
                    }
                    Some(_) => {
                        if !self.lex.raw_escapes {
                            out.push(c);
                        }
                    }
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

    #[test]
    fn raw_modes_and_skip_unset() {
        let lex = ShellLex { escape: '\\', raw_quotes: true, raw_escapes: true, skip_unset: true };
        assert_eq!(lex.process_word("'EOF'", &NoEnv).unwrap(), "'EOF'");
        assert_eq!(lex.process_word("$X${Y}", &NoEnv).unwrap(), "$X${Y}");
        assert_eq!(lex.process_word("a\\b", &NoEnv).unwrap(), "a\\b");
    }
}
