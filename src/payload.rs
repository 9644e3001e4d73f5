//! Payload: a request body as hubgate read it, with its SHA-256 computed at most once.
//!
//! SigV4 needs the body's hash twice on a forwarded request: to verify the caller's signature
//! and to re-sign with hubgate's own. The forward sends the bytes that were checked, so one
//! hash serves both. The hash is bound to the bytes it was made from: a body hubgate changes (a
//! partial forward) is a new `Payload`, hashed anew, so a stale hash cannot be signed.

use std::sync::OnceLock;

use bytes::Bytes;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Payload {
    bytes: Bytes,
    sha256: OnceLock<String>,
}

impl Payload {
    pub fn new(bytes: Bytes) -> Payload {
        Payload {
            bytes,
            sha256: OnceLock::new(),
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The body's SHA-256 in lowercase hex, as SigV4's canonical request takes it. Hashed on
    /// first use: modes that never sign or verify (static identity with passthrough) never
    /// pay for it.
    pub fn sha256_hex(&self) -> &str {
        self.sha256
            .get_or_init(|| hex::encode(Sha256::digest(&self.bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_of_the_bytes_and_made_once() {
        // The SHA-256 test vector of "abc" (FIPS 180-2), and of the empty body SigV4 signs for
        // a GET.
        let p = Payload::new(Bytes::from_static(b"abc"));
        assert_eq!(
            p.sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(std::ptr::eq(p.sha256_hex(), p.sha256_hex()));
        assert_eq!(
            Payload::new(Bytes::new()).sha256_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
