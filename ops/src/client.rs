//! A small client for the coordinator's HTTP API, with errors that say what the server said.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

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
    /// The exit code `tt` uses for this error: 4 not found, 5 unavailable, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Api { status: 404, .. } => 4,
            ClientError::Api { status: 503, .. } | ClientError::Unreachable { .. } => 5,
            _ => 1,
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

/// Formats rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}
