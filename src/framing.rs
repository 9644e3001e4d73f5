//! Framing: checks of the request head that run before anything else (routing included): the
//! request-target form, Content-Length together with Transfer-Encoding, transfer and content
//! codings, security headers that appear more than once, and headers that could make Security
//! Hub read the request as another operation. A request refused here is never forwarded.

use bytes::Bytes;
use http::{header, Request, Version};

use crate::quoted::quoted;

/// The raw bytes of an HTTP/1 request head (request line up to the empty line) as they came off
/// the socket. The server attaches it to a request when it captured that head whole, from the
/// byte where the previous request's body ended (server::conn), because hyper hides some of what
/// the head said (see [`check`]).
#[derive(Clone, Debug)]
pub struct RawHead(pub Bytes);

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error(
        "the request target must be a path, not the absolute form {0:?}: hubgate serves \
         Security Hub operations at paths only"
    )]
    NotOriginForm(String),
    #[error(
        "the request carries both Content-Length and Transfer-Encoding, which frame the body \
         differently: send the body with Content-Length only"
    )]
    LengthAndTransferEncoding,
    #[error(
        "the framing of this chunked request could not be verified (it came after a chunked \
         request on the same connection): send the body with Content-Length"
    )]
    UnverifiedChunked,
    #[error(
        "the head of this request could not be verified (it came after a chunked request, or \
         more than 512 KiB sent ahead, on the same connection), so hubgate cannot tell whether \
         its Content-Length was sent more than once: send it on a new connection"
    )]
    UnverifiedHead,
    #[error("the {0} header appears more than once")]
    DuplicateHeader(&'static str),
    #[error(
        "Transfer-Encoding {0:?} is not accepted: hubgate reads request bodies framed by \
         Content-Length or by chunked alone, and no other transfer coding"
    )]
    TransferCoding(String),
    #[error(
        "the request has trailer fields after its chunked body: hubgate does not accept \
         trailers (it would check a request whose trailers it then drops)"
    )]
    Trailers,
    #[error(
        "Content-Encoding {0:?} is not accepted: hubgate checks the body as sent and forwards \
         those bytes, so only identity (or no Content-Encoding) is allowed"
    )]
    ContentCoding(String),
    #[error(
        "the {0} header is not accepted: Security Hub's operation is named by the method and \
         path hubgate routes on, and a header that could name another operation or method is \
         refused"
    )]
    OperationOverride(&'static str),
    #[error(
        "the {0} header is not accepted: it is AWS's older way to sign a request, which AWS \
         could read in place of the Authorization header hubgate checked: sign with SigV4 \
         (the Authorization header) alone"
    )]
    OtherSignature(&'static str),
    #[error(
        "the {name} header is not accepted: read with '_' as '-', as some front ends read \
         header names, it is {reads_as}, a header hubgate checks or refuses; send {reads_as} \
         itself, or rename the header"
    )]
    LookAlikeHeader { name: String, reads_as: String },
    #[error(
        "the Connection header names {0:?}, a header hubgate reads: it cannot be dropped as \
         hop-by-hop between the check and the forward"
    )]
    ConnectionNamesChecked(String),
}

impl FramingError {
    /// The request target itself is wrong: refused like an unknown path (404), as DESIGN.md
    /// asks of every path variant. Everything else is a malformed request (400).
    pub fn is_target(&self) -> bool {
        matches!(self, FramingError::NotOriginForm(_))
    }
}

/// Headers that say who the caller is, what was signed, or how the body is framed and read.
/// With two of them, hubgate could check one value while Security Hub (or a signature library)
/// reads the other, so each may appear once.
///
/// Content-Length over HTTP/1: hyper answers two *different* values with its own bare 400 and
/// never stores an equal second one, so the header map shows one; the raw head is read for it
/// (see [`check`]). Over HTTP/2 both values reach the header map and this list catches them.
const SINGLE_VALUED: [&str; 7] = [
    "authorization",
    "x-amz-date",
    "host",
    "x-amz-content-sha256",
    "x-amz-security-token",
    "content-length",
    "content-type",
];

/// Headers that some front ends read as the operation (`X-Amz-Target` is how the awsJson
/// protocols name one), as the method (the override conventions) or as the path (IIS's and
/// some frameworks' rewrite headers). Security Hub is restJson1: the operation is the method
/// and path hubgate routes on, and no SDK sends these. Refused on every route, so no forward
/// (re-signed with hubgate's role, or passed through) carries them.
const OPERATION_OVERRIDES: [&str; 6] = [
    "x-amz-target",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-original-url",
    "x-rewrite-url",
];

const OTHER_SIGNATURE: &str = "x-amzn-authorization";

/// Headers hubgate reads to authenticate, route or check a request. A `Connection` header that
/// names one would have the forward drop it (RFC 9110 §7.6.1) after hubgate judged the request
/// with it, so such a request is refused instead.
const READ_BY_HUBGATE: [&str; 9] = [
    "authorization",
    "x-amz-date",
    "host",
    "x-amz-content-sha256",
    "x-amz-security-token",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
];

