//! Parser tests: every construct and every parse error, with the position it reports.

use kiln_shared::frontend::instructions::{Add, ArgDecl, CommandLine, Copy, Healthcheck, Heredoc, Instruction, KeyValue, KeyValues, Run};
use kiln_shared::frontend::mount::MountType;
use kiln_shared::frontend::{parse, ErrorKind, Pos};

fn all(src: &str) -> Vec<Instruction> {
    parse(src).unwrap_or_else(|e| panic!("{e}")).instructions.into_iter().map(|l| l.instruction).collect()
}

fn one(src: &str) -> Instruction {
    let mut v = all(src);
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

/// The error as `LINE:COL: message` plus its kind.
fn err(src: &str) -> (String, ErrorKind) {
    let e = parse(src).expect_err("expected a parse error");
    let pos = e.pos.expect("parse errors have a position");
    (format!("{}:{}: {}", pos.line, pos.col, e.kind), e.kind)
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: v.into() }
}

#[test]
fn from_forms() {
    let Instruction::From(f) = one("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build") else { panic!() };
    assert_eq!(f.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(f.image, "golang:1.22");
    assert_eq!(f.name.as_deref(), Some("build"), "stage names are lowercased");
    let Instruction::From(f) = one("from scratch") else { panic!() };
    assert_eq!((f.image.as_str(), f.name), ("scratch", None));
}

#[test]
fn run_shell_exec_and_fallback() {
    let Instruction::Run(r) = one("RUN apt-get update && \\\n    apt-get install -y curl") else { panic!() };
    assert_eq!(r.command, CommandLine::Shell("apt-get update &&     apt-get install -y curl".into()));
    let Instruction::Run(r) = one(r#"RUN ["/bin/echo", "hi there"]"#) else { panic!() };
    assert_eq!(r.command, CommandLine::Exec(vec!["/bin/echo".into(), "hi there".into()]));
    // Not valid JSON: Docker runs it as a shell command.
    let Instruction::Run(r) = one(r#"RUN [ "echo", 'x' ]"#) else { panic!() };
    assert_eq!(r.command, CommandLine::Shell(r#"[ "echo", 'x' ]"#.into()));
    let Instruction::Run(r) = one("RUN [ -f /etc/passwd ] && echo yes") else { panic!() };
    assert!(matches!(r.command, CommandLine::Shell(_)));
}

#[test]
fn run_flags_are_structured() {
    let Instruction::Run(Run { mounts, network, security, .. }) =
        one("RUN --mount=type=cache,target=/root/.cache,sharing=locked --mount=type=bind,from=build,source=/out,target=/in \
         --mount=type=secret,id=npmrc,target=/root/.npmrc --mount=type=ssh --mount=type=tmpfs,target=/tmp \
         --network=none --security=insecure make")
    else {
        panic!()
    };
    let kinds: Vec<MountType> = mounts.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, vec![MountType::Cache, MountType::Bind, MountType::Secret, MountType::Ssh, MountType::Tmpfs]);
    assert_eq!(mounts[0].sharing.as_deref(), Some("locked"));
    assert_eq!(mounts[1].from.as_deref(), Some("build"));
    assert_eq!(mounts[2].id.as_deref(), Some("npmrc"));
    assert_eq!(network.as_deref(), Some("none"));
    assert_eq!(security.as_deref(), Some("insecure"));
}

#[test]
fn cmd_entrypoint_shell_stopsignal_maintainer_user_workdir() {
    assert_eq!(
        one(r#"CMD ["nginx", "-g", "daemon off;"]"#),
        Instruction::Cmd { command: CommandLine::Exec(vec!["nginx".into(), "-g".into(), "daemon off;".into()]) }
    );
    assert_eq!(one("ENTRYPOINT exec app --flag"), Instruction::Entrypoint { command: CommandLine::Shell("exec app --flag".into()) });
    assert_eq!(
        one(r#"SHELL ["/bin/bash", "-o", "pipefail", "-c"]"#),
        Instruction::Shell { shell: vec!["/bin/bash".into(), "-o".into(), "pipefail".into(), "-c".into()] }
    );
    assert_eq!(one("STOPSIGNAL SIGQUIT"), Instruction::Stopsignal { signal: "SIGQUIT".into() });
    assert_eq!(one("MAINTAINER Jane Doe <jane@example.com>"), Instruction::Maintainer { name: "Jane Doe <jane@example.com>".into() });
    assert_eq!(one("USER app:app"), Instruction::User { user: "app:app".into() });
    assert_eq!(one("WORKDIR /my dir"), Instruction::Workdir { path: "/my dir".into() });
}

#[test]
fn env_and_label_both_forms() {
    assert_eq!(
        one(r#"ENV A=1 B="two words" C='x y' D=a\ b"#),
        Instruction::Env(KeyValues {
            pairs: vec![kv("A", "1"), kv("B", "\"two words\""), kv("C", "'x y'"), kv("D", "a\\ b")],
            legacy: false
        })
    );
    assert_eq!(
        one("ENV PATH /usr/local/bin:$PATH and more"),
        Instruction::Env(KeyValues { pairs: vec![kv("PATH", "/usr/local/bin:$PATH and more")], legacy: true })
    );
    assert_eq!(
        one("LABEL org.opencontainers.image.title=\"kiln\" \\\n      version=1.0"),
        Instruction::Label(KeyValues {
            pairs: vec![kv("org.opencontainers.image.title", "\"kiln\""), kv("version", "1.0")],
            legacy: false
        })
    );
    assert_eq!(one(r#"ENV EMPTY="""#), Instruction::Env(KeyValues { pairs: vec![kv("EMPTY", "\"\"")], legacy: false }));
}

#[test]
fn arg_declarations() {
    assert_eq!(
        one("ARG A B=2 C=\"x y\""),
        Instruction::Arg {
            args: vec![
                ArgDecl { name: "A".into(), default: None },
                ArgDecl { name: "B".into(), default: Some("2".into()) },
                ArgDecl { name: "C".into(), default: Some("\"x y\"".into()) }
            ]
        }
    );
}

#[test]
fn copy_and_add_flags() {
    let Instruction::Copy(c) =
        one("COPY --from=build --chown=1000:1000 --chmod=0755 --link --parents --exclude=*.md --exclude=tmp ./a ./b /dst/")
    else {
        panic!()
    };
    assert_eq!(
        c,
        Copy {
            from: Some("build".into()),
            chown: Some("1000:1000".into()),
            chmod: Some("0755".into()),
            link: true,
            parents: true,
            exclude: vec!["*.md".into(), "tmp".into()],
            sources: vec!["./a".into(), "./b".into()],
            dest: "/dst/".into(),
            json: false,
            heredocs: vec![],
        }
    );
    let Instruction::Copy(c) = one(r#"COPY ["my file", "/dst dir/"]"#) else { panic!() };
    assert_eq!((c.sources, c.dest, c.json), (vec!["my file".to_string()], "/dst dir/".to_string(), true));
    let sum = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let Instruction::Add(a) = one(&format!("ADD --checksum={sum} --keep-git-dir=false https://example.com/a.tar.gz /opt/")) else {
        panic!()
    };
    assert_eq!(
        a,
        Add {
            chown: None,
            chmod: None,
            link: false,
            checksum: Some(sum),
            keep_git_dir: false,
            exclude: vec![],
            sources: vec!["https://example.com/a.tar.gz".into()],
            dest: "/opt/".into(),
            json: false,
            heredocs: vec![]
        }
    );
    let Instruction::Add(a) = one("ADD rootfs.tar.xz /") else { panic!() };
    assert_eq!(a.sources, vec!["rootfs.tar.xz"]);
}

#[test]
fn expose_volume() {
    assert_eq!(
        one("EXPOSE 80 443/tcp 53/udp 8000-8010"),
        Instruction::Expose { ports: vec!["80".into(), "443/tcp".into(), "53/udp".into(), "8000-8010".into()] }
    );
    assert_eq!(one(r#"VOLUME ["/data", "/logs"]"#), Instruction::Volume { paths: vec!["/data".into(), "/logs".into()], json: true });
    assert_eq!(one("VOLUME /data /logs"), Instruction::Volume { paths: vec!["/data".into(), "/logs".into()], json: false });
}

#[test]
fn onbuild_and_healthcheck() {
    let Instruction::Onbuild { trigger, expression } = one("ONBUILD COPY . /app/src") else { panic!() };
    assert_eq!(expression, "COPY . /app/src");
    assert!(matches!(*trigger, Instruction::Copy(_)));
    assert_eq!(one("HEALTHCHECK NONE"), Instruction::Healthcheck(Healthcheck::None));
    assert_eq!(
        one("HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=5s --retries=3 CMD curl -f http://localhost/ || exit 1"),
        Instruction::Healthcheck(Healthcheck::Cmd {
            interval: Some("5m".into()),
            timeout: Some("3s".into()),
            start_period: Some("1m30s".into()),
            start_interval: Some("5s".into()),
            retries: Some(3),
            command: CommandLine::Shell("curl -f http://localhost/ || exit 1".into())
        })
    );
    let Instruction::Healthcheck(Healthcheck::Cmd { command, .. }) = one(r#"HEALTHCHECK CMD ["/bin/check", "-q"]"#) else { panic!() };
    assert_eq!(command, CommandLine::Exec(vec!["/bin/check".into(), "-q".into()]));
}

#[test]
fn directives_escape_and_positions() {
    let df =
        parse("# syntax=docker/dockerfile:1.7\n# escape=`\n# check=skip=JSONArgsRecommended\nFROM alpine\nRUN echo a `\n  b\n").unwrap();
    assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1.7"));
    assert_eq!(df.directives.escape, '`');
    assert_eq!(df.directives.check.as_deref(), Some("skip=JSONArgsRecommended"));
    assert_eq!(
        df.instructions[1].instruction,
        Instruction::Run(Run {
            mounts: vec![],
            network: None,
            security: None,
            command: CommandLine::Shell("echo a   b".into()),
            heredocs: vec![]
        })
    );
    assert_eq!(df.instructions[1].pos, Pos::new(5, 1));
    assert_eq!(df.instructions[1].end_line, 6);
    // With the backtick escape a backslash is an ordinary character.
    let df = parse("# escape=`\nFROM x\nCOPY c:\\src c:\\dst\n").unwrap();
    let Instruction::Copy(c) = &df.instructions[1].instruction else { panic!() };
    assert_eq!(c.sources, vec!["c:\\src"]);
    // A directive after a comment is only a comment.
    let df = parse("# hello\n# escape=`\nFROM x\n").unwrap();
    assert_eq!(df.directives.escape, '\\');
}

#[test]
fn comments_blank_lines_and_crlf() {
    let v = all("\u{feff}# comment\r\n\r\nFROM alpine AS base\r\n  # indented comment\r\nRUN a \\\r\n  # inside\r\n\r\n  b\r\n");
    assert_eq!(v.len(), 2);
    let Instruction::Run(r) = &v[1] else { panic!() };
    assert_eq!(r.command, CommandLine::Shell("a   b".into()));
}

#[test]
fn heredocs() {
    let Instruction::Run(r) = one("RUN <<EOF\necho $HOME\nEOF") else { panic!() };
    assert_eq!(r.heredocs, vec![Heredoc { name: "EOF".into(), expand: true, chomp: false, content: "echo $HOME\n".into() }]);
    assert_eq!(r.command, CommandLine::Shell("<<EOF".into()));
    let Instruction::Run(r) = one("RUN <<-EOT bash\n\techo hi\n\tEOT") else { panic!() };
    assert_eq!(r.heredocs[0].name, "EOT");
    assert!(r.heredocs[0].chomp);
    assert_eq!(r.heredocs[0].body(), "echo hi\n");
    let Instruction::Run(r) = one("RUN python3 <<'PY'\nprint('$x')\nPY") else { panic!() };
    assert!(!r.heredocs[0].expand, "a quoted delimiter turns expansion off");
    let Instruction::Run(r) = one("RUN <<FILE1 cat > /a && <<FILE2 cat > /b\none\nFILE1\ntwo\nFILE2") else { panic!() };
    let bodies: Vec<(&str, &str)> = r.heredocs.iter().map(|h| (h.name.as_str(), h.content.as_str())).collect();
    assert_eq!(bodies, vec![("FILE1", "one\n"), ("FILE2", "two\n")]);
    let Instruction::Copy(c) = one("COPY <<a.txt <<\"b.txt\" /dir/\nA\na.txt\nB $x\nb.txt") else { panic!() };
    assert_eq!(c.sources, vec!["<<a.txt", "<<\"b.txt\""]);
    assert_eq!(c.dest, "/dir/");
    assert_eq!(c.heredocs.len(), 2);
    assert!(!c.heredocs[1].expand);
    // Heredoc bodies are not instructions and not comments.
    let v = all("FROM x\nRUN <<EOF\n# not a comment\nFROM nothing\nEOF\nCMD y");
    assert_eq!(v.len(), 3);
    // JSON form has no heredocs.
    let Instruction::Run(r) = one(r#"RUN ["cat", "<<EOF"]"#) else { panic!() };
    assert!(r.heredocs.is_empty());
}

#[test]
fn heredocs_with_whitespace_after_the_operator() {
    let Instruction::Run(r) = one("RUN <<  EOF\necho hi\nEOF") else { panic!() };
    assert_eq!(r.heredocs, vec![Heredoc { name: "EOF".into(), expand: true, chomp: false, content: "echo hi\n".into() }]);
    let Instruction::Run(r) = one("RUN <<  EOF  > foo\nEOF") else { panic!() };
    assert_eq!(r.heredocs.len(), 1);
    assert_eq!(r.heredocs[0].content, "");
    let Instruction::Run(r) = one("RUN << -EOF\nx\n-EOF") else { panic!() };
    assert_eq!(r.heredocs[0].name, "-EOF");
    assert!(!r.heredocs[0].chomp);
    let Instruction::Run(r) = one("RUN cat <<\t'RAW'\n$x\nRAW") else { panic!() };
    assert_eq!(r.heredocs[0].name, "RAW");
    assert!(!r.heredocs[0].expand);
    // `<<- EOF` is two words to BuildKit's lexer, so no heredoc: the next line is an instruction.
    assert!(err("RUN <<- EOF\nEOF").0.starts_with("2:1: unknown instruction: EOF"));
}

#[test]
fn instruction_keywords_are_case_insensitive() {
    assert!(matches!(one("workdir /x"), Instruction::Workdir { .. }));
    assert!(matches!(one("Copy a b"), Instruction::Copy(_)));
}

// ---- errors: each kind, with its position ----

#[test]
fn unknown_instruction() {
    let (msg, kind) = err("FROM x\n  RUNN make");
    assert_eq!(msg, "2:3: unknown instruction: RUNN (did you mean RUN?)");
    assert!(matches!(kind, ErrorKind::UnknownInstruction { .. }));
    assert!(err("FROM x\nFOOBARBAZ y").0.starts_with("2:1: unknown instruction: FOOBARBAZ"));
}

#[test]
fn unterminated_heredoc() {
    let (msg, kind) = err("FROM x\nRUN cat <<EOF\nhello\n");
    assert_eq!(msg, "2:9: unterminated heredoc: no line `EOF` closes the heredoc opened here");
    assert_eq!(kind, ErrorKind::UnterminatedHeredoc { name: "EOF".into() });
}

#[test]
fn flag_errors() {
    let (msg, kind) = err("FROM x\nCOPY --form=a b c");
    assert_eq!(msg, "2:6: unknown flag: --form for COPY (expected one of --from, --chown, --chmod, --link, --parents, --exclude)");
    assert!(matches!(kind, ErrorKind::UnknownFlag { .. }));
    assert!(matches!(err("FROM x\nCOPY --=a b c").1, ErrorKind::EmptyFlagName { .. }));
    assert!(matches!(err("FROM x\nCOPY --from= b c").1, ErrorKind::EmptyFlagValue { .. }));
    assert!(matches!(err("FROM x\nCOPY --from b c").1, ErrorKind::MissingFlagValue { .. }));
    assert!(matches!(err("FROM x\nCOPY --link=yes b c").1, ErrorKind::BadBoolFlag { .. }));
    assert_eq!(err("FROM x\nCOPY --from=a --from=b b c").0, "2:15: duplicate flag specified: --from");
    assert!(matches!(err("FROM x\nRUN --network=bridge true").1, ErrorKind::BadFlagValue { .. }));
    assert!(matches!(err("FROM x\nRUN --security=weird true").1, ErrorKind::BadFlagValue { .. }));
    assert!(matches!(err("FROM x\nENV --foo=bar A=b").1, ErrorKind::UnknownFlag { .. }));
    assert!(matches!(err("FROM x\nCOPY --chmod=999 a b").1, ErrorKind::BadFlagValue { .. }));
    assert!(matches!(err("FROM x\nADD --checksum=md5:abc https://x/y /z").1, ErrorKind::BadFlagValue { .. }));
    assert!(matches!(err(&format!("FROM x\nADD --checksum=sha256:{} local.tar /z", "a".repeat(64))).1, ErrorKind::BadFlagValue { .. }));
    assert!(matches!(err("FROM x\nRUN --mount=type=weird,target=/x true").1, ErrorKind::BadMount { .. }));
    assert!(matches!(err("FROM x\nRUN --mount=target=/x,nope=1 true").1, ErrorKind::BadMount { .. }));
}

#[test]
fn argument_errors() {
    let (msg, kind) = err("FROM x\nCOPY onlyone");
    assert_eq!(msg, "2:1: COPY requires at least two arguments, but only one was provided. Destination could not be determined");
    assert!(matches!(kind, ErrorKind::WrongArgCount { .. }));
    for src in [
        "FROM",
        "FROM a b",
        "FROM a AS",
        "FROM a FOR b",
        "FROM x\nRUN",
        "FROM x\nWORKDIR",
        "FROM x\nUSER",
        "FROM x\nEXPOSE",
        "FROM x\nVOLUME",
        "FROM x\nENV",
        "FROM x\nARG",
        "FROM x\nONBUILD",
        "FROM x\nLABEL",
        "FROM x\nSTOPSIGNAL",
        "FROM x\nHEALTHCHECK",
    ] {
        assert!(matches!(err(src).1, ErrorKind::WrongArgCount { .. }), "{src}");
    }
    assert_eq!(err("FROM x\nENV ONLYKEY").0, "2:1: ENV requires two arguments (KEY VALUE) or KEY=VALUE pairs");
    assert!(matches!(err("FROM x\nENV A=1 B").1, ErrorKind::BadArgument { .. }));
    assert!(matches!(err("FROM x\nENV =1").1, ErrorKind::BadArgument { .. }));
    assert!(matches!(err("FROM x\nARG =1").1, ErrorKind::BadArgument { .. }));
    assert!(matches!(err("FROM x\nVOLUME [\"\"]").1, ErrorKind::BadArgument { .. }));
}

#[test]
fn stage_name_errors() {
    let (msg, kind) = err("FROM alpine AS 1bad");
    assert_eq!(msg, "1:16: invalid name for build stage: \"1bad\", name can't start with a number or contain symbols");
    assert!(matches!(kind, ErrorKind::BadStageName { .. }));
    assert!(matches!(err("FROM alpine AS a$b").1, ErrorKind::BadStageName { .. }));
}

#[test]
fn json_errors() {
    let (msg, kind) = err("FROM x\nCMD [1, 2]");
    assert_eq!(msg, "2:5: when using JSON array syntax, arrays must be comprised of strings only");
    assert_eq!(kind, ErrorKind::NotStringArray);
    assert!(matches!(err("FROM x\nSHELL /bin/bash -c").1, ErrorKind::JsonRequired { .. }));
    assert!(matches!(err("FROM x\nSHELL []").1, ErrorKind::WrongArgCount { .. }));
}

#[test]
fn onbuild_errors() {
    assert_eq!(err("FROM x\nONBUILD ONBUILD RUN x").0, "2:9: ONBUILD: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
    assert!(matches!(err("FROM x\nONBUILD FROM y").1, ErrorKind::BadOnbuild { .. }));
    assert!(matches!(err("FROM x\nONBUILD MAINTAINER y").1, ErrorKind::BadOnbuild { .. }));
    // Errors inside the trigger point into it.
    assert_eq!(err("FROM x\nONBUILD COPY --bad=1 a b").0.split(':').take(2).collect::<Vec<_>>(), vec!["2", "14"]);
}

#[test]
fn healthcheck_errors() {
    assert!(matches!(err("FROM x\nHEALTHCHECK NONE CMD x").1, ErrorKind::BadArgument { .. }));
    assert!(matches!(err("FROM x\nHEALTHCHECK --interval=5 CMD x").1, ErrorKind::BadFlagValue { .. }));
    assert!(err("FROM x\nHEALTHCHECK --timeout=10us CMD x").0.contains("cannot be less than 1ms"));
    assert!(matches!(err("FROM x\nHEALTHCHECK --retries=-1 CMD x").1, ErrorKind::BadFlagValue { .. }));
    assert!(matches!(err("FROM x\nHEALTHCHECK PING x").1, ErrorKind::BadArgument { .. }));
    assert!(matches!(err("FROM x\nHEALTHCHECK CMD").1, ErrorKind::BadArgument { .. }));
}

#[test]
fn directive_errors() {
    assert_eq!(err("# escape=x\nFROM a").0, "1:1: invalid escape token 'x' does not match ` or \\");
    assert_eq!(err("# syntax=a\n# syntax=b\nFROM a").1, ErrorKind::DuplicateDirective { name: "syntax".into() });
}

#[test]
fn error_display_names_the_file() {
    let e = parse("FROM x\nBOGUS").unwrap_err().in_file("app/Dockerfile");
    assert_eq!(e.to_string(), "app/Dockerfile:2:1: unknown instruction: BOGUS");
}
