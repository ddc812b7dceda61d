//! The function library buildx gives bake files (its `stdlib.go`, itself go-cty's functions):
//! strings, collections, encoding, hashing, math, comparison and time. Pure, except
//! `timestamp`, `uuidv4` and `homedir`, which read the clock, randomness and the environment.

use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use hcl::{Number, Value};

pub(super) type R = Result<Value, String>;

pub(super) fn s(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a string, got {}", kind(other))),
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

pub(super) fn f(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "not a number".to_string()),
        Value::String(s) => s.trim().parse().map_err(|_| format!("{s:?} is not a number")),
        other => Err(format!("expected a number, got {}", kind(other))),
    }
}

pub(super) fn num(x: f64) -> R {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        return Ok(Value::Number(Number::from(x as i64)));
    }
    Number::from_f64(x).map(Value::Number).ok_or_else(|| format!("{x} is not a finite number"))
}

pub(super) fn list(v: &Value) -> Result<&Vec<Value>, String> {
    v.as_array().ok_or_else(|| format!("expected a list, got {}", kind(v)))
}

pub(super) fn obj(v: &Value) -> Result<&hcl::Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("expected a map, got {}", kind(v)))
}

fn str_fn(g: fn(&str) -> String) -> impl Fn(FuncArgs) -> R {
    move |a: FuncArgs| Ok(Value::String(g(&s(&a[0])?)))
}

macro_rules! string1 {
    ($ctx:expr, $name:literal, $body:expr) => {{
        fn imp(a: FuncArgs) -> R {
            str_fn($body)(a)
        }
        $ctx.declare_func($name, FuncDef::builder().param(ParamType::Any).build(imp));
    }};
}

pub(super) fn def(ctx: &mut Context, name: &str, params: usize, variadic: bool, imp: fn(FuncArgs) -> R) {
    let mut b = FuncDef::builder();
    for _ in 0..params {
        b = b.param(ParamType::Any);
    }
    if variadic {
        b = b.variadic_param(ParamType::Any);
    }
    ctx.declare_func(name, b.build(imp));
}

