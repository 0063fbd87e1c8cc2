//! The wire parser on arbitrary bytes: a header, then the payload it declares (as much as
//! there is). Parsing must never panic and accepted region counts must respect the cap.
#![no_main]

use device::transport::wire::{self, parse_request, Header, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Some(h) = Header::parse(rest) {
        if !h.size_is_sane() {
            break;
        }
        let end = (h.size as usize).min(rest.len());
        let payload = &rest[wire::HEADER_SIZE..end];
        match parse_request(h.command, payload) {
            Ok(Request::RegionRead { count, .. }) => assert!(count <= wire::MAX_DATA_XFER),
            Ok(Request::RegionWrite { data, .. }) => {
                assert!(data.len() <= wire::MAX_DATA_XFER as usize)
            }
            Ok(Request::WriteMulti { writes }) => {
                for (_, _, d) in wire::write_multi_entries(writes) {
                    assert!(d.len() <= 8);
                }
            }
            _ => {}
        }
        rest = &rest[end..];
    }
});
