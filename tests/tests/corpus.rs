//! The Dockerfile corpus (`tests/corpus/`): real-project-style Dockerfiles that must all parse,
//! resolve for linux/amd64 and linux/arm64, and go through `kiln build --dry-run`.
//!
//! A case is a folder with a `Dockerfile` (or the file named in `dockerfile`), and optionally
//! `target` (a stage name), `build-args` (KEY=VALUE lines) and `.dockerignore` files.

use kiln_shared::frontend::resolve::{resolve, NoImages, Options};
use kiln_shared::frontend::{parse, print};
use kiln_shared::Platform;
use kiln_tests::Bounded;
use kiln_tests::{kiln_bin, repo_root};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Case {
    dir: PathBuf,
    dockerfile: PathBuf,
    target: Option<String>,
    build_args: Vec<(String, String)>,
}

fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn cases() -> Vec<Case> {
    let root = repo_root().join("tests/corpus");
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&root).expect("tests/corpus exists").map(|e| e.expect("entry").path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let name = read_opt(&dir.join("dockerfile")).unwrap_or_else(|| "Dockerfile".into());
            let build_args = read_opt(&dir.join("build-args"))
                .map(|s| s.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect())
                .unwrap_or_default();
            Case { dockerfile: dir.join(name), target: read_opt(&dir.join("target")), build_args, dir }
        })
        .collect()
}

#[test]
fn corpus_has_at_least_sixty_cases() {
    assert!(cases().len() >= 60, "only {} corpus cases", cases().len());
}

#[test]
fn every_case_resolves_for_both_platforms() {
    let mut failures = Vec::new();
    for case in cases() {
        let text = std::fs::read_to_string(&case.dockerfile).unwrap_or_else(|e| panic!("{}: {e}", case.dockerfile.display()));
        let df = match parse(&text) {
            Ok(df) => df,
            Err(e) => {
                failures.push(e.in_file(&case.dockerfile.display().to_string()).to_string());
                continue;
            }
        };
        for platform in ["linux/amd64", "linux/arm64"] {
            let opts = Options {
                platform: platform.parse::<Platform>().expect("platform"),
                build_platform: "linux/amd64".parse().expect("platform"),
                build_args: &case.build_args,
                target: case.target.as_deref(),
                images: &NoImages,
                contexts: &[],
            };
            match resolve(&df, &opts) {
                Ok(plan) => assert!(!plan.stages.is_empty()),
                Err(e) => failures.push(format!("{platform}: {}", e.in_file(&case.dockerfile.display().to_string()))),
            }
        }
        // Printing the parsed file and parsing it again gives the same instructions.
        let again = parse(&print::dockerfile(&df)).unwrap_or_else(|e| panic!("{}: reprint does not parse: {e}", case.dir.display()));
        let a: Vec<_> = df.instructions.iter().map(|l| &l.instruction).collect();
        let b: Vec<_> = again.instructions.iter().map(|l| &l.instruction).collect();
        assert_eq!(a, b, "{}: round trip changed the instructions", case.dir.display());
    }
    assert!(failures.is_empty(), "corpus cases that failed:\n{}", failures.join("\n"));
}

#[test]
fn every_case_goes_through_the_cli_dry_run() {
    for case in cases() {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(["build", "--dry-run", "--format", "json", "--platform", "linux/amd64,linux/arm64", "-f"]).arg(&case.dockerfile);
        if let Some(t) = &case.target {
            cmd.args(["--target", t]);
        }
        for (k, v) in &case.build_args {
            cmd.arg("--build-arg").arg(format!("{k}={v}"));
        }
        let out = cmd.arg(&case.dir).bounded().expect("run kiln");
        assert!(out.status.success(), "{}: {}", case.dir.display(), String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dry-run JSON");
        let platforms = json["platforms"].as_array().expect("platforms array");
        assert_eq!(platforms.len(), 2, "{}", case.dir.display());
        assert_eq!(platforms[1]["platform"], "linux/arm64");
        assert!(json["context"]["files"].as_u64().is_some());
    }
}
