//! The deterministic core of webhook delivery (Teletraan §4.5, done with retries): which
//! substitutions a hook gets, the request it becomes, whether an attempt's result is final, and
//! how long to wait before the next one. No IO and no clock: the leader's delivery loop
//! (`api/webhooks.rs`) feeds it results and sleeps what it says.
//!
//! Quirk fixed: Teletraan parses the *unsubstituted* header string into headers, so a variable in
//! a header was sent literally; here the substituted string is parsed.

use std::time::Duration;

use proto::beans::WebHookBean;
use proto::enums::{DeployState, DeployType};

/// Most attempts of one delivery (the first one included).
pub const WEBHOOK_MAX_ATTEMPTS: u32 = 5;
/// Timeout of one HTTP attempt.
pub const WEBHOOK_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait after the first failed attempt; doubled after each further one.
pub const WEBHOOK_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest wait between two attempts.
pub const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The values Teletraan substitutes into a hook's url, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookVars {
    pub deploy_id: String,
    /// The deploy's start date, epoch milliseconds.
    pub deploy_start_ms: i64,
    pub deploy_state: DeployState,
    pub deploy_type: DeployType,
}

/// Teletraan's `DeployState` ordinal (`$TELETRAAN_NUMERIC_DEPLOY_STATE`).
pub fn state_ordinal(state: DeployState) -> u32 {
    match state {
        DeployState::Running => 0,
        DeployState::Failing => 1,
        DeployState::Succeeding => 2,
        DeployState::Succeeded => 3,
        DeployState::Aborted => 4,
    }
}

