//! Engine unit tests.

#[test]
fn timestamps() {
    assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
}