/// Declares every library function in `ctx`.
pub fn declare(ctx: &mut Context) {
    super::funcs_ext::declare(ctx);
    string1!(ctx, "upper", |x| x.to_uppercase());
    string1!(ctx, "lower", |x| x.to_lowercase());
    string1!(ctx, "trimspace", |x| x.trim().to_string());
    string1!(ctx, "chomp", |x| x.trim_end_matches(['\n', '\r']).to_string());
    string1!(ctx, "title", |x| {
        let mut out = String::new();
        let mut start = true;
        for c in x.chars() {
            if start && c.is_alphabetic() {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            start = c.is_whitespace();
        }
        out
    });
    string1!(ctx, "strrev", |x| x.chars().rev().collect());
    string1!(ctx, "sanitize", |x| x.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect());
    string1!(ctx, "basename", |x| x.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_string());
    string1!(ctx, "dirname", |x| match x.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) => "/".into(),
        Some((d, _)) => d.to_string(),
        None => ".".into(),
    });
    string1!(ctx, "base64encode", |x| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(x)
    });
    string1!(ctx, "urlencode", |x| {
        x.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    });
    string1!(ctx, "sha256", |x| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(x.as_bytes()))
    });
    string1!(ctx, "sha512", |x| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha512::digest(x.as_bytes()))
    });
    def(ctx, "base64decode", 1, false, |a| {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(s(&a[0])?).map_err(|e| e.to_string())?;
        String::from_utf8(bytes).map(Value::String).map_err(|_| "the decoded bytes are not UTF-8".into())
    });
    def(ctx, "strlen", 1, false, |a| num(s(&a[0])?.chars().count() as f64));
    def(ctx, "trim", 2, false, |a| {
        let cut = s(&a[1])?;
        Ok(Value::String(s(&a[0])?.trim_matches(|c| cut.contains(c)).to_string()))
    });
    def(ctx, "trimprefix", 2, false, |a| {
        let (x, p) = (s(&a[0])?, s(&a[1])?);
        Ok(Value::String(x.strip_prefix(p.as_str()).unwrap_or(&x).to_string()))
    });
    def(ctx, "trimsuffix", 2, false, |a| {
        let (x, p) = (s(&a[0])?, s(&a[1])?);
        Ok(Value::String(x.strip_suffix(p.as_str()).unwrap_or(&x).to_string()))
    });
    def(ctx, "replace", 3, false, |a| Ok(Value::String(s(&a[0])?.replace(&s(&a[1])?, &s(&a[2])?))));
    def(ctx, "split", 2, false, |a| {
        let (sep, x) = (s(&a[0])?, s(&a[1])?);
        Ok(Value::Array(x.split(sep.as_str()).map(|p| Value::String(p.into())).collect()))
    });
    def(ctx, "join", 1, true, |a| {
        let sep = s(&a[0])?;
        let mut parts = Vec::new();
        for l in &a[1..] {
            for v in list(l)? {
                parts.push(s(v)?);
            }
        }
        Ok(Value::String(parts.join(&sep)))
    });
    def(ctx, "substr", 3, false, |a| {
        let x: Vec<char> = s(&a[0])?.chars().collect();
        let (off, len) = (f(&a[1])? as i64, f(&a[2])? as i64);
        let start = if off < 0 { (x.len() as i64 + off).max(0) } else { off.min(x.len() as i64) } as usize;
        let end = if len < 0 { x.len() } else { (start + len as usize).min(x.len()) };
        Ok(Value::String(x[start..end].iter().collect()))
    });
    def(ctx, "indent", 2, false, |a| {
        let pad = " ".repeat(f(&a[0])? as usize);
        Ok(Value::String(s(&a[1])?.replace('\n', &format!("\n{pad}"))))
    });
    def(ctx, "format", 1, true, |a| format(&s(&a[0])?, &a[1..]).map(Value::String));
    def(ctx, "formatlist", 1, true, |a| {
        let fmt = s(&a[0])?;
        let n = a[1..].iter().filter_map(|v| v.as_array().map(Vec::len)).max().unwrap_or(1);
        let mut out = Vec::new();
        for i in 0..n {
            let row: Vec<Value> = a[1..].iter().map(|v| v.as_array().and_then(|l| l.get(i).cloned()).unwrap_or(v.clone())).collect();
            out.push(Value::String(format(&fmt, &row)?));
        }
        Ok(Value::Array(out))
    });
    def(ctx, "regex_replace", 3, false, |a| {
        let re = regex::Regex::new(&s(&a[1])?).map_err(|e| e.to_string())?;
        Ok(Value::String(re.replace_all(&s(&a[0])?, s(&a[2])?.as_str()).into_owned()))
    });
    def(ctx, "regex", 2, false, |a| {
        let re = regex::Regex::new(&s(&a[0])?).map_err(|e| e.to_string())?;
        let x = s(&a[1])?;
        let c = re.captures(&x).ok_or("the pattern did not match")?;
        if c.len() == 1 {
            return Ok(Value::String(c[0].to_string()));
        }
        Ok(Value::Array(c.iter().skip(1).map(|m| Value::String(m.map(|m| m.as_str()).unwrap_or("").into())).collect()))
    });
    def(ctx, "length", 1, false, |a| {
        num(match &a[0] {
            Value::String(x) => x.chars().count(),
            Value::Array(l) => l.len(),
            Value::Object(o) => o.len(),
            other => return Err(format!("length of a {}", kind(other))),
        } as f64)
    });
    def(ctx, "concat", 0, true, |a| {
        let mut out = Vec::new();
        for l in a.iter() {
            out.extend(list(l)?.iter().cloned());
        }
        Ok(Value::Array(out))
    });
    def(ctx, "contains", 2, false, |a| Ok(Value::Bool(list(&a[0])?.contains(&a[1]))));
    def(ctx, "index", 2, false, |a| {
        list(&a[0])?.iter().position(|v| *v == a[1]).map(|i| num(i as f64)).unwrap_or(Err("the value is not in the list".into()))
    });
    def(ctx, "distinct", 1, false, |a| {
        let mut out: Vec<Value> = Vec::new();
        for v in list(&a[0])? {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        Ok(Value::Array(out))
    });
    def(ctx, "element", 2, false, |a| {
        let l = list(&a[0])?;
        if l.is_empty() {
            return Err("element of an empty list".into());
        }
        Ok(l[(f(&a[1])? as usize) % l.len()].clone())
    });
    def(ctx, "flatten", 1, false, |a| {
        fn go(v: &Value, out: &mut Vec<Value>) {
            match v {
                Value::Array(l) => l.iter().for_each(|e| go(e, out)),
                other => out.push(other.clone()),
            }
        }
        let mut out = Vec::new();
        go(&a[0], &mut out);
        Ok(Value::Array(out))
    });
    def(ctx, "keys", 1, false, |a| {
        let mut k: Vec<&String> = obj(&a[0])?.keys().collect();
        k.sort();
        Ok(Value::Array(k.into_iter().map(|k| Value::String(k.clone())).collect()))
    });
    def(ctx, "values", 1, false, |a| {
        let o = obj(&a[0])?;
        let mut k: Vec<&String> = o.keys().collect();
        k.sort();
        Ok(Value::Array(k.into_iter().map(|k| o[k].clone()).collect()))
    });
    def(ctx, "lookup", 2, true, |a| match obj(&a[0])?.get(&s(&a[1])?) {
        Some(v) => Ok(v.clone()),
        None => a.get(2).cloned().ok_or_else(|| format!("no key {:?} in the map", s(&a[1]).unwrap_or_default())),
    });
    def(ctx, "merge", 0, true, |a| {
        let mut out = hcl::Map::new();
        for o in a.iter().filter(|v| !v.is_null()) {
            out.extend(obj(o)?.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(Value::Object(out))
    });
    def(ctx, "reverse", 1, false, |a| Ok(Value::Array(list(&a[0])?.iter().rev().cloned().collect())));
    def(ctx, "reverselist", 1, false, |a| Ok(Value::Array(list(&a[0])?.iter().rev().cloned().collect())));
    def(ctx, "slice", 3, false, |a| {
        let l = list(&a[0])?;
        let (i, j) = (f(&a[1])? as usize, f(&a[2])? as usize);
        if i > j || j > l.len() {
            return Err(format!("slice [{i}:{j}] out of a list of {}", l.len()));
        }
        Ok(Value::Array(l[i..j].to_vec()))
    });
    def(ctx, "sort", 1, false, |a| {
        let mut l = list(&a[0])?.iter().map(s).collect::<Result<Vec<_>, _>>()?;
        l.sort();
        Ok(Value::Array(l.into_iter().map(Value::String).collect()))
    });
    def(ctx, "compact", 1, false, |a| {
        Ok(Value::Array(list(&a[0])?.iter().filter(|v| !v.is_null() && v.as_str() != Some("")).cloned().collect()))
    });
    def(ctx, "coalesce", 0, true, |a| {
        a.iter().find(|v| !v.is_null() && v.as_str() != Some("")).cloned().ok_or_else(|| "no non-null, non-empty argument".into())
    });
    def(ctx, "coalescelist", 0, true, |a| {
        a.iter().find(|v| v.as_array().is_some_and(|l| !l.is_empty())).cloned().ok_or_else(|| "no non-empty list".into())
    });
    def(ctx, "chunklist", 2, false, |a| {
        let n = f(&a[1])? as usize;
        let l = list(&a[0])?;
        if n == 0 {
            return Ok(Value::Array(vec![Value::Array(l.clone())]));
        }
        Ok(Value::Array(l.chunks(n).map(|c| Value::Array(c.to_vec())).collect()))
    });
    def(ctx, "zipmap", 2, false, |a| {
        let (k, v) = (list(&a[0])?, list(&a[1])?);
        if k.len() != v.len() {
            return Err("zipmap needs lists of the same length".into());
        }
        Ok(Value::Object(k.iter().zip(v).map(|(k, v)| Ok((s(k)?, v.clone()))).collect::<Result<_, String>>()?))
    });
    def(ctx, "range", 1, true, |a| {
        let n: Vec<f64> = a.iter().map(f).collect::<Result<_, _>>()?;
        let (start, end, step) = match n.as_slice() {
            [e] => (0.0, *e, 1.0),
            [s, e] => (*s, *e, if s <= e { 1.0 } else { -1.0 }),
            [s, e, st] => (*s, *e, *st),
            _ => return Err("range takes one to three numbers".into()),
        };
        if step == 0.0 {
            return Err("range step must not be zero".into());
        }
        let mut out = Vec::new();
        let mut x = start;
        while (step > 0.0 && x < end) || (step < 0.0 && x > end) {
            out.push(num(x)?);
            x += step;
            if out.len() > 1_000_000 {
                return Err("range too long".into());
            }
        }
        Ok(Value::Array(out))
    });
    def(ctx, "jsonencode", 1, false, |a| serde_json::to_string(&a[0]).map(Value::String).map_err(|e| e.to_string()));
    def(ctx, "jsondecode", 1, false, |a| serde_json::from_str::<Value>(&s(&a[0])?).map_err(|e| e.to_string()));
    def(ctx, "csvdecode", 1, false, |a| {
        let text = s(&a[0])?;
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let rows = lines
            .filter(|l| !l.is_empty())
            .map(|l| Value::Object(head.iter().zip(l.split(',')).map(|(k, v)| (k.to_string(), Value::String(v.into()))).collect()))
            .collect();
        Ok(Value::Array(rows))
    });
    // Math.
    def(ctx, "add", 2, false, |a| num(f(&a[0])? + f(&a[1])?));
    def(ctx, "subtract", 2, false, |a| num(f(&a[0])? - f(&a[1])?));
    def(ctx, "multiply", 2, false, |a| num(f(&a[0])? * f(&a[1])?));
    def(ctx, "divide", 2, false, |a| match f(&a[1])? {
        0.0 => Err("division by zero".into()),
        d => num(f(&a[0])? / d),
    });
    def(ctx, "modulo", 2, false, |a| match f(&a[1])? {
        0.0 => Err("modulo by zero".into()),
        d => num(f(&a[0])? % d),
    });
    def(ctx, "negate", 1, false, |a| num(-f(&a[0])?));
    def(ctx, "absolute", 1, false, |a| num(f(&a[0])?.abs()));
    def(ctx, "abs", 1, false, |a| num(f(&a[0])?.abs()));
    def(ctx, "ceil", 1, false, |a| num(f(&a[0])?.ceil()));
    def(ctx, "floor", 1, false, |a| num(f(&a[0])?.floor()));
    def(ctx, "signum", 1, false, |a| num(f(&a[0])?.signum() * if f(&a[0])? == 0.0 { 0.0 } else { 1.0 }));
    def(ctx, "pow", 2, false, |a| num(f(&a[0])?.powf(f(&a[1])?)));
    def(ctx, "log", 2, false, |a| num(f(&a[0])?.log(f(&a[1])?)));
    def(ctx, "int", 1, false, |a| num(f(&a[0])?.trunc()));
    def(ctx, "max", 0, true, |a| a.iter().map(f).try_fold(f64::NEG_INFINITY, |m, x| x.map(|x| m.max(x))).and_then(num));
    def(ctx, "min", 0, true, |a| a.iter().map(f).try_fold(f64::INFINITY, |m, x| x.map(|x| m.min(x))).and_then(num));
    def(ctx, "parseint", 2, false, |a| {
        let base = f(&a[1])? as u32;
        i64::from_str_radix(&s(&a[0])?, base).map_err(|e| e.to_string()).and_then(|n| num(n as f64))
    });
    // Comparison and logic.
    def(ctx, "equal", 2, false, |a| Ok(Value::Bool(a[0] == a[1])));
    def(ctx, "notequal", 2, false, |a| Ok(Value::Bool(a[0] != a[1])));
    def(ctx, "greaterthan", 2, false, |a| Ok(Value::Bool(f(&a[0])? > f(&a[1])?)));
    def(ctx, "greaterthanorequalto", 2, false, |a| Ok(Value::Bool(f(&a[0])? >= f(&a[1])?)));
    def(ctx, "lessthan", 2, false, |a| Ok(Value::Bool(f(&a[0])? < f(&a[1])?)));
    def(ctx, "lessthanorequalto", 2, false, |a| Ok(Value::Bool(f(&a[0])? <= f(&a[1])?)));
    def(ctx, "and", 2, false, |a| Ok(Value::Bool(a[0] == Value::Bool(true) && a[1] == Value::Bool(true))));
    def(ctx, "or", 2, false, |a| Ok(Value::Bool(a[0] == Value::Bool(true) || a[1] == Value::Bool(true))));
    def(ctx, "not", 1, false, |a| Ok(Value::Bool(a[0] != Value::Bool(true))));
    // Time, the environment, randomness.
    def(ctx, "timestamp", 0, false, |_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        Ok(Value::String(rfc3339(now)))
    });
    def(ctx, "formatdate", 2, false, |a| formatdate(&s(&a[0])?, &s(&a[1])?).map(Value::String));
    def(ctx, "homedir", 0, false, |_| Ok(Value::String(std::env::var("HOME").unwrap_or_default())));
    def(ctx, "uuidv4", 0, false, |_| {
        let h = crate::node::random_hex(16).map_err(|e| e.to_string())?;
        let mut b = hex::decode(h).map_err(|e| e.to_string())?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        Ok(Value::String(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])))
    });
}

