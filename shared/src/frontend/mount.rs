//! `RUN --mount=...` specifications, parsed into structure (BuildKit's `commands_runmount.go`).
//!
//! The value is a CSV list of `key=value` fields. Values may hold variables; they are kept
//! as written here and expanded by `resolve`, which then calls [`Mount::validate`].

use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// One `--mount`. Unset fields take BuildKit's defaults when the step runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    pub target: Option<String>,
    pub source: Option<String>,
    pub from: Option<String>,
    pub readonly: Option<bool>,
    pub id: Option<String>,
    pub sharing: Option<String>,
    pub mode: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub size: Option<String>,
    pub required: Option<bool>,
    pub env: Option<String>,
}

const KEYS: &str =
    "type, target (dst, destination), source (src), from, readonly (ro), readwrite (rw), id, sharing, mode, uid, gid, size, required, env";

/// Splits a CSV record: fields separated by `,`, optionally double-quoted with `""` as a quote.
fn csv_fields(value: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = value.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if at_start => quoted = true,
            ',' if !quoted => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            c => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err(format!("unterminated quote in {value:?}"));
    }
    fields.push(field);
    Ok(fields)
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(format!("invalid value for {key}: {v:?} (expected true or false)")),
    }
}

impl Mount {
    pub fn parse(value: &str) -> Result<Mount, String> {
        let mut m = Mount {
            kind: MountType::Bind,
            target: None,
            source: None,
            from: None,
            readonly: None,
            id: None,
            sharing: None,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            required: None,
            env: None,
        };
        for field in csv_fields(value)? {
            let field = field.trim();
            if field.is_empty() {
                continue;
            }
            let (key, val) = match field.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
                None => (field.to_ascii_lowercase(), None),
            };
            let need = |v: Option<&str>| v.map(str::to_string).ok_or_else(|| format!("{key} needs a value ({key}=...)"));
            match key.as_str() {
                "type" => {
                    m.kind = match need(val)?.as_str() {
                        "bind" => MountType::Bind,
                        "cache" => MountType::Cache,
                        "tmpfs" => MountType::Tmpfs,
                        "secret" => MountType::Secret,
                        "ssh" => MountType::Ssh,
                        t => return Err(format!("unsupported mount type {t:?} (expected bind, cache, tmpfs, secret or ssh)")),
                    }
                }
                "target" | "dst" | "destination" | "dest" => m.target = Some(need(val)?),
                "source" | "src" => m.source = Some(need(val)?),
                "from" => m.from = Some(need(val)?),
                "readonly" | "ro" => m.readonly = Some(parse_bool(&key, val)?),
                "readwrite" | "rw" => m.readonly = Some(!parse_bool(&key, val)?),
                "id" => m.id = Some(need(val)?),
                "sharing" => m.sharing = Some(need(val)?),
                "mode" => m.mode = Some(need(val)?),
                "uid" => m.uid = Some(need(val)?),
                "gid" => m.gid = Some(need(val)?),
                "size" => m.size = Some(need(val)?),
                "required" => m.required = Some(parse_bool(&key, val)?),
                "env" => m.env = Some(need(val)?),
                _ => return Err(format!("unexpected key '{key}' in '{field}' (expected one of {KEYS})")),
            }
        }
        if m.kind == MountType::Secret && m.id.is_none() && m.target.is_none() && m.source.is_none() && m.env.is_none() {
            return Err("invalid secret mount: one of id, source, target or env is required".to_string());
        }
        if m.kind == MountType::Secret && m.from.is_some() {
            return Err("secret mount should not have a from".to_string());
        }
        if m.kind == MountType::Ssh && m.source.is_some() {
            return Err("ssh does not support source".to_string());
        }
        for (name, set) in [("mode", m.mode.is_some()), ("uid", m.uid.is_some()), ("gid", m.gid.is_some())] {
            if set && !matches!(m.kind, MountType::Secret | MountType::Ssh | MountType::Cache) {
                return Err(format!("{name} not allowed for {:?} type mounts", m.kind.as_str()));
            }
        }
        if m.from.as_deref().is_some_and(|f| f.contains('$')) {
            return Err("'from' doesn't support variable expansion, define alias stage instead".to_string());
        }
        Ok(m)
    }

    /// Checks the values once variables are expanded.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = &self.sharing {
            if !matches!(s.as_str(), "shared" | "private" | "locked") {
                return Err(format!("unsupported sharing value {s:?} (expected shared, private or locked)"));
            }
        }
        if let Some(mode) = &self.mode {
            if u32::from_str_radix(mode, 8).is_err() {
                return Err(format!("invalid mode {mode:?} (expected an octal number like 0755)"));
            }
        }
        for (k, v) in [("uid", &self.uid), ("gid", &self.gid)] {
            if let Some(v) = v {
                if v.parse::<u32>().is_err() {
                    return Err(format!("invalid {k} {v:?} (expected a number)"));
                }
            }
        }
        Ok(())
    }

    /// Every string field, for expansion in place.
    pub fn fields_mut(&mut self) -> impl Iterator<Item = &mut String> {
        [
            &mut self.target,
            &mut self.source,
            &mut self.from,
            &mut self.id,
            &mut self.sharing,
            &mut self.mode,
            &mut self.uid,
            &mut self.gid,
            &mut self.size,
            &mut self.env,
        ]
        .into_iter()
        .flatten()
    }
}

