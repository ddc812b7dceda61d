//! `Platform`: the validated `os/arch[/variant]` triple that names what a slice is built for.
//!
//! Every side of kiln speaks it: the CLI parses `--platform`, the coordinator splits a build into
//! one slice per platform and routes each to an agent whose hardware (or qemu) runs it, agents
//! report the platforms they run, and the frontend expands `TARGETPLATFORM`/`BUILDPLATFORM`.
//! Because all of them compare platforms for equality, the value is normalised once, here, the
//! way containerd's `platforms.Normalize(platforms.Parse(s))` does (which is what buildx and
//! BuildKit use), so `linux/aarch64`, `linux/arm64` and `linux/arm64/v8` are one key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Operating systems kiln accepts (Go's `GOOS` names; containerd's normalised spelling).
const KNOWN_OS: &[&str] =
    &["linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "illumos", "solaris", "android", "ios", "aix", "plan9", "js", "wasip1"];

/// Architectures kiln accepts (Go's `GOARCH` names, as OCI image indexes spell them).
const KNOWN_ARCH: &[&str] =
    &["amd64", "arm64", "arm", "386", "ppc64le", "ppc64", "s390x", "riscv64", "mips", "mipsle", "mips64", "mips64le", "loong64", "wasm"];

/// Shown in "unknown architecture" errors: the arches with the variants people actually type.
const KNOWN_ARCH_HINT: &str = "amd64, arm64, arm/v5, arm/v6, arm/v7, arm/v8, 386, ppc64le, ppc64, \
                               s390x, riscv64, mips, mipsle, mips64, mips64le, loong64, wasm";

/// The word that stands for the host's own platform in `--platform` lists, as in buildx.
const LOCAL: &str = "local";

/// A normalised, validated platform such as `linux/amd64` or `linux/arm/v7`.
///
/// Construct it with [`Platform::new`], [`str::parse`] or [`Platform::host`]; the fields are
/// private so an unnormalised value cannot exist.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: String,
    arch: String,
    variant: Option<String>,
}

/// Why a platform specifier was refused. Each variant carries the input as the user wrote it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PlatformError {
    #[error("empty platform specifier: expected os/arch[/variant], e.g. linux/amd64")]
    Empty,
    #[error("no platforms in {input:?}: expected a comma-separated list such as linux/amd64,linux/arm64")]
    EmptyList { input: String },
    #[error("invalid platform {input:?}: it has an empty component, expected os/arch[/variant]")]
    EmptyComponent { input: String },
    #[error("invalid platform {input:?}: too many components, expected os/arch or os/arch/variant")]
    TooManyComponents { input: String },
    #[error(
        "unknown platform {input:?}: operating system {os:?} is not supported (known: {})",
        KNOWN_OS.join(", ")
    )]
    UnknownOs { input: String, os: String },
    #[error(
        "unknown platform {input:?}: architecture {arch:?} is not supported (known: {hint})",
        hint = KNOWN_ARCH_HINT
    )]
    UnknownArch { input: String, arch: String },
    #[error(
        "unknown platform {input:?}: it is neither a known operating system nor a known architecture \
         (known architectures: {hint})",
        hint = KNOWN_ARCH_HINT
    )]
    Unrecognised { input: String },
    #[error("invalid platform {input:?}: variant {variant:?} is not valid for architecture {arch} (expected {expected})")]
    BadVariant { input: String, arch: String, variant: String, expected: &'static str },
}

impl Platform {
    /// Normalise and validate the three parts. An empty variant is the same as none.
    pub fn new(os: &str, arch: &str, variant: Option<&str>) -> Result<Platform, PlatformError> {
        let input = match variant {
            Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
            _ => format!("{os}/{arch}"),
        };
        Self::build(&input, os, arch, variant.unwrap_or(""))
    }

    /// The platform this process runs on, spelled the OCI way.
    ///
    /// Rust's `std::env::consts` spellings differ from Go's (`x86_64`, `aarch64`, `macos`, ...);
    /// this maps them. It never fails: an exotic host keeps its own name so it can still be
    /// printed, it just will not match any platform a user can type.
    pub fn host() -> Platform {
        let os = normalize_os(&host_os_name(std::env::consts::OS));
        let (arch, variant) = host_arch(std::env::consts::ARCH);
        Platform { os, arch: arch.to_owned(), variant: variant.map(str::to_owned) }
    }

