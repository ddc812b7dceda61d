//! `.dockerignore`: which files of the build context are sent to the farm.
//!
//! The CLI's context walker asks [`DockerIgnore::is_excluded`] for every path and
//! [`DockerIgnore::may_reinclude_under`] before skipping a whole directory. Users carry their
//! ignore files over from Docker, so the semantics are Docker's, clause by clause:
//!
//! * reading: `ignorefile.ReadAll` from moby/patternmatcher (used by docker/cli and BuildKit's
//!   dockerui): BOM stripped, `\r` dropped, a line whose *first* character is `#` is a comment
//!   (`  # x` is a pattern), whitespace trimmed, `!` marks an exception, the pattern is
//!   `filepath.Clean`ed and one leading `/` removed;
//! * compiling and matching: `patternmatcher.New` and `Pattern.compile`, which turns a pattern
//!   into an exact, prefix, suffix or regexp match; we reproduce that classification because
//!   it is observable (`**.log` is a plain suffix match and so also matches `a/b.log`);
//! * deciding: `MatchesOrParentMatches`: the last pattern that matches the path or one of its
//!   parent directories wins.
//!
//! Unlike `.gitignore`, every pattern is anchored at the context root: `foo` is only `./foo`.
//!
//! Known, deliberate differences from Docker's regexp translation, all in corners a real
//! ignore file does not reach: `\x` is always the literal `x` (Docker hands `\d`, `\w`, ... to
//! Go's regexp), and inside `[...]` every character is literal as in `filepath.Match` (Docker
//! pastes `*`, `?` into the class as regexp fragments, and knows `[[:alpha:]]`).

use std::path::{Path, PathBuf};

/// What a walker needs: the ordered pattern list of one ignore file.
#[derive(Clone, Debug, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

/// Why an ignore file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    #[error(".dockerignore:{file_line}: bad pattern \"{pattern}\": {reason}")]
    BadPattern { file_line: usize, pattern: String, reason: String },
    #[error("cannot read ignore file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
struct Pattern {
    /// The cleaned pattern without its `!`, as Docker's `Pattern.String()` shows it.
    text: String,
    exception: bool,
    matcher: Matcher,
}

