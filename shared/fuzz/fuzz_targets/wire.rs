//! Fuzz target for the wire decoder: no input may panic it or make it allocate without bound.
#![no_main]

use kiln_shared::api::{Call, PeerRequest, PeerResponse, Reply};
use kiln_shared::wire::{self, Envelope, RemoteError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The protocol's own messages, as a coordinator or agent reads them off the network.
    let _ = wire::decode::<Envelope<Call>>(data);
    let _ = wire::decode::<Result<Reply, RemoteError>>(data);
    let _ = wire::decode::<Envelope<PeerRequest>>(data);
    let _ = wire::decode::<Result<PeerResponse, RemoteError>>(data);
    let _ = wire::decode::<Envelope<Result<Vec<(String, u64, Option<Vec<u8>>)>, RemoteError>>>(data);
    if data.len() >= wire::HEADER_LEN {
        let header: [u8; wire::HEADER_LEN] = data[..wire::HEADER_LEN].try_into().unwrap();
        let _ = wire::decode_header(&header, wire::MAX_FRAME);
        let _ = wire::decode_payload::<Envelope<Vec<String>>>(&data[wire::HEADER_LEN..]);
        let _ = wire::decode_payload::<Envelope<Call>>(&data[wire::HEADER_LEN..]);
        let _ = wire::decode_payload::<Envelope<PeerRequest>>(&data[wire::HEADER_LEN..]);
    }
});
