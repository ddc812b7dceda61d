//! Property tests: a Dockerfile printed from parsed instructions parses back to the same
//! instructions; and no input, however broken, makes the parser or the resolver panic.

use kiln_shared::frontend::instructions::{
    Add, ArgDecl, CommandLine, Copy, Dockerfile, From, Healthcheck, Heredoc, Instruction, KeyValue, KeyValues, Run,
};
use kiln_shared::frontend::mount::{Mount, MountType};
use kiln_shared::frontend::parser::Directives;
use kiln_shared::frontend::resolve::{resolve, NoImages, Options};
use kiln_shared::frontend::{parse, print};
use kiln_shared::Platform;
use proptest::prelude::*;

fn ident() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,7}"
}

/// A word with no whitespace, quotes, escapes or heredoc openers.
fn word() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9][a-zA-Z0-9_./:@+-]{0,11}", ident().prop_map(|v| format!("${v}")), ident().prop_map(|v| format!("${{{v}:-x}}")),]
}

fn words(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(word(), 1..=max)
}

/// A shell-form command: words that cannot be mistaken for JSON, flags or heredocs.
fn shell_cmd() -> impl Strategy<Value = String> {
    (
        word(),
        prop::collection::vec(prop_oneof![word(), Just("&&".to_string()), Just("\"a b\"".to_string()), Just("'$c'".to_string())], 0..5),
    )
        .prop_map(|(first, rest)| std::iter::once(first).chain(rest).collect::<Vec<_>>().join(" "))
}

/// Any strings at all: exec form is JSON, which can carry them.
fn exec_args() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(any::<String>(), 0..4)
}

fn command() -> impl Strategy<Value = CommandLine> {
    prop_oneof![shell_cmd().prop_map(CommandLine::Shell), exec_args().prop_map(CommandLine::Exec)]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        word(),
        "[a-z ]{0,8}".prop_map(|v| format!("\"{v}\"")),
        "[a-z $]{0,8}".prop_map(|v| format!("'{v}'")),
        Just("\"\"".to_string())
    ]
}

fn key_values() -> impl Strategy<Value = KeyValues> {
    prop_oneof![
        prop::collection::vec((ident(), value()), 1..4)
            .prop_map(|v| KeyValues { pairs: v.into_iter().map(|(key, value)| KeyValue { key, value }).collect(), legacy: false }),
        (ident(), words(3)).prop_map(|(key, v)| KeyValues { pairs: vec![KeyValue { key, value: v.join(" ") }], legacy: true }),
    ]
}

fn opt(s: impl Strategy<Value = String>) -> impl Strategy<Value = Option<String>> {
    prop::option::of(s)
}

fn mount() -> impl Strategy<Value = Mount> {
    let kind =
        prop_oneof![Just(MountType::Bind), Just(MountType::Cache), Just(MountType::Tmpfs), Just(MountType::Secret), Just(MountType::Ssh)];
    (
        kind,
        word(),
        opt(word()),
        opt("[a-z][a-z0-9]{0,6}"),
        any::<Option<bool>>(),
        opt(Just("locked".to_string())),
        opt(Just("0755".to_string())),
    )
        .prop_map(|(kind, target, source, from, readonly, sharing, mode)| {
            let mut m = Mount::parse(&format!("type={},target={target}", kind.as_str())).expect("valid mount");
            m.readonly = readonly;
            match kind {
                MountType::Bind => {
                    m.source = source;
                    m.from = from;
                }
                MountType::Cache => {
                    m.sharing = sharing;
                    m.mode = mode;
                    m.from = from;
                }
                MountType::Secret => m.id = source,
                MountType::Ssh | MountType::Tmpfs => {}
            }
            m
        })
}

/// A heredoc and the word that opens it.
fn heredoc() -> impl Strategy<Value = (String, Heredoc)> {
    ("[A-Z]{2,5}", any::<bool>(), any::<bool>(), prop::collection::vec("\t{0,2}[a-z $\"']{0,12}", 0..4)).prop_map(
        |(name, quoted, chomp, lines)| {
            let opener = format!("<<{}{}", if chomp { "-" } else { "" }, if quoted { format!("'{name}'") } else { name.clone() });
            let content: String = lines.iter().map(|l| format!("{l}\n")).collect();
            (opener, Heredoc { name, expand: !quoted, chomp, content })
        },
    )
}

fn duration() -> impl Strategy<Value = Option<String>> {
    opt(prop_oneof![Just("30s".to_string()), Just("1m30s".to_string()), Just("500ms".to_string()), Just("0".to_string())])
}