/// `format`'s verbs: `%s`, `%d`, `%v`, `%q`, `%%` (with an optional width for `%d`/`%s`).
fn format(fmt: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    let mut next = args.iter();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = it.peek().filter(|d| d.is_ascii_digit() || **d == '-') {
            width.push(*d);
            it.next();
        }
        let verb = it.next().ok_or("format ends in %")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let v = next.next().ok_or_else(|| format!("not enough arguments for %{verb}"))?;
        let text = match verb {
            's' | 'v' => match v {
                Value::Array(_) | Value::Object(_) => serde_json::to_string(v).map_err(|e| e.to_string())?,
                other => s(other)?,
            },
            'd' => (f(v)? as i64).to_string(),
            'q' => serde_json::to_string(&s(v)?).map_err(|e| e.to_string())?,
            'f' => format!("{:.6}", f(v)?),
            other => return Err(format!("unsupported format verb %{other}")),
        };
        let w: i64 = width.parse().unwrap_or(0);
        let pad = (w.unsigned_abs() as usize).saturating_sub(text.chars().count());
        if w < 0 {
            out.push_str(&text);
            out.push_str(&" ".repeat(pad));
        } else if width.starts_with('0') {
            // `%05d`: zeros after the sign.
            let (sign, digits) = text.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &text));
            out.push_str(sign);
            out.push_str(&"0".repeat(pad));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&text);
        }
    }
    Ok(out)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", t / 3600, t / 60 % 60, t % 60)
}