/// Replaces every `$TELETRAAN_DEPLOY_ID`, `$TELETRAAN_DEPLOY_START`,
/// `$TELETRAAN_NUMERIC_DEPLOY_STATE` and `$TELETRAAN_DEPLOY_TYPE` in `text`, in one pass (a
/// substituted value is never substituted again).
pub fn substitute(text: &str, vars: &HookVars) -> String {
    let values = [
        ("$TELETRAAN_DEPLOY_ID", vars.deploy_id.clone()),
        ("$TELETRAAN_DEPLOY_START", vars.deploy_start_ms.to_string()),
        ("$TELETRAAN_NUMERIC_DEPLOY_STATE", state_ordinal(vars.deploy_state).to_string()),
        ("$TELETRAAN_DEPLOY_TYPE", vars.deploy_type.to_string()),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        match values.iter().find(|(name, _)| tail.starts_with(name)) {
            Some((name, value)) => {
                out.push_str(value);
                rest = &tail[name.len()..];
            }
            None => {
                out.push('$');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Why a hook cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHook {
    #[error("url is required")]
    NoUrl,
    #[error("url {0:?} is not http:// or https://")]
    Scheme(String),
    #[error("method {0:?} is not GET, POST, PUT or DELETE")]
    Method(String),
    #[error("header {0:?} is not NAME:VALUE")]
    Header(String),
}

/// Parses `k:v;k2:v2` (whitespace around names and values trimmed, empty entries skipped; a
/// value may contain ':').
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, InvalidHook> {
    let mut out = Vec::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, value) =
            entry.split_once(':').ok_or_else(|| InvalidHook::Header(entry.into()))?;
        let name = name.trim();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(InvalidHook::Header(entry.into()));
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

/// One HTTP request a hook becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Sent with POST and PUT only.
    pub body: Option<String>,
}

/// The request for `hook` with `vars` substituted in url, headers and body; the headers are
/// parsed after substitution.
pub fn render(hook: &WebHookBean, vars: &HookVars) -> Result<HookRequest, InvalidHook> {
    let method = hook.method.as_deref().unwrap_or("POST").trim().to_ascii_uppercase();
    if !["GET", "POST", "PUT", "DELETE"].contains(&method.as_str()) {
        return Err(InvalidHook::Method(method));
    }
    let url =
        hook.url.as_deref().map(str::trim).filter(|u| !u.is_empty()).ok_or(InvalidHook::NoUrl)?;
    let url = substitute(url, vars);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(InvalidHook::Scheme(url));
    }
    let headers = parse_headers(&substitute(hook.headers.as_deref().unwrap_or(""), vars))?;
    let body = match method.as_str() {
        "POST" | "PUT" => hook.body.as_deref().map(|b| substitute(b, vars)),
        _ => None,
    };
    Ok(HookRequest { method, url, headers, body })
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this HTTP status.
    Status(u16),
    /// No answer: connection refused, timeout, TLS failure (the error text).
    Error(String),
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Record the outcome: the attempt was final (a success, a status not worth retrying, or
    /// the last attempt allowed).
    Record { succeeded: bool },
    /// Try again after this wait.
    RetryAfter(Duration),
}

/// Whether an attempt result is final after `attempts` attempts: 2xx succeeds; 408, 429, 5xx
/// and transport errors are retried with exponential backoff up to [`WEBHOOK_MAX_ATTEMPTS`];
/// any other status is a final failure (the receiver refused the request itself).
pub fn next_step(result: &Attempt, attempts: u32) -> Next {
    let retryable = match result {
        Attempt::Status(s) if (200..300).contains(s) => return Next::Record { succeeded: true },
        Attempt::Status(s) => *s == 408 || *s == 429 || *s >= 500,
        Attempt::Error(_) => true,
    };
    if retryable && attempts < WEBHOOK_MAX_ATTEMPTS {
        Next::RetryAfter(backoff(attempts))
    } else {
        Next::Record { succeeded: false }
    }
}

/// The wait after `attempts` failed attempts: base × 2^(attempts−1), at most the maximum.
pub fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(20);
    WEBHOOK_BACKOFF_BASE.saturating_mul(1u32 << shift).min(WEBHOOK_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HookVars {
        HookVars {
            deploy_id: "d-1".into(),
            deploy_start_ms: 1_700_000_000_000,
            deploy_state: DeployState::Succeeding,
            deploy_type: DeployType::Rollback,
        }
    }

    #[test]
    fn substitution_table() {
        let cases = [
            ("$TELETRAAN_DEPLOY_ID", "d-1"),
            ("x=$TELETRAAN_DEPLOY_START&y", "x=1700000000000&y"),
            ("$TELETRAAN_NUMERIC_DEPLOY_STATE", "2"),
            ("$TELETRAAN_DEPLOY_TYPE/$TELETRAAN_DEPLOY_ID", "ROLLBACK/d-1"),
            ("$TELETRAAN_OTHER $ $$", "$TELETRAAN_OTHER $ $$"),
            ("no variables", "no variables"),
            ("€$TELETRAAN_DEPLOY_ID€", "€d-1€"),
        ];
        for (text, want) in cases {
            assert_eq!(substitute(text, &vars()), want, "{text}");
        }
        // A value that looks like a variable is not substituted again.
        let tricky = HookVars { deploy_id: "$TELETRAAN_DEPLOY_TYPE".into(), ..vars() };
        assert_eq!(substitute("$TELETRAAN_DEPLOY_ID", &tricky), "$TELETRAAN_DEPLOY_TYPE");
    }

    #[test]
    fn ordinals_follow_teletraans_enum() {
        let all = [
            DeployState::Running,
            DeployState::Failing,
            DeployState::Succeeding,
            DeployState::Succeeded,
            DeployState::Aborted,
        ];
        let got: Vec<u32> = all.into_iter().map(state_ordinal).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn headers_are_parsed_after_substitution() {
        let hook = WebHookBean {
            method: Some("post".into()),
            url: Some("http://h/x/$TELETRAAN_DEPLOY_ID".into()),
            headers: Some("X-Deploy: $TELETRAAN_DEPLOY_ID; Authorization:Basic a:b ;".into()),
            body: Some(r#"{"state":$TELETRAAN_NUMERIC_DEPLOY_STATE}"#.into()),
            version: None,
        };
        let r = render(&hook, &vars()).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.url, "http://h/x/d-1");
        assert_eq!(
            r.headers,
            [("X-Deploy".into(), "d-1".into()), ("Authorization".into(), "Basic a:b".into())]
        );
        assert_eq!(r.body.as_deref(), Some(r#"{"state":2}"#));
        let get = WebHookBean { method: Some("GET".into()), ..hook.clone() };
        assert_eq!(render(&get, &vars()).unwrap().body, None, "GET sends no body");
        let default = WebHookBean { method: None, ..hook };
        assert_eq!(render(&default, &vars()).unwrap().method, "POST");
    }

    #[test]
    fn invalid_hooks_table() {
        let hook = |method: Option<&str>, url: Option<&str>, headers: Option<&str>| WebHookBean {
            method: method.map(Into::into),
            url: url.map(Into::into),
            headers: headers.map(Into::into),
            ..Default::default()
        };
        let cases = [
            (hook(None, None, None), InvalidHook::NoUrl),
            (hook(None, Some("  "), None), InvalidHook::NoUrl),
            (hook(None, Some("ftp://h"), None), InvalidHook::Scheme("ftp://h".into())),
            (hook(Some("PATCH"), Some("http://h"), None), InvalidHook::Method("PATCH".into())),
            (hook(None, Some("http://h"), Some("novalue")), InvalidHook::Header("novalue".into())),
            (
                hook(None, Some("http://h"), Some("bad name:v")),
                InvalidHook::Header("bad name:v".into()),
            ),
            (hook(None, Some("http://h"), Some(":v")), InvalidHook::Header(":v".into())),
        ];
        for (h, want) in cases {
            assert_eq!(render(&h, &vars()), Err(want), "{h:?}");
        }
    }

    #[test]
    fn retry_and_backoff_table() {
        let ms = Duration::from_millis;
        let cases = [
            (Attempt::Status(200), 1, Next::Record { succeeded: true }),
            (Attempt::Status(204), 5, Next::Record { succeeded: true }),
            (Attempt::Status(500), 1, Next::RetryAfter(ms(500))),
            (Attempt::Status(503), 2, Next::RetryAfter(ms(1000))),
            (Attempt::Status(429), 3, Next::RetryAfter(ms(2000))),
            (Attempt::Status(408), 4, Next::RetryAfter(ms(4000))),
            (Attempt::Error("refused".into()), 1, Next::RetryAfter(ms(500))),
            (
                Attempt::Error("refused".into()),
                WEBHOOK_MAX_ATTEMPTS,
                Next::Record { succeeded: false },
            ),
            (Attempt::Status(500), WEBHOOK_MAX_ATTEMPTS, Next::Record { succeeded: false }),
            (Attempt::Status(404), 1, Next::Record { succeeded: false }),
            (Attempt::Status(400), 1, Next::Record { succeeded: false }),
            (Attempt::Status(301), 1, Next::Record { succeeded: false }),
        ];
        for (result, attempts, want) in cases {
            assert_eq!(next_step(&result, attempts), want, "{result:?} after {attempts}");
        }
        assert_eq!(backoff(6), WEBHOOK_BACKOFF_BASE * 32);
        assert_eq!(backoff(7), WEBHOOK_BACKOFF_MAX, "capped");
        assert_eq!(backoff(u32::MAX), WEBHOOK_BACKOFF_MAX);
    }
}