/// Refuses a request whose head is ambiguous. Runs before routing, on every identity and
/// upstream mode (passthrough included).
///
/// Content-Length with Transfer-Encoding: hyper 1.x answers 400 itself when Transfer-Encoding
/// does not end in `chunked`, but when it does, hyper frames the body as chunked, marks the
/// connection to close, and *removes* Content-Length from the headers it hands over (or never
/// stores it, when it comes after Transfer-Encoding). The handler alone cannot tell such a
/// request from a plain chunked one, so for every HTTP/1 chunked request the raw head that the
/// server captured is read for a Content-Length line; a chunked request whose raw head is not
/// available is refused rather than guessed about.
pub fn check<B>(req: &Request<B>) -> Result<(), FramingError> {
    let (uri, headers) = (req.uri(), req.headers());
    let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    // HTTP/2 always carries :scheme and :authority, which hyper puts in the URI; only an
    // HTTP/1 request line can name a scheme or authority (absolute or authority form).
    if http1 && (uri.scheme().is_some() || uri.authority().is_some()) {
        // Userinfo (`user:password@`) is a credential: the message shows host and port only.
        let authority = uri.authority().map(|a| match a.port() {
            Some(port) => format!("{}:{port}", a.host()),
            None => a.host().to_string(),
        });
        let target = match (uri.scheme_str(), authority) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            (_, Some(authority)) => authority,
            _ => "(an absolute URI)".to_string(),
        };
        return Err(FramingError::NotOriginForm(quoted(&target)));
    }

    if headers.contains_key(header::TRANSFER_ENCODING) {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(FramingError::LengthAndTransferEncoding);
        }
        if http1 {
            let raw = req
                .extensions()
                .get::<RawHead>()
                .filter(|raw| head_is_of(&raw.0, req))
                .ok_or(FramingError::UnverifiedChunked)?;
            if head_has_content_length(&raw.0) {
                return Err(FramingError::LengthAndTransferEncoding);
            }
        }
    }

    if let Some(te) = transfer_coding_other_than_chunked(headers) {
        return Err(FramingError::TransferCoding(quoted(&te)));
    }

    for name in SINGLE_VALUED {
        let mut values = headers.get_all(name).iter();
        if values.next().is_some() && values.next().is_some() {
            return Err(FramingError::DuplicateHeader(name));
        }
    }
    // hyper keeps one of two equal Content-Length lines (and refuses differing ones itself);
    // only the raw head still shows both. A body-carrying request whose head was not captured
    // is refused, as a chunked one is: passed over, it let a repeated Content-Length through
    // behind a fragment in the target (the URI drops it, so no head matched) or a head over
    // the capture's old 64 KiB bound (review 53).
    if http1 {
        let raw = req
            .extensions()
            .get::<RawHead>()
            .filter(|raw| head_is_of(&raw.0, req));
        match raw {
            Some(raw) if head_header_count(&raw.0, b"content-length") > 1 => {
                return Err(FramingError::DuplicateHeader("content-length"));
            }
            Some(_) => {}
            None if headers.contains_key(header::CONTENT_LENGTH) => {
                return Err(FramingError::UnverifiedHead);
            }
            None => {}
        }
    }

    for name in OPERATION_OVERRIDES {
        if headers.contains_key(name) {
            return Err(FramingError::OperationOverride(name));
        }
    }
    // AWS's signature version 3 (`X-Amzn-Authorization: AWS3-HTTPS AWSAccessKeyId=…`). In
    // passthrough, hubgate names the caller by the Authorization header's key and AWS checks
    // the signature: were AWS to read this header instead, a member would sign with its own key
    // here and claim an administrator's key id there, judged as the administrator. No SDK
    // sends it to a SigV4 service, so it is refused rather than trusted to be ignored.
    if headers.contains_key(OTHER_SIGNATURE) {
        return Err(FramingError::OtherSignature(OTHER_SIGNATURE));
    }
    for value in headers.get_all(header::CONTENT_ENCODING) {
        // Non-ASCII bytes are shown escaped; they are refused like any other coding.
        let text = String::from_utf8_lossy(value.as_bytes());
        if !text
            .split(',')
            .all(|coding| coding.trim().eq_ignore_ascii_case("identity"))
        {
            return Err(FramingError::ContentCoding(quoted(&text)));
        }
    }
    for name in headers.keys() {
        if let Some(reads_as) = look_alike(name.as_str()) {
            return Err(FramingError::LookAlikeHeader {
                name: name.as_str().to_owned(),
                reads_as,
            });
        }
    }
    for value in headers.get_all(header::CONNECTION) {
        let text = String::from_utf8_lossy(value.as_bytes());
        if let Some(named) = text.split(',').map(str::trim).find(|option| {
            READ_BY_HUBGATE
                .iter()
                .any(|h| option.eq_ignore_ascii_case(h))
        }) {
            return Err(FramingError::ConnectionNamesChecked(named.to_owned()));
        }
    }
    Ok(())
}

