//! Unit and property tests of bake evaluation: files to resolved targets, without a process.

use super::hcl::{evaluate, parse_hcl};
use super::resolve::resolve;
use super::set::Override;
use super::BakeError;
use proptest::prelude::*;

fn eval_with(text: &str, env: &[(&str, &str)], names: &[&str]) -> Result<super::resolve::Resolved, BakeError> {
    let raw = parse_hcl("docker-bake.hcl", text)?;
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let cfg = evaluate(&raw, &lookup)?;
    resolve(&cfg, &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &[])
}

#[test]
fn variables_reference_each_other_in_any_order() {
    let r = eval_with(
        "variable \"FULL\" {\n  default = \"${REPO}:${TAG}\"\n}\nvariable \"REPO\" {\n  default = \"acme/app\"\n}\nvariable \"TAG\" {\n  default = \"1\"\n}\ntarget \"default\" {\n  tags = [FULL]\n}\n",
        &[("TAG", "2")],
        &[],
    )
    .unwrap();
    assert_eq!(r.targets["default"].tags.as_deref(), Some(&["acme/app:2".to_string()][..]));
}

#[test]
fn errors_are_one_line_and_name_the_block() {
    let e = eval_with("target \"web\" {\n  tags = [NOPE]\n}\n", &[], &[]).unwrap_err().to_string();
    assert!(e.starts_with("target \"web\" attribute tags:"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let e = eval_with("target \"web\" {\n  colour = \"red\"\n}\n", &[], &["web"]).unwrap_err().to_string();
    assert!(e.contains("unknown attribute \"colour\""), "{e}");
    let e = eval_with("target \"web\" {\n", &[], &[]).unwrap_err().to_string();
    assert!(e.starts_with("docker-bake.hcl:") && e.lines().count() == 1, "{e}");
    let e = eval_with("variable \"N\" {\n  default = 1\n}\ntarget \"default\" {}\n", &[("N", "many")], &[]).unwrap_err().to_string();
    assert!(e.contains("\"many\" is not a number"), "{e}");
}

#[test]
fn a_recursive_function_is_an_error_not_a_crash() {
    let e = eval_with("function \"f\" {\n  params = [x]\n  result = f(x)\n}\ntarget \"default\" {\n  tags = [f(1)]\n}\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("64 calls deep"), "{e}");
}

#[test]
fn matrix_names_must_be_unique_and_valid() {
    let e = eval_with("target \"a\" {\n  name = \"same\"\n  matrix = { x = [1, 2] }\n}\n", &[], &["a"]).unwrap_err().to_string();
    assert!(e.contains("used twice"), "{e}");
    let e = eval_with("target \"a\" {\n  name = \"a.${x}\"\n  matrix = { x = [1] }\n}\n", &[], &["a"]).unwrap_err().to_string();
    assert!(e.contains("invalid target name \"a.1\""), "{e}");
}

#[test]
fn overrides_reach_parents_and_must_match_a_target() {
    let text = "target \"_base\" {\n  args = { A = \"1\" }\n}\ntarget \"app\" {\n  inherits = [\"_base\"]\n}\n";
    let raw = parse_hcl("f.hcl", text).unwrap();
    let cfg = evaluate(&raw, &|_| None).unwrap();
    let sets = vec![Override::parse("_base.args.A=2").unwrap()];
    let r = resolve(&cfg, &["app".into()], &sets).unwrap();
    assert_eq!(r.targets["app"].args.as_ref().unwrap()["A"], "2");
    let e = resolve(&cfg, &["app".into()], &[Override::parse("nope*.tags=x").unwrap()]).unwrap_err().to_string();
    assert!(e.contains("could not find any target matching \"nope*\""), "{e}");
}

proptest! {
    /// A string variable's value, from its default or the environment, reaches a tag unchanged.
    #[test]
    fn variable_values_interpolate_verbatim(default in "[a-zA-Z0-9._-]{0,12}", env in proptest::option::of("[a-zA-Z0-9._/-]{0,12}")) {
        let text = format!("variable \"V\" {{\n  default = \"{default}\"\n}}\ntarget \"default\" {{\n  tags = [\"x/y:${{V}}\"]\n}}\n");
        let env_pairs: Vec<(&str, &str)> = env.as_deref().map(|e| vec![("V", e)]).unwrap_or_default();
        let r = eval_with(&text, &env_pairs, &[]).unwrap();
        let want = format!("x/y:{}", env.as_deref().unwrap_or(&default));
        prop_assert_eq!(r.targets["default"].tags.clone().unwrap(), vec![want]);
    }

    /// A matrix makes one target per combination, named in order, grouped under the block's name.
    #[test]
    fn matrix_makes_the_product(a in 1usize..5, b in 1usize..5) {
        let xs: Vec<String> = (0..a).map(|i| format!("\"x{i}\"")).collect();
        let ys: Vec<String> = (0..b).map(|i| format!("\"y{i}\"")).collect();
        let text = format!(
            "target \"m\" {{\n  name = \"m-${{x}}-${{y}}\"\n  matrix = {{\n    x = [{}]\n    y = [{}]\n  }}\n  args = {{ X = x, Y = y }}\n}}\n",
            xs.join(", "), ys.join(", ")
        );
        let r = eval_with(&text, &[], &["m"]).unwrap();
        prop_assert_eq!(r.targets.len(), a * b);
        let group = &r.groups["m"].targets;
        prop_assert_eq!(group.len(), a * b);
        prop_assert_eq!(&group[0], "m-x0-y0");
        prop_assert_eq!(group[1 % (a * b)].clone(), if b > 1 { "m-x0-y1".to_string() } else if a > 1 { "m-x1-y0".to_string() } else { "m-x0-y0".to_string() });
        for (name, t) in &r.targets {
            let args = t.args.clone().unwrap();
            prop_assert_eq!(name.clone(), format!("m-{}-{}", args["X"], args["Y"]));
        }
    }

    /// With several parents the last one that sets an attribute wins, and the target's own value beats them all.
    #[test]
    fn inherits_in_order(values in proptest::collection::vec(proptest::option::of(0u8..100), 1..6), own in proptest::option::of(0u8..100)) {
        let mut text = String::new();
        let mut parents = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let attr = v.map(|v| format!("  target = \"s{v}\"\n")).unwrap_or_default();
            text.push_str(&format!("target \"p{i}\" {{\n{attr}}}\n"));
            parents.push(format!("\"p{i}\""));
        }
        let attr = own.map(|v| format!("  target = \"s{v}\"\n")).unwrap_or_default();
        text.push_str(&format!("target \"child\" {{\n  inherits = [{}]\n{attr}}}\n", parents.join(", ")));
        let r = eval_with(&text, &[], &["child"]).unwrap();
        let want = own.or_else(|| values.iter().rev().find_map(|v| *v)).map(|v| format!("s{v}"));
        prop_assert_eq!(r.targets["child"].target.clone(), want);
    }
}
