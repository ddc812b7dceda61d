//! Resolution tests: ARG scoping, expansion per instruction, the stage graph and its errors.

use kiln_shared::frontend::instructions::{CommandLine, Instruction};
use kiln_shared::frontend::resolve::{resolve, BaseConfig, BaseImages, BuildPlan, NoImages, Options, Stage};
use kiln_shared::frontend::{parse, ErrorKind, FrontendError};
use kiln_shared::Platform;

fn p(s: &str) -> Platform {
    s.parse().unwrap()
}

/// Base images with a known config: every image has PATH and HOME set.
struct Images;

impl BaseImages for Images {
    fn config(&self, image: &str, _platform: &Platform) -> Option<BaseConfig> {
        let mut cfg =
            BaseConfig { env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("HOME".into(), "/root".into())], ..Default::default() };
        if image == "onbuild-base" {
            cfg.onbuild = vec!["RUN echo triggered".into(), "ENV FROM_TRIGGER=1".into()];
        }
        Some(cfg)
    }
}

fn try_plan(src: &str, platform: &str, args: &[(&str, &str)], target: Option<&str>) -> Result<BuildPlan, FrontendError> {
    let df = parse(src)?;
    let build_args: Vec<(String, String)> = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let opts = Options {
        platform: p(platform),
        build_platform: p("linux/amd64"),
        build_args: &build_args,
        target,
        images: &Images,
        contexts: &[],
    };
    resolve(&df, &opts)
}

fn plan(src: &str, platform: &str, args: &[(&str, &str)], target: Option<&str>) -> BuildPlan {
    try_plan(src, platform, args, target).unwrap_or_else(|e| panic!("{e}"))
}

fn stage<'a>(plan: &'a BuildPlan, name: &str) -> &'a Stage {
    plan.stages.iter().find(|s| s.display_name() == name).unwrap_or_else(|| panic!("no stage {name}"))
}

fn insts(s: &Stage) -> Vec<&Instruction> {
    s.steps.iter().map(|st| &st.instruction).collect()
}

fn from_image(s: &Stage) -> String {
    let Instruction::From(f) = &s.from else { panic!() };
    f.image.clone()
}

