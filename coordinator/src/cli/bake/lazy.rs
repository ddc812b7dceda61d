//! `can` and `try`, as buildx has them from HCL's `tryfunc`: their arguments are evaluated one
//! at a time and an error is an answer (`can` is false, `try` moves on to the next argument),
//! where every other function gets its arguments evaluated, and an error fails the expression.
//! hcl-rs evaluates arguments before a call, so an expression that calls either is first lowered:
//! each call is replaced by its value, found with the variables in scope at that point (those of
//! an enclosing `for` expression and of a user function's parameters included), and the rest is
//! evaluated as hcl-rs does. A `try` inside a template's `%{for}` directive is not reached: there
//! the library's eager `can` and `try` run, which give the same answer unless an argument fails.

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::expr::{Conditional, Expression, ForExpr, Operation, TemplateExpr, TraversalOperator};
use hcl::template::{Directive, Element, Template};
use hcl::Value;

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Evaluates `e` in `ctx`, `can` and `try` included; errors are one line.
pub fn evaluate(e: &Expression, ctx: &Context) -> Result<Value, String> {
    let lowered;
    let e = if calls_lazy(e) {
        lowered = lower(e, ctx)?;
        &lowered
    } else {
        e
    };
    e.evaluate(ctx).map_err(|err| one_line(&err.to_string()))
}

/// The eager forms, for where lowering does not reach (see the module's header).
pub fn declare(ctx: &mut Context) {
    fn can(_: FuncArgs) -> Result<Value, String> {
        Ok(Value::Bool(true))
    }
    fn try_(a: FuncArgs) -> Result<Value, String> {
        a.iter().next().cloned().ok_or_else(|| "try needs at least one argument".to_string())
    }
    ctx.declare_func("can", FuncDef::builder().param(ParamType::Any).build(can));
    ctx.declare_func("try", FuncDef::builder().variadic_param(ParamType::Any).build(try_));
}

fn is_lazy(name: &str) -> bool {
    name == "can" || name == "try"
}

fn template_mentions(t: &TemplateExpr) -> bool {
    let text = match t {
        TemplateExpr::QuotedString(s) => s.as_str(),
        TemplateExpr::Heredoc(h) => h.template.as_str(),
    };
    text.contains("can(") || text.contains("try(")
}

/// Whether `e` calls `can` or `try` anywhere (templates by their text).
fn calls_lazy(e: &Expression) -> bool {
    match e {
        Expression::FuncCall(f) => is_lazy(f.name.name.as_str()) || f.args.iter().any(calls_lazy),
        Expression::Array(a) => a.iter().any(calls_lazy),
        Expression::Object(o) => o.iter().any(|(k, v)| matches!(k, hcl::ObjectKey::Expression(k) if calls_lazy(k)) || calls_lazy(v)),
        Expression::TemplateExpr(t) => template_mentions(t),
        Expression::Traversal(t) => {
            calls_lazy(&t.expr) || t.operators.iter().any(|o| matches!(o, TraversalOperator::Index(i) if calls_lazy(i)))
        }
        Expression::Parenthesis(p) => calls_lazy(p),
        Expression::Conditional(c) => calls_lazy(&c.cond_expr) || calls_lazy(&c.true_expr) || calls_lazy(&c.false_expr),
        Expression::Operation(op) => match op.as_ref() {
            Operation::Unary(u) => calls_lazy(&u.expr),
            Operation::Binary(b) => calls_lazy(&b.lhs_expr) || calls_lazy(&b.rhs_expr),
        },
        Expression::ForExpr(f) => {
            calls_lazy(&f.collection_expr)
                || calls_lazy(&f.value_expr)
                || f.key_expr.as_ref().is_some_and(calls_lazy)
                || f.cond_expr.as_ref().is_some_and(calls_lazy)
        }
        _ => false,
    }
}

/// `e` with every `can(..)` and `try(..)` it calls replaced by the value it has in `ctx`.
fn lower(e: &Expression, ctx: &Context) -> Result<Expression, String> {
    if !calls_lazy(e) {
        return Ok(e.clone());
    }
    Ok(match e {
        Expression::FuncCall(f) if f.name.name.as_str() == "can" => {
            let [arg] = f.args.as_slice() else { return Err("can takes one argument".into()) };
            Expression::Bool(evaluate(arg, ctx).is_ok())
        }
        Expression::FuncCall(f) if f.name.name.as_str() == "try" => {
            let mut last = "try needs at least one argument".to_string();
            for arg in &f.args {
                match evaluate(arg, ctx) {
                    Ok(v) => return Ok(Expression::from(v)),
                    Err(e) => last = e,
                }
            }
            return Err(format!("no expression succeeded: {last}"));
        }
        Expression::FuncCall(f) => {
            let mut f = f.clone();
            for a in f.args.iter_mut() {
                *a = lower(a, ctx)?;
            }
            Expression::FuncCall(f)
        }
        Expression::Array(a) => Expression::Array(a.iter().map(|i| lower(i, ctx)).collect::<Result<_, _>>()?),
        Expression::Object(o) => {
            let mut out = hcl::expr::Object::new();
            for (k, v) in o {
                let k = match k {
                    hcl::ObjectKey::Expression(k) => hcl::ObjectKey::Expression(lower(k, ctx)?),
                    other => other.clone(),
                };
                out.insert(k, lower(v, ctx)?);
            }
            Expression::Object(out)
        }
        Expression::TemplateExpr(t) => template(t, ctx)?,
        Expression::Traversal(t) => {
            let mut t = t.clone();
            t.expr = lower(&t.expr, ctx)?;
            for o in t.operators.iter_mut() {
                if let TraversalOperator::Index(i) = o {
                    *i = lower(i, ctx)?;
                }
            }
            Expression::Traversal(t)
        }
        Expression::Parenthesis(p) => Expression::Parenthesis(Box::new(lower(p, ctx)?)),
        // Only the branch taken is lowered: a `try` in the other must not fail the expression.
        Expression::Conditional(c) => conditional(c, ctx)?,
        Expression::Operation(op) => {
            let mut op = op.clone();
            match op.as_mut() {
                Operation::Unary(u) => u.expr = lower(&u.expr, ctx)?,
                Operation::Binary(b) => {
                    b.lhs_expr = lower(&b.lhs_expr, ctx)?;
                    b.rhs_expr = lower(&b.rhs_expr, ctx)?;
                }
            }
            Expression::Operation(op)
        }
        Expression::ForExpr(f) => Expression::from(for_expr(f, ctx)?),
        other => other.clone(),
    })
}

