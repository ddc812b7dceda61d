//! `--set PATTERN.KEY[.SUBKEY]=VALUE` and `+=`, as buildx takes them: `*` and `?` patterns over
//! target names, list keys that collect every `--set` of the same key (and append with `+=`),
//! map keys (`args.X`, `labels.X`, `contexts.X`) one entry each.

use super::model::Target;
use super::BakeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub pattern: String,
    pub key: String,
    pub append: bool,
    pub value: String,
}

/// Keys whose value is a list (several `--set`s of one key make the list).
const LIST_KEYS: [&str; 12] = [
    "output",
    "cache-to",
    "cache-from",
    "tags",
    "platform",
    "secrets",
    "ssh",
    "attest",
    "entitlements",
    "annotations",
    "no-cache-filter",
    "ulimits",
];
const SCALAR_KEYS: [&str; 9] = ["context", "dockerfile", "dockerfile-inline", "target", "call", "network", "shm-size", "no-cache", "pull"];
const MAP_KEYS: [&str; 3] = ["args", "labels", "contexts"];

impl Override {
    pub fn parse(spec: &str) -> Result<Override, BakeError> {
        let bad = |m: &str| BakeError::Set { spec: spec.into(), message: m.into() };
        let (lhs, value) = spec.split_once('=').ok_or_else(|| bad("expected PATTERN.KEY=VALUE"))?;
        let (lhs, append) = match lhs.strip_suffix('+') {
            Some(l) => (l, true),
            None => (lhs, false),
        };
        let (pattern, key) = lhs.split_once('.').ok_or_else(|| bad("expected PATTERN.KEY=VALUE"))?;
        if pattern.is_empty() {
            return Err(bad("the target pattern is empty"));
        }
        let head = key.split('.').next().unwrap_or(key);
        let known = if MAP_KEYS.contains(&head) {
            key.split_once('.').is_some_and(|(_, k)| !k.is_empty())
        } else {
            LIST_KEYS.contains(&key) || SCALAR_KEYS.contains(&key)
        };
        if !known {
            return Err(bad(&format!("unknown key {key:?}")));
        }
        if append && !LIST_KEYS.contains(&key) {
            return Err(bad(&format!("+= needs a list key, and {key} is not one")));
        }
        Ok(Override { pattern: pattern.into(), key: key.into(), append, value: value.into() })
    }
}

/// `path.Match` for target names: `*` any run, `?` one character.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("{key}={other}: expected true or false")),
    }
}

/// Applies the overrides that match `name`, in order.
pub fn apply(t: &mut Target, name: &str, overrides: &[Override]) -> Result<(), BakeError> {
    let mine: Vec<&Override> = overrides.iter().filter(|o| matches(&o.pattern, name)).collect();
    let mut lists: Vec<(&str, bool, Vec<String>)> = Vec::new();
    for o in &mine {
        let err = |message: String| BakeError::Set { spec: format!("{}.{}={}", o.pattern, o.key, o.value), message };
        if let Some((map, k)) = o.key.split_once('.').filter(|(m, _)| MAP_KEYS.contains(m)) {
            let m = match map {
                "args" => &mut t.args,
                "labels" => &mut t.labels,
                _ => &mut t.contexts,
            };
            m.get_or_insert_with(Default::default).insert(k.to_string(), o.value.clone());
            continue;
        }
        if LIST_KEYS.contains(&o.key.as_str()) {
            match lists.iter_mut().find(|(k, _, _)| *k == o.key) {
                Some((_, append, values)) => {
                    *append &= o.append;
                    values.push(o.value.clone());
                }
                None => lists.push((o.key.as_str(), o.append, vec![o.value.clone()])),
            }
            continue;
        }
        let v = Some(o.value.clone());
        match o.key.as_str() {
            "context" => t.context = v,
            "dockerfile" => t.dockerfile = v,
            "dockerfile-inline" => t.dockerfile_inline = v,
            "target" => t.target = v,
            "call" => t.call = v,
            "network" => t.network = v,
            "shm-size" => t.shm_size = v,
            "no-cache" => t.no_cache = Some(boolean("no-cache", &o.value).map_err(err)?),
            "pull" => t.pull = Some(boolean("pull", &o.value).map_err(err)?),
            other => return Err(err(format!("unknown key {other:?}"))),
        }
    }
    for (key, append, values) in lists {
        let field = match key {
            "output" => &mut t.outputs,
            "cache-to" => &mut t.cache_to,
            "cache-from" => &mut t.cache_from,
            "tags" => &mut t.tags,
            "platform" => &mut t.platforms,
            "secrets" => &mut t.secrets,
            "ssh" => &mut t.ssh,
            "attest" => &mut t.attest,
            "entitlements" => &mut t.entitlements,
            "annotations" => &mut t.annotations,
            "no-cache-filter" => &mut t.no_cache_filter,
            _ => &mut t.ulimits,
        };
        // `platform=a,b` is two platforms, as buildx splits it.
        let values: Vec<String> =
            if key == "platform" { values.iter().flat_map(|v| v.split(',').map(str::to_string)).collect() } else { values };
        if append {
            field.get_or_insert_with(Vec::new).extend(values);
        } else {
            *field = Some(values);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_buildx_forms() {
        let o = Override::parse("web.args.VERSION=1.2=3").unwrap();
        assert_eq!((o.pattern.as_str(), o.key.as_str(), o.value.as_str(), o.append), ("web", "args.VERSION", "1.2=3", false));
        assert!(Override::parse("*.tags+=x").unwrap().append);
        assert!(Override::parse("web.nope=1").is_err());
        assert!(Override::parse("web.args=1").is_err());
        assert!(Override::parse("web.target+=x").is_err());
        assert!(Override::parse("tags=x").is_err());
    }

    #[test]
    fn lists_collect_and_append() {
        let sets: Vec<Override> = ["*.tags=a", "web.tags=b", "api.tags+=c", "w*.platform=linux/amd64,linux/arm64", "web.no-cache=true"]
            .iter()
            .map(|s| Override::parse(s).unwrap())
            .collect();
        let mut web = Target { tags: Some(vec!["old".into()]), ..Target::default() };
        apply(&mut web, "web", &sets).unwrap();
        assert_eq!(web.tags.unwrap(), ["a", "b"]);
        assert_eq!(web.platforms.unwrap(), ["linux/amd64", "linux/arm64"]);
        assert_eq!(web.no_cache, Some(true));
        let mut api = Target { tags: Some(vec!["old".into()]), ..Target::default() };
        apply(&mut api, "api", &sets).unwrap();
        assert_eq!(api.tags.unwrap(), ["a", "c"]);
    }

    proptest::proptest! {
        #[test]
        fn star_matches_everything(name in "[a-z0-9_-]{1,20}") {
            proptest::prop_assert!(matches("*", &name));
            proptest::prop_assert!(matches(&name, &name));
            let prefix = &name[..name.len() / 2];
            let pattern = format!("{prefix}*");
            proptest::prop_assert!(matches(&pattern, &name));
            let other = format!("{name}x");
            proptest::prop_assert!(!matches(&name, &other));
        }
    }
}
