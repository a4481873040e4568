//! API errors: Dropwizard's `{"code": N, "message": "..."}` body, the status Teletraan uses,
//! and a `Retry-After` hint on 503.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::command::OpError;
use serde::Serialize;

use super::RETRY_AFTER_SECS;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: u16,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn unavailable(message: String) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn no_leader() -> Self {
        Self::unavailable(format!(
            "no Raft leader is known (election in progress or quorum lost); retry in {RETRY_AFTER_SECS} s"
        ))
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds {limit} bytes"))
    }
}

/// `e` and every error beneath it, joined with ": " (what failed, down to the OS reason).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let status = match e {
            OpError::NotFound { .. } => StatusCode::NOT_FOUND,
            OpError::Conflict { .. } => StatusCode::CONFLICT,
            OpError::Invalid { .. } => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(Body { code: self.status.as_u16(), message: &self.message });
        let mut resp = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        resp
    }
}
