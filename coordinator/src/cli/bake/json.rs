//! JSON bake files (`docker-bake.json`): the same blocks as HCL, as objects
//! (`{"variable": {..}, "function": {..}, "group": {..}, "target": {..}}`). Strings keep
//! `${..}` interpolation, as buildx evaluates JSON files with the HCL evaluator.

use super::hcl::{json_expr, Raw, RawBlock};
use super::BakeError;

pub fn parse_json(file: &str, text: &str) -> Result<Raw, BakeError> {
    let bad = |message: String| BakeError::Parse { file: file.into(), message };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let top = v.as_object().ok_or_else(|| bad("the top level must be an object".into()))?;
    let mut raw = Raw::default();
    for (kind, blocks) in top {
        let map = match kind.as_str() {
            "variable" => &mut raw.variables,
            "function" => &mut raw.functions,
            "group" => &mut raw.groups,
            "target" => &mut raw.targets,
            other => return Err(bad(format!("unknown key {other:?} (expected variable, function, group or target)"))),
        };
        let blocks = blocks.as_object().ok_or_else(|| bad(format!("{kind:?} must map names to objects")))?;
        for (name, body) in blocks {
            let body = body.as_object().ok_or_else(|| bad(format!("{kind} {name:?} must be an object")))?;
            let mut b = RawBlock::default();
            for (k, v) in body {
                if kind == "variable" && k == "validation" {
                    let list = match v {
                        serde_json::Value::Array(a) => a.clone(),
                        other => vec![other.clone()],
                    };
                    for val in list {
                        let o = val.as_object().ok_or_else(|| bad(format!("variable {name:?}: validation must be an object")))?;
                        b.validations.push(o.iter().map(|(k, v)| (k.clone(), json_expr(v))).collect());
                    }
                    continue;
                }
                b.attrs.insert(k.clone(), json_expr(v));
            }
            map.insert(name.clone(), b);
        }
    }
    Ok(raw)
}
