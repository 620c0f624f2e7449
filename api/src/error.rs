//! The one place where errors become HTTP responses.
//!
//! Every error answer has the same JSON shape:
//! `{"error": {"code": "invalid_field", "message": "...", "field": "name"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
                field: None,
            },
        }
    }

    /// A 400 naming the field that is wrong.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::BAD_REQUEST, "invalid_field", message);
        error.body.field = Some(field.into());
        error
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 401: no credentials, or credentials that prove nothing. Deliberately says no more.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "authentication required: send `Authorization: Bearer <token or API key>`",
        )
    }

    /// 403: the caller is known but lacks the scope this request needs.
    pub fn forbidden(scope: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this request needs the `{scope}` permission"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// An unexpected failure: logged in full, answered without internals.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Envelope {
            error: ErrorBody,
        }
        (self.status, Json(Envelope { error: self.body })).into_response()
    }
}

impl From<flowforge_store::StoreError> for ApiError {
    fn from(error: flowforge_store::StoreError) -> Self {
        use flowforge_store::StoreError;
        match error {
            StoreError::Conflict { .. } => ApiError::conflict(error.to_string()),
            e if e.is_transient() => ApiError::unavailable(format!("event log unavailable: {e}")),
            e => ApiError::internal(e),
        }
    }
}

impl From<flowforge_projections::ProjectionError> for ApiError {
    fn from(error: flowforge_projections::ProjectionError) -> Self {
        ApiError::internal(error)
    }
}