fn env_of(s: &Stage, n: usize) -> Vec<(String, String)> {
    let Instruction::Env(kv) = &s.steps[n].instruction else { panic!("step {n} is not ENV") };
    kv.pairs.iter().map(|p| (p.key.clone(), p.value.clone())).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn resolve_err(src: &str, target: Option<&str>) -> FrontendError {
    try_plan(src, "linux/amd64", &[], target).expect_err("expected a resolve error")
}

#[test]
fn global_args_in_from_with_overrides() {
    let src = "ARG BASE=alpine\nARG TAG=3.19\nARG REF=${BASE}:${TAG}\nFROM ${REF}\n";
    assert_eq!(from_image(&plan(src, "linux/amd64", &[], None).stages[0]), "alpine:3.19");
    assert_eq!(from_image(&plan(src, "linux/amd64", &[("TAG", "edge")], None).stages[0]), "alpine:edge");
    assert_eq!(from_image(&plan(src, "linux/amd64", &[("REF", "debian")], None).stages[0]), "debian");
}

#[test]
fn automatic_platform_args() {
    let src = "FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETOS TARGETARCH TARGETVARIANT BUILDARCH\nENV T=$TARGETOS/$TARGETARCH V=${TARGETVARIANT:-none} B=$BUILDARCH\nFROM scratch\nCOPY --from=build /x /x-${TARGETARCH}\n";
    let pl = plan(src, "linux/arm/v7", &[], None);
    let b = stage(&pl, "build");
    assert_eq!(b.platform, p("linux/amd64"), "FROM --platform=$BUILDPLATFORM runs on the build platform");
    assert_eq!(env_of(b, 1), pairs(&[("T", "linux/arm"), ("V", "v7"), ("B", "amd64")]));
    // Not declared in the final stage: TARGETARCH is unset there.
    let Instruction::Copy(c) = insts(stage(&pl, "stage-1"))[0] else { panic!() };
    assert_eq!(c.dest, "/x-");
    assert_eq!(stage(&pl, "stage-1").platform, p("linux/arm/v7"));
}

#[test]
fn arg_scoping_inside_stages() {
    let src = "ARG V=global\nARG ONLY_GLOBAL=g\nFROM a AS first\nARG V\nENV FROM_V=$V G=${ONLY_GLOBAL:-notdeclared}\nARG W=w1\nARG W2=$W-x\nENV W2=$W2\nFROM a AS second\nENV V2=${V:-unset}\n";
    let pl = plan(src, "linux/amd64", &[], Some("first"));
    let s = &pl.stages[0];
    assert_eq!(env_of(s, 1), pairs(&[("FROM_V", "global"), ("G", "notdeclared")]));
    assert_eq!(env_of(s, 4), pairs(&[("W2", "w1-x")]));
    let pl = plan(src, "linux/amd64", &[("V", "cli"), ("W", "over")], Some("first"));
    assert_eq!(env_of(&pl.stages[0], 1), pairs(&[("FROM_V", "cli"), ("G", "notdeclared")]));
    assert_eq!(env_of(&pl.stages[0], 4), pairs(&[("W2", "over-x")]));
    // ARG scope ends with the stage.
    let pl = plan(src, "linux/amd64", &[], None);
    assert_eq!(env_of(stage(&pl, "second"), 0), pairs(&[("V2", "unset")]));
}

#[test]
fn env_wins_over_arg_and_pairs_use_the_previous_values() {
    let src = "FROM a\nARG X=fromarg\nENV X=fromenv\nENV Y=$X\nENV abc=hello\nENV abc=bye def=$abc\n";
    let pl = plan(src, "linux/amd64", &[("X", "cli")], None);
    let s = &pl.stages[0];
    assert_eq!(env_of(s, 2), pairs(&[("Y", "fromenv")]));
    assert_eq!(env_of(s, 4), pairs(&[("abc", "bye"), ("def", "hello")]));
}

#[test]
fn base_image_env_is_used() {
    let pl = plan("FROM img\nENV PATH=/app/bin:$PATH\nWORKDIR $HOME/src\n", "linux/amd64", &[], None);
    let s = &pl.stages[0];
    assert_eq!(env_of(s, 0), pairs(&[("PATH", "/app/bin:/usr/bin:/bin")]));
    assert_eq!(s.steps[1].instruction, Instruction::Workdir { path: "/root/src".into() });
}

#[test]
fn unknown_base_env_leaves_variables_as_written() {
    let df = parse("FROM img\nARG A=1\nENV PATH=/x:$PATH B=$A C=${Z:-d}\n").unwrap();
    let opts = Options {
        platform: p("linux/amd64"),
        build_platform: p("linux/amd64"),
        build_args: &[],
        target: None,
        images: &NoImages,
        contexts: &[],
    };
    let pl = resolve(&df, &opts).unwrap();
    assert_eq!(env_of(&pl.stages[0], 1), pairs(&[("PATH", "/x:$PATH"), ("B", "1"), ("C", "${Z:-d}")]));
    // FROM scratch has a known, empty environment.
    let df = parse("FROM scratch\nENV P=/x:$PATH\n").unwrap();
    let pl = resolve(&df, &opts).unwrap();
    assert_eq!(env_of(&pl.stages[0], 0), pairs(&[("P", "/x:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")]));
}

#[test]
fn expansion_happens_only_where_docker_expands() {
    let src = "FROM a\nARG D=/dst P=8080 U=app S=SIGINT V=/data N=name\nRUN echo $D\nCMD echo $D\nENTRYPOINT [\"$D\"]\nCOPY [\"$N.txt\", \"$D/with space\"]\nADD $N.tar $D\nWORKDIR $D\nWORKDIR sub\nUSER $U\nEXPOSE $P ${P}/udp\nSTOPSIGNAL $S\nVOLUME $V\nLABEL $N=$D\nHEALTHCHECK CMD check $D\nMAINTAINER $N\nRUN --mount=type=cache,target=$D/cache,id=$N true\n";
    let pl = plan(src, "linux/amd64", &[], None);
    let i = insts(&pl.stages[0]);
    let Instruction::Run(r) = i[1] else { panic!() };
    assert_eq!(r.command, CommandLine::Shell("echo $D".into()));
    assert_eq!(*i[2], Instruction::Cmd { command: CommandLine::Shell("echo $D".into()) });
    assert_eq!(*i[3], Instruction::Entrypoint { command: CommandLine::Exec(vec!["$D".into()]) });
    let Instruction::Copy(c) = i[4] else { panic!() };
    assert_eq!((c.sources.clone(), c.dest.clone()), (vec!["name.txt".to_string()], "/dst/with space".to_string()));
    let Instruction::Add(a) = i[5] else { panic!() };
    assert_eq!((a.sources.clone(), a.dest.clone()), (vec!["name.tar".to_string()], "/dst".to_string()));
    assert_eq!(*i[6], Instruction::Workdir { path: "/dst".into() });
    assert_eq!(pl.stages[0].steps[7].workdir, "/dst/sub");
    assert_eq!(*i[8], Instruction::User { user: "app".into() });
    assert_eq!(*i[9], Instruction::Expose { ports: vec!["8080".into(), "8080/udp".into()] });
    assert_eq!(*i[10], Instruction::Stopsignal { signal: "SIGINT".into() });
    assert_eq!(*i[11], Instruction::Volume { paths: vec!["/data".into()], json: false });
    let Instruction::Label(l) = i[12] else { panic!() };
    assert_eq!((l.pairs[0].key.as_str(), l.pairs[0].value.as_str()), ("name", "/dst"));
    let Instruction::Healthcheck(h) = i[13] else { panic!() };
    assert!(format!("{h:?}").contains("check $D"));
    assert_eq!(*i[14], Instruction::Maintainer { name: "$N".into() });
    let Instruction::Run(r) = i[15] else { panic!() };
    assert_eq!((r.mounts[0].target.as_deref(), r.mounts[0].id.as_deref()), (Some("/dst/cache"), Some("name")));
    // RUN sees the ARGs as environment.
    assert!(pl.stages[0].steps[1].args.contains(&("D".into(), "/dst".into())));
}

#[test]
fn run_argv_follows_shell_and_heredoc_rules() {
    let src = "FROM a\nRUN echo hi\nSHELL [\"/bin/bash\", \"-eo\", \"pipefail\", \"-c\"]\nRUN echo $0\nRUN [\"/bin/true\"]\nRUN <<EOF\necho one\nEOF\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\nRUN cat <<A > /a\nx\nA\nRUN --mount=type=cache,target=cache true\nCMD run\n";
    let pl = plan(src, "linux/amd64", &[], None);
    let argv: Vec<Option<Vec<String>>> = pl.stages[0].steps.iter().map(|s| s.argv.clone()).collect();
    let v = |a: &[&str]| Some(a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(argv[0], v(&["/bin/sh", "-c", "echo hi"]));
    assert_eq!(argv[2], v(&["/bin/bash", "-eo", "pipefail", "-c", "echo $0"]));
    assert_eq!(argv[3], v(&["/bin/true"]));
    assert_eq!(argv[4], v(&["/bin/bash", "-eo", "pipefail", "-c", "echo one\n"]));
    assert_eq!(argv[5], v(&["/dev/pipes/EOF"]));
    assert_eq!(pl.stages[0].steps[5].files, vec![("/dev/pipes/EOF".to_string(), "#!/usr/bin/env python3\nprint(1)\n".to_string())]);
    assert_eq!(argv[6], v(&["/bin/bash", "-eo", "pipefail", "-c", "cat <<A > /a\nx\nA\n"]));
    let Instruction::Run(r) = &pl.stages[0].steps[7].instruction else { panic!() };
    assert_eq!(r.mounts[0].target.as_deref(), Some("/cache"), "relative mount targets join the workdir");
    assert_eq!(argv[8], v(&["/bin/bash", "-eo", "pipefail", "-c", "run"]));
}

#[test]
fn run_heredoc_after_blanks_is_the_script() {
    // `RUN <<  EOF` is one heredoc word (BuildKit), so the body is the whole script.
    let src = "FROM a\nRUN <<  EOF\necho one\nEOF\nRUN << -EOF\n#!/bin/sh\necho two\n-EOF\nRUN <<  EOF  > /out\nx\nEOF\n";
    let pl = plan(src, "linux/amd64", &[], None);
    let argv: Vec<Option<Vec<String>>> = pl.stages[0].steps.iter().map(|s| s.argv.clone()).collect();
    let v = |a: &[&str]| Some(a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(argv[0], v(&["/bin/sh", "-c", "echo one\n"]));
    assert_eq!(argv[1], v(&["/dev/pipes/-EOF"]));
    assert_eq!(argv[2], v(&["/bin/sh", "-c", "<<  EOF  > /out\nx\nEOF\n"]));
}

#[test]
fn copy_heredocs_expand_unless_quoted() {
    let src = "FROM a\nARG NAME=kiln\nCOPY <<EOF <<'RAW' /etc/\nhello $NAME \"q\"\nEOF\nhello $NAME\nRAW\nCOPY <<-EOF /motd\n\tindented $NAME\n\tEOF\n";
    let pl = plan(src, "linux/amd64", &[], None);
    let Instruction::Copy(c) = &pl.stages[0].steps[1].instruction else { panic!() };
    assert_eq!(c.heredocs[0].content, "hello kiln \"q\"\n");
    assert_eq!(c.heredocs[1].content, "hello $NAME\n");
    let Instruction::Copy(c) = &pl.stages[0].steps[2].instruction else { panic!() };
    assert_eq!(c.heredocs[0].content, "indented kiln\n");
}

#[test]
fn stage_graph_targets_and_pruning() {
    let src = "FROM alpine AS base\nRUN true\nFROM base AS build\nRUN make\nFROM base AS test\nRUN make test\nFROM scratch AS final\nCOPY --from=build /out /\nCOPY --from=0 /etc/os-release /\nCOPY --from=nginx:latest /etc/nginx /nginx\n";
    let pl = plan(src, "linux/amd64", &[], None);
    let names: Vec<String> = pl.stages.iter().map(|s| s.display_name()).collect();
    assert_eq!(names, vec!["base", "build", "final"], "the test stage is pruned");
    assert_eq!(pl.total_stages, 4);
    let fin = stage(&pl, "final");
    assert_eq!(fin.deps, vec![0, 1]);
    assert_eq!(fin.image_deps, vec!["nginx:latest"]);
    let pl = plan(src, "linux/amd64", &[], Some("TEST"));
    let names: Vec<String> = pl.stages.iter().map(|s| s.display_name()).collect();
    assert_eq!(names, vec!["base", "test"]);
}

#[test]
fn copy_from_a_later_stage_orders_it_first() {
    let src = "FROM alpine AS app\nCOPY --from=assets /dist /srv\nFROM node AS assets\nRUN build\n";
    let pl = plan(src, "linux/amd64", &[], Some("app"));
    let names: Vec<String> = pl.stages.iter().map(|s| s.display_name()).collect();
    assert_eq!(names, vec!["assets", "app"]);
}

#[test]
fn from_names_only_earlier_stages() {
    // `FROM app AS app` names the image "app": the stage does not exist yet.
    let pl = plan("FROM app AS app\nRUN x\n", "linux/amd64", &[], None);
    assert_eq!(pl.stages[0].base, kiln_shared::frontend::resolve::Base::Image("app".into()));
}

#[test]
fn onbuild_triggers_of_images_and_stages_run_first() {
    let pl = plan("FROM onbuild-base AS b\nONBUILD RUN echo child-trigger\nFROM b\nRUN own\n", "linux/amd64", &[], None);
    let b = stage(&pl, "b");
    assert!(b.steps[0].onbuild && b.steps[1].onbuild, "the image's triggers run first");
    assert_eq!(env_of(b, 1), pairs(&[("FROM_TRIGGER", "1")]));
    // A stage used as a base hands its triggers on too, as BuildKit does.
    let child = stage(&pl, "stage-1");
    assert!(child.steps[0].onbuild, "{:?}", child.steps[0].instruction);
    assert_eq!(child.steps.len(), 2);
}

#[test]
fn warnings() {
    let pl = plan("ARG USED\nFROM a\nARG ALSO\n", "linux/amd64", &[("USED", "1"), ("ALSO", "2"), ("NOPE", "3"), ("HTTP_PROXY", "x")], None);
    assert_eq!(pl.warnings.len(), 1);
    assert_eq!(pl.warnings[0].message, "One or more build-args [NOPE] were not consumed");
    let pl = plan("FROM a AS x\nFROM b AS x\n", "linux/amd64", &[], None);
    assert!(pl.warnings[0].message.contains("duplicate stage name"));
}

// ---- errors ----

#[test]
fn instruction_before_from() {
    let e = resolve_err("ARG A\nRUN echo\nFROM x\n", None);
    assert_eq!(e.to_string(), "Dockerfile:2:1: RUN instruction before the first FROM: only ARG may come before FROM (expected FROM)");
    assert!(matches!(e.kind, ErrorKind::InstructionBeforeFrom { .. }));
    assert_eq!(resolve_err("ARG A\n", None).kind, ErrorKind::NoStages);
}

#[test]
fn target_not_found() {
    let e = resolve_err("FROM a AS build\nFROM b AS final\n", Some("nope"));
    assert_eq!(e.to_string(), "Dockerfile: target stage \"nope\" could not be found (stages: build, final)");
}

#[test]
fn cycles_are_rejected() {
    let e = resolve_err("FROM a AS one\nCOPY --from=two /x /x\nFROM b AS two\nCOPY --from=one /y /y\n", None);
    assert_eq!(e.kind, ErrorKind::StageCycle { cycle: vec!["two".into(), "one".into(), "two".into()] });
    assert!(e.to_string().starts_with("Dockerfile:1:1: circular dependency between stages: two -> one -> two"), "{e}");
    let e = resolve_err("FROM a AS self\nCOPY --from=self /x /x\n", None);
    assert!(matches!(e.kind, ErrorKind::StageCycle { .. }));
}

#[test]
fn bad_from_references() {
    assert_eq!(resolve_err("FROM a\nCOPY --from=7 /x /x\n", None).kind, ErrorKind::BadStageIndex { index: 7, count: 1 });
    assert!(matches!(resolve_err("ARG S=a\nFROM a\nCOPY --from=$S /x /x\n", None).kind, ErrorKind::BadFlagValue { .. }));
    assert!(matches!(resolve_err("ARG P=linux/sparc\nFROM --platform=$P a\n", None).kind, ErrorKind::BadPlatform { .. }));
    assert!(matches!(resolve_err("ARG I\nFROM $I\n", None).kind, ErrorKind::BadArgument { .. }));
}

#[test]
fn expansion_errors_name_the_line() {
    let e = resolve_err("FROM a\nENV X=\"${UNSET:?must be set}\"\n", None);
    assert_eq!(
        e.to_string(),
        "Dockerfile:2:1: variable expansion: failed to process \"\\\"${UNSET:?must be set}\\\"\": UNSET: must be set"
    );
    assert!(matches!(resolve_err("FROM a\nWORKDIR ${X\n", None).kind, ErrorKind::Expansion { .. }));
    assert!(matches!(resolve_err("FROM a\nEXPOSE http\n", None).kind, ErrorKind::BadArgument { .. }));
    assert!(matches!(resolve_err("FROM a\nSTOPSIGNAL SIGNOPE\n", None).kind, ErrorKind::BadArgument { .. }));
    assert!(matches!(
        resolve_err("FROM a\nRUN --mount=type=cache,target=/x,sharing=everyone true\n", None).kind,
        ErrorKind::BadMount { .. }
    ));
    assert!(matches!(resolve_err("FROM a\nCOPY a <<EOF\nx\nEOF\n", None).kind, ErrorKind::BadArgument { .. }));
}
