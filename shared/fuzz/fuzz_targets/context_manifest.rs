//! Fuzz target for the context manifest blob (`kiln_shared::api::context`): the bytes a client
//! uploaded as a build's entry list, decoded by coordinators and agents. No input may panic it
//! or make it allocate without bound; what decodes encodes back to the same bytes.
#![no_main]

use kiln_shared::api::context;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = context::MAGIC.to_vec();
    bytes.extend_from_slice(data);
    for input in [data, &bytes[..]] {
        if let Ok(entries) = context::decode(input) {
            assert_eq!(context::encode(&entries).expect("encodes"), input);
        }
    }
});