fn csv_quote(v: &str) -> String {
    if v.contains([',', '"']) || v.starts_with(' ') || v.ends_with(' ') {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type={}", self.kind.as_str())?;
        let fields = [
            ("target", &self.target),
            ("source", &self.source),
            ("from", &self.from),
            ("id", &self.id),
            ("sharing", &self.sharing),
            ("mode", &self.mode),
            ("uid", &self.uid),
            ("gid", &self.gid),
            ("size", &self.size),
            ("env", &self.env),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                write!(f, ",{}", csv_quote(&format!("{k}={v}")))?;
            }
        }
        if let Some(ro) = self.readonly {
            write!(f, ",readonly={ro}")?;
        }
        if let Some(r) = self.required {
            write!(f, ",required={r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_mount() {
        let m = Mount::parse("type=cache,target=/root/.cache,sharing=locked,id=go").unwrap();
        assert_eq!(m.kind, MountType::Cache);
        assert_eq!(m.target.as_deref(), Some("/root/.cache"));
        assert_eq!(m.sharing.as_deref(), Some("locked"));
        assert_eq!(Mount::parse(&m.to_string()).unwrap(), m);
    }

    #[test]
    fn bind_defaults_and_aliases() {
        let m = Mount::parse("dst=/in,from=builder,src=/out,ro").unwrap();
        assert_eq!(m.kind, MountType::Bind);
        assert_eq!(m.readonly, Some(true));
        assert_eq!(m.from.as_deref(), Some("builder"));
        assert_eq!(Mount::parse("target=/x,rw").unwrap().readonly, Some(false));
    }

    #[test]
    fn secrets_and_ssh() {
        assert!(Mount::parse("type=secret,id=npmrc").is_ok());
        assert!(Mount::parse("type=ssh").is_ok());
        assert!(Mount::parse("type=secret").unwrap_err().contains("one of id"));
        assert!(Mount::parse("type=ssh,source=x").is_err());
        assert!(Mount::parse("type=bind,target=/x,mode=0755").unwrap_err().contains("not allowed"));
        assert!(Mount::parse("type=bind,target=/x,from=$X").unwrap_err().contains("variable expansion"));
    }

    #[test]
    fn errors() {
        assert!(Mount::parse("type=weird,target=/x").unwrap_err().contains("unsupported mount type"));
        // No target is allowed here: it defaults to the working directory when the step runs.
        assert!(Mount::parse("type=cache").is_ok());
        assert!(Mount::parse("target=/x,bogus=1").unwrap_err().contains("unexpected key 'bogus'"));
        assert!(Mount::parse("\"target=/x").unwrap_err().contains("unterminated quote"));
        let mut m = Mount::parse("type=cache,target=/x,sharing=weird").unwrap();
        assert!(m.validate().is_err());
        m.sharing = None;
        m.mode = Some("0z".into());
        assert!(m.validate().is_err());
    }

    #[test]
    fn quoted_fields_round_trip() {
        let m = Mount::parse("type=bind,\"target=/a,b\",source=x").unwrap();
        assert_eq!(m.target.as_deref(), Some("/a,b"));
        assert_eq!(Mount::parse(&m.to_string()).unwrap(), m);
    }
}