/// Seconds since the epoch of an RFC 3339 timestamp in UTC or with an offset.
pub(super) fn parse_rfc3339(ts: &str) -> Result<i64, String> {
    let bad = || format!("{ts:?} is not an RFC 3339 timestamp");
    let n = |r: std::ops::Range<usize>| ts.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    if ts.len() < 20 {
        return Err(bad());
    }
    let (y, mo, d, h, mi, se) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    let mut rest = &ts[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let hh: i64 = o[1..3].parse().map_err(|_| bad())?;
            let mm: i64 = o[4..6].parse().map_err(|_| bad())?;
            sign * (hh * 3600 + mm * 60)
        }
        _ => return Err(bad()),
    };
    Ok(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// Terraform's `formatdate` specification letters (YYYY, YY, MMMM, MMM, MM, M, DD, D, EEEE,
/// EEE, hh, h, HH, H, mm, m, ss, s, AA, aa, ZZZ, 'literal').
pub fn formatdate(spec: &str, ts: &str) -> Result<String, String> {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let secs = parse_rfc3339(ts)?;
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil(days);
    let t = secs.rem_euclid(86_400);
    let (hh, mi, ss) = (t / 3600, t / 60 % 60, t % 60);
    let wd = DAYS[days.rem_euclid(7) as usize];
    let chars: Vec<char> = spec.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let end = chars[i + 1..].iter().position(|&x| x == '\'').ok_or("unterminated literal in formatdate")?;
            out.extend(&chars[i + 1..i + 1 + end]);
            i += end + 2;
            continue;
        }
        let mut run = 1;
        while i + run < chars.len() && chars[i + run] == c {
            run += 1;
        }
        let h12 = if hh % 12 == 0 { 12 } else { hh % 12 };
        let piece = match (c, run) {
            ('Y', 4) => format!("{y:04}"),
            ('Y', 2) => format!("{:02}", y % 100),
            ('M', 4) => MONTHS[m as usize - 1].to_string(),
            ('M', 3) => MONTHS[m as usize - 1][..3].to_string(),
            ('M', 2) => format!("{m:02}"),
            ('M', 1) => m.to_string(),
            ('D', 2) => format!("{d:02}"),
            ('D', 1) => d.to_string(),
            ('E', 4) => wd.to_string(),
            ('E', 3) => wd[..3].to_string(),
            ('h', 2) => format!("{hh:02}"),
            ('h', 1) => hh.to_string(),
            ('H', 2) => format!("{h12:02}"),
            ('H', 1) => h12.to_string(),
            ('m', 2) => format!("{mi:02}"),
            ('m', 1) => mi.to_string(),
            ('s', 2) => format!("{ss:02}"),
            ('s', 1) => ss.to_string(),
            ('A', 2) => if hh < 12 { "AM" } else { "PM" }.to_string(),
            ('a', 2) => if hh < 12 { "am" } else { "pm" }.to_string(),
            ('Z', 3) => "UTC".to_string(),
            ('Z', 1) => "Z".to_string(),
            (c, _) if c.is_ascii_alphabetic() => {
                return Err(format!("invalid date format verb {:?}", chars[i..i + run].iter().collect::<String>()))
            }
            _ => chars[i..i + run].iter().collect(),
        };
        out.push_str(&piece);
        i += run;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("2024-02-29T23:59:59Z").unwrap(), 1_709_251_199);
        assert_eq!(formatdate("YYYY-MM-DD'T'hh:mm", "2024-02-29T23:59:59Z").unwrap(), "2024-02-29T23:59");
        assert_eq!(formatdate("EEE, DD MMM YYYY", "2018-01-02T23:12:01-08:00").unwrap(), "Wed, 03 Jan 2018");
        assert!(formatdate("YYYY", "yesterday").is_err());
    }

    proptest::proptest! {
        #[test]
        fn civil_inverts(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil(days);
            proptest::prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn timestamps_parse_back(secs in 0i64..10_000_000_000) {
            proptest::prop_assert_eq!(parse_rfc3339(&rfc3339(secs)).unwrap(), secs);
        }
    }

    #[test]
    fn format_verbs() {
        let v = |x: &str| Value::String(x.into());
        assert_eq!(format("%s-%d%%", &[v("a"), Value::Number(3.into())]).unwrap(), "a-3%");
        assert_eq!(format("%q", &[v("x")]).unwrap(), "\"x\"");
        assert!(format("%s %s", &[v("a")]).is_err());
    }
}