/// The Transfer-Encoding of a request, when it is anything but a single `chunked` (in any
/// case). hyper already refuses one that does not end in `chunked`; this refuses the codings
/// before it (`gzip, chunked`), which hyper ignores: the body would be read as plain chunked
/// while a compliant reader would decode it further.
fn transfer_coding_other_than_chunked(headers: &http::HeaderMap) -> Option<String> {
    let values: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let [value] = values[..] else {
        // No Transfer-Encoding, or several lines (a list however spelled): only the first case
        // is fine.
        return (!values.is_empty()).then(|| {
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        });
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    (!text.trim().eq_ignore_ascii_case("chunked")).then(|| text.into_owned())
}

/// The header a name spelled with `_` for `-` reads as, when that header is one hubgate reads,
/// refuses, or leaves to AWS (`x-amz-*`, `x-amzn-*`: the signature's and the operation's), or
/// one that governs the connection. CGI-style gateways, and proxies that take underscores in
/// names, fold `_` into `-`: in passthrough `X_Amz_Target` or `Transfer_Encoding` went up
/// unchanged, for a front end that folds names to read as the header hubgate refuses (review
/// 53). No SDK sends such a name.
fn look_alike(name: &str) -> Option<String> {
    if !name.contains('_') {
        return None;
    }
    let folded = name.replace('_', "-");
    let checked = READ_BY_HUBGATE.contains(&folded.as_str())
        || OPERATION_OVERRIDES.contains(&folded.as_str())
        || ["connection", "expect", "te", "trailer", "upgrade"].contains(&folded.as_str())
        || folded.starts_with("x-amz-")
        || folded.starts_with("x-amzn-");
    checked.then_some(folded)
}

/// Whether the captured head starts with this request's request line (method and target), so
/// it cannot be the head of another request on the same connection.
fn head_is_of<B>(raw: &[u8], req: &Request<B>) -> bool {
    let line = raw.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.splitn(3, |b| *b == b' ');
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    // The URI parser drops a fragment (which a request target may not carry, RFC 9112 §3.2):
    // the target without it is the one routed, judged and forwarded.
    let target = match target.iter().position(|b| *b == b'#') {
        Some(at) => &target[..at],
        None => target,
    };
    // `check` has refused an absolute or authority form by now: the URI is its path and query.
    let routed = req.uri().path_and_query().map_or("", |p| p.as_str());
    method == req.method().as_str().as_bytes() && target == routed.as_bytes()
}

/// Whether any header line of a raw head is Content-Length.
fn head_has_content_length(raw: &[u8]) -> bool {
    head_header_count(raw, b"content-length") > 0
}

/// How many header lines of a raw head have this (lower-case) name. Lines end in CRLF or, as
/// httparse also accepts, a bare LF; the head ends at the first empty line.
fn head_header_count(raw: &[u8], name: &[u8]) -> usize {
    raw.split(|b| *b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.iter().position(|b| *b == b':').map(|i| &line[..i]))
        .filter(|n| n.trim_ascii().eq_ignore_ascii_case(name))
        .count()
}

/// The host a request names: its Host header, or, when it has none, its URI's authority (h2
/// carries the host as `:authority`, which hyper puts in the URI). The one reading of it, so the
/// host a signature is checked against is the host a policy sees (`input.request.headers.host`):
/// read from the Host header alone, the policy input of an h2 request had no host at all, and
/// a rule on the host judged the same signed request differently over h2 and HTTP/1. A Host
/// header that is not text is an error, never passed over for the authority.
pub fn host<'a>(
    headers: &'a http::HeaderMap,
    uri: &'a http::Uri,
) -> Option<Result<&'a str, http::header::ToStrError>> {
    match headers.get(header::HOST) {
        Some(value) => Some(value.to_str()),
        None => uri.authority().map(|a| Ok(a.as_str())),
    }
}

/// Where a request head ends in `buf` (the index just past its empty line), if it does.
/// `from` is where to start looking; the caller passes where the previous search stopped.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    (start..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

/// A request head the HTTP layer refused before any request existed: one hyper cannot parse,
/// or one over its limits. hyper answers such a head itself, with a bare status line and no
/// body; hubgate answers with the envelope and a record instead (`server::conn`).
#[derive(Debug, thiserror::Error)]
#[error("the request head could not be read: {what}; nothing was forwarded, and the connection is closed")]
pub struct HeadRefused {
    /// As hyper answered: 400, 414 or 431.
    pub status: u16,
    what: &'static str,
    /// The request line's method and path, as far as they parsed (no query string: it may
    /// carry a presigned request's credentials).
    pub method: String,
    pub path: String,
}

/// hyper's own refusal of a head, as hyper writes it: a status line, `connection: close`,
/// `content-length: 0` and `date`, and nothing else; after an HTTP/1.0 request, hyper writes
/// it in HTTP/1.0 and without `connection: close` (it closes all the same). No answer of
/// hubgate's looks like it: hubgate's envelopes have a body and a request id, and a forwarded
/// answer carries `x-hubgate-decision-id`. Returns the status and the date header's value.
pub fn hyper_refusal(written: &[u8]) -> Option<(u16, &[u8])> {
    let (rest, close) = match written.strip_prefix(b"HTTP/1.1 ") {
        Some(rest) => (rest, &b"connection: close\r\n"[..]),
        None => (written.strip_prefix(b"HTTP/1.0 ")?, &b""[..]),
    };
    let status = std::str::from_utf8(rest.get(..3)?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    if !matches!(status, 400 | 414 | 431) {
        return None;
    }
    let rest = &rest[3..];
    let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
    if !rest[..line_end]
        .iter()
        .all(|b| b.is_ascii_alphabetic() || *b == b' ')
    {
        return None;
    }
    let rest = rest[line_end + 2..]
        .strip_prefix(close)?
        .strip_prefix(b"content-length: 0\r\ndate: ")?;
    let date = rest.strip_suffix(b"\r\n\r\n")?;
    (date.len() <= 64 && date.iter().all(|b| b.is_ascii_graphic() || *b == b' '))
        .then_some((status, date))
}

/// Where, after the start of `written`, hyper's refusal begins, if `written` ends with one:
/// hyper writes its refusal after the bytes still queued from the answer before it, in one
/// write when the client had not read them yet. The bytes before it are sent first, and the
/// refusal then starts a write of its own, where it can be taken over.
pub fn refusal_after(written: &[u8]) -> Option<usize> {
    // Every write of an answer passes here: most end otherwise, and are not searched.
    if !written.ends_with(b"\r\n\r\n") {
        return None;
    }
    // hyper's refusal is under 160 bytes (a status line, three short fields).
    let from = written.len().saturating_sub(256).max(1);
    (from..written.len().saturating_sub(7))
        .filter(|&at| written[at..].starts_with(b"HTTP/1."))
        .find(|&at| hyper_refusal(&written[at..]).is_some())
}

/// Whether hyper can be refusing `head` (the bytes kept of the head it is reading, whole or
/// not): only for a fault in them. A head that parses so far is still coming, unless it is
/// over the size limit, which the caller tells by its length; a whole head hyper accepts is a
/// request it will start, maybe once the answer before it is written. Bytes shaped like
/// hyper's refusal written meanwhile (the tail of that answer, which an upstream chooses) are
/// not a refusal of it (review 57b).
pub fn refusable(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) => false,
        Err(_) => true,
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or_default();
            framing_fault(req.headers, req.version == Some(0)).is_some()
                || path.len() > MAX_URI_LEN
                || path.parse::<http::Uri>().is_err()
                || long_name(req.headers)
        }
    }
}

