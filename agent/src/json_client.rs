//! Teletraan's JSON ping (`POST {url}/v1/system/ping`), so that the agent can also run against a
//! stock Teletraan service (or our coordinators' HTTP port). No long-poll: the daemon polls.
//! Fails over across the configured URLs; `Authorization: token <T>` when a token is set.

use std::time::Duration;

use proto::ping::{PingRequestBean, PingResponseBean};

use crate::coordinator_client::ClientError;

/// Timeout of one JSON ping (Teletraan's agent uses 30 s).
pub const JSON_PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per ping per URL before giving up (Teletraan retries 3 times).
pub const JSON_ATTEMPTS_PER_URL: usize = 3;
/// Pause between attempts.
pub const JSON_RETRY_PAUSE: Duration = Duration::from_millis(500);

pub struct JsonClient {
    http: reqwest::Client,
    urls: Vec<String>,
    token: Option<String>,
    current: std::sync::atomic::AtomicUsize,
}

impl JsonClient {
    /// A client for the services at `urls` (e.g. `https://teletraan.example.com`).
    pub fn new(urls: Vec<String>, token: Option<String>) -> Result<Self, ClientError> {
        assert!(!urls.is_empty(), "at least one service URL");
        p2p_transfer::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(JSON_PING_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let urls = urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Ok(Self { http, urls, token, current: Default::default() })
    }

    /// One ping, failing over across the URLs. An empty body reads as NOOP (as in Teletraan).
    pub async fn ping(&self, req: &PingRequestBean) -> Result<PingResponseBean, ClientError> {
        use std::sync::atomic::Ordering;
        let attempts = JSON_ATTEMPTS_PER_URL * self.urls.len();
        let mut last = String::new();
        for attempt in 0..attempts {
            let i = self.current.load(Ordering::Relaxed) % self.urls.len();
            let url = format!("{}/v1/system/ping", self.urls[i]);
            let mut call = self.http.post(&url).json(req);
            if let Some(t) = &self.token {
                call = call.header("Authorization", format!("token {t}"));
            }
            match call.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let body = resp.bytes().await.unwrap_or_default();
                    if body.iter().all(u8::is_ascii_whitespace) {
                        return Ok(PingResponseBean::default());
                    }
                    return serde_json::from_slice(&body).map_err(|e| ClientError::Refused {
                        code: 502,
                        message: format!("{url} answered a ping with malformed JSON: {e}"),
                    });
                }
                Ok(resp) if resp.status().is_client_error() => {
                    let code = resp.status().as_u16();
                    let message = resp.text().await.unwrap_or_default();
                    return Err(ClientError::Refused { code, message });
                }
                Ok(resp) => last = format!("{url}: HTTP {}", resp.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
            self.current.store(i + 1, Ordering::Relaxed);
            if attempt + 1 < attempts {
                tokio::time::sleep(JSON_RETRY_PAUSE).await;
            }
        }
        Err(ClientError::NoCoordinator { attempts, last })
    }
}