/// patternmatcher's `matchType`: the first three are plain string tests, which is why
/// `**foo` (a suffix test) is not the same as `**/foo` rendered through a regexp.
#[derive(Clone, Debug)]
enum Matcher {
    Exact,
    /// `path.starts_with(prefix)`: a pattern of literals ending in `**`.
    Prefix(String),
    /// `path.ends_with(suffix)`, or `path == suffix[1..]` when the suffix starts with `/`:
    /// a pattern starting with `**` followed only by literals.
    Suffix(String),
    /// Everything else: anchored at both ends.
    Tokens(Vec<Token>),
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` or `**/` in the middle: nothing, or anything ending in `/` (regexp `(.*/)?`).
    DirStar,
    /// `**` at the end of a pattern that is not a pure prefix: anything (regexp `.*`).
    Rest,
    /// `[...]`. Docker matches it with a regexp class, so unlike `filepath.Match` it can
    /// match `/` too.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl DockerIgnore {
    /// Parse the text of an ignore file. Line numbers in errors count every line, comments too.
    pub fn parse(text: &str) -> Result<DockerIgnore, IgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            // bufio.ScanLines drops exactly one trailing \r.
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            // ReadAll tests for `#` before trimming: an indented `#` is a pattern.
            if line.starts_with('#') {
                continue;
            }
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            let read_all = read_all_normalise(trimmed);
            let bad = |reason: String| IgnoreError::BadPattern { file_line: index + 1, pattern: trimmed.to_owned(), reason };
            // patternmatcher.New trims and cleans again, then splits off the `!`.
            let cleaned = go_clean(read_all.trim());
            let (exception, text) = match cleaned.strip_prefix('!') {
                Some("") => return Err(bad("an exception needs a pattern after \"!\"".to_owned())),
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            let matcher = compile(&text).map_err(bad)?;
            patterns.push(Pattern { text, exception, matcher });
        }
        Ok(DockerIgnore { patterns })
    }

    /// No patterns: nothing is excluded.
    pub fn empty() -> DockerIgnore {
        DockerIgnore::default()
    }

    /// Whether `rel_path` (relative to the context root, `/`-separated, `./` or `/` prefixes
    /// allowed) is left out of the context. The root itself never is.
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let path = normalise_query(rel_path);
        if path == "." {
            return false;
        }
        // MatchesOrParentMatches; skipping patterns that cannot change the verdict, as it
        // does, is equivalent to "the last matching pattern wins".
        let mut excluded = false;
        for pattern in &self.patterns {
            if pattern.exception != excluded {
                continue;
            }
            if pattern.matches_self_or_parent(&path) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// Whether a walker that found `dir` excluded must still descend into it, because some
    /// path below it may be re-included by an exception. False means the whole subtree can
    /// be skipped.
    ///
    /// Docker's classic walker compared exception strings with the directory as a prefix,
    /// which misses wildcard exceptions such as `!**/*.go`; BuildKit descends. This answer
    /// is exact for literal patterns and conservative (true) for wildcards.
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        let dir = normalise_query(dir);
        if dir == "." {
            return self.patterns.iter().any(|p| p.exception);
        }
        // A path under `dir` inherits every pattern that matches `dir` or a parent of it, so
        // only an exception that comes after the last of those, and that matches a path
        // strictly under `dir` by itself, can change its verdict.
        let last_exclusion = self.patterns.iter().rposition(|p| p.matches_self_or_parent(&dir));
        let Some(last) = last_exclusion else {
            // Not excluded at all: nothing to skip.
            return true;
        };
        if self.patterns[last].exception {
            return true;
        }
        let prefix = format!("{dir}/");
        self.patterns[last + 1..].iter().any(|p| p.exception && p.matcher.may_match_under(&p.text, &prefix))
    }

    /// The patterns in file order, cleaned and without their `!`, with the exception flag.
    pub fn patterns(&self) -> impl Iterator<Item = (&str, bool)> {
        self.patterns.iter().map(|p| (p.text.as_str(), p.exception))
    }

    /// The ignore file that applies, in BuildKit's order: `<Dockerfile name>.dockerignore`
    /// beside the Dockerfile (so several Dockerfiles in one context can each have their own),
    /// else `<context>/.dockerignore`, else none. `dockerfile` is the path as the user gave
    /// it; relative paths resolve against the current directory, as `docker build -f` does.
    pub fn locate(context_dir: &Path, dockerfile: &Path) -> Option<PathBuf> {
        if let Some(name) = dockerfile.file_name() {
            let mut own = name.to_os_string();
            own.push(".dockerignore");
            let own = dockerfile.with_file_name(own);
            if own.exists() {
                return Some(own);
            }
        }
        let shared = context_dir.join(".dockerignore");
        shared.exists().then_some(shared)
    }

    /// Read and parse the located ignore file; no file means nothing is excluded.
    pub fn load(context_dir: &Path, dockerfile: &Path) -> Result<DockerIgnore, IgnoreError> {
        let Some(path) = Self::locate(context_dir, dockerfile) else {
            return Ok(DockerIgnore::empty());
        };
        let bytes = std::fs::read(&path).map_err(|source| IgnoreError::Read { path: path.clone(), source })?;
        // Go reads bytes; an invalid UTF-8 sequence can only be a literal file-name byte, which
        // a Rust walker (working on UTF-8 names) could not match anyway.
        DockerIgnore::parse(&String::from_utf8_lossy(&bytes))
    }
}

impl Pattern {
    /// The per-pattern step of MatchesOrParentMatches: the path itself, else each ancestor
    /// from the top (`a`, `a/b`, ... for `a/b/c`).
    fn matches_self_or_parent(&self, path: &str) -> bool {
        if self.matcher.matches(&self.text, path) {
            return true;
        }
        path.match_indices('/').any(|(i, _)| self.matcher.matches(&self.text, &path[..i]))
    }
}

impl Matcher {
    fn matches(&self, text: &str, path: &str) -> bool {
        match self {
            Matcher::Exact => path == text,
            Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => path.ends_with(suffix.as_str()) || suffix.strip_prefix('/').is_some_and(|rest| path == rest),
            Matcher::Tokens(tokens) => {
                let mut nfa = Nfa::new(tokens);
                path.chars().all(|c| nfa.step(c)) && nfa.accepts()
            }
        }
    }

