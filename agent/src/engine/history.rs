//! The image history's `created_by`, written the way BuildKit writes it: Go's `%v`/`%q`
//! formatting of the values the instruction set, `RUN |N NAME=VALUE ...` with the stage's
//! build arguments, `COPY SRC.. DEST` without flags, and ` # buildkit` after RUN, COPY and
//! ADD. ONBUILD records nothing.

use kiln_shared::frontend::instructions::{CommandLine, Instruction};
use kiln_shared::frontend::resolve::Step;
use kiln_shared::oci::RunConfig;

/// Go's `strconv.Quote`.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn quote_list(v: &[String]) -> String {
    format!("[{}]", v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" "))
}

/// Go's `%v` of a `[]string`: `[a b]`.
fn list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// Go's `%q` of an int: a quoted character literal (`'\x03'`).
fn quote_int(n: u64) -> String {
    match n {
        7 => "'\\a'".into(),
        8 => "'\\b'".into(),
        9 => "'\\t'".into(),
        10 => "'\\n'".into(),
        11 => "'\\v'".into(),
        12 => "'\\f'".into(),
        13 => "'\\r'".into(),
        39 => "'\\''".into(),
        92 => "'\\\\'".into(),
        0x20..=0x7e => format!("'{}'", n as u8 as char),
        n if n < 0x80 => format!("'\\x{n:02x}'"),
        n => match char::from_u32(n as u32) {
            Some(c) if !c.is_control() => format!("'{c}'"),
            _ => format!("'\\u{n:04x}'"),
        },
    }
}

/// Go's `time.Duration.String()` for nanoseconds.
pub fn go_duration(ns: u64) -> String {
    fn frac(whole: u64, rest: u64, digits: usize) -> String {
        let f = format!("{rest:0digits$}");
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{f}")
        }
    }
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", frac(n / 1_000, n % 1_000, 3)),
        n if n < 1_000_000_000 => format!("{}ms", frac(n / 1_000_000, n % 1_000_000, 6)),
        n => {
            let (h, m) = (n / 3_600_000_000_000, n / 60_000_000_000 % 60);
            let s = frac(n / 1_000_000_000 % 60, n % 1_000_000_000, 9);
            if h > 0 {
                format!("{h}h{m}m{s}s")
            } else if m > 0 {
                format!("{m}m{s}s")
            } else {
                format!("{s}s")
            }
        }
    }
}

/// `&{["CMD-SHELL" "..."] "10s" "0s" "0s" '\x03'}`: Go's `%q` of the HealthConfig struct
/// (StartInterval only when it is set, as Docker 20.10's struct has no such field).
fn healthcheck(v: &serde_json::Value) -> String {
    let test: Vec<String> =
        v["Test"].as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default();
    let d = |k: &str| quote(&go_duration(v[k].as_u64().unwrap_or(0)));
    let mut fields = vec![quote_list(&test), d("Interval"), d("Timeout"), d("StartPeriod")];
    if v.get("StartInterval").is_some() {
        fields.push(d("StartInterval"));
    }
    fields.push(quote_int(v["Retries"].as_u64().unwrap_or(0)));
    format!("&{{{}}}", fields.join(" "))
}

/// The ports of one EXPOSE, as Docker's port set has them (`80/tcp`, ranges expanded).
pub fn expose_ports(spec: &str) -> Vec<String> {
    let (range, proto) = spec.split_once('/').map_or((spec, "tcp".to_string()), |(r, p)| (r, p.to_ascii_lowercase()));
    match range.split_once('-').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?))) {
        Some((a, b)) if a <= b && b - a < 65_536 => (a..=b).map(|p| format!("{p}/{proto}")).collect(),
        _ => vec![format!("{range}/{proto}")],
    }
}