    pub fn os(&self) -> &str {
        &self.os
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// Parse a `--platform` value: comma separated, items trimmed, empty items skipped, `local`
    /// meaning the host, duplicates (after normalisation) dropped keeping the first occurrence,
    /// so `linux/arm64,linux/aarch64` asks for one slice, not two.
    pub fn parse_list(s: &str) -> Result<Vec<Platform>, PlatformError> {
        let mut out: Vec<Platform> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let p: Platform = item.parse()?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.is_empty() {
            return Err(PlatformError::EmptyList { input: s.to_owned() });
        }
        Ok(out)
    }

    /// Shared by `new` and `from_str`: `input` is only used for error messages.
    fn build(input: &str, os: &str, arch: &str, variant: &str) -> Result<Platform, PlatformError> {
        if os.is_empty() || arch.is_empty() {
            return Err(PlatformError::EmptyComponent { input: input.to_owned() });
        }
        let os = normalize_os(os);
        if !KNOWN_OS.contains(&os.as_str()) {
            return Err(PlatformError::UnknownOs { input: input.to_owned(), os });
        }
        let (arch, variant) = normalize_arch(arch, variant);
        if !KNOWN_ARCH.contains(&arch.as_str()) {
            return Err(PlatformError::UnknownArch { input: input.to_owned(), arch });
        }
        validate_variant(&arch, &variant).map_err(|expected| PlatformError::BadVariant {
            input: input.to_owned(),
            arch: arch.clone(),
            variant: variant.clone(),
            expected,
        })?;
        Ok(Platform { os, arch, variant: (!variant.is_empty()).then_some(variant) })
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Accepts `os/arch`, `os/arch/variant`, a bare OS (host architecture), a bare architecture
    /// (os `linux`) and `local` (the host).
    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        let input = s.trim();
        if input.is_empty() {
            return Err(PlatformError::Empty);
        }
        if input.eq_ignore_ascii_case(LOCAL) {
            return Ok(Platform::host());
        }
        let parts: Vec<&str> = input.split('/').collect();
        match parts.as_slice() {
            [single] => {
                let os = normalize_os(single);
                if KNOWN_OS.contains(&os.as_str()) {
                    // containerd: a bare OS takes the host's architecture and variant.
                    let host = Platform::host();
                    return Ok(Platform { os, arch: host.arch, variant: host.variant });
                }
                // containerd fills in the host OS here; kiln builds Linux images, so a bare
                // `arm64` means `linux/arm64` whatever the CLI happens to run on.
                let (arch, _) = normalize_arch(single, "");
                if !KNOWN_ARCH.contains(&arch.as_str()) {
                    return Err(PlatformError::Unrecognised { input: input.to_owned() });
                }
                Self::build(input, "linux", single, "")
            }
            [os, arch] => Self::build(input, os, arch, ""),
            [os, arch, variant] => {
                if variant.is_empty() {
                    return Err(PlatformError::EmptyComponent { input: input.to_owned() });
                }
                Self::build(input, os, arch, variant)
            }
            _ => Err(PlatformError::TooManyComponents { input: input.to_owned() }),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// On the wire and in config files a platform is its canonical string, as in OCI and buildx.
impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Platform, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// containerd `normalizeOS`: lowercase, `macos` is `darwin`.
fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_owned(),
        _ => os,
    }
}

/// containerd `normalizeArch` followed by `Normalize`'s view of the variant: lowercase, alias
/// arches folded, default variants dropped (amd64 `v1`, arm64 `v8`) or filled in (arm `v7`).
/// Returns an empty variant for "none".
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    match arch.as_str() {
        // containerd only knows `i386`; the i486..i686 spellings (uname -m on old x86) are a
        // kiln extension. containerd discards any variant for these.
        "i386" | "i486" | "i586" | "i686" => ("386".to_owned(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let variant = if variant == "v1" { String::new() } else { variant };
            ("amd64".to_owned(), variant)
        }
        "aarch64" | "arm64" => {
            let variant = match variant.as_str() {
                "8" | "v8" => String::new(),
                _ => variant,
            };
            ("arm64".to_owned(), variant)
        }
        // Debian's names; containerd overrides any explicit variant for them.
        "armhf" => ("arm".to_owned(), "v7".to_owned()),
        "armel" => ("arm".to_owned(), "v6".to_owned()),
        "arm" => {
            let variant = match variant.as_str() {
                "" | "7" => "v7".to_owned(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".to_owned(), variant)
        }
        _ => (arch, variant),
    }
}

/// containerd accepts any variant; kiln schedules on it, so a typo must not silently become a
/// platform no agent will ever claim. `Err` carries the accepted forms for the message.
fn validate_variant(arch: &str, variant: &str) -> Result<(), &'static str> {
    let ok = match arch {
        "arm" => matches!(variant, "v5" | "v6" | "v7" | "v8"),
        // v8 is the default and already dropped; ARMv8.x/ARMv9.x variants are kept as
        // containerd keeps them.
        "arm64" => variant.is_empty() || is_arm64_variant(variant),
        "amd64" => matches!(variant, "" | "v2" | "v3" | "v4"),
        _ => variant.is_empty(),
    };
    if ok {
        return Ok(());
    }
    Err(match arch {
        "arm" => "v5, v6, v7 or v8",
        "arm64" => "none, v8, v8.N, v9 or v9.N",
        "amd64" => "none, v1, v2, v3 or v4",
        _ => "no variant",
    })
}

/// `v8.N`, `v9` or `v9.N` with N a decimal number.
fn is_arm64_variant(variant: &str) -> bool {
    let rest = match variant.strip_prefix("v8.").or_else(|| variant.strip_prefix("v9.")) {
        Some(minor) => minor,
        None => return variant == "v9",
    };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
}

/// Rust's `std::env::consts::OS` names that differ from Go's.
fn host_os_name(os: &str) -> String {
    match os {
        "macos" => "darwin".to_owned(),
        "wasi" => "wasip1".to_owned(),
        other => other.to_owned(),
    }
}

/// Rust's `std::env::consts::ARCH` to OCI arch and variant. Endianness decides between the
/// `mips`/`mipsle` and `ppc64`/`ppc64le` pairs, which Rust names alike.
fn host_arch(arch: &str) -> (&str, Option<&str>) {
    let little = cfg!(target_endian = "little");
    match arch {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", None),
        // Rust does not expose the ARM architecture level on stable; v7 is containerd's default
        // and what every arm image index calls plain `arm`.
        "arm" => ("arm", Some("v7")),
        "powerpc64" if little => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "mips" | "mips32r6" if little => ("mipsle", None),
        "mips" | "mips32r6" => ("mips", None),
        "mips64" | "mips64r6" if little => ("mips64le", None),
        "mips64" | "mips64r6" => ("mips64", None),
        "loongarch64" => ("loong64", None),
        "wasm32" => ("wasm", None),
        other => (other, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn err(s: &str) -> PlatformError {
        match s.parse::<Platform>() {
            Ok(p) => panic!("{s:?} should not parse, got {p}"),
            Err(e) => e,
        }
    }

    #[test]
    fn canonical_forms_round_trip() {
        for s in [
            "linux/amd64",
            "linux/amd64/v2",
            "linux/amd64/v3",
            "linux/amd64/v4",
            "linux/arm64",
            "linux/arm64/v8.1",
            "linux/arm64/v9",
            "linux/arm/v5",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm/v8",
            "linux/386",
            "linux/ppc64le",
            "linux/ppc64",
            "linux/s390x",
            "linux/riscv64",
            "linux/mips",
            "linux/mipsle",
            "linux/mips64",
            "linux/mips64le",
            "linux/loong64",
            "js/wasm",
            "wasip1/wasm",
            "windows/amd64",
            "darwin/arm64",
            "freebsd/amd64",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn accessors() {
        let pl = p("linux/arm/v6");
        assert_eq!(pl.os(), "linux");
        assert_eq!(pl.arch(), "arm");
        assert_eq!(pl.variant(), Some("v6"));
        assert_eq!(p("linux/amd64").variant(), None);
    }

    #[test]
    fn os_normalisation() {
        assert_eq!(p("macos/arm64").to_string(), "darwin/arm64");
        assert_eq!(p("MacOS/arm64").to_string(), "darwin/arm64");
        assert_eq!(p("LINUX/AMD64").to_string(), "linux/amd64");
        assert_eq!(p("Windows/x86_64").to_string(), "windows/amd64");
    }

    #[test]
    fn x86_normalisation() {
        for a in ["i386", "i486", "i586", "i686", "386", "I686"] {
            assert_eq!(p(&format!("linux/{a}")).to_string(), "linux/386", "{a}");
        }
        for a in ["x86_64", "x86-64", "amd64", "X86_64", "AMD64"] {
            assert_eq!(p(&format!("linux/{a}")).to_string(), "linux/amd64", "{a}");
        }
        // containerd: the i386 alias discards the variant outright.
        assert_eq!(p("linux/i386/whatever").to_string(), "linux/386");
        // amd64 v1 is the baseline, spelled without a variant; v2..v4 are kept.
        assert_eq!(p("linux/amd64/v1").to_string(), "linux/amd64");
        assert_eq!(p("linux/x86_64/V1").to_string(), "linux/amd64");
        assert_eq!(p("linux/x86_64/v3").to_string(), "linux/amd64/v3");
    }

    #[test]
    fn arm64_normalisation() {
        for s in ["linux/aarch64", "linux/arm64", "linux/arm64/v8", "linux/arm64/8", "linux/AArch64/V8"] {
            assert_eq!(p(s).to_string(), "linux/arm64", "{s}");
        }
        assert_eq!(p("linux/aarch64/v8.2").to_string(), "linux/arm64/v8.2");
        assert_eq!(p("linux/arm64/v9.1").to_string(), "linux/arm64/v9.1");
    }

    #[test]
    fn arm_normalisation() {
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/7").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/5").to_string(), "linux/arm/v5");
        assert_eq!(p("linux/arm/6").to_string(), "linux/arm/v6");
        assert_eq!(p("linux/arm/8").to_string(), "linux/arm/v8");
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/armel").to_string(), "linux/arm/v6");
        // containerd lets the Debian alias win over an explicit variant.
        assert_eq!(p("linux/armhf/v6").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/armel/v7").to_string(), "linux/arm/v6");
    }

    #[test]
    fn aarch32_is_unknown_as_in_containerd() {
        assert!(matches!(err("linux/aarch32"), PlatformError::UnknownArch { .. }));
    }

    #[test]
    fn single_component_arch_means_linux() {
        assert_eq!(p("arm64").to_string(), "linux/arm64");
        assert_eq!(p("x86_64").to_string(), "linux/amd64");
        assert_eq!(p("arm").to_string(), "linux/arm/v7");
        assert_eq!(p("armel").to_string(), "linux/arm/v6");
        assert_eq!(p("i686").to_string(), "linux/386");
    }

    #[test]
    fn single_component_os_takes_host_arch() {
        let host = Platform::host();
        for os in ["linux", "windows", "macos", "freebsd"] {
            let pl = p(os);
            assert_eq!(pl.os(), normalize_os(os));
            assert_eq!(pl.arch(), host.arch());
            assert_eq!(pl.variant(), host.variant());
        }
    }

    #[test]
    fn local_is_host() {
        assert_eq!(p("local"), Platform::host());
        assert_eq!(p(" LOCAL "), Platform::host());
    }

    #[test]
    fn host_is_normalised() {
        let host = Platform::host();
        assert!(!host.os().is_empty());
        // The test hosts kiln runs on are all known platforms; its string must parse back to it.
        assert_eq!(p(&host.to_string()), host);
        assert_ne!(host.arch(), "x86_64");
        assert_ne!(host.arch(), "aarch64");
        assert_ne!(host.os(), "macos");
    }

    #[test]
    fn host_arch_mapping() {
        assert_eq!(host_arch("x86_64"), ("amd64", None));
        assert_eq!(host_arch("x86"), ("386", None));
        assert_eq!(host_arch("aarch64"), ("arm64", None));
        assert_eq!(host_arch("arm"), ("arm", Some("v7")));
        assert_eq!(host_arch("loongarch64"), ("loong64", None));
        assert_eq!(host_arch("riscv64"), ("riscv64", None));
        assert_eq!(host_arch("s390x"), ("s390x", None));
        assert_eq!(host_arch("wasm32"), ("wasm", None));
        let (ppc, _) = host_arch("powerpc64");
        assert!(ppc == "ppc64le" || ppc == "ppc64");
        assert_eq!(host_os_name("macos"), "darwin");
        assert_eq!(host_os_name("wasi"), "wasip1");
        assert_eq!(host_os_name("linux"), "linux");
    }

    #[test]
    fn new_normalises_and_validates() {
        let pl = Platform::new("Linux", "aarch64", Some("v8")).unwrap();
        assert_eq!(pl.to_string(), "linux/arm64");
        assert_eq!(Platform::new("linux", "arm", None).unwrap().to_string(), "linux/arm/v7");
        assert_eq!(Platform::new("linux", "amd64", Some("")).unwrap().variant(), None);
        assert_eq!(
            Platform::new("linux", "sparc", None),
            Err(PlatformError::UnknownArch { input: "linux/sparc".into(), arch: "sparc".into() })
        );
        assert_eq!(Platform::new("", "amd64", None), Err(PlatformError::EmptyComponent { input: "/amd64".into() }));
        assert!(matches!(Platform::new("linux", "arm", Some("v9")), Err(PlatformError::BadVariant { .. })));
    }

    #[test]
    fn error_empty() {
        assert_eq!(err(""), PlatformError::Empty);
        assert_eq!(err("   "), PlatformError::Empty);
        assert_eq!(PlatformError::Empty.to_string(), "empty platform specifier: expected os/arch[/variant], e.g. linux/amd64");
    }

    #[test]
    fn error_empty_component() {
        for s in ["linux/", "/amd64", "linux//v7", "linux/arm/", "/"] {
            assert_eq!(err(s), PlatformError::EmptyComponent { input: s.into() }, "{s}");
        }
        assert_eq!(err("linux/").to_string(), "invalid platform \"linux/\": it has an empty component, expected os/arch[/variant]");
    }

    #[test]
    fn error_too_many_components() {
        let e = err("linux/arm/v7/extra");
        assert_eq!(e, PlatformError::TooManyComponents { input: "linux/arm/v7/extra".into() });
        assert_eq!(e.to_string(), "invalid platform \"linux/arm/v7/extra\": too many components, expected os/arch or os/arch/variant");
    }

    #[test]
    fn error_unknown_os() {
        let e = err("beos/amd64");
        assert_eq!(e, PlatformError::UnknownOs { input: "beos/amd64".into(), os: "beos".into() });
        let msg = e.to_string();
        assert!(
            msg.starts_with("unknown platform \"beos/amd64\": operating system \"beos\" is not supported (known: linux, windows, darwin"),
            "{msg}"
        );
        // The OS alias table is containerd's: `osx` is not `darwin`.
        assert!(matches!(err("osx/arm64"), PlatformError::UnknownOs { .. }));
    }

    #[test]
    fn error_unknown_arch() {
        let e = err("linux/sparc");
        assert_eq!(e, PlatformError::UnknownArch { input: "linux/sparc".into(), arch: "sparc".into() });
        assert_eq!(
            e.to_string(),
            "unknown platform \"linux/sparc\": architecture \"sparc\" is not supported (known: amd64, arm64, \
             arm/v5, arm/v6, arm/v7, arm/v8, 386, ppc64le, ppc64, s390x, riscv64, mips, mipsle, mips64, \
             mips64le, loong64, wasm)"
        );
        // The lowercased name is reported: that is what was looked up.
        assert_eq!(err("linux/SPARC"), PlatformError::UnknownArch { input: "linux/SPARC".into(), arch: "sparc".into() });
        assert!(matches!(err("linux/*"), PlatformError::UnknownArch { .. }));
    }

    #[test]
    fn error_unrecognised_single_component() {
        let e = err("sparc");
        assert_eq!(e, PlatformError::Unrecognised { input: "sparc".into() });
        assert!(e.to_string().starts_with("unknown platform \"sparc\": it is neither a known operating system nor a known architecture"));
    }

    #[test]
    fn error_bad_variant() {
        let cases = [
            ("linux/arm/v9", "arm", "v9", "v5, v6, v7 or v8"),
            ("linux/arm/v4", "arm", "v4", "v5, v6, v7 or v8"),
            ("linux/amd64/v5", "amd64", "v5", "none, v1, v2, v3 or v4"),
            ("linux/arm64/v7", "arm64", "v7", "none, v8, v8.N, v9 or v9.N"),
            ("linux/arm64/v8.", "arm64", "v8.", "none, v8, v8.N, v9 or v9.N"),
            ("linux/arm64/v9.x", "arm64", "v9.x", "none, v8, v8.N, v9 or v9.N"),
            ("linux/386/sse2", "386", "sse2", "no variant"),
            ("linux/riscv64/rva22u64", "riscv64", "rva22u64", "no variant"),
        ];
        for (input, arch, variant, expected) in cases {
            assert_eq!(
                err(input),
                PlatformError::BadVariant { input: input.into(), arch: arch.into(), variant: variant.into(), expected },
                "{input}"
            );
        }
        assert_eq!(
            err("linux/arm/v9").to_string(),
            "invalid platform \"linux/arm/v9\": variant \"v9\" is not valid for architecture arm (expected v5, v6, v7 or v8)"
        );
    }

    #[test]
    fn parse_list_trims_dedupes_and_keeps_order() {
        let list = Platform::parse_list(" linux/arm64 , linux/amd64,,linux/aarch64, linux/arm64/v8 ,").unwrap();
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["linux/arm64", "linux/amd64"]);
    }

    #[test]
    fn parse_list_local() {
        let list = Platform::parse_list("local,linux/riscv64").unwrap();
        assert_eq!(list[0], Platform::host());
        assert_eq!(list[1].to_string(), "linux/riscv64");
        // `local` and the host's explicit name are one platform.
        let host = Platform::host().to_string();
        assert_eq!(Platform::parse_list(&format!("{host},local")).unwrap().len(), 1);
    }

    #[test]
    fn parse_list_errors() {
        for s in ["", " ", ",", " , ,"] {
            assert_eq!(Platform::parse_list(s), Err(PlatformError::EmptyList { input: s.into() }));
        }
        assert_eq!(
            Platform::parse_list(",").unwrap_err().to_string(),
            "no platforms in \",\": expected a comma-separated list such as linux/amd64,linux/arm64"
        );
        // The offending item is named, not the whole list.
        assert_eq!(
            Platform::parse_list("linux/amd64,linux/sparc"),
            Err(PlatformError::UnknownArch { input: "linux/sparc".into(), arch: "sparc".into() })
        );
    }

    #[test]
    fn serde_as_string() {
        let pl = p("linux/arm/v7");
        assert_eq!(serde_json::to_string(&pl).unwrap(), "\"linux/arm/v7\"");
        let back: Platform = serde_json::from_str("\"linux/armhf\"").unwrap();
        assert_eq!(back, pl);
        let list: Vec<Platform> = serde_json::from_str(r#"["linux/amd64","linux/arm64"]"#).unwrap();
        assert_eq!(list.len(), 2);
        let e = serde_json::from_str::<Platform>("\"linux/sparc\"").unwrap_err();
        assert!(e.to_string().contains("architecture \"sparc\" is not supported"), "{e}");
        assert!(serde_json::from_str::<Platform>("42").is_err());
    }

    #[test]
    fn ordering_and_hash_follow_normalised_value() {
        use std::collections::HashSet;
        let set: HashSet<Platform> = ["linux/arm64", "linux/aarch64", "linux/arm64/v8"].iter().map(|s| p(s)).collect();
        assert_eq!(set.len(), 1);
        let mut v = [p("linux/arm64"), p("linux/amd64"), p("darwin/arm64")];
        v.sort();
        let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["darwin/arm64", "linux/amd64", "linux/arm64"]);
    }
}
