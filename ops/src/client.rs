//! A small client for the coordinator's HTTP API, with errors that say what the server said.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Exit code: a usage error (clap's own; also an ambiguous id prefix, a destructive verb
/// without a terminal to confirm on and without `--yes`).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the resource was not found (404).
pub const EXIT_NOT_FOUND: i32 = 4;
/// Exit code: no leader, or no coordinator reachable (503, connection errors).
pub const EXIT_UNAVAILABLE: i32 = 5;
/// Exit code: not authenticated (401: no token, an unknown or an expired one).
pub const EXIT_NOT_AUTHENTICATED: i32 = 6;
/// Exit code: authenticated but lacking the role (403).
pub const EXIT_FORBIDDEN: i32 = 7;

/// `tt --help`'s list of exit codes.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  error (the server refused the request, or it failed)
  2  usage error (also: an ambiguous id prefix; a destructive verb without --yes and without
     a terminal to confirm on)
  3  `tt status -w`: --timeout passed before the deploy finished
  4  not found (404, or no id starts with the prefix given)
  5  service unavailable: no leader, or no coordinator reachable
  6  not authenticated (401): set TT_TOKEN to a valid token
  7  forbidden (403): the token lacks the role the message names
`tt status -w` also exits 1 when the deploy is FAILING or ABORTED.";

/// Timeout of one API call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {source}")]
    Unreachable { addr: String, source: reqwest::Error },
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from {addr}: {reason}")]
    Decode { addr: String, reason: String },
}

impl ClientError {
    /// The exit code `tt` uses for this error (see [`EXIT_CODES_HELP`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Api { status: 401, .. } => EXIT_NOT_AUTHENTICATED,
            ClientError::Api { status: 403, .. } => EXIT_FORBIDDEN,
            ClientError::Api { status: 404, .. } => EXIT_NOT_FOUND,
            ClientError::Api { status: 503, .. } | ClientError::Unreachable { .. } => {
                EXIT_UNAVAILABLE
            }
            _ => 1,
        }
    }

    /// What the operator can do about an authentication or authorization refusal.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ClientError::Api { status: 401, .. } => Some(
                "set TT_TOKEN (or --token) to a valid token; an admin creates one with `tt token create`",
            ),
            ClientError::Api { status: 403, .. } => Some(
                "the token lacks the role named above on that env; ask an ADMIN of the env (or of the system) for it, or use a token that holds it",
            ),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
}

impl Client {
    pub fn new(addr: &str, token: Option<String>) -> Self {
        crate::ensure_crypto_provider();
        let http =
            reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("plain HTTP client");
        Self { http, addr: addr.trim_end_matches('/').to_string(), token }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ClientError> {
        let req = match &self.token {
            Some(t) => req.header("Authorization", format!("token {t}")),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { addr: self.addr.clone(), source })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable { addr: self.addr.clone(), source })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ClientError::Api { status: status.as_u16(), message });
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Decode { addr: self.addr.clone(), reason: e.to_string() })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(format!("{}{path}", self.addr))).await?.ok_or_else(|| {
            ClientError::Decode { addr: self.addr.clone(), reason: "empty body".into() }
        })
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Option<T>, ClientError> {
        self.send(self.http.post(format!("{}{path}", self.addr)).json(body)).await
    }

    /// POST JSON to a slow operation (e.g. a pull); `timeout` replaces the usual one.
    pub async fn post_timeout<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: std::time::Duration,
    ) -> Result<Option<T>, ClientError> {
        self.send(self.http.post(format!("{}{path}", self.addr)).json(body).timeout(timeout)).await
    }

    /// POST a raw (streamed) body, e.g. an artifact; `timeout` replaces the usual one.
    pub async fn post_body<T: DeserializeOwned>(
        &self,
        path: &str,
        body: reqwest::Body,
        timeout: std::time::Duration,
    ) -> Result<Option<T>, ClientError> {
        let req = self
            .http
            .post(format!("{}{path}", self.addr))
            .header("Content-Type", "application/octet-stream")
            .timeout(timeout)
            .body(body);
        self.send(req).await
    }

    pub async fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(self.http.put(format!("{}{path}", self.addr)).json(body))
            .await
            .map(|_| ())
    }

    /// PUT with a JSON answer (e.g. the progress view).
    pub async fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.put(format!("{}{path}", self.addr)).json(body)).await?.ok_or_else(
            || ClientError::Decode { addr: self.addr.clone(), reason: "empty body".into() },
        )
    }

    /// DELETE with a JSON body (e.g. the host ids of `DELETE /v1/envs/{e}/{s}/hosts`).
    pub async fn delete_json<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(self.http.delete(format!("{}{path}", self.addr)).json(body))
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send::<serde_json::Value>(self.http.delete(format!("{}{path}", self.addr)))
            .await
            .map(|_| ())
    }
}

/// Percent-encodes `s` for a URL path segment or query value (RFC 3986 unreserved characters
/// pass as they are).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Formats rows as an aligned text table. Cells may carry ANSI colour: widths count only what
/// a terminal shows.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    use crate::format::visible_width;
    let mut widths: Vec<usize> = headers.iter().map(|h| visible_width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(visible_width(cell));
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - visible_width(c))))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}
