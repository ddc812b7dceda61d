//! qemu set-up: `kiln agent --install-binfmt` and `kiln inspect --bootstrap` on the embedded
//! farm register qemu-user-static with binfmt_misc, then probe again.
//!
//! binfmt_misc is shared by the whole host, and this host's handlers (Debian's binfmt-support)
//! must not change under the other processes using them. Since Linux 6.7 a user namespace that
//! mounts binfmt_misc gets an instance of its own, empty, which its processes use instead of
//! the host's; so each test runs kiln as root of a new user namespace with a fresh /proc
//! (`unshare --user --map-root-user --mount --pid --fork --mount-proc`), where binfmt_misc is
//! not mounted: kiln mounts it, finds no handler and registers them, exactly as on a bare host.
//! Every test also checks that the host's own entries are what they were.

use kiln_tests::{kiln_bin, stderr, stdout, Bounded, TempDir};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

const HOST_BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// The host's binfmt_misc entries and their contents.
fn host_entries() -> BTreeMap<String, String> {
    std::fs::read_dir(HOST_BINFMT)
        .expect("the host's binfmt_misc (Debian's binfmt-support mounts it)")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name() != "register")
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap_or_default()))
        .collect()
}

/// Runs `script` (sh) as root of a new user namespace with a fresh /proc, `$KILN` naming the
/// kiln binary; `unshare_flags` replace the root mapping when given.
fn private(script: &str, home: &Path, unshare_flags: Option<&[&str]>) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.args(unshare_flags.unwrap_or(&["--user", "--map-root-user"]));
    cmd.args(["--mount", "--pid", "--fork", "--mount-proc", "sh", "-c", script])
        .env("KILN", kiln_bin())
        .env("KILN_HOME", home)
        .current_dir(home);
    cmd.bounded().expect("unshare (util-linux)")
}

fn qemu_present() {
    for arch in ["aarch64", "riscv64"] {
        let bin = format!("/usr/bin/qemu-{arch}-static");
        assert!(Path::new(&bin).is_file(), "{bin} is missing: apt-get install qemu-user-static");
    }
}

#[test]
fn install_binfmt_registers_the_missing_handlers_then_leaves_them() {
    qemu_present();
    let home = TempDir::new("binfmt");
    let before = host_entries();
    let out = private(
        r#"set -e
        "$KILN" agent --install-binfmt
        echo "--- entry"
        cat /proc/sys/fs/binfmt_misc/qemu-aarch64
        echo "--- again"
        "$KILN" agent --install-binfmt"#,
        home.path(),
        None,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let (first, rest) = text.split_once("--- entry").expect("first run");
    let (entry, again) = rest.split_once("--- again").expect("second run");
    assert!(first.contains("mounted binfmt_misc at /proc/sys/fs/binfmt_misc"), "kiln mounts binfmt_misc when it is not:\n{first}");
    assert!(first.contains("registered qemu-aarch64 (/usr/bin/qemu-aarch64-static, flags CF)"), "{first}");
    assert!(first.contains("qemu-riscv64 (/usr/bin/qemu-riscv64-static, flags CF)"), "{first}");
    assert!(!first.contains("qemu-x86_64"), "the host's own architecture gets no handler:\n{first}");
    let emulated =
        first.lines().find_map(|l| l.strip_prefix("emulated platforms: ")).unwrap_or_else(|| panic!("no probe result:\n{first}"));
    for p in ["linux/arm64", "linux/riscv64", "linux/ppc64le"] {
        assert!(emulated.split(", ").any(|e| e == p), "{p} is emulated after registering: {emulated}");
    }
    // The fix-binary flag: the kernel holds the interpreter open, so containers need no qemu.
    let flags = entry.lines().find_map(|l| l.strip_prefix("flags: ")).unwrap_or_else(|| panic!("no flags in:\n{entry}"));
    assert!(flags.contains('F') && flags.contains('C'), "flags {flags:?}");
    assert!(entry.contains("interpreter /usr/bin/qemu-aarch64-static"), "{entry}");
    assert!(entry.contains("magic 7f454c460201010000000000000000000200b700"), "{entry}");
    // Idempotent: nothing is registered twice or replaced.
    assert!(!again.contains("registered qemu") && !again.contains("mounted"), "{again}");
    assert!(again.contains("already registered: qemu-aarch64, qemu-arm, qemu-riscv64, qemu-s390x, qemu-ppc64le"), "{again}");
    assert_eq!(host_entries(), before, "the host's binfmt_misc is untouched");
}

#[test]
fn inspect_bootstrap_sets_up_qemu_for_the_embedded_farm() {
    qemu_present();
    let home = TempDir::new("binfmt-inspect");
    let before = host_entries();
    let out = private(r#""$KILN" inspect --bootstrap"#, home.path(), None);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("registered qemu-aarch64 (/usr/bin/qemu-aarch64-static, flags CF)"), "{text}");
    // The embedded agent started after the registration and probed: its platforms say so.
    let platforms = text.lines().find_map(|l| l.strip_prefix("Platforms:")).unwrap_or_else(|| panic!("no node in:\n{text}"));
    assert!(platforms.contains("linux/amd64,") && platforms.contains("linux/arm64 (emulated)"), "{platforms}");
    assert!(text.contains("Status:        running"), "{text}");
    assert_eq!(host_entries(), before, "the host's binfmt_misc is untouched");
}

/// Without qemu (every interpreter hidden behind /dev/null in the test's mount namespace), or
/// without root, one line says what to install or run, and nothing is registered.
#[test]
fn without_qemu_or_root_one_line_says_what_to_do() {
    let home = TempDir::new("binfmt-missing");
    let before = host_entries();
    let out = private(
        r#"for f in /usr/bin/qemu-*-static /usr/libexec/qemu-binfmt/*; do [ -e "$f" ] && mount --bind /dev/null "$f"; done
        "$KILN" agent --install-binfmt; echo "exit $?"
        ls /proc/sys/fs/binfmt_misc"#,
        home.path(),
        None,
    );
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: no qemu-user-static interpreter under /usr/bin or /usr/libexec/qemu-binfmt for arm64, ")
            && err.trim_end().ends_with("install it with `apt-get install qemu-user-static`"),
        "{err}"
    );
    let listing = stdout(&out);
    assert!(listing.contains("exit 1"), "{listing}");
    assert_eq!(listing.lines().filter(|l| l.starts_with("qemu-")).count(), 0, "nothing registered:\n{listing}");

    // A user that is not root, in a namespace whose /proc has no binfmt_misc mounted.
    let out = private(r#""$KILN" agent --install-binfmt"#, home.path(), Some(&["--map-user=1000", "--map-group=1000"]));
    let err = stderr(&out);
    assert!(!out.status.success() && err.lines().count() == 1, "{err}");
    assert!(
        err.contains("needs root: run `sudo kiln agent --install-binfmt` (or `apt-get install qemu-user-static binfmt-support`)"),
        "{err}"
    );

    // On the embedded farm the same line is a warning, and the builder is shown as it is.
    let out = private(
        r#"for f in /usr/bin/qemu-*-static /usr/libexec/qemu-binfmt/*; do [ -e "$f" ] && mount --bind /dev/null "$f"; done
        "$KILN" inspect --bootstrap"#,
        home.path(),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: no qemu-user-static interpreter"), "{}", stderr(&out));
    let platforms = stdout(&out).lines().find_map(|l| l.strip_prefix("Platforms:").map(str::trim).map(String::from));
    assert_eq!(platforms.as_deref(), Some("linux/amd64"), "{}", stdout(&out));
    assert_eq!(host_entries(), before, "the host's binfmt_misc is untouched");
}
