//! Evaluating bake files as buildx does: the HCL (and JSON) bodies of every file merged, then
//! `variable`s (defaults, environment overrides typed like the default, `validation`), `function`
//! blocks, `target`s with `matrix` and `name` templates and `${target.other.attr}` references,
//! and `group`s. Expressions go through `hcl-rs`'s evaluator with buildx's function library.

use super::funcs;
use super::model::{Config, Group, Target, Variable};
use super::BakeError;
use hcl::eval::{Context, FuncArgs, FuncDef, ParamType};
use hcl::expr::{Expression, TemplateExpr};
use hcl::{Map, Value};
use indexmap::IndexMap;
use std::cell::RefCell;

/// A block's attributes as written, and its `validation` blocks (variables only).
#[derive(Clone, Debug, Default)]
pub struct RawBlock {
    pub attrs: IndexMap<String, Expression>,
    pub validations: Vec<IndexMap<String, Expression>>,
}

/// The blocks of one or more files, merged by name (a later file's attribute wins).
#[derive(Clone, Debug, Default)]
pub struct Raw {
    pub variables: IndexMap<String, RawBlock>,
    pub functions: IndexMap<String, RawBlock>,
    pub groups: IndexMap<String, RawBlock>,
    pub targets: IndexMap<String, RawBlock>,
}

impl Raw {
    pub fn merge(&mut self, other: Raw) {
        let join = |mine: &mut IndexMap<String, RawBlock>, theirs: IndexMap<String, RawBlock>| {
            for (name, b) in theirs {
                let e = mine.entry(name).or_default();
                e.attrs.extend(b.attrs);
                e.validations.extend(b.validations);
            }
        };
        join(&mut self.variables, other.variables);
        join(&mut self.functions, other.functions);
        join(&mut self.groups, other.groups);
        join(&mut self.targets, other.targets);
    }
}

/// Parses an HCL bake file.
pub fn parse_hcl(file: &str, text: &str) -> Result<Raw, BakeError> {
    let body: hcl::Body = hcl::parse(text).map_err(|e| BakeError::Parse { file: file.into(), message: one_line(&e.to_string()) })?;
    let mut raw = Raw::default();
    for a in body.attributes() {
        // A top-level attribute is a variable (buildx: `TAG = "1"` as `variable "TAG"`).
        let mut b = RawBlock::default();
        b.attrs.insert("default".into(), a.expr.clone());
        raw.variables.insert(a.key.to_string(), b);
    }
    for block in body.blocks() {
        let kind = block.identifier.as_str();
        let name = match block.labels.first() {
            Some(l) if block.labels.len() == 1 => l.as_str().to_string(),
            _ => return Err(BakeError::Parse { file: file.into(), message: format!("a {kind} block needs exactly one name label") }),
        };
        let mut b = RawBlock::default();
        for a in block.body.attributes() {
            b.attrs.insert(a.key.to_string(), a.expr.clone());
        }
        for inner in block.body.blocks() {
            if kind == "variable" && inner.identifier.as_str() == "validation" {
                b.validations.push(inner.body.attributes().map(|a| (a.key.to_string(), a.expr.clone())).collect());
            } else {
                return Err(BakeError::Parse {
                    file: file.into(),
                    message: format!("{kind} {name:?}: unexpected block {:?}", inner.identifier.as_str()),
                });
            }
        }
        let map = match kind {
            "variable" => &mut raw.variables,
            "function" => &mut raw.functions,
            "group" => &mut raw.groups,
            "target" => &mut raw.targets,
            other => {
                return Err(BakeError::Parse {
                    file: file.into(),
                    message: format!("unknown block type {other:?} (expected variable, function, group or target)"),
                })
            }
        };
        let e = map.entry(name).or_default();
        e.attrs.extend(b.attrs);
        e.validations.extend(b.validations);
    }
    Ok(raw)
}