    /// Could this pattern, matching on its own, match some path that starts with `prefix`
    /// (which ends in `/`)? May answer true when it cannot; never false when it can.
    fn may_match_under(&self, text: &str, prefix: &str) -> bool {
        match self {
            Matcher::Exact => text.starts_with(prefix),
            Matcher::Prefix(p) => p.starts_with(prefix) || prefix.starts_with(p.as_str()),
            // `**…` followed by literals: `<prefix>x<suffix>` always matches.
            Matcher::Suffix(_) => true,
            // Any live state can be completed (every token can match something), so a
            // surviving prefix means some completion may match.
            Matcher::Tokens(tokens) => {
                let mut nfa = Nfa::new(tokens);
                prefix.chars().all(|c| nfa.step(c))
            }
        }
    }
}

/// A Thompson simulation over the token list: linear in the path, no backtracking, so a
/// hostile `*a*a*a*a*b` costs nothing. State `2*i` sits before token `i`; state `2*i + 1` is
/// inside the `.*` of a `DirStar` at token `i`, waiting for the `/` that ends it.
struct Nfa<'a> {
    tokens: &'a [Token],
    live: Vec<bool>,
    next: Vec<bool>,
}

impl<'a> Nfa<'a> {
    fn new(tokens: &'a [Token]) -> Nfa<'a> {
        let mut live = vec![false; 2 * tokens.len() + 2];
        live[0] = true;
        let mut nfa = Nfa { tokens, next: live.clone(), live };
        Self::close(nfa.tokens, &mut nfa.live);
        nfa
    }

    /// Empty moves only go forward, so one pass in token order reaches the fixpoint.
    fn close(tokens: &[Token], set: &mut [bool]) {
        for (i, token) in tokens.iter().enumerate() {
            if !set[2 * i] {
                continue;
            }
            match token {
                Token::Star | Token::Rest => set[2 * i + 2] = true,
                Token::DirStar => {
                    set[2 * i + 1] = true;
                    set[2 * i + 2] = true;
                }
                _ => {}
            }
        }
    }

    /// Consume one character; false once no state is live (no completion can match).
    fn step(&mut self, c: char) -> bool {
        self.next.iter_mut().for_each(|s| *s = false);
        let mut any = false;
        for (i, token) in self.tokens.iter().enumerate() {
            if self.live[2 * i] {
                let advance = match token {
                    Token::Lit(l) => *l == c,
                    Token::One => c != '/',
                    Token::Class { negated, ranges } => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated,
                    Token::Star => {
                        if c != '/' {
                            self.next[2 * i] = true;
                            any = true;
                        }
                        false
                    }
                    Token::Rest => {
                        self.next[2 * i] = true;
                        any = true;
                        false
                    }
                    Token::DirStar => false,
                };
                if advance {
                    self.next[2 * i + 2] = true;
                    any = true;
                }
            }
            if self.live[2 * i + 1] {
                self.next[2 * i + 1] = true;
                if c == '/' {
                    self.next[2 * i + 2] = true;
                }
                any = true;
            }
        }
        std::mem::swap(&mut self.live, &mut self.next);
        Self::close(self.tokens, &mut self.live);
        any
    }

    fn accepts(&self) -> bool {
        self.live[2 * self.tokens.len()]
    }
}

/// ReadAll's per-line normalisation of an already trimmed, non-empty line.
fn read_all_normalise(line: &str) -> String {
    let (invert, rest) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, line),
    };
    let mut pattern = String::new();
    if !rest.is_empty() {
        pattern = go_clean(rest);
        // Patterns are relative to the context root; `/` alone is left as it is.
        if pattern.len() > 1 {
            if let Some(stripped) = pattern.strip_prefix('/') {
                pattern = stripped.to_owned();
            }
        }
    }
    if invert {
        pattern.insert(0, '!');
    }
    pattern
}

/// Go's `path.Clean` (Unix `filepath.Clean`): collapse `//`, drop `.`, resolve `..`
/// lexically, no trailing slash; the empty path is `.`.
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// A path being asked about, in the form patterns are written in.
fn normalise_query(path: &str) -> String {
    let cleaned = go_clean(path);
    match cleaned.strip_prefix('/') {
        Some("") => ".".to_owned(),
        Some(rest) => rest.to_owned(),
        None => cleaned,
    }
}