/// Over 20 digits, hyper answers 400; its top two values, 431.
const CONTENT_LENGTH_TOO_LARGE: &str = "its Content-Length is larger than the HTTP layer can read";

/// Whether a header field's name is over hyper's limit (its h1 `record_header_indices`): 431.
fn long_name(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| h.name.len() >= 1 << 16)
}

/// hyper's limit on a request target (`MAX_URI_LEN` in its h1 parser): over it, 414.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// Why hyper refused `head` (the bytes of the head it was reading, if they were kept) with
/// `status`. hyper parses with httparse and then checks the URI and the framing headers, so the
/// same parse names the part at fault.
pub fn head_refused(status: u16, head: Option<&[u8]>) -> HeadRefused {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = head.map(|h| req.parse(h));
    let what = match (status, &parsed) {
        (414, _) => "the request target is over 65,534 bytes, the HTTP layer's limit",
        (431, Some(Ok(_))) if long_name(req.headers) => {
            "a header field name is 64 KiB or longer, the HTTP layer's limit"
        }
        (431, Some(Ok(_)))
            if framing_fault(req.headers, req.version == Some(0))
                == Some(CONTENT_LENGTH_TOO_LARGE) =>
        {
            CONTENT_LENGTH_TOO_LARGE
        }
        (_, Some(Err(httparse::Error::TooManyHeaders))) => {
            "it has more than 100 header fields, the HTTP layer's limit"
        }
        (431, _) => {
            "it is over 96 KiB (or has more than 100 header fields), the HTTP layer's limit"
        }
        (_, Some(Err(httparse::Error::HeaderName))) => {
            "a header field name is not a token (RFC 9110 §5.1): it has a space, a control \
             character or a delimiter, or a space before its colon"
        }
        (_, Some(Err(httparse::Error::HeaderValue))) => {
            "a header field value has a control character"
        }
        (_, Some(Err(httparse::Error::NewLine))) => "a line does not end with CRLF",
        (_, Some(Err(httparse::Error::Version))) if head.is_some_and(spaced_target) => {
            "the request line has more than three parts: its target has a space (which must be \
             sent as %20)"
        }
        (_, Some(Err(httparse::Error::Version))) => {
            "the request line's protocol is not HTTP/1.0 or HTTP/1.1"
        }
        (_, Some(Err(httparse::Error::Token))) if req.method.is_none() => {
            "the request line's method is not a token"
        }
        (_, Some(Err(_))) => "the request line's target is not a valid request target",
        (_, Some(Ok(_))) => match framing_fault(req.headers, req.version == Some(0)) {
            Some(fault) => fault,
            None if req.path.is_some_and(|p| p.parse::<http::Uri>().is_err()) => {
                "the request target is not a valid URI"
            }
            None => "it is not a valid HTTP/1.1 request head",
        },
        (_, None) => "it is not a valid HTTP/1.1 request head",
    };
    HeadRefused {
        status,
        what,
        method: req
            .method
            .map(|m| crate::quoted::clipped(m, 32).into_owned())
            .unwrap_or_default(),
        // The record clips it, as it does every request's path.
        path: req.path.map(recorded_path).unwrap_or_default().to_string(),
    }
}

/// Of a request target, what a record names: its path, as a routed request's record does.
/// Never its query (a presigned request's credentials) or fragment, nor the scheme and
/// authority of an absolute-form target (`http://user:password@host/p`).
fn recorded_path(target: &str) -> &str {
    let target = target.split(['?', '#']).next().unwrap_or_default();
    match target.find("://") {
        Some(at) => {
            let rest = &target[at + 3..];
            rest.find('/').map_or("", |slash| &rest[slash..])
        }
        None if target.starts_with('/') => target,
        None => "",
    }
}

/// Whether the head's request line has more than three parts: httparse then reads the
/// target's second part as the protocol.
fn spaced_target(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    line.trim_ascii_end()
        .split(|b| *b == b' ')
        .filter(|part| !part.is_empty())
        .count()
        > 3
}

/// What hyper refuses in a head that parses, found as hyper finds it (h1 `Server::parse`),
/// line by line: a Transfer-Encoding on HTTP/1.0; a Content-Length (before any
/// Transfer-Encoding: hyper skips those after one) that is not one decimal number, one that
/// differs from an earlier one, or one of u64's top two values; then a last Transfer-Encoding
/// whose last coding is not chunked. Reading it any other way named the wrong fault, missed
/// `Content-Length: 2, 2`, and took a head hyper accepts for refused (review 57c).
fn framing_fault(headers: &[httparse::Header<'_>], http10: bool) -> Option<&'static str> {
    let (mut te, mut te_chunked, mut length) = (false, false, None);
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if http10 {
                return Some(
                    "it is an HTTP/1.0 request with a Transfer-Encoding, which HTTP/1.0 does not \
                     have",
                );
            }
            te = true;
            te_chunked = last_coding_is_chunked(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") && !te {
            let Some(value) = from_digits(h.value) else {
                return Some(
                    if !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit) {
                        CONTENT_LENGTH_TOO_LARGE
                    } else {
                        "its Content-Length is not a decimal number"
                    },
                );
            };
            match length {
                Some(first) if first != value => {
                    return Some("it has Content-Length values that differ")
                }
                Some(_) => {}
                // hyper keeps u64's top two values for itself.
                None if value > u64::MAX - 2 => return Some(CONTENT_LENGTH_TOO_LARGE),
                None => length = Some(value),
            }
        }
    }
    (te && !te_chunked).then_some("its Transfer-Encoding does not end with chunked")
}