fn conditional(c: &Conditional, ctx: &Context) -> Result<Expression, String> {
    match evaluate(&c.cond_expr, ctx)? {
        Value::Bool(true) => lower(&c.true_expr, ctx),
        Value::Bool(false) => lower(&c.false_expr, ctx),
        other => Err(format!("a condition must be a bool, not {other}")),
    }
}

/// A template's interpolations (and `%{if}` branches) lowered, the template re-rendered.
fn template(t: &TemplateExpr, ctx: &Context) -> Result<Expression, String> {
    fn walk(t: &mut Template, ctx: &Context) -> Result<(), String> {
        for el in t.elements_mut() {
            match el {
                Element::Interpolation(i) => i.expr = lower(&i.expr, ctx)?,
                Element::Directive(d) => {
                    if let Directive::If(d) = d.as_mut() {
                        d.cond_expr = lower(&d.cond_expr, ctx)?;
                        walk(&mut d.true_template, ctx)?;
                        if let Some(f) = d.false_template.as_mut() {
                            walk(f, ctx)?;
                        }
                    }
                }
                Element::Literal(_) => {}
            }
        }
        Ok(())
    }
    let mut parsed = Template::from_expr(t).map_err(|e| one_line(&e.to_string()))?;
    walk(&mut parsed, ctx)?;
    let v = parsed.evaluate(ctx).map_err(|e| one_line(&e.to_string()))?;
    Ok(Expression::String(v))
}

/// A `for` expression whose parts call `can` or `try`, evaluated element by element with its
/// variables in scope.
fn for_expr(f: &ForExpr, ctx: &Context) -> Result<Value, String> {
    let items: Vec<(Value, Value)> = match evaluate(&f.collection_expr, ctx)? {
        Value::Array(a) => a.into_iter().enumerate().map(|(i, v)| (Value::from(i as u64), v)).collect(),
        Value::Object(o) => o.into_iter().map(|(k, v)| (Value::String(k), v)).collect(),
        other => return Err(format!("a for expression needs a list or an object, not {other}")),
    };
    let mut list = Vec::new();
    let mut object = hcl::Map::<String, Value>::new();
    for (k, v) in items {
        let mut inner = ctx.clone();
        if let Some(kv) = &f.key_var {
            inner.declare_var(kv.clone(), k);
        }
        inner.declare_var(f.value_var.clone(), v);
        if let Some(cond) = &f.cond_expr {
            match evaluate(cond, &inner)? {
                Value::Bool(true) => {}
                Value::Bool(false) => continue,
                other => return Err(format!("a for expression's condition must be a bool, not {other}")),
            }
        }
        let value = evaluate(&f.value_expr, &inner)?;
        match &f.key_expr {
            None => list.push(value),
            Some(ke) => {
                let key = match evaluate(ke, &inner)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if f.grouping {
                    let entry = object.entry(key).or_insert_with(|| Value::Array(vec![]));
                    if let Value::Array(a) = entry {
                        a.push(value);
                    }
                } else if object.insert(key.clone(), value).is_some() {
                    return Err(format!("duplicate key {key:?} in a for expression (use ... to group)"));
                }
            }
        }
    }
    Ok(if f.key_expr.is_some() { Value::Object(object) } else { Value::Array(list) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(src: &str) -> Result<Value, String> {
        let body: hcl::Body = hcl::from_str(&format!("x = {src}\n")).expect("parses");
        let e = body.attributes().next().expect("attribute").expr().clone();
        let mut ctx = Context::new();
        crate::cli::bake::funcs::declare(&mut ctx);
        declare(&mut ctx);
        ctx.declare_var("m", hcl::value!({ a = "A" }));
        evaluate(&e, &ctx)
    }

    #[test]
    fn can_and_try_catch_errors() {
        assert_eq!(eval("can(m.a)"), Ok(Value::Bool(true)));
        assert_eq!(eval("can(m.b)"), Ok(Value::Bool(false)));
        assert_eq!(eval("can(parseint(\"12x\", 10))"), Ok(Value::Bool(false)));
        assert_eq!(eval("try(m.b, m.a)"), Ok(Value::from("A")));
        assert_eq!(eval("try(m.b, \"d\")"), Ok(Value::from("d")));
        assert!(eval("try(m.b, m.c)").is_err_and(|e| e.starts_with("no expression succeeded")));
        assert_eq!(eval("\"v-${try(m.b, \"x\")}\""), Ok(Value::from("v-x")));
        assert_eq!(eval("[for k in [\"a\", \"b\"]: try(m[k], \"-\")]"), Ok(hcl::value!(["A", "-"])));
        assert_eq!(eval("{for k in [\"a\", \"b\"]: k => can(m[k])}"), Ok(hcl::value!({ a = true, b = false })));
        assert_eq!(eval("true ? \"t\" : try(m.b, m.c)"), Ok(Value::from("t")));
        assert_eq!(eval("upper(try(m.b, \"z\"))"), Ok(Value::from("Z")));
    }
}
