//! `--print` and `--list`: the resolved definition as buildx prints it (`{"group": .., "target":
//! ..}`, keys in buildx's struct order, map keys sorted, two-space indent, and `<`, `>`, `&`
//! escaped as Go's encoder does), and the tables of targets and variables.

use super::model::{Config, Group, Target};
use super::resolve::Resolved;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
struct Printed<'a> {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    group: &'a BTreeMap<String, Group>,
    target: &'a BTreeMap<String, Target>,
}

pub fn to_json(r: &Resolved) -> String {
    let text = serde_json::to_string_pretty(&Printed { group: &r.groups, target: &r.targets }).unwrap_or_default();
    // These characters only occur inside strings, where Go writes them escaped.
    text.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}", w = widths[i] + 3));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `--list targets`: every target and group, sorted, with its description (a group's lists its targets).
pub fn list_targets(cfg: &Config) -> String {
    let mut rows: Vec<Vec<String>> = cfg
        .targets
        .iter()
        .map(|(n, t)| vec![n.clone(), t.description.clone().unwrap_or_default()])
        .chain(cfg.groups.iter().map(|(n, g)| vec![n.clone(), g.description.clone().unwrap_or_else(|| g.targets.join(", "))]))
        .collect();
    rows.sort();
    rows.dedup_by(|a, b| a[0] == b[0]);
    table(&["TARGET", "DESCRIPTION"], &rows)
}

/// `--list variables`: each variable, its value and description.
pub fn list_variables(cfg: &Config) -> String {
    let mut rows: Vec<Vec<String>> = cfg
        .variables
        .iter()
        .map(|v| vec![v.name.clone(), v.value.clone().unwrap_or_else(|| "<null>".into()), v.description.clone().unwrap_or_default()])
        .collect();
    rows.sort();
    table(&["VARIABLE", "VALUE", "DESCRIPTION"], &rows)
}
