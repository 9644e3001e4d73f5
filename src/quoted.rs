//! Quoted: how much of a caller's text (a path, a header value, a header name) a message may
//! hold. A message goes into the envelope and the decision record (and several times into its
//! OCSF event): quoted whole, a client without keys turned each byte of a long header or path
//! into several on the audit disk, and a full audit disk stops every forward. Below every
//! module that writes such messages, so each can use it.

use std::borrow::Cow;

/// How many characters of a caller's text a message quotes.
pub const QUOTED_CHARS: usize = 200;

/// `text` whole when it is at most `max` characters, else its start and its length.
pub fn clipped(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len())),
    }
}

/// `text` kept whole when it is at most `max` characters, else its start and its length: for a
/// message owned by what holds it (a violation, a refusal's reason).
pub fn bounded(text: String, max: usize) -> String {
    match clipped(&text, max) {
        Cow::Borrowed(_) => text,
        Cow::Owned(short) => short,
    }
}

/// `text` as a message quotes it: at most `QUOTED_CHARS` characters, then its length.
pub fn quoted(text: &str) -> String {
    clipped(text, QUOTED_CHARS).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_is_quoted_by_its_start_and_length() {
        assert_eq!(clipped("/findings", 9), "/findings");
        assert_eq!(clipped("/findings", 4), "/fin… (9 bytes in all)");
        // characters, not bytes: never cut inside one
        assert_eq!(clipped("/é€x", 3), "/é€… (7 bytes in all)");
        assert_eq!(
            quoted(&"x".repeat(5000)),
            format!("{}… (5000 bytes in all)", "x".repeat(200))
        );
    }
}
