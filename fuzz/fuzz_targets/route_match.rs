//! Routing on arbitrary method and path bytes (`METHOD\nPATH`): it must never panic, and a path
//! that is not a verbatim operation path (`//`, a trailing `/`, a segment that is or decodes to
//! `.` or `..`) is never routed (src/routes.rs).
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 7] = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"];

fn dot_segment(segment: &str) -> bool {
    let decoded = percent_decode_lossy(segment.as_bytes());
    decoded == b"." || decoded == b".."
}

/// `%XX` decoding that keeps anything else as it is: enough to recognise an encoded dot.
fn percent_decode_lossy(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|b| *b == b'\n') else {
        return;
    };
    let (method, path) = (&data[..split], &data[split + 1..]);
    // A single byte picks a real method; anything longer is tried as a method token.
    let method = match method {
        [b] => Method::from_bytes(METHODS[*b as usize % METHODS.len()].as_bytes()),
        other => Method::from_bytes(other),
    };
    let (Ok(method), Ok(path)) = (method, std::str::from_utf8(path)) else {
        return;
    };
    let Ok(spec) = hubgate::routes::route(&method, path) else {
        return;
    };
    let routed = || format!("{method} {path:?} routed to {}", spec.name);
    assert_eq!(spec.method, method.as_str(), "{}", routed());
    assert!(!path.contains("//"), "{}", routed());
    assert!(path.starts_with('/') && path != "/", "{}", routed());
    assert!(!path.ends_with('/'), "{}", routed());
    assert!(
        !path.split('/').any(dot_segment),
        "dot segment: {}",
        routed()
    );
    // An operation path without labels matches only itself.
    if !spec.path.contains('{') {
        assert_eq!(path, spec.path, "{}", routed());
    }
});