/// patternmatcher's `Pattern.compile`, with `filepath.Match`'s syntax check folded in.
/// The error is the reason, for the caller to wrap with the line.
fn compile(pattern: &str) -> Result<Matcher, String> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut kind = Kind::Exact;
    let mut pos = 0;
    let mut first = true;
    while pos < chars.len() {
        let c = chars[pos];
        pos += 1;
        match c {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                // `**/` is treated as `**`.
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == chars.len() {
                    // Trailing `**` accepts everything below, as in .gitignore.
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        tokens.push(Token::Rest);
                        kind = Kind::Regexp;
                    }
                } else {
                    tokens.push(Token::DirStar);
                    kind = Kind::Regexp;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                kind = Kind::Regexp;
            }
            '?' => {
                tokens.push(Token::One);
                kind = Kind::Regexp;
            }
            '\\' => {
                // filepath.Match rejects a trailing backslash, so New never gets to compile it.
                let escaped = chars.get(pos).ok_or_else(|| "trailing backslash escapes nothing".to_owned())?;
                pos += 1;
                tokens.push(Token::Lit(*escaped));
                kind = Kind::Regexp;
            }
            '[' => {
                let (token, end) = parse_class(&chars, pos)?;
                pos = end;
                tokens.push(token);
                kind = Kind::Regexp;
            }
            // A lone `]` is a literal, but compile still switches to a regexp for it.
            ']' => {
                tokens.push(Token::Lit(']'));
                kind = Kind::Regexp;
            }
            other => tokens.push(Token::Lit(other)),
        }
        first = false;
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact,
        // Clean leaves no trailing `/`, so a prefix pattern ends in `**`; a suffix one starts so.
        Kind::Prefix => Matcher::Prefix(pattern.strip_suffix("**").unwrap_or(pattern).to_owned()),
        Kind::Suffix => Matcher::Suffix(pattern.strip_prefix("**").unwrap_or(pattern).to_owned()),
        Kind::Regexp => Matcher::Tokens(tokens),
    })
}

/// `filepath.Match`'s class grammar from just after `[`: optional `^`, then one or more
/// `c` or `c-c`, where `c` is any character but `-` and `]` unless escaped with `\`.
/// Returns the token and the position after `]`.
fn parse_class(chars: &[char], mut pos: usize) -> Result<(Token, usize), String> {
    const UNTERMINATED: &str = "unterminated character class";
    let negated = chars.get(pos) == Some(&'^');
    if negated {
        pos += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(pos) == Some(&']') && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, pos + 1));
        }
        let (lo, after) = class_char(chars, pos)?;
        pos = after;
        let mut hi = lo;
        if chars.get(pos) == Some(&'-') {
            let (h, after) = class_char(chars, pos + 1)?;
            hi = h;
            pos = after;
        }
        if pos >= chars.len() {
            return Err(UNTERMINATED.to_owned());
        }
        // filepath.Match tolerates this (the range is empty), but Docker's regexp does not
        // compile, so every path check would fail; better to say so at the line.
        if lo > hi {
            return Err(format!("character class range {lo}-{hi} is out of order"));
        }
        ranges.push((lo, hi));
    }
}

