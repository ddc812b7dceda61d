//! Inputs the fuzzer found: each must parse, and print back to the same instructions.

use kiln_shared::frontend::{parse, print};

fn round_trip(text: &str) {
    let Ok(df) = parse(text) else { return };
    let printed = print::dockerfile(&df);
    let again = parse(&printed).unwrap_or_else(|e| panic!("reprint does not parse: {e}\n{printed}"));
    for (a, b) in df.instructions.iter().zip(&again.instructions) {
        assert_eq!(a.instruction, b.instruction, "\n{printed}");
    }
    assert_eq!(df.instructions.len(), again.instructions.len(), "\n{printed}");
}

#[test]
fn fuzz_found_inputs() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-regressions")).expect("regressions dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        if let Ok(text) = std::str::from_utf8(&bytes) {
            round_trip(text);
        }
    }
}