/// A JSON value as an expression: strings stay templates, so `${VAR}` interpolates as in HCL.
pub fn json_expr(v: &serde_json::Value) -> Expression {
    match v {
        serde_json::Value::Null => Expression::Null,
        serde_json::Value::Bool(b) => Expression::Bool(*b),
        serde_json::Value::Number(n) => {
            n.as_i64().map(|i| Expression::Number(i.into())).unwrap_or_else(|| Expression::from(Value::from(n.as_f64().unwrap_or(0.0))))
        }
        serde_json::Value::String(s) if s.contains("${") || s.contains("%{") => {
            Expression::TemplateExpr(Box::new(TemplateExpr::QuotedString(s.clone())))
        }
        serde_json::Value::String(s) => Expression::String(s.clone()),
        serde_json::Value::Array(a) => Expression::Array(a.iter().map(json_expr).collect()),
        serde_json::Value::Object(o) => {
            Expression::Object(o.iter().map(|(k, v)| (hcl::ObjectKey::from(k.as_str()), json_expr(v))).collect())
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A user `function` block, called through one of the trampolines below (hcl-rs takes plain
/// `fn` pointers, so each user function gets its own slot).
#[derive(Clone)]
struct UserFn {
    params: Vec<String>,
    variadic: Option<String>,
    result: Expression,
}

#[derive(Default)]
struct UserFns {
    defs: Vec<UserFn>,
    globals: Option<Context<'static>>,
    depth: usize,
}

thread_local! {
    static USER: RefCell<UserFns> = RefCell::new(UserFns::default());
}

fn call_user(slot: usize, args: FuncArgs) -> Result<Value, String> {
    let (def, ctx) = USER.with(|u| {
        let mut u = u.borrow_mut();
        u.depth += 1;
        (u.defs.get(slot).cloned(), u.globals.clone())
    });
    let result = (|| {
        let def = def.ok_or("unknown function")?;
        let mut ctx = ctx.unwrap_or_default();
        if USER.with(|u| u.borrow().depth) > 64 {
            return Err("functions nest more than 64 calls deep (is one recursive?)".to_string());
        }
        let args = args.into_values();
        for (p, v) in def.params.iter().zip(&args) {
            ctx.declare_var(p.as_str(), v.clone());
        }
        if let Some(rest) = &def.variadic {
            ctx.declare_var(rest.as_str(), Value::Array(args.get(def.params.len()..).unwrap_or_default().to_vec()));
        }
        super::lazy::evaluate(&def.result, &ctx)
    })();
    USER.with(|u| u.borrow_mut().depth -= 1);
    result
}

macro_rules! trampolines {
    ($($n:literal),*) => { [$({ fn t(a: FuncArgs) -> Result<Value, String> { call_user($n, a) } t as fn(FuncArgs) -> Result<Value, String> }),*] };
}

const TRAMPOLINES: [fn(FuncArgs) -> Result<Value, String>; 48] = trampolines!(
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35,
    36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47
);

/// The names of a function block's `params` (bare names in HCL, strings in JSON).
fn param_names(name: &str, e: Option<&Expression>) -> Result<Vec<String>, BakeError> {
    let bad = || BakeError::Eval { at: format!("function {name:?}"), message: "params must be a list of names".into() };
    let Some(e) = e else { return Ok(vec![]) };
    let Expression::Array(items) = e else { return Err(bad()) };
    items
        .iter()
        .map(|i| match i {
            Expression::Variable(v) => Ok(v.to_string()),
            Expression::String(s) => Ok(s.clone()),
            _ => Err(bad()),
        })
        .collect()
}

/// Everything a bake file's expressions can see: the library, the user functions, variables.
struct Scope {
    ctx: Context<'static>,
}

impl Scope {
    fn set_var(&mut self, name: &str, v: Value) {
        self.ctx.declare_var(name, v);
        USER.with(|u| u.borrow_mut().globals = Some(self.ctx.clone()));
    }
}

fn eval(e: &Expression, ctx: &Context, at: impl Fn() -> String) -> Result<Value, BakeError> {
    super::lazy::evaluate(e, ctx).map_err(|message| BakeError::Eval { at: at(), message })
}

/// A value from the environment, typed like the variable's default (as buildx converts it).
fn typed_env(raw: &str, default: &Value) -> Result<Value, String> {
    match default {
        Value::Bool(_) => match raw {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Value::Bool(true)),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Value::Bool(false)),
            _ => Err(format!("{raw:?} is not a bool")),
        },
        Value::Number(_) => raw.trim().parse::<f64>().map(Value::from).map_err(|_| format!("{raw:?} is not a number")),
        Value::Array(_) | Value::Object(_) => serde_json::from_str(raw)
            .or_else(|_| Ok::<Value, String>(Value::Array(raw.split(',').map(|s| Value::String(s.trim().into())).collect()))),
        _ => Ok(Value::String(raw.to_string())),
    }
}

/// A value as buildx prints a variable or an argument: strings bare, the rest as JSON.
pub fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Evaluates merged bodies into targets and groups. `env` is the process environment (a
/// parameter so tests need not touch theirs).
pub fn evaluate(raw: &Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, BakeError> {
    if raw.functions.len() > TRAMPOLINES.len() {
        return Err(BakeError::Eval { at: "function blocks".into(), message: format!("at most {} are supported", TRAMPOLINES.len()) });
    }
    let mut ctx = Context::new();
    funcs::declare(&mut ctx);
    super::lazy::declare(&mut ctx);
    let mut defs = Vec::new();
    for (slot, (name, b)) in raw.functions.iter().enumerate() {
        let params = param_names(name, b.attrs.get("params"))?;
        let variadic = match b.attrs.get("variadic_params") {
            Some(Expression::Variable(v)) => Some(v.to_string()),
            Some(Expression::String(s)) => Some(s.clone()),
            _ => None,
        };
        let result = b
            .attrs
            .get("result")
            .cloned()
            .ok_or_else(|| BakeError::Eval { at: format!("function {name:?}"), message: "has no result".into() })?;
        let mut def = FuncDef::builder().params(params.iter().map(|_| ParamType::Any));
        if variadic.is_some() {
            def = def.variadic_param(ParamType::Any);
        }
        ctx.declare_func(name.as_str(), def.build(TRAMPOLINES[slot]));
        defs.push(UserFn { params, variadic, result });
    }
    ctx.declare_var("BAKE_CMD_CONTEXT", Value::String(".".into()));
    ctx.declare_var("BAKE_LOCAL_PLATFORM", Value::String(kiln_shared::Platform::host().to_string()));
    USER.with(|u| {
        let mut u = u.borrow_mut();
        u.defs = defs;
        u.globals = Some(ctx.clone());
        u.depth = 0;
    });
    let mut scope = Scope { ctx };
    let variables = variables(raw, &mut scope, env)?;

    let mut cfg = Config { variables, ..Config::default() };
    targets(raw, &mut scope, &mut cfg)?;
    for (name, b) in &raw.groups {
        let at = || format!("group {name:?}");
        let mut g = Group::default();
        for (k, e) in &b.attrs {
            let v = eval(e, &scope.ctx, at)?;
            match k.as_str() {
                "targets" => g.targets = strings(&v).map_err(|m| BakeError::Eval { at: at(), message: format!("targets: {m}") })?,
                "description" => g.description = Some(display(&v)),
                other => return Err(BakeError::Eval { at: at(), message: format!("unknown attribute {other:?}") }),
            }
        }
        cfg.groups.insert(name.clone(), g);
    }
    Ok(cfg)
}

/// Variables in dependency order: each pass evaluates those whose references are known, until
/// none is left (or none makes progress: the first error then is the real one).
fn variables(raw: &Raw, scope: &mut Scope, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Variable>, BakeError> {
    let mut pending: Vec<&String> = raw.variables.keys().collect();
    let mut values: IndexMap<String, Value> = IndexMap::new();
    while !pending.is_empty() {
        let mut progress = false;
        let mut first_err = None;
        let mut next = Vec::new();
        for name in pending {
            let b = &raw.variables[name];
            let default = match b.attrs.get("default") {
                Some(e) => eval(e, &scope.ctx, || format!("variable {name:?}")),
                None => Ok(Value::String(String::new())),
            };
            match default {
                Ok(default) => {
                    let value = match env(name) {
                        Some(raw) => typed_env(&raw, &default)
                            .map_err(|m| BakeError::Eval { at: format!("variable {name:?} from the environment"), message: m })?,
                        None => default,
                    };
                    scope.set_var(name, value.clone());
                    values.insert(name.clone(), value);
                    progress = true;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    next.push(name);
                }
            }
        }
        if !progress {
            return Err(first_err.expect("a pending variable failed"));
        }
        pending = next;
    }
    let mut out = Vec::new();
    for (name, b) in &raw.variables {
        for v in &b.validations {
            let at = || format!("variable {name:?} validation");
            let cond = v.get("condition").ok_or_else(|| BakeError::Eval { at: at(), message: "has no condition".into() })?;
            if eval(cond, &scope.ctx, at)? != Value::Bool(true) {
                let msg = match v.get("error_message") {
                    Some(e) => display(&eval(e, &scope.ctx, at)?),
                    None => "the condition is false".into(),
                };
                return Err(BakeError::Validation { variable: name.clone(), message: msg });
            }
        }
        let description = match b.attrs.get("description") {
            Some(e) => Some(display(&eval(e, &scope.ctx, || format!("variable {name:?}"))?)),
            None => None,
        };
        let value = values.get(name).filter(|v| !v.is_null()).map(display);
        out.push(Variable { name: name.clone(), value, description });
    }
    Ok(out)
}

/// The combinations of a matrix, the first key outermost, as buildx orders them.
fn combinations(matrix: &Map<String, Value>) -> Result<Vec<Vec<(String, Value)>>, String> {
    let mut out: Vec<Vec<(String, Value)>> = vec![vec![]];
    for (k, v) in matrix {
        let values = v.as_array().ok_or_else(|| format!("matrix.{k} must be a list"))?;
        let mut next = Vec::new();
        for combo in &out {
            for val in values {
                let mut c = combo.clone();
                c.push((k.clone(), val.clone()));
                next.push(c);
            }
        }
        out = next;
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Targets in passes, so `${target.base.args.X}` sees `base` evaluated first.
fn targets(raw: &Raw, scope: &mut Scope, cfg: &mut Config) -> Result<(), BakeError> {
    let mut seen: Map<String, Value> = Map::new();
    let mut done: IndexMap<&String, Vec<(String, Target)>> = IndexMap::new();
    let mut pending: Vec<&String> = raw.targets.keys().collect();
    while !pending.is_empty() {
        let mut ctx = scope.ctx.clone();
        ctx.declare_var("target", Value::Object(seen.clone()));
        let mut progress = false;
        let mut first_err = None;
        let mut next = Vec::new();
        for name in pending {
            match target(name, &raw.targets[name], &ctx) {
                Ok(made) => {
                    for (n, _, values) in &made {
                        seen.insert(n.clone(), Value::Object(values.clone()));
                    }
                    done.insert(name, made.into_iter().map(|(n, t, _)| (n, t)).collect());
                    progress = true;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                    next.push(name);
                }
            }
        }
        if !progress {
            return Err(first_err.expect("a pending target failed"));
        }
        pending = next;
    }
    // Declaration order, whatever order the passes found.
    for name in raw.targets.keys() {
        let made = done.swap_remove(name).unwrap_or_default();
        let matrix = raw.targets[name].attrs.contains_key("matrix");
        if matrix {
            cfg.groups.insert(name.clone(), Group { description: None, targets: made.iter().map(|(n, _)| n.clone()).collect() });
        }
        for (n, t) in made {
            if cfg.targets.contains_key(&n) {
                return Err(BakeError::Eval { at: format!("target {name:?}"), message: format!("the name {n:?} is used twice") });
            }
            cfg.targets.insert(n, t);
        }
    }
    Ok(())
}

type Made = (String, Target, Map<String, Value>);

fn target(name: &str, b: &RawBlock, ctx: &Context) -> Result<Vec<Made>, BakeError> {
    let at = || format!("target {name:?}");
    let combos = match b.attrs.get("matrix") {
        None => vec![vec![]],
        Some(m) => {
            let v = eval(m, ctx, at)?;
            let m = v.as_object().ok_or_else(|| BakeError::Eval { at: at(), message: "matrix must be a map of lists".into() })?;
            combinations(m).map_err(|message| BakeError::Eval { at: at(), message })?
        }
    };
    let mut out = Vec::new();
    for combo in combos {
        let mut local;
        let ctx = if combo.is_empty() {
            ctx
        } else {
            local = ctx.clone();
            for (k, v) in &combo {
                local.declare_var(k.as_str(), v.clone());
            }
            &local
        };
        let made_name = match b.attrs.get("name") {
            Some(e) => display(&eval(e, ctx, at)?),
            None if b.attrs.contains_key("matrix") && !combo.is_empty() => {
                return Err(BakeError::Eval { at: at(), message: "a matrix target needs a name attribute".into() })
            }
            None => name.to_string(),
        };
        if !valid_name(&made_name) {
            return Err(BakeError::Eval {
                at: at(),
                message: format!("invalid target name {made_name:?}: use letters, digits, '_' and '-'"),
            });
        }
        // `${target.NAME.name}` is the name, as in buildx's target object.
        let mut values = Map::new();
        values.insert("name".to_string(), Value::String(made_name.clone()));
        let mut t = Target::default();
        for (k, e) in &b.attrs {
            if k == "matrix" || k == "name" {
                continue;
            }
            let v = eval(e, ctx, || format!("target {made_name:?} attribute {k}"))?;
            set_attr(&mut t, k, &v).map_err(|message| BakeError::Eval { at: format!("target {made_name:?} attribute {k}"), message })?;
            values.insert(k.clone(), v);
        }
        out.push((made_name, t, values));
    }
    Ok(out)
}

fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Object(o) => {
            // buildx's structured form of cache, output, secret, ssh and attest entries.
            Ok(o.iter().map(|(k, v)| format!("{k}={}", display(v))).collect::<Vec<_>>().join(","))
        }
        other => Err(format!("expected a string, got {}", serde_json::to_string(other).unwrap_or_default())),
    }
}

fn strings(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a.iter().filter(|v| !v.is_null()).map(scalar).collect(),
        other => Err(format!("expected a list, got {}", serde_json::to_string(other).unwrap_or_default())),
    }
}

fn map(v: &Value) -> Result<std::collections::BTreeMap<String, String>, String> {
    let o = v.as_object().ok_or("expected a map")?;
    // A null value leaves the Dockerfile's default (buildx skips it).
    o.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| Ok((k.clone(), scalar(v)?))).collect()
}

fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        other => Err(format!("expected a bool, got {}", serde_json::to_string(other).unwrap_or_default())),
    }
}

/// Sets one attribute of a target from its value (also `--set`'s and Compose's way in).
pub fn set_attr(t: &mut Target, key: &str, v: &Value) -> Result<(), String> {
    if v.is_null() {
        return Ok(());
    }
    match key {
        "description" => t.description = Some(scalar(v)?),
        "inherits" => t.inherits = strings(v)?,
        "annotations" => t.annotations = Some(strings(v)?),
        "attest" => t.attest = Some(strings(v)?),
        "context" => t.context = Some(scalar(v)?),
        "contexts" => t.contexts = Some(map(v)?),
        "dockerfile" => t.dockerfile = Some(scalar(v)?),
        "dockerfile-inline" => t.dockerfile_inline = Some(scalar(v)?),
        "args" => t.args = Some(map(v)?),
        "labels" => t.labels = Some(map(v)?),
        "tags" => t.tags = Some(strings(v)?),
        "cache-from" => t.cache_from = Some(strings(v)?),
        "cache-to" => t.cache_to = Some(strings(v)?),
        "target" => t.target = Some(scalar(v)?),
        "secret" => t.secrets = Some(strings(v)?),
        "ssh" => t.ssh = Some(strings(v)?),
        "platforms" => t.platforms = Some(strings(v)?),
        "output" => t.outputs = Some(strings(v)?),
        "pull" => t.pull = Some(boolean(v)?),
        "no-cache" => t.no_cache = Some(boolean(v)?),
        "network" => t.network = Some(scalar(v)?),
        "no-cache-filter" => t.no_cache_filter = Some(strings(v)?),
        "shm-size" => t.shm_size = Some(scalar(v)?),
        "ulimits" => t.ulimits = Some(strings(v)?),
        "call" => t.call = Some(scalar(v)?),
        "entitlements" => t.entitlements = Some(strings(v)?),
        "extra-hosts" => t.extra_hosts = Some(map(v)?),
        other => return Err(format!("unknown attribute {other:?}")),
    }
    Ok(())
}
