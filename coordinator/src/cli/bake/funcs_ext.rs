//! The rest of buildx's function library beside `funcs`: sets (go-cty's set functions, whose
//! results list primitive members in cty's order: numbers by value, strings lexically), list
//! lookups (`indexof`, `hasindex`), `regexall`, `sha1`, bytes of a string, `uuidv5` and `timeadd`.

use super::funcs::{def, f, kind, list, num, parse_rfc3339, rfc3339, s, R};
use hcl::eval::Context;
use hcl::Value;

/// The members of sets given as lists, deduplicated, in cty's order.
fn set_of(v: &Value) -> Result<Vec<Value>, String> {
    let mut out: Vec<Value> = Vec::new();
    for m in list(v)? {
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    out.sort_by(|a, b| match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(std::cmp::Ordering::Equal),
        _ => super::hcl::display(a).cmp(&super::hcl::display(b)),
    });
    Ok(out)
}

fn sets(a: &[Value]) -> Result<Vec<Vec<Value>>, String> {
    a.iter().map(set_of).collect()
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units (`1h30m`, `-1.5h`, `300ms`).
fn duration_secs(d: &str) -> Result<f64, String> {
    let bad = || format!("{d:?} is not a duration (e.g. 1h30m, 10s, -2h)");
    let (sign, mut rest) = match d.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, d.strip_prefix('+').unwrap_or(d)),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Ok(sign * total)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 4122 name-based UUID, version 5 (SHA-1), as go-uuid's `NewSHA1`.
fn uuidv5(namespace: &str, name: &str) -> Result<String, String> {
    use sha1::Digest as _;
    let ns = match namespace {
        "dns" => "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "url" => "6ba7b811-9dad-11d1-80b4-00c04fd430c8",
        "oid" => "6ba7b812-9dad-11d1-80b4-00c04fd430c8",
        "x500" => "6ba7b814-9dad-11d1-80b4-00c04fd430c8",
        other => other,
    };
    let digits: String = ns.chars().filter(|c| *c != '-').collect();
    if digits.len() != 32 {
        return Err(format!("{namespace:?} is not a UUID namespace (dns, url, oid, x500 or a UUID)"));
    }
    let ns_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&digits[i * 2..i * 2 + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{namespace:?} is not a UUID"))?;
    let mut h = sha1::Sha1::new();
    h.update(&ns_bytes);
    h.update(name.as_bytes());
    let mut u: Vec<u8> = h.finalize()[..16].to_vec();
    u[6] = (u[6] & 0x0f) | 0x50;
    u[8] = (u[8] & 0x3f) | 0x80;
    let x = hex(&u);
    Ok(format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32]))
}