/// What BuildKit writes as `created_by` for `step`, given the config after it ran; `None`
/// for ONBUILD, which BuildKit does not record.
pub(super) fn created_by(step: &Step, cfg: &RunConfig) -> Option<String> {
    let argv = || step.argv.clone().unwrap_or_default();
    let pairs = |kw: &str, kv: &kiln_shared::frontend::instructions::KeyValues| {
        let mut s = kw.to_string();
        for p in &kv.pairs {
            s.push_str(&format!(" {}={}", p.key, p.value));
        }
        s
    };
    let sources = |kw: &str, sources: &[String], heredocs: &[kiln_shared::frontend::instructions::Heredoc], dest: &str| {
        let mut s = kw.to_string();
        for src in sources {
            s.push_str(&format!(" {src}"));
        }
        for h in heredocs {
            s.push_str(&format!(" <<{}", h.name));
        }
        format!("{s} {dest} # buildkit")
    };
    Some(match &step.instruction {
        Instruction::Run(_) => {
            let env = cfg.env_pairs();
            let args: Vec<String> = step
                .declared_args
                .iter()
                .map(|name| {
                    let value = env
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .or_else(|| step.args.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
                        .unwrap_or_default();
                    format!("{name}={value}")
                })
                .collect();
            let prefix = if args.is_empty() { String::new() } else { format!("|{} {} ", args.len(), args.join(" ")) };
            format!("RUN {prefix}{} # buildkit", argv().join(" "))
        }
        Instruction::Copy(c) => sources("COPY", &c.sources, &c.heredocs, &c.dest),
        Instruction::Add(a) => sources("ADD", &a.sources, &a.heredocs, &a.dest),
        Instruction::Workdir { .. } => format!("WORKDIR {}", step.workdir),
        Instruction::Env(kv) => pairs("ENV", kv),
        Instruction::Label(kv) => pairs("LABEL", kv),
        Instruction::Arg { args } => {
            let mut s = "ARG".to_string();
            for a in args {
                match &a.default {
                    Some(v) => s.push_str(&format!(" {}={v}", a.name)),
                    None => s.push_str(&format!(" {}", a.name)),
                }
            }
            s
        }
        Instruction::Expose { ports } => {
            let mut set: Vec<String> = ports.iter().flat_map(|p| expose_ports(p)).collect();
            set.sort();
            set.dedup();
            format!("EXPOSE map[{}]", set.iter().map(|p| format!("{p}:{{}}")).collect::<Vec<_>>().join(" "))
        }
        Instruction::Volume { paths, .. } => format!("VOLUME {}", list(paths)),
        Instruction::User { user } => format!("USER {user}"),
        Instruction::Stopsignal { signal } => format!("STOPSIGNAL {signal}"),
        Instruction::Shell { shell } => format!("SHELL {}", list(shell)),
        Instruction::Cmd { .. } => format!("CMD {}", quote_list(&argv())),
        Instruction::Entrypoint { command } => {
            let v = match command {
                CommandLine::Exec(v) => v.clone(),
                CommandLine::Shell(_) => argv(),
            };
            format!("ENTRYPOINT {}", quote_list(&v))
        }
        Instruction::Healthcheck(_) => format!("HEALTHCHECK {}", cfg.healthcheck.as_ref().map(healthcheck).unwrap_or_default()),
        Instruction::Maintainer { name } => format!("MAINTAINER {name}"),
        Instruction::Onbuild { .. } => return None,
        Instruction::From(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formatting() {
        assert_eq!(quote("a \"b\"\n"), "\"a \\\"b\\\"\\n\"");
        assert_eq!(quote_list(&["/bin/sh".into(), "-c".into(), "echo first".into()]), "[\"/bin/sh\" \"-c\" \"echo first\"]");
        assert_eq!(quote_int(0), "'\\x00'");
        assert_eq!(quote_int(3), "'\\x03'");
        assert_eq!(quote_int(10), "'\\n'");
        assert_eq!(quote_int(65), "'A'");
        for (ns, s) in [
            (0, "0s"),
            (10_000_000_000, "10s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (500_000_000, "500ms"),
            (2_500, "2.5µs"),
        ] {
            assert_eq!(go_duration(ns), s);
        }
        let hc = serde_json::json!({"Test": ["CMD-SHELL", "true"], "Interval": 10_000_000_000u64, "Retries": 3});
        assert_eq!(healthcheck(&hc), "&{[\"CMD-SHELL\" \"true\"] \"10s\" \"0s\" \"0s\" '\\x03'}");
        assert_eq!(expose_ports("7000-7002/UDP"), ["7000/udp", "7001/udp", "7002/udp"]);
        assert_eq!(expose_ports("80"), ["80/tcp"]);
    }
}