/// `getEsc`: one class character at `pos`, and the position after it.
fn class_char(chars: &[char], pos: usize) -> Result<(char, usize), String> {
    match chars.get(pos) {
        None => Err("unterminated character class".to_owned()),
        Some('-') | Some(']') => Err("character class has a misplaced '-' or ']' (escape it with a backslash)".to_owned()),
        Some('\\') => match chars.get(pos + 1) {
            Some(c) => Ok((*c, pos + 2)),
            None => Err("unterminated character class".to_owned()),
        },
        Some(c) => Ok((*c, pos + 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn bad(text: &str) -> (usize, String, String) {
        match DockerIgnore::parse(text) {
            Err(IgnoreError::BadPattern { file_line, pattern, reason }) => (file_line, pattern, reason),
            other => panic!("{text:?} should be a bad pattern, got {other:?}"),
        }
    }

    fn pats(d: &DockerIgnore) -> Vec<(String, bool)> {
        d.patterns().map(|(p, e)| (p.to_owned(), e)).collect()
    }

    #[track_caller]
    fn check(text: &str, excluded: &[&str], kept: &[&str]) {
        let d = ig(text);
        for p in excluded {
            assert!(d.is_excluded(p), "{text:?}: {p:?} should be excluded");
        }
        for p in kept {
            assert!(!d.is_excluded(p), "{text:?}: {p:?} should be kept");
        }
    }

    /// A unique scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir =
                std::env::temp_dir().join(format!("kiln-dockerignore-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn empty_excludes_nothing() {
        let d = DockerIgnore::empty();
        assert!(!d.is_excluded("a"));
        assert!(!d.is_excluded("a/b/c"));
        assert_eq!(d.patterns().count(), 0);
        // Nothing is excluded, so no directory is ever skippable.
        assert!(d.may_reinclude_under("a"));
        assert_eq!(ig("").patterns().count(), 0);
        assert_eq!(ig("\n\n  \n\t\n").patterns().count(), 0);
    }

    #[test]
    fn log_files_with_an_exception() {
        check("**/*.log\n!important.log\n", &["a.log", "x/a.log", "x/y/z.log"], &["important.log", "a.txt", "x/a.txt"]);
        // The exception is anchored too: a nested important.log stays excluded.
        check("**/*.log\n!important.log\n", &["x/important.log"], &[]);
    }

    #[test]
    fn last_match_wins() {
        check("*.md\n!README.md\n", &["CHANGES.md"], &["README.md"]);
        check("!README.md\n*.md\n", &["CHANGES.md", "README.md"], &[]);
        check("*.md\n!README.md\nREADME.md\n", &["README.md"], &[]);
        check("a\n!a\na\n!a\n", &[], &["a", "a/b"]);
    }

    #[test]
    fn directory_excludes_everything_below() {
        check("node_modules\n", &["node_modules", "node_modules/a", "node_modules/a/b"], &["node_modulesx", "src/node_modules", "a"]);
    }

    #[test]
    fn exception_reincludes_a_file_under_an_excluded_dir() {
        let text = "vendor\n!vendor/keep.go\n";
        check(text, &["vendor", "vendor/other.go", "vendor/x/keep.go"], &["vendor/keep.go"]);
        let d = ig(text);
        assert!(d.may_reinclude_under("vendor"));
        assert!(!d.may_reinclude_under("vendor/x"));
    }

    #[test]
    fn exception_then_reexclusion_below() {
        let text = "docs\n!docs/api\ndocs/api/internal\n";
        check(text, &["docs/guide.md", "docs/api/internal", "docs/api/internal/x"], &["docs/api", "docs/api/index.md"]);
    }

    #[test]
    fn patterns_are_anchored_at_the_root() {
        check("foo\n", &["foo", "foo/bar"], &["a/foo", "a/b/foo", "foobar"]);
        check("**/foo\n", &["foo", "a/foo", "a/b/foo", "a/foo/bar"], &["afoo", "a/foobar"]);
    }

    #[test]
    fn star_does_not_cross_directories() {
        check("*.md\n", &["README.md", ".md"], &["docs/README.md", "README.mdx"]);
        check("docs/*.md\n", &["docs/a.md"], &["docs/x/a.md", "a.md"]);
        check("*/*.tmp\n", &["a/b.tmp", "a/b.tmp/c"], &["b.tmp", "a/b/c.tmp"]);
    }

    #[test]
    fn double_star_at_the_end_is_a_prefix() {
        // `docs/**` matches everything below docs but, being a prefix test on "docs/",
        // not docs itself.
        check("docs/**\n", &["docs/a", "docs/a/b"], &["docs", "docsx", "x/docs/a"]);
        // No slash: a raw prefix, as in Docker.
        check("docs**\n", &["docs", "docsx", "docs/a"], &["doc"]);
        // With a wildcard before it, it becomes regexp `.*`.
        check("d*/**\n", &["docs/a", "d/b/c"], &["x/docs/a"]);
    }

    #[test]
    fn double_star_alone_matches_everything() {
        check("**\n", &["a", "a/b", ".git", ".dockerignore"], &[]);
        check("**\n!keep\n", &["a", "a/b"], &["keep"]);
        assert_eq!(pats(&ig("**/\n")), [("**".to_owned(), false)]);
    }

    #[test]
    fn double_star_in_the_middle_matches_zero_or_more_dirs() {
        check("a/**/b\n", &["a/b", "a/x/b", "a/x/y/b", "a/b/c"], &["a/xb", "ab", "x/a/b"]);
        check("**/*.log\n", &["a.log", "x/a.log"], &["a.logx"]);
    }

    #[test]
    fn leading_double_star_with_literals_is_a_suffix_test() {
        // Docker's suffix match: `**.pyc` is not `(.*/)?\.pyc`, it matches any name ending so.
        check("**.pyc\n", &["a.pyc", "x/y/b.pyc", ".pyc"], &["a.py"]);
        check("**foo\n", &["foo", "barfoo", "x/barfoo"], &["foox"]);
    }

    #[test]
    fn git_directory() {
        check(".git\n", &[".git", ".git/HEAD", ".git/objects/ab/cd"], &[".github", "a/.git"]);
    }

    #[test]
    fn comments() {
        let d = ig("# comment\nfoo\n#bar\n");
        assert_eq!(pats(&d), [("foo".to_owned(), false)]);
        assert!(!d.is_excluded("#bar"));
        // ReadAll checks `#` before trimming: an indented `#` starts a pattern.
        let d = ig("  # not a comment\n");
        assert_eq!(pats(&d), [("# not a comment".to_owned(), false)]);
        assert!(d.is_excluded("# not a comment"));
        // And `\#` escapes for the file name `#x`.
        check("\\#x\n", &["#x"], &["x"]);
    }

    #[test]
    fn crlf_and_bom() {
        let d = ig("\u{feff}foo\r\n!foo/bar\r\n\r\nbaz\r");
        assert_eq!(pats(&d), [("foo".to_owned(), false), ("foo/bar".to_owned(), true), ("baz".to_owned(), false)]);
        // The BOM is only stripped from the start of the file.
        assert_eq!(pats(&ig("a\n\u{feff}b")).len(), 2);
    }

    #[test]
    fn whitespace_is_trimmed_also_after_the_bang() {
        let d = ig("  foo  \n\t!  bar \n");
        assert_eq!(pats(&d), [("foo".to_owned(), false), ("bar".to_owned(), true)]);
    }

    #[test]
    fn leading_slash_and_cleaning() {
        // moby/patternmatcher's ReadAll test, less the `!` lines that New rejects.
        let d = ig("test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n");
        assert_eq!(
            pats(&d),
            [
                ("test1".to_owned(), false),
                ("test2".to_owned(), false),
                ("a/file/here".to_owned(), false),
                ("lastfile".to_owned(), false),
                ("inverted/abs/path".to_owned(), true),
            ]
        );
        let d = ig("./a//b/\nc/./d/../e\n//x\n");
        assert_eq!(pats(&d), [("a/b".to_owned(), false), ("c/e".to_owned(), false), ("x".to_owned(), false)]);
        check("/build\n", &["build", "build/out"], &["src/build"]);
    }

    #[test]
    fn query_paths_are_normalised() {
        let d = ig("build\n");
        for p in ["build", "./build", "/build", "build/", "./build/x", "a/../build", "build//x"] {
            assert!(d.is_excluded(p), "{p:?}");
        }
        for p in ["", ".", "./", "/"] {
            assert!(!d.is_excluded(p), "the root is never excluded: {p:?}");
        }
        assert!(!ig("**\n").is_excluded("."));
    }

    #[test]
    fn question_mark_and_classes() {
        check("?.txt\n", &["a.txt"], &["ab.txt", ".txt", "a/b.txt"]);
        check("file[0-9].txt\n", &["file1.txt"], &["filea.txt", "file10.txt"]);
        check("file[^0-9].txt\n", &["filea.txt"], &["file1.txt"]);
        check("[ab-d]x\n", &["ax", "cx", "dx"], &["ex", "-x"]);
        // `!` is not a negation in filepath.Match or Go regexp: it is a member.
        check("[!a]x\n", &["!x", "ax"], &["bx"]);
        // Escapes inside a class.
        check("[\\]\\-]x\n", &["]x", "-x"], &["\\x"]);
        // Docker matches classes with a regexp class, which (unlike `?`) can match `/`.
        check("a[^x]b\n", &["a/b", "acb"], &["axb"]);
    }

    #[test]
    fn escapes() {
        check("\\*.txt\n", &["*.txt"], &["a.txt"]);
        check("a\\?\n", &["a?"], &["ab"]);
        check("\\[x]\n", &["[x]"], &["x"]);
        // A lone `]` is literal.
        check("a]\n", &["a]"], &["a"]);
    }

    #[test]
    fn regexp_metacharacters_are_literal() {
        check("a.b\n", &["a.b"], &["axb"]);
        check("*.b+c\n", &["x.b+c"], &["x.bbc", "xxb+c"]);
        check("(a|b){1}$\n", &["(a|b){1}$"], &["a"]);
    }

    #[test]
    fn bad_patterns_name_line_and_pattern() {
        let (line, pattern, reason) = bad("# c\nok\n[a-\n");
        assert_eq!((line, pattern.as_str(), reason.as_str()), (3, "[a-", "unterminated character class"));
        let err = DockerIgnore::parse("# c\nok\n[a-\n").unwrap_err();
        assert_eq!(err.to_string(), ".dockerignore:3: bad pattern \"[a-\": unterminated character class");

        assert_eq!(bad("abc[").2, "unterminated character class");
        assert_eq!(bad("[abc").2, "unterminated character class");
        assert_eq!(bad("[a\\").2, "unterminated character class");
        assert!(bad("[]").2.contains("misplaced"));
        assert!(bad("[]a]").2.contains("misplaced"));
        assert!(bad("[-a]").2.contains("misplaced"));
        assert!(bad("[a-]").2.contains("misplaced"));
        assert_eq!(bad("[z-a]").2, "character class range z-a is out of order");
        assert_eq!(bad("foo\\").2, "trailing backslash escapes nothing");
        // The pattern in the message is the line as written (trimmed), not the cleaned form.
        assert_eq!(bad("  !/x/[  ").1, "!/x/[");
    }

    #[test]
    fn lone_bang_is_an_error() {
        for text in ["!", "! ", "!\t", "x\n! /"] {
            let (_, _, reason) = bad(text);
            assert_eq!(reason, "an exception needs a pattern after \"!\"", "{text:?}");
        }
        assert_eq!(bad("a\nb\n!\n").0, 3);
    }

    #[test]
    fn many_stars_do_not_backtrack() {
        let d = ig("*a*a*a*a*a*a*a*a*a*a*b\n");
        let path = "a".repeat(5000);
        assert!(!d.is_excluded(&path));
        assert!(d.is_excluded(&format!("{path}b")));
    }

    #[test]
    fn may_reinclude_under() {
        // No exceptions: an excluded directory can be skipped whole.
        let d = ig("node_modules\n");
        assert!(!d.may_reinclude_under("node_modules"));
        assert!(!d.may_reinclude_under("node_modules/a"));
        // A literal exception below the directory, at any depth.
        let d = ig("node_modules\n!node_modules/a/b/keep\n");
        assert!(d.may_reinclude_under("node_modules"));
        assert!(d.may_reinclude_under("./node_modules/a"));
        assert!(d.may_reinclude_under("node_modules/a/b"));
        assert!(!d.may_reinclude_under("node_modules/c"));
        // A wildcard exception: Docker's classic prefix check would have skipped the dir.
        let d = ig("vendor\n!**/*.go\n");
        assert!(d.may_reinclude_under("vendor"));
        assert!(d.is_excluded("vendor/x.txt"));
        assert!(!d.is_excluded("vendor/a/x.go"));
        let d = ig("build\n!build/*/keep\n");
        assert!(d.may_reinclude_under("build"));
        assert!(d.may_reinclude_under("build/x"));
        assert!(!d.may_reinclude_under("build/x/other"));
        // An exception that comes before the exclusion cannot win.
        let d = ig("!build/keep\nbuild\n");
        assert!(!d.may_reinclude_under("build"));
        // Prefix-type exceptions.
        let d = ig("out\n!out/logs/**\n");
        assert!(d.may_reinclude_under("out"));
        assert!(d.may_reinclude_under("out/logs"));
        assert!(!d.may_reinclude_under("out/bin"));
        assert!(!d.is_excluded("out/logs/a"));
        // A directory that is not excluded is never "skippable".
        assert!(ig("a\n").may_reinclude_under("b"));
        assert!(ig("!x\n").may_reinclude_under("."));
    }

    #[test]
    fn may_reinclude_under_agrees_with_is_excluded() {
        // Whenever it says "skip", nothing below the directory may be kept.
        let files =
            ["a", "a/b", "a/b/c", "a/b/c.go", "a/keep", "a/x/keep", "b/c", "vendor/m/keep.go", "vendor/m/x.txt", "out/logs/1", "out/bin/k"];
        let texts = [
            "a\n!a/b/c\n",
            "a\n!a/*/keep\n",
            "a\n!**/*.go\n",
            "*\n!vendor/**/keep.go\n",
            "**\n!out/logs\n",
            "a/b\n!a/b/c.go\na/b/c.go\n",
            "vendor\n!vendor/m\nvendor/m/*.txt\n",
        ];
        for text in texts {
            let d = ig(text);
            for f in files {
                let mut dir = f;
                while let Some((parent, _)) = dir.rsplit_once('/') {
                    dir = parent;
                    if d.is_excluded(dir) && !d.may_reinclude_under(dir) {
                        assert!(d.is_excluded(f), "{text:?}: skipped {dir:?} but {f:?} is kept");
                    }
                }
            }
        }
    }

    #[test]
    fn go_clean_matches_go() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("//", "/"),
            ("a/", "a"),
            ("a//b", "a/b"),
            ("./a", "a"),
            ("a/./b", "a/b"),
            ("a/../b", "b"),
            ("a/..", "."),
            ("..", ".."),
            ("../a", "../a"),
            ("../../a/../b", "../../b"),
            ("/../a", "/a"),
            ("/a/b/../../..", "/"),
            ("!../x", "!../x"),
        ] {
            assert_eq!(go_clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn locate_prefers_the_dockerfile_specific_file() {
        let tmp = TempDir::new("locate");
        let ctx = tmp.0.join("ctx");
        let df_dir = tmp.0.join("files");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::create_dir_all(&df_dir).unwrap();
        let dockerfile = df_dir.join("app.Dockerfile");

        assert_eq!(DockerIgnore::locate(&ctx, &dockerfile), None);
        assert_eq!(DockerIgnore::load(&ctx, &dockerfile).unwrap().patterns().count(), 0);

        std::fs::write(ctx.join(".dockerignore"), "shared\n").unwrap();
        assert_eq!(DockerIgnore::locate(&ctx, &dockerfile), Some(ctx.join(".dockerignore")));
        let d = DockerIgnore::load(&ctx, &dockerfile).unwrap();
        assert!(d.is_excluded("shared"));

        let own = df_dir.join("app.Dockerfile.dockerignore");
        std::fs::write(&own, "own\n").unwrap();
        assert_eq!(DockerIgnore::locate(&ctx, &dockerfile), Some(own.clone()));
        let d = DockerIgnore::load(&ctx, &dockerfile).unwrap();
        assert!(d.is_excluded("own"));
        assert!(!d.is_excluded("shared"), "the files are not merged");

        // Another Dockerfile in the same place falls back to the context's file.
        assert_eq!(DockerIgnore::locate(&ctx, &df_dir.join("Dockerfile")), Some(ctx.join(".dockerignore")));
    }

    #[test]
    fn load_errors() {
        let tmp = TempDir::new("load");
        let dockerfile = tmp.0.join("Dockerfile");
        std::fs::write(tmp.0.join(".dockerignore"), "ok\n\n[x\n").unwrap();
        match DockerIgnore::load(&tmp.0, &dockerfile) {
            Err(IgnoreError::BadPattern { file_line: 3, pattern, .. }) => assert_eq!(pattern, "[x"),
            other => panic!("expected a bad pattern, got {other:?}"),
        }
        // A directory where the file should be cannot be read.
        std::fs::remove_file(tmp.0.join(".dockerignore")).unwrap();
        std::fs::create_dir(tmp.0.join(".dockerignore")).unwrap();
        let err = DockerIgnore::load(&tmp.0, &dockerfile).unwrap_err();
        assert!(matches!(&err, IgnoreError::Read { path, .. } if path == &tmp.0.join(".dockerignore")));
        assert!(err.to_string().starts_with("cannot read ignore file "), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }
}