/// Declares these functions in `ctx`.
pub fn declare(ctx: &mut Context) {
    def(ctx, "sethaselement", 2, false, |a| Ok(Value::Bool(set_of(&a[0])?.contains(&a[1]))));
    def(ctx, "setunion", 1, true, |a| {
        let mut out = Vec::new();
        for set in sets(&a)? {
            out.extend(set);
        }
        Ok(Value::Array(set_of(&Value::Array(out))?))
    });
    def(ctx, "setintersection", 1, true, |a| {
        let all = sets(&a)?;
        let first = all.first().cloned().unwrap_or_default();
        Ok(Value::Array(first.into_iter().filter(|m| all.iter().all(|s| s.contains(m))).collect()))
    });
    def(ctx, "setsubtract", 2, false, |a| {
        let (x, y) = (set_of(&a[0])?, set_of(&a[1])?);
        Ok(Value::Array(x.into_iter().filter(|m| !y.contains(m)).collect()))
    });
    def(ctx, "setsymmetricdifference", 1, true, |a| {
        // Members in an odd number of the sets, as folding the pairwise difference gives.
        let all = sets(&a)?;
        let mut acc: Vec<Value> = Vec::new();
        for set in all {
            let kept: Vec<Value> = acc.iter().filter(|m| !set.contains(m)).cloned().collect();
            let added: Vec<Value> = set.into_iter().filter(|m| !acc.contains(m)).collect();
            acc = kept.into_iter().chain(added).collect();
        }
        Ok(Value::Array(set_of(&Value::Array(acc))?))
    });
    def(ctx, "setproduct", 1, true, |a| {
        let all = a.iter().map(|v| list(v).cloned()).collect::<Result<Vec<_>, _>>()?;
        let mut out: Vec<Vec<Value>> = vec![vec![]];
        for set in &all {
            out = out.iter().flat_map(|prefix| set.iter().map(move |m| [prefix.clone(), vec![m.clone()]].concat())).collect();
        }
        if all.is_empty() {
            out.clear();
        }
        Ok(Value::Array(out.into_iter().map(Value::Array).collect()))
    });
    def(ctx, "indexof", 2, false, |a| {
        let l = list(&a[0]).map_err(|_| "argument must be a list or tuple".to_string())?;
        if l.is_empty() {
            return Err("cannot search an empty list".into());
        }
        let i = l.iter().position(|v| *v == a[1]).ok_or("item not found")?;
        num(i as f64)
    });
    def(ctx, "hasindex", 2, false, |a| {
        Ok(Value::Bool(match (&a[0], &a[1]) {
            (Value::Array(l), k) => f(k).is_ok_and(|i| i.fract() == 0.0 && i >= 0.0 && (i as usize) < l.len()),
            (Value::Object(o), k) => s(k).is_ok_and(|k| o.contains_key(&k)),
            (other, _) => return Err(format!("hasindex of a {}", kind(other))),
        }))
    });
    def(ctx, "regexall", 2, false, |a| {
        let re = regex::Regex::new(&s(&a[0])?).map_err(|e| e.to_string())?;
        let x = s(&a[1])?;
        let matches = re.captures_iter(&x).map(|c| {
            if c.len() == 1 {
                return Value::String(c[0].to_string());
            }
            Value::Array(c.iter().skip(1).map(|m| Value::String(m.map(|m| m.as_str()).unwrap_or("").into())).collect())
        });
        Ok(Value::Array(matches.collect()))
    });
    def(ctx, "sha1", 1, false, |a| {
        use sha1::Digest as _;
        Ok(Value::String(hex(&sha1::Sha1::digest(s(&a[0])?.as_bytes()))))
    });
    def(ctx, "byteslen", 1, false, |a| num(s(&a[0])?.len() as f64));
    def(ctx, "bytesslice", 3, false, |a| {
        let x = s(&a[0])?;
        let (off, len) = (f(&a[1])?, f(&a[2])?);
        if off < 0.0 || len < 0.0 || off.fract() != 0.0 || len.fract() != 0.0 {
            return Err("offset and length are whole numbers, not negative".into());
        }
        let (off, len) = (off as usize, len as usize);
        let end = off.checked_add(len).filter(|e| *e <= x.len()).ok_or("offset and length run past the end")?;
        x.get(off..end).map(|p| Value::String(p.into())).ok_or_else(|| "the slice cuts a character in two".into())
    });
    def(ctx, "uuidv5", 2, false, |a| Ok(Value::String(uuidv5(&s(&a[0])?, &s(&a[1])?)?)));
    // The result is in UTC (cty keeps the timestamp's own offset: the same instant).
    def(ctx, "timeadd", 2, false, |a| -> R {
        let t = parse_rfc3339(&s(&a[0])?)?;
        Ok(Value::String(rfc3339(t + duration_secs(&s(&a[1])?)?.floor() as i64)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcl::eval::Evaluate;

    fn eval(src: &str) -> Value {
        let body: hcl::Body = hcl::from_str(&format!("x = {src}\n")).expect("parses");
        let mut ctx = Context::new();
        super::super::funcs::declare(&mut ctx);
        body.attributes().next().expect("attribute").expr().evaluate(&ctx).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn as_the_bake_reference_documents() {
        assert_eq!(eval("sethaselement([1,2,3], 2)"), Value::Bool(true));
        assert_eq!(eval("setintersection([\"a\",\"b\",\"c\"], [\"b\",\"c\",\"d\"])"), hcl::value!(["b", "c"]));
        assert_eq!(eval("setproduct([\"x\",\"y\"], [1,2])"), hcl::value!([["x", 1], ["x", 2], ["y", 1], ["y", 2]]));
        assert_eq!(eval("setsubtract([1,2,3], [2])"), hcl::value!([1, 3]));
        assert_eq!(eval("setsymmetricdifference([1,2,3], [3,4])"), hcl::value!([1, 2, 4]));
        assert_eq!(eval("setunion([\"a\",\"b\"], [\"b\",\"c\"])"), hcl::value!(["a", "b", "c"]));
        assert_eq!(eval("sha1(\"hello\")"), Value::from("aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"));
        assert_eq!(eval("byteslen(\"Docker\")"), Value::from(6));
        assert_eq!(eval("bytesslice(\"Docker\", 0, 3)"), Value::from("Doc"));
        assert_eq!(eval("indexof([\"a\", \"b\"], \"b\")"), Value::from(1));
        assert_eq!(eval("hasindex([\"a\"], 0)"), Value::Bool(true));
        assert_eq!(eval("hasindex({a = 1}, \"b\")"), Value::Bool(false));
        assert_eq!(eval("regexall(\"[a-z]+\", \"1a2bc\")"), hcl::value!(["a", "bc"]));
        assert_eq!(eval("timeadd(\"2024-01-01T00:00:00Z\", \"1h30m\")"), Value::from("2024-01-01T01:30:00Z"));
        assert_eq!(eval("timeadd(\"2024-01-01T00:00:00Z\", \"-24h\")"), Value::from("2023-12-31T00:00:00Z"));
        // Python: uuid.uuid5(uuid.NAMESPACE_DNS, "www.example.com")
        assert_eq!(eval("uuidv5(\"dns\", \"www.example.com\")"), Value::from("2ed6657d-e927-568b-95e1-2665a8aea6a2"));
    }
}
