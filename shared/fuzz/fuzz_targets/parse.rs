//! Fuzz target for the Dockerfile frontend: any bytes must parse or fail with an error, never
//! panic; whatever parses must resolve or fail cleanly, and print back to text that parses to
//! the same instructions.
#![no_main]

use kiln_shared::frontend::resolve::{resolve, NoImages, Options};
use kiln_shared::frontend::{parse, print};
use kiln_shared::Platform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(df) = parse(text) else { return };
    for platform in ["linux/amd64", "linux/arm64"] {
        let opts = Options { platform: platform.parse::<Platform>().unwrap(), build_platform: Platform::host(), build_args: &[], target: None, images: &NoImages, contexts: &[] };
        let _ = resolve(&df, &opts);
    }
    let printed = print::dockerfile(&df);
    let again = parse(&printed).unwrap_or_else(|e| panic!("printed Dockerfile does not parse: {e}\n{printed}"));
    let a: Vec<_> = df.instructions.iter().map(|l| &l.instruction).collect();
    let b: Vec<_> = again.instructions.iter().map(|l| &l.instruction).collect();
    assert_eq!(a, b, "round trip changed the instructions:\n{printed}");
});
