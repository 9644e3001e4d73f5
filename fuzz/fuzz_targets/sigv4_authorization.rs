//! The SigV4 `Authorization` header parser on arbitrary text: it must answer, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    let parsed = hubgate::identity::parse_authorization(header);
    if parsed.is_ok() {
        assert!(header.starts_with("AWS4-HMAC-SHA256 "), "{header:?}");
    }
});
