//! The error envelope: every rejection hubgate makes itself, as one typed error mapped to
//! status, code and AWS exception name in exactly one place.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::audit::AuditError;
use crate::decide::JudgeError;
use crate::framing::FramingError;
use crate::identity::AuthError;
use crate::policy::PolicyError;
use crate::quota::QuotaExhausted;
use crate::upstream::UpstreamError;
use crate::validate::ValidationErrors;

/// Why the body could not be read, as the body stream reported it.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// nginx's status for a request whose client went away; no client ever sees it, the audit
/// record and metrics do.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Why hubgate answered a request itself instead of forwarding it.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("no Security Hub operation is served at {method} {path}")]
    NotFound { method: String, path: String },
    #[error("{operation} is not allowed through hubgate")]
    OperationNotAllowed { operation: &'static str },
    #[error("request body exceeds server.max_body_bytes ({limit} bytes)")]
    PayloadTooLarge { limit: u64 },
    #[error(transparent)]
    UnsupportedMediaType(#[from] crate::validate::ContentTypeError),
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("{message}")]
    PolicyDenied {
        message: String,
        violations: Vec<Value>,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("could not read the request body: {0}")]
    BodyRead(#[source] BodyError),
    /// The client closed the connection (or, over h2, reset its stream) before its body
    /// arrived: nobody is left to answer, so this is recorded (as 499, nginx's "client closed
    /// request") and no envelope is sent.
    #[error(
        "the client closed the connection or cancelled the request before the request body \
         arrived: {0}"
    )]
    ClientAborted(#[source] BodyError),
    /// The client went away while its request waited (for finding state or quota), before
    /// anything was sent upstream: recorded like `ClientAborted`, nothing is forwarded.
    #[error(
        "the client closed the connection or cancelled the request while it waited for the \
         findings' state or Security Hub's quota; nothing was sent"
    )]
    ClientLeft,
    /// hubgate's stop ran out of its grace period while the request was still being read,
    /// decided or waiting for quota: nothing was sent, and another replica can take the retry.
    #[error(
        "hubgate is stopping and its shutdown grace period ran out before this request was \
         sent to Security Hub; nothing was sent; retry"
    )]
    Stopping,
    #[error(transparent)]
    AuditUnavailable(#[from] AuditError),
    /// The request head is ambiguous (target form, framing headers, repeated security headers).
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// The HTTP layer could not parse the request head, or it was over the layer's limits:
    /// there is no request, only the status hyper chose (400, 414 or 431).
    #[error(transparent)]
    HeadRefused(#[from] crate::framing::HeadRefused),
    /// The body did not arrive within server.body_read_timeout_ms.
    #[error("the request body did not arrive within server.body_read_timeout_ms ({ms} ms)")]
    RequestTimeout { ms: u64 },
    /// A server cap is reached: retryable, so SDKs back off and try again.
    #[error("hubgate is at its {setting} limit ({limit}); retry later")]
    Overloaded { setting: &'static str, limit: usize },
    /// One caller holds its whole share of the in-flight cap: retryable, like the cap.
    #[error(transparent)]
    CallerBusy(#[from] crate::admission::ShareRefused),
    #[error(transparent)]
    Quota(#[from] QuotaExhausted),
    /// A member's forwarded call that could read beyond the member's account.
    #[error(transparent)]
    NotConfined(#[from] crate::reads::ReadError),
    /// Another request hubgate forwarded changed the findings a decision read, while this one
    /// waited for quota, every time it was decided: retryable, the next try is decided anew.
    /// `replay`, while the request is still being decided: the state to decide on next, when
    /// the writes could be laid over what was read (None: it must be read again).
    #[error(
        "the findings this request names were changed by another request while it waited for \
         quota, {decisions} times in a row; retry"
    )]
    StateChanged {
        decisions: usize,
        replay: Option<Box<crate::decide::Replay>>,
    },
    /// A recent write hubgate cannot model leaves the findings' state unknown: retryable, once
    /// `Retry-After` has passed.
    #[error(transparent)]
    Unsettled(#[from] crate::decide::Unsettled),
    /// A failure inside hubgate, never shown as the upstream's.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::routes::NotRouted> for Rejection {
    fn from(e: crate::routes::NotRouted) -> Rejection {
        Rejection::NotFound {
            method: e.method,
            path: e.path,
        }
    }
}

impl From<crate::reads::HeadError> for Rejection {
    fn from(e: crate::reads::HeadError) -> Rejection {
        match e {
            crate::reads::HeadError::Query(e) => Rejection::Invalid(e),
            crate::reads::HeadError::ContentType(e) => Rejection::UnsupportedMediaType(e),
        }
    }
}

impl From<JudgeError> for Rejection {
    fn from(e: JudgeError) -> Rejection {
        match e {
            JudgeError::Invalid(e) => Rejection::Invalid(e),
            JudgeError::Policy(e) => Rejection::Policy(e),
            JudgeError::Lookup(e) => Rejection::Upstream(e),
            JudgeError::Quota(e) => Rejection::Quota(e),
            JudgeError::Unsettled(e) => Rejection::Unsettled(e),
        }
    }
}

/// How each rejection looks on the wire. One table, so no two stages disagree.
struct Shape {
    status: StatusCode,
    code: &'static str,
    error_type: &'static str,
}

impl Rejection {
    fn shape(&self) -> Shape {
        use Rejection::*;
        let (status, code, error_type) = match self {
            NotFound { .. } => (
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "ResourceNotFoundException",
            ),
            OperationNotAllowed { .. } => (
                StatusCode::FORBIDDEN,
                "OPERATION_NOT_ALLOWED",
                "AccessDeniedException",
            ),
            NotConfined(
                crate::reads::ReadError::NotForMembers { .. }
                | crate::reads::ReadError::Unjudged { .. },
            ) => (
                StatusCode::FORBIDDEN,
                "OPERATION_NOT_ALLOWED",
                "AccessDeniedException",
            ),
            NotConfined(crate::reads::ReadError::NotConfined { .. }) => (
                StatusCode::FORBIDDEN,
                "READ_NOT_CONFINED",
                "AccessDeniedException",
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "InvalidInputException",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "InvalidInputException",
            ),
            Unauthenticated(e) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", e.error_type()),
            ClientAborted(_) | ClientLeft => (
                CLIENT_CLOSED_REQUEST,
                "CLIENT_ABORTED",
                "ClientAbortedException",
            ),
            Invalid(_) | BodyRead(_) => (
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "InvalidInputException",
            ),
            PolicyDenied { .. } => (
                StatusCode::FORBIDDEN,
                "POLICY_DENIED",
                "AccessDeniedException",
            ),
            Policy(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "POLICY_ERROR",
                "InternalException",
            ),
            // SDKs back off on these: a throttle must never look like a server fault.
            Upstream(e) if e.is_throttle() => (
                StatusCode::TOO_MANY_REQUESTS,
                "THROTTLED",
                "ThrottlingException",
            ),
            Quota(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "THROTTLED",
                "ThrottlingException",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "InternalException",
            ),
            Upstream(e) if e.is_local() => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "InternalException",
            ),
            // Nothing was applied, and hubgate is fetching new credentials: a retry may pass.
            Upstream(e) if e.is_credentials_refused() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UPSTREAM_CREDENTIALS_REFUSED",
                "ServiceUnavailableException",
            ),
            // Its outcome is unknown, like a timeout's: retryable, as an SDK retries a 504.
            Upstream(e) if e.is_interrupted() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UPSTREAM_INTERRUPTED",
                "ServiceUnavailableException",
            ),
            Upstream(e) if e.is_timeout() => (
                StatusCode::GATEWAY_TIMEOUT,
                "UPSTREAM_TIMEOUT",
                "InternalException",
            ),
            Upstream(_) => (
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_UNAVAILABLE",
                "InternalException",
            ),
            Stopping => (
                StatusCode::SERVICE_UNAVAILABLE,
                "STOPPING",
                "ServiceUnavailableException",
            ),
            AuditUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "AUDIT_UNAVAILABLE",
                "ServiceUnavailableException",
            ),
            Framing(e) if e.is_target() => (
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "ResourceNotFoundException",
            ),
            Framing(_) => (
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "InvalidInputException",
            ),
            HeadRefused(e) => (
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                "VALIDATION_ERROR",
                "InvalidInputException",
            ),
            // Not 5xx or throttling: the client was too slow, retrying at once would not help.
            RequestTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                "RequestTimeoutException",
            ),
            Overloaded { .. } | CallerBusy(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "OVERLOADED",
                "ServiceUnavailableException",
            ),
            StateChanged { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "STATE_CHANGED",
                "ServiceUnavailableException",
            ),
            Unsettled(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "STATE_SETTLING",
                "ServiceUnavailableException",
            ),
        };
        Shape {
            status,
            code,
            error_type,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.shape().status
    }

    pub fn code(&self) -> &'static str {
        self.shape().code
    }

    /// The seconds a client should wait before trying again (`Retry-After`), on every answer
    /// that asks for a retry (429 and 503). SDKs back off on their own schedule; a script's
    /// client (`curl --retry`, most HTTP retry libraries) waits for this instead, where without
    /// it curl waited one second and then doubled, whatever the cause.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Rejection::Unsettled(u) => Some(u.retry_after_s),
            Rejection::Quota(e) => Some(e.retry_after_s()),
            _ if matches!(
                self.status(),
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) =>
            {
                Some(1)
            }
            _ => None,
        }
    }

    /// Machine-readable detail: schema violations with their JSON pointers, or policy violations.
    pub fn details(&self) -> Vec<Value> {
        match self {
            Rejection::Invalid(errors) => errors
                .errors
                .iter()
                .map(|e| json!({"path": e.path(), "message": e.message()}))
                .collect(),
            Rejection::PolicyDenied { violations, .. } => violations.clone(),
            _ => Vec::new(),
        }
    }

    /// The envelope response. `request_id` is the decision id, also written to the audit record.
    pub fn to_response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let shape = self.shape();
        let message = self.to_string();
        let body = json!({
            "success": false,
            "error": {
                "code": shape.code,
                "message": message,
                "request_id": request_id,
                "details": self.details(),
            },
            "message": format!("{}: {}", shape.code, message),
            "__type": shape.error_type,
        });
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let mut response = Response::new(Full::new(bytes));
        *response.status_mut() = shape.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(shape.error_type),
        );
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("x-amzn-requestid", id);
        }
        if let Some(seconds) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;

    async fn body_json(resp: Response<Full<Bytes>>) -> Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn denial_carries_every_field_sdks_read() {
        let rejection = Rejection::PolicyDenied {
            message: "member accounts may not suppress findings".into(),
            violations: vec![
                json!({"msg": "member accounts may not suppress findings", "finding": null}),
            ],
        };
        let resp = rejection.to_response("dec-1");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()["x-amzn-errortype"], "AccessDeniedException");
        assert_eq!(resp.headers()["x-amzn-requestid"], "dec-1");
        let body = body_json(resp).await;
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "POLICY_DENIED");
        assert_eq!(body["error"]["request_id"], "dec-1");
        assert_eq!(body["__type"], "AccessDeniedException");
        assert_eq!(
            body["message"],
            "POLICY_DENIED: member accounts may not suppress findings"
        );
        assert_eq!(body["error"]["details"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn no_denial_is_retryable() {
        // SDKs retry 5xx and throttling codes; a denial must never look like either.
        for r in [
            Rejection::OperationNotAllowed {
                operation: "UpdateFindings",
            },
            Rejection::PolicyDenied {
                message: "x".into(),
                violations: vec![],
            },
            Rejection::NotFound {
                method: "GET".into(),
                path: "/x".into(),
            },
        ] {
            assert!(r.status().is_client_error(), "{r:?}");
        }
    }

    #[test]
    fn socket_limits_have_their_own_shapes() {
        let overloaded = Rejection::Overloaded {
            setting: "server.max_in_flight",
            limit: 2,
        };
        assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overloaded.code(), "OVERLOADED");
        let resp = overloaded.to_response("d");
        assert_eq!(
            resp.headers()["x-amzn-errortype"],
            "ServiceUnavailableException"
        );
        let slow = Rejection::RequestTimeout { ms: 5 };
        assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(slow.code(), "REQUEST_TIMEOUT");
        let dup = Rejection::Framing(FramingError::DuplicateHeader("authorization"));
        assert_eq!(dup.status(), StatusCode::BAD_REQUEST);
        assert_eq!(dup.code(), "VALIDATION_ERROR");
        let target = Rejection::Framing(FramingError::NotOriginForm("http://x".into()));
        assert_eq!(target.status(), StatusCode::NOT_FOUND);
        assert_eq!(target.code(), "NOT_FOUND");
    }

    /// Every answer that asks for a retry says when; no other does.
    #[test]
    fn retryable_answers_say_when_to_retry() {
        let after = |r: &Rejection| {
            r.to_response("d")
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap_or_default().to_string())
        };
        let quota = |rate: f64| {
            Rejection::Quota(QuotaExhausted {
                operation: "GetFindings",
                rate,
                waited_ms: 2000,
                account: None,
            })
        };
        assert_eq!(after(&quota(3.0)).as_deref(), Some("1"));
        assert_eq!(after(&quota(0.3)).as_deref(), Some("4"));
        assert_eq!(after(&quota(1e-9)).as_deref(), Some("60"));
        let overloaded = Rejection::Overloaded {
            setting: "server.max_in_flight",
            limit: 2,
        };
        assert_eq!(after(&overloaded).as_deref(), Some("1"));
        assert_eq!(after(&Rejection::Stopping).as_deref(), Some("1"));
        let throttled = Rejection::Upstream(UpstreamError::Throttled {
            operation: "BatchUpdateFindings",
            detail: "Rate exceeded".into(),
        });
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(after(&throttled).as_deref(), Some("1"));
        for r in [
            Rejection::Upstream(UpstreamError::Timeout { ms: 10 }),
            Rejection::RequestTimeout { ms: 5 },
            Rejection::Internal("x".into()),
        ] {
            assert_eq!(after(&r), None, "{r:?}");
        }
    }

    #[test]
    fn timeouts_and_unreachable_upstreams_differ() {
        let timeout = Rejection::Upstream(UpstreamError::Timeout { ms: 10 });
        let down = Rejection::Upstream(UpstreamError::Unreachable("refused".into()));
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timeout.code(), "UPSTREAM_TIMEOUT");
        assert_eq!(down.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(down.code(), "UPSTREAM_UNAVAILABLE");
    }

    /// Both ends of a stop's grace are retryable (another replica takes the retry), and only
    /// the one that was sent leaves its outcome unknown.
    #[test]
    fn a_stop_that_ran_out_of_grace_is_retryable() {
        let interrupted = UpstreamError::Interrupted {
            operation: "BatchUpdateFindings",
        };
        assert!(interrupted.outcome_unknown());
        let interrupted = Rejection::Upstream(interrupted);
        assert_eq!(interrupted.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(interrupted.code(), "UPSTREAM_INTERRUPTED");
        assert_eq!(
            Rejection::Stopping.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(Rejection::Stopping.code(), "STOPPING");
        let resp = Rejection::Stopping.to_response("d");
        assert_eq!(
            resp.headers()["x-amzn-errortype"],
            "ServiceUnavailableException"
        );
    }

    #[test]
    fn a_local_failure_is_internal_and_keeps_its_cause() {
        let cause = std::io::Error::other("signing key unusable");
        let e = UpstreamError::local("sign the upstream request", cause);
        assert!(!e.outcome_unknown(), "nothing was sent");
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert_eq!(source.to_string(), "signing key unusable");
        let r = Rejection::Upstream(e);
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.code(), "INTERNAL_ERROR");
        assert!(!r.to_string().contains("unreachable"), "{r}");
    }
}