/// hyper's reading of a Content-Length: digits only, no sign, no list, within u64.
fn from_digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// hyper's: a value of visible ASCII (and tabs) whose last comma-separated part is chunked.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    value.iter().all(|b| (32..127).contains(b) || *b == b'\t')
        && value
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        version: Version,
        uri: &str,
        headers: &[(&str, &str)],
        raw: Option<&str>,
    ) -> Request<()> {
        let mut b = http::Request::builder()
            .method("PATCH")
            .uri(uri)
            .version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        if let Some(raw) = raw {
            req.extensions_mut()
                .insert(RawHead(Bytes::from(raw.to_string())));
        }
        req
    }

    const PATH: &str = "/findings/batchupdate";

    #[test]
    fn an_ordinary_request_passes() {
        let p = request(
            Version::HTTP_11,
            PATH,
            &[
                ("host", "h"),
                ("content-length", "2"),
                ("authorization", "x"),
            ],
            Some("PATCH /findings/batchupdate HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nAuthorization: x\r\n\r\n"),
        );
        assert!(check(&p).is_ok());
        // h2: the URI carries scheme and authority, which is how h2 always looks.
        let p = request(
            Version::HTTP_2,
            &format!("https://hubgate.example{PATH}"),
            &[],
            None,
        );
        assert!(check(&p).is_ok());
    }

    #[test]
    fn absolute_and_authority_form_targets_are_refused_in_http1() {
        let p = request(
            Version::HTTP_11,
            &format!("http://evil.example{PATH}"),
            &[],
            None,
        );
        let err = check(&p).unwrap_err();
        assert!(err.is_target(), "{err}");
        assert!(err.to_string().contains("http://evil.example"), "{err}");
        let p = request(Version::HTTP_11, "evil.example:443", &[], None);
        assert!(check(&p).unwrap_err().is_target());
        // Userinfo is a credential: never part of the message, whatever the form.
        for (target, shown) in [
            (
                format!("http://AKID:s3cr3t-pw@evil.example:8443{PATH}"),
                "\"http://evil.example:8443\"",
            ),
            (
                format!("https://s3cr3t-pw@evil.example{PATH}"),
                "\"https://evil.example\"",
            ),
            (
                "AKID:s3cr3t-pw@evil.example:443".to_string(),
                "\"evil.example:443\"",
            ),
        ] {
            let p = request(Version::HTTP_11, &target, &[], None);
            let err = check(&p).unwrap_err();
            assert!(err.is_target(), "{err}");
            let message = err.to_string();
            assert!(message.contains(shown), "{target}: {message}");
            assert!(!message.contains("s3cr3t"), "{target}: {message}");
            assert!(!message.contains('@'), "{target}: {message}");
        }
    }

    #[test]
    fn length_and_transfer_encoding_are_refused_whatever_hyper_kept() {
        // Both headers still present.
        let p = request(
            Version::HTTP_11,
            PATH,
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            None,
        );
        assert!(matches!(
            check(&p),
            Err(FramingError::LengthAndTransferEncoding)
        ));
        // hyper dropped Content-Length; the raw head still has it, in any case and either
        // order, with CRLF or bare LF line ends.
        for raw in [
            "PATCH /findings/batchupdate HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PATCH /findings/batchupdate HTTP/1.1\r\nTransfer-Encoding:   chunked\r\nCONTENT-LENGTH:5\r\n\r\n",
            "PATCH /findings/batchupdate HTTP/1.1\nTransfer-Encoding: chunked\ncontent-length: 5\n\n",
        ] {
            let p = request(
                Version::HTTP_11,
                PATH,
                &[("transfer-encoding", "chunked")],
                Some(raw),
            );
            assert!(
                matches!(check(&p), Err(FramingError::LengthAndTransferEncoding)),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn a_plain_chunked_request_passes_only_with_its_own_raw_head() {
        let raw =
            "PATCH /findings/batchupdate HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        let p = request(
            Version::HTTP_11,
            PATH,
            &[("transfer-encoding", "chunked")],
            Some(raw),
        );
        assert!(check(&p).is_ok());
        // A Content-Length in the body (after the empty line) is not a header.
        let raw_body = format!("{raw}content-length: 3\r\n");
        let p = request(
            Version::HTTP_11,
            PATH,
            &[("transfer-encoding", "chunked")],
            Some(&raw_body),
        );
        assert!(check(&p).is_ok());
        // No raw head, or another request's: refused, not guessed about.
        let p = request(
            Version::HTTP_11,
            PATH,
            &[("transfer-encoding", "chunked")],
            None,
        );
        assert!(matches!(check(&p), Err(FramingError::UnverifiedChunked)));
        let other = "GET /accounts HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let p = request(
            Version::HTTP_11,
            PATH,
            &[("transfer-encoding", "chunked")],
            Some(other),
        );
        assert!(matches!(check(&p), Err(FramingError::UnverifiedChunked)));
    }

    #[test]
    fn security_headers_may_appear_once() {
        for name in SINGLE_VALUED {
            let p = request(Version::HTTP_11, PATH, &[(name, "a"), (name, "b")], None);
            match check(&p) {
                Err(FramingError::DuplicateHeader(n)) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        // Other headers may repeat.
        let p = request(
            Version::HTTP_11,
            PATH,
            &[("accept", "a"), ("accept", "b")],
            None,
        );
        assert!(check(&p).is_ok());
    }

    /// `check` of an HTTP/1.1 request for PATH with `headers` (and its raw head, if any).
    fn check_h1(headers: &[(&str, &str)], raw: Option<&str>) -> Result<(), FramingError> {
        check(&request(Version::HTTP_11, PATH, headers, raw))
    }

    #[test]
    fn only_a_single_chunked_transfer_coding_passes() {
        let raw = |te: &str| {
            format!("PATCH /findings/batchupdate HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n")
        };
        for te in ["chunked", "Chunked", "CHUNKED"] {
            assert!(
                check_h1(&[("transfer-encoding", te)], Some(&raw(te))).is_ok(),
                "{te}"
            );
        }
        for te in [
            "gzip, chunked",
            "identity, chunked",
            "chunked, chunked",
            "gzip",
        ] {
            match check_h1(&[("transfer-encoding", te)], Some(&raw(te))) {
                Err(FramingError::TransferCoding(got)) => assert_eq!(got, te),
                other => panic!("{te}: {other:?}"),
            }
        }
        // Two lines, each `chunked`, are the list "chunked, chunked".
        let twice = [
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ];
        assert!(matches!(
            check_h1(&twice, Some(&raw("chunked"))),
            Err(FramingError::TransferCoding(_))
        ));
    }

    #[test]
    fn an_equal_second_content_length_in_the_raw_head_is_refused() {
        // hyper keeps one of two equal values; the raw head shows both.
        let raw = "PATCH /findings/batchupdate HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\ncontent-length:2\r\n\r\n{}";
        assert!(matches!(
            check_h1(&[("content-length", "2")], Some(raw)),
            Err(FramingError::DuplicateHeader("content-length"))
        ));
        let one = "PATCH /findings/batchupdate HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n";
        assert!(check_h1(&[("content-length", "2")], Some(one)).is_ok());
        // A fragment in the target, which the URI drops: still this request's head, and both
        // lines still seen (review 53: no head matched, and the repeat went through).
        let fragment = "PATCH /findings/batchupdate#x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            check_h1(&[("content-length", "2")], Some(fragment)),
            Err(FramingError::DuplicateHeader("content-length"))
        ));
        let fragment = "PATCH /findings/batchupdate#x HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        assert!(check_h1(&[("content-length", "2")], Some(fragment)).is_ok());
    }

    #[test]
    fn a_body_whose_head_was_not_captured_is_refused() {
        // No head kept, or another request's: whether Content-Length came twice is unknown.
        let other = "PATCH /findings/batchupdateV2 HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        let longer = "PATCH /findings/batchupdate/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        let other_method = "POST /findings/batchupdate HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        for raw in [
            None,
            Some(other),
            Some(longer),
            Some(other_method),
            Some("PATCH"),
        ] {
            assert!(
                matches!(
                    check_h1(&[("content-length", "2")], raw),
                    Err(FramingError::UnverifiedHead)
                ),
                "{raw:?}"
            );
        }
        // Without a body there is no length to repeat; h2 has no such head.
        assert!(check_h1(&[("host", "h")], None).is_ok());
        let p = request(
            Version::HTTP_2,
            &format!("https://hubgate.example{PATH}"),
            &[("content-length", "2")],
            None,
        );
        assert!(check(&p).is_ok());
    }

    #[test]
    fn operation_and_method_overrides_are_refused() {
        for name in OPERATION_OVERRIDES {
            match check_h1(&[(name, "SecurityHubAPIService.BatchUpdateFindings")], None) {
                Err(FramingError::OperationOverride(n)) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        // Over HTTP/2 too (the same header map).
        let p = request(
            Version::HTTP_2,
            &format!("https://hubgate.example{PATH}"),
            &[("x-amz-target", "x")],
            None,
        );
        assert!(matches!(check(&p), Err(FramingError::OperationOverride(_))));
    }

    #[test]
    fn a_header_spelled_with_underscores_for_one_hubgate_checks_is_refused() {
        for (name, reads_as) in [
            ("x_amz_target", "x-amz-target"),
            ("transfer_encoding", "transfer-encoding"),
            ("content_encoding", "content-encoding"),
            ("x_http_method_override", "x-http-method-override"),
            ("x-amz_security-token", "x-amz-security-token"),
            ("x_amzn_authorization", "x-amzn-authorization"),
            ("x_amz_anything", "x-amz-anything"),
        ] {
            match check_h1(&[(name, "x")], None) {
                Err(FramingError::LookAlikeHeader {
                    name: n,
                    reads_as: r,
                }) => {
                    assert_eq!((n.as_str(), r.as_str()), (name, reads_as))
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // Underscores in a name no header hubgate checks folds to: passed as sent.
        assert!(check_h1(&[("x_custom_trace", "1"), ("amz_sdk_x", "1")], None).is_ok());
    }

    #[test]
    fn an_older_aws_signature_header_is_refused() {
        let value = "AWS3-HTTPS AWSAccessKeyId=AKIDMEMBER,Algorithm=HmacSHA256,Signature=x";
        assert!(matches!(
            check_h1(&[("x-amzn-authorization", value)], None),
            Err(FramingError::OtherSignature("x-amzn-authorization"))
        ));
        assert!(check_h1(&[("x-amzn-trace-id", "Root=1-x")], None).is_ok());
    }

    #[test]
    fn only_the_identity_content_coding_passes() {
        for ce in ["identity", "IDENTITY", "identity, identity"] {
            assert!(check_h1(&[("content-encoding", ce)], None).is_ok(), "{ce}");
        }
        for ce in ["gzip", "aws-chunked", "identity, gzip", "br", ""] {
            match check_h1(&[("content-encoding", ce)], None) {
                Err(FramingError::ContentCoding(got)) => assert_eq!(got, ce),
                other => panic!("{ce:?}: {other:?}"),
            }
        }
        let two = [
            ("content-encoding", "identity"),
            ("content-encoding", "gzip"),
        ];
        assert!(matches!(
            check_h1(&two, None),
            Err(FramingError::ContentCoding(_))
        ));
    }

    #[test]
    fn connection_may_not_name_a_header_hubgate_reads() {
        for named in ["Content-Type", "authorization", " X-Amz-Date", "host"] {
            let value = format!("keep-alive,{named}");
            match check_h1(&[("connection", &value)], None) {
                Err(FramingError::ConnectionNamesChecked(got)) => {
                    assert_eq!(got, named.trim())
                }
                other => panic!("{named}: {other:?}"),
            }
        }
        // Other options are hop-by-hop: the forward drops them, the request passes.
        assert!(check_h1(&[("connection", "keep-alive, X-Custom")], None).is_ok());
    }

    #[test]
    fn the_host_is_the_host_header_else_the_authority() {
        let uri: http::Uri = "https://hubgate.example/findings".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        // h2: :authority only.
        assert_eq!(host(&headers, &uri).unwrap().unwrap(), "hubgate.example");
        // A Host header wins over the authority, and one that is not text is an error.
        headers.insert(header::HOST, "other.example:8080".parse().unwrap());
        assert_eq!(host(&headers, &uri).unwrap().unwrap(), "other.example:8080");
        headers.insert(
            header::HOST,
            http::HeaderValue::from_bytes(b"h\xffst").unwrap(),
        );
        assert!(host(&headers, &uri).unwrap().is_err());
        // HTTP/1 origin form without Host: none.
        let path: http::Uri = "/findings".parse().unwrap();
        assert!(host(&http::HeaderMap::new(), &path).is_none());
    }

    #[test]
    fn head_end_finds_the_empty_line_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nbody";
        assert_eq!(head_end(head, 0), Some(head.len() - 4));
        // Found when the empty line arrives in a later read.
        let split = head.len() - 5;
        assert_eq!(head_end(&head[..split], 0), None);
        assert_eq!(head_end(head, split), Some(head.len() - 4));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: h\n\n", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: h\r\n", 0), None);
    }

    const DATE: &str = "Mon, 07 Dec 2026 18:50:54 GMT";

    #[test]
    fn hypers_own_refusals_are_recognised_and_nothing_else() {
        for (status, reason) in [
            (400, "Bad Request"),
            (414, "URI Too Long"),
            (431, "Request Header Fields Too Large"),
        ] {
            let written = format!(
                "HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"
            );
            assert_eq!(
                hyper_refusal(written.as_bytes()),
                Some((status, DATE.as_bytes())),
                "{written}"
            );
        }
        let like = |s: &str| hyper_refusal(s.as_bytes()).map(|(status, _)| status);
        // Another status, a body, a header more, hubgate's own envelope: not hyper's refusal.
        let ok = format!(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"
        );
        assert_eq!(like(&ok), None);
        let body = format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n{{}}");
        assert_eq!(like(&body), None);
        let more = format!("HTTP/1.1 400 Bad Request\r\nx-amzn-requestid: r\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        assert_eq!(like(&more), None);
        let envelope = format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 2\r\ndate: {DATE}\r\n\r\n{{}}");
        assert_eq!(like(&envelope), None);
        // The tail of an answer, or a head cut short.
        assert_eq!(
            like("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"),
            None
        );
        assert_eq!(like(&format!("x{ok}")), None);
        // After an HTTP/1.0 request hyper answers in HTTP/1.0, without `connection: close`
        // (review 57a); the HTTP/1.1 form always has it.
        let old = format!("HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        assert_eq!(like(&old), Some(400));
        let old_close = format!("HTTP/1.0 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        assert_eq!(like(&old_close), None);
        let no_close =
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        assert_eq!(like(&no_close), None);
    }

    #[test]
    fn a_refusal_after_other_bytes_is_found_where_it_begins() {
        let refusal = format!(
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"
        );
        let tail = b"...{\"ProcessedFindings\": []}".to_vec();
        let written = [&tail[..], refusal.as_bytes()].concat();
        assert_eq!(refusal_after(&written), Some(tail.len()));
        // One that starts the write is not "after" anything; nor is one followed by more, or
        // a refusal's first bytes at the end.
        assert_eq!(refusal_after(refusal.as_bytes()), None);
        assert_eq!(refusal_after(&[&written[..], b"x"].concat()), None);
        assert_eq!(refusal_after(&written[..written.len() - 3]), None);
        assert_eq!(refusal_after(b""), None);
        assert_eq!(refusal_after(b"HTTP/1."), None);
    }

    #[test]
    fn a_head_is_refusable_only_for_a_fault_in_it() {
        // Parses so far: still coming, never refused (but for its size, told apart).
        for partial in ["G", "GET /standards HT", "GET / HTTP/1.1\r\nHost: h\r\nX-A"] {
            assert!(!refusable(partial.as_bytes()), "{partial:?}");
        }
        // Whole and without fault: a pipelined request, started once the answer before it is
        // written (review 57b).
        for fine in [
            "GET /standards HTTP/1.1\r\nHost: h\r\n\r\n",
            "PATCH /f HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n",
            "PATCH /f HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            // hyper skips a Content-Length after a Transfer-Encoding (hubgate's own framing
            // check refuses the pair, with the envelope, once the request starts).
            "PATCH /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n",
            "GET / HTTP/1.0\n\n",
        ] {
            assert!(!refusable(fine.as_bytes()), "{fine:?}");
        }
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(65_534));
        for bad in [
            "GET / HTTP/1.1\r\nBad Header: x\r\n",
            "GET / HTTP/3.7\r\n",
            "GE\x01T / HTTP/1.1\r\n",
            "PATCH /f HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "PATCH /f HTTP/1.1\r\nContent-Length: 18446744073709551614\r\n\r\n",
            "PATCH /f HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "PATCH /f HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "PATCH /f HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PATCH /f HTTP/1.1\r\nContent-Length: 12, 12\r\n\r\n",
            "PATCH /f HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 12,12\r\n\r\n",
            "PATCH /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET http://[::1 HTTP/1.1\r\n\r\n",
            &long_target,
        ] {
            assert!(refusable(bad.as_bytes()), "{bad:?}");
        }
        // hyper reads a Transfer-Encoding only as visible ASCII.
        assert!(refusable(
            b"PATCH /f HTTP/1.1\r\nTransfer-Encoding: gzip\xff, chunked\r\n\r\n"
        ));
        // The boundary: a target of 65,534 bytes is hyper's to accept.
        assert!(!refusable(
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(65_533)).as_bytes()
        ));
    }

    fn why(status: u16, head: &str) -> HeadRefused {
        head_refused(status, Some(head.as_bytes()))
    }

    #[test]
    fn a_refused_head_is_named_by_the_part_at_fault() {
        let cases = [
            (
                400,
                "PATCH /f HTTP/1.1\r\nBad Header: x\r\n\r\n",
                "header field name is not a token",
            ),
            (
                400,
                "PATCH /f HTTP/1.1\r\nHost : x\r\n\r\n",
                "header field name is not a token",
            ),
            (
                400,
                "PATCH /f HTTP/1.1\r\nX: a\x01b\r\n\r\n",
                "value has a control character",
            ),
            (400, "PATCH /f HTTP/3.7\r\n\r\n", "not HTTP/1.0 or HTTP/1.1"),
            (400, "PATCH /a b HTTP/1.1\r\n\r\n", "its target has a space"),
            (400, "PA\x01CH /f HTTP/1.1\r\n\r\n", "method is not a token"),
            (
                400,
                "PATCH /f\x01 HTTP/1.1\r\n\r\n",
                "target is not a valid request target",
            ),
            (
                400,
                "PATCH /f HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
                "Content-Length is not a decimal number",
            ),
            (
                400,
                "PATCH /f HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "Content-Length values that differ",
            ),
            (
                400,
                "PATCH /f HTTP/1.1\r\nContent-Length: 2, 3\r\n\r\n",
                "Content-Length is not a decimal number",
            ),
            // Named as hyper finds the fault: it skips a Content-Length after a
            // Transfer-Encoding, and refuses a Transfer-Encoding on HTTP/1.0 where it is.
            (
                400,
                "PATCH /f HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: abc\r\n\r\n",
                "Transfer-Encoding does not end with chunked",
            ),
            (
                400,
                "PATCH /f HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n",
                "HTTP/1.0 request with a Transfer-Encoding",
            ),
            (
                400,
                "PATCH /f HTTP/1.0\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Content-Length is not a decimal number",
            ),
            (
                431,
                "PATCH /f HTTP/1.1\r\nContent-Length: 18446744073709551614\r\n\r\n",
                "larger than the HTTP layer can read",
            ),
            (
                400,
                "PATCH /f HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "Transfer-Encoding does not end with chunked",
            ),
            (414, "GET /aaaa HTTP/1.1\r\n", "over 65,534 bytes"),
            (431, "PATCH /f HTTP/1.1\r\nX-Pad: aaaa", "over 96 KiB"),
        ];
        for (status, head, want) in cases {
            let refused = why(status, head);
            assert_eq!(refused.status, status);
            assert!(refused.to_string().contains(want), "{head:?}: {refused}");
        }
        let name = "X".repeat(1 << 16);
        let refused = why(431, &format!("GET / HTTP/1.1\r\n{name}: v\r\n\r\n"));
        assert!(
            refused.to_string().contains("64 KiB or longer"),
            "{refused}"
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let refused = why(431, &format!("PATCH /f HTTP/1.1\r\n{many}\r\n"));
        assert!(
            refused.to_string().contains("more than 100 header fields"),
            "{refused}"
        );
        // A head that was not kept is still answered, in general terms.
        let refused = head_refused(400, None);
        assert!(
            refused
                .to_string()
                .contains("not a valid HTTP/1.1 request head"),
            "{refused}"
        );
        assert_eq!((refused.method.as_str(), refused.path.as_str()), ("", ""));
    }

    #[test]
    fn a_refused_heads_record_names_its_method_and_path_but_never_its_query() {
        let refused = why(
            400,
            "GET /findings?X-Amz-Signature=secret HTTP/1.1\r\nBad Header: x\r\n\r\n",
        );
        assert_eq!(refused.method, "GET");
        assert_eq!(refused.path, "/findings");
        assert!(!format!("{refused:?}").contains("secret"));
        // An absolute-form target is named by its path: never its userinfo or host.
        let refused = why(400, "GET http://AKID:secret@h/p?q=1#f HTTP/3.7\r\n\r\n");
        assert_eq!(refused.path, "/p");
        assert!(!format!("{refused:?}").contains("secret"));
        assert_eq!(
            why(400, "GET http://AKID:secret@h HTTP/3.7\r\n\r\n").path,
            ""
        );
        assert_eq!(why(400, "GET h:443 HTTP/3.7\r\n\r\n").path, "");
        // A request line that did not parse names nothing.
        let refused = why(400, "PA\x01CH /findings HTTP/1.1\r\n\r\n");
        assert_eq!((refused.method.as_str(), refused.path.as_str()), ("", ""));
    }
}
