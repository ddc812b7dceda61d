//! Instruction flags (`--from=build`, `--link`, `--mount=...`), parsed the way Docker's
//! `extractBuilderFlags` and `BFlags` do: leading words that start with `--`, quotes removed,
//! `--` alone ends the flags; then each flag is checked against what the instruction takes.

use super::error::ErrorKind;

/// A flag word as written, with its byte offset in the logical line.
#[derive(Clone, Debug)]
pub struct FlagWord {
    pub text: String,
    pub offset: usize,
}

/// Splits the leading `--flag` words off `args`; returns them and the offset where the
/// arguments start (relative to `args`).
pub fn extract(args: &str) -> (Vec<FlagWord>, usize) {
    let bytes: Vec<(usize, char)> = args.char_indices().collect();
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && bytes[i].1.is_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            return (words, args.len());
        }
        let start = bytes[i].0;
        if !args[start..].starts_with("--") {
            return (words, start);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while i < bytes.len() {
            let c = bytes[i].1;
            match quote {
                None if c.is_whitespace() => break,
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    // An escape takes the next character literally; at the end it is dropped.
                    if i + 1 < bytes.len() {
                        i += 1;
                        word.push(bytes[i].1);
                    }
                }
                _ => word.push(c),
            }
            i += 1;
        }
        if word == "--" {
            while i < bytes.len() && bytes[i].1.is_whitespace() {
                i += 1;
            }
            return (words, bytes.get(i).map_or(args.len(), |b| b.0));
        }
        words.push(FlagWord { text: word, offset: start });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    String,
    /// May be repeated; every value is kept.
    Strings,
}

/// Parsed flags of one instruction.
#[derive(Debug, Default)]
pub struct Flags {
    values: Vec<(&'static str, Vec<String>, usize)>,
}

impl Flags {
    /// Checks `words` against `spec`; errors carry the offending word's offset.
    pub fn parse(instruction: &str, words: &[FlagWord], spec: &[(&'static str, Kind)]) -> Result<Flags, (usize, ErrorKind)> {
        let mut flags = Flags::default();
        let allowed = || spec.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
        for w in words {
            let body = &w.text[2..];
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            if name.is_empty() {
                return Err((w.offset, ErrorKind::EmptyFlagName { allowed: allowed() }));
            }
            let Some(&(key, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                return Err((
                    w.offset,
                    ErrorKind::UnknownFlag { instruction: instruction.to_string(), flag: name.to_string(), allowed: allowed() },
                ));
            };
            let existing = flags.values.iter().position(|(k, _, _)| *k == key);
            if existing.is_some() && kind != Kind::Strings {
                return Err((w.offset, ErrorKind::DuplicateFlag { flag: name.to_string() }));
            }
            let value = match (kind, value) {
                (Kind::Bool, None) => "true".to_string(),
                (Kind::Bool, Some("")) | (_, None) => return Err((w.offset, ErrorKind::MissingFlagValue { flag: name.to_string() })),
                (Kind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    b @ ("true" | "false") => b.to_string(),
                    _ => return Err((w.offset, ErrorKind::BadBoolFlag { flag: name.to_string(), value: v.to_string() })),
                },
                (_, Some("")) => return Err((w.offset, ErrorKind::EmptyFlagValue { flag: name.to_string() })),
                (_, Some(v)) => v.to_string(),
            };
            match existing {
                Some(i) => flags.values[i].1.push(value),
                None => flags.values.push((key, vec![value], w.offset)),
            }
        }
        Ok(flags)
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.values.iter().find(|(k, _, _)| *k == name).and_then(|(_, v, _)| v.first().cloned())
    }

    pub fn strings(&self, name: &str) -> Vec<String> {
        self.values.iter().find(|(k, _, _)| *k == name).map(|(_, v, _)| v.clone()).unwrap_or_default()
    }

    pub fn bool(&self, name: &str) -> bool {
        self.string(name).is_some_and(|v| v == "true")
    }

    /// Byte offset of the flag's word in the instruction's argument text.
    pub fn offset(&self, name: &str) -> Option<usize> {
        self.values.iter().find(|(k, _, _)| *k == name).map(|(_, _, o)| *o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(args: &str) -> (Vec<String>, String) {
        let (w, rest) = extract(args);
        (w.into_iter().map(|w| w.text).collect(), args[rest..].to_string())
    }

    #[test]
    fn extraction() {
        assert_eq!(texts("--from=a --link src dst"), (vec!["--from=a".into(), "--link".into()], "src dst".into()));
        assert_eq!(texts("--chown=\"a b\" x"), (vec!["--chown=a b".into()], "x".into()));
        assert_eq!(texts("-- --notaflag x"), (vec![], "--notaflag x".into()));
        assert_eq!(texts("echo --x"), (vec![], "echo --x".into()));
        assert_eq!(texts("--mount=type=cache,target=/x"), (vec!["--mount=type=cache,target=/x".into()], "".into()));
    }

    const SPEC: &[(&str, Kind)] = &[("from", Kind::String), ("link", Kind::Bool), ("exclude", Kind::Strings)];

    fn parse(args: &str) -> Result<Flags, ErrorKind> {
        Flags::parse("COPY", &extract(args).0, SPEC).map_err(|e| e.1)
    }

    #[test]
    fn checking() {
        let f = parse("--from=x --link=FALSE --exclude=a --exclude=b").unwrap();
        assert_eq!(f.string("from").as_deref(), Some("x"));
        assert!(!f.bool("link"));
        assert_eq!(f.strings("exclude"), vec!["a", "b"]);
        assert!(matches!(parse("--nope=1"), Err(ErrorKind::UnknownFlag { .. })));
        assert!(matches!(parse("--from"), Err(ErrorKind::MissingFlagValue { .. })));
        assert!(matches!(parse("--from="), Err(ErrorKind::EmptyFlagValue { .. })));
        assert!(matches!(parse("--=x"), Err(ErrorKind::EmptyFlagName { .. })));
        assert!(matches!(parse("--from=a --from=b"), Err(ErrorKind::DuplicateFlag { .. })));
        assert!(matches!(parse("--link=maybe"), Err(ErrorKind::BadBoolFlag { .. })));
        assert!(matches!(parse("--link="), Err(ErrorKind::MissingFlagValue { .. })));
    }
}