fn instruction() -> impl Strategy<Value = Instruction> {
    let leaf = prop_oneof![
        (opt(word()), word(), opt("[a-z][a-z0-9_.-]{0,8}")).prop_map(|(platform, image, name)| Instruction::From(From {
            platform,
            image,
            name
        })),
        (
            prop::collection::vec(mount(), 0..3),
            opt(prop_oneof![Just("none".to_string()), Just("host".to_string())]),
            opt(Just("insecure".to_string())),
            command()
        )
            .prop_map(|(mounts, network, security, command)| Instruction::Run(Run {
                mounts,
                network,
                security,
                command,
                heredocs: vec![]
            })),
        (prop::collection::vec(heredoc(), 1..3), word()).prop_map(|(docs, cmd)| {
            let openers: Vec<String> = docs.iter().map(|d| d.0.clone()).collect();
            let command = CommandLine::Shell(format!("{cmd} {}", openers.join(" ")));
            Instruction::Run(Run {
                mounts: vec![],
                network: None,
                security: None,
                command,
                heredocs: docs.into_iter().map(|d| d.1).collect(),
            })
        }),
        command().prop_map(|command| Instruction::Cmd { command }),
        command().prop_map(|command| Instruction::Entrypoint { command }),
        key_values().prop_map(Instruction::Label),
        key_values().prop_map(Instruction::Env),
        words(3).prop_map(|ports| Instruction::Expose { ports }),
        (
            opt(word()),
            opt(word()),
            opt(Just("0755".to_string())),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(word(), 0..2),
            words(3),
            word(),
            any::<bool>()
        )
            .prop_map(|(from, chown, chmod, link, parents, exclude, sources, dest, json)| Instruction::Copy(Copy {
                from,
                chown,
                chmod,
                link,
                parents,
                exclude,
                sources,
                dest,
                json,
                heredocs: vec![]
            })),
        (prop::collection::vec(heredoc(), 1..3), word()).prop_map(|(docs, dest)| {
            let sources = docs.iter().map(|d| d.0.clone()).collect();
            Instruction::Copy(Copy {
                from: None,
                chown: None,
                chmod: None,
                link: false,
                parents: false,
                exclude: vec![],
                sources,
                dest,
                json: false,
                heredocs: docs.into_iter().map(|d| d.1).collect(),
            })
        }),
        (opt(word()), any::<bool>(), any::<bool>(), words(3), word()).prop_map(|(chown, link, keep_git_dir, sources, dest)| {
            Instruction::Add(Add {
                chown,
                chmod: None,
                link,
                checksum: None,
                keep_git_dir,
                exclude: vec![],
                sources,
                dest,
                json: false,
                heredocs: vec![],
            })
        }),
        (words(3), any::<bool>()).prop_map(|(paths, json)| Instruction::Volume { paths, json }),
        word().prop_map(|user| Instruction::User { user }),
        words(3).prop_map(|w| Instruction::Workdir { path: w.join(" ") }),
        prop::collection::vec((ident(), opt(word())), 1..4)
            .prop_map(|v| Instruction::Arg { args: v.into_iter().map(|(name, default)| ArgDecl { name, default }).collect() }),
        word().prop_map(|signal| Instruction::Stopsignal { signal }),
        Just(Instruction::Healthcheck(Healthcheck::None)),
        (duration(), duration(), duration(), duration(), any::<Option<u8>>(), command()).prop_map(
            |(interval, timeout, start_period, start_interval, retries, command)| {
                Instruction::Healthcheck(Healthcheck::Cmd {
                    interval,
                    timeout,
                    start_period,
                    start_interval,
                    retries: retries.map(u32::from),
                    command,
                })
            }
        ),
        prop::collection::vec(any::<String>(), 1..4).prop_map(|shell| Instruction::Shell { shell }),
        words(3).prop_map(|w| Instruction::Maintainer { name: w.join(" ") }),
    ];
    leaf.prop_flat_map(|inst| {
        let wrap = matches!(inst, Instruction::Env(_) | Instruction::Cmd { .. } | Instruction::Workdir { .. } | Instruction::User { .. });
        (Just(inst), if wrap { any::<bool>().boxed() } else { Just(false).boxed() })
    })
    .prop_map(|(inst, wrap)| {
        if wrap {
            let expression = print::instruction(&inst, print::Style::Source);
            Instruction::Onbuild { trigger: Box::new(inst), expression }
        } else {
            inst
        }
    })
}

fn dockerfile() -> impl Strategy<Value = Dockerfile> {
    (prop::collection::vec(instruction(), 0..12), any::<bool>(), opt(Just("docker/dockerfile:1".to_string()))).prop_map(
        |(insts, backtick, syntax)| {
            let instructions = insts
                .into_iter()
                .map(|instruction| kiln_shared::frontend::Located {
                    pos: Default::default(),
                    end_line: 0,
                    source: String::new(),
                    instruction,
                })
                .collect();
            Dockerfile { directives: Directives { syntax, escape: if backtick { '`' } else { '\\' }, check: None }, instructions }
        },
    )
}

fn instructions(df: &Dockerfile) -> Vec<Instruction> {
    df.instructions.iter().map(|l| l.instruction.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn printed_dockerfiles_parse_back_to_the_same_structure(df in dockerfile()) {
        let text = print::dockerfile(&df);
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n---\n{text}")))?;
        prop_assert_eq!(&parsed.directives, &df.directives, "{}", text);
        prop_assert_eq!(instructions(&parsed), instructions(&df), "{}", text);
        // And printing the parse again gives the same text.
        prop_assert_eq!(print::dockerfile(&parsed), text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(FROM|RUN|COPY|ENV|ARG|ONBUILD|HEALTHCHECK|[A-Za-z]{1,4}|<<-?'?EOF'?|EOF|--[a-z]{0,5}=?|[ \t\n\\\\`$\\{\\}:=\"'\\[\\],#!0-9a-z/.-]){0,40}") {
        if let Ok(df) = parse(&text) {
            let opts = Options { platform: Platform::host(), build_platform: Platform::host(), build_args: &[], target: None, images: &NoImages, contexts: &[] };
            let _ = resolve(&df, &opts);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(text in any::<String>()) {
        let _ = parse(&text);
    }
}
