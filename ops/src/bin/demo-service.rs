//! `demo-service`: the small real service the demo deploys (`ops/demo/teletraan/` are its hooks).
//!
//! Serve mode: `demo-service --port 8000 --version-file VERSION [--config service.conf]
//! [--pid-file demo-service.pid]` listens on 127.0.0.1 and answers `GET /` with
//! `{"service","version","host","greeting","pid"}` and `GET /health` with `ok`; anything else
//! is 404. One request per connection (HTTP/1.1, `Connection: close`). The version, config and
//! host name are read once at start-up, so a build staged under a running instance does not
//! change what it reports. The pid file is written after the port is bound (so its presence
//! means "listening") and removed on SIGTERM/SIGINT, which end the process with exit 0.
//!
//! Probe mode: `demo-service --probe http://127.0.0.1:8000/health [--probe-timeout-ms N]` is the
//! hooks' HTTP client (a minimal host has no curl): it retries until a 200 answer or the
//! timeout, prints the body and exits 0; otherwise it exits 1.
//!
//! Exit codes: 0 success, 1 error, 2 usage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;

/// A request head (request line and headers) longer than this is answered 431 and closed.
const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// A client that has not sent its whole request head within this time is dropped.
const REQUEST_READ_TIMEOUT_MS: u64 = 5_000;
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// The probe reads at most this much of an answer.
const MAX_PROBE_RESPONSE_BYTES: usize = 64 * 1024;
/// Default for `--probe-timeout-ms`.
const DEFAULT_PROBE_TIMEOUT_MS: u64 = 10_000;
/// Pause between probe attempts.
const PROBE_RETRY_INTERVAL_MS: u64 = 100;
/// Longest single probe attempt (connect, send, read), within the overall timeout.
const PROBE_ATTEMPT_TIMEOUT_MS: u64 = 2_000;

#[derive(Parser)]
#[command(version, about = "The tt demo's service: a tiny HTTP server and its probe")]
struct Cli {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// `key=value` lines (`#` comments); `greeting` is served on `/`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// File holding the version to report (trimmed).
    #[arg(long, required_unless_present = "probe")]
    version_file: Option<PathBuf>,
    /// Written with this process's id once listening; removed on SIGTERM.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Probe mode: GET this http:// URL until it answers 200, print the body, exit 0.
    #[arg(long, value_name = "URL", conflicts_with_all = ["config", "version_file", "pid_file"])]
    probe: Option<String>,
    /// Probe mode: give up (exit 1) after this many milliseconds.
    #[arg(long, default_value_t = DEFAULT_PROBE_TIMEOUT_MS, requires = "probe")]
    probe_timeout_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.probe {
        Some(url) => probe(url, Duration::from_millis(cli.probe_timeout_ms)).await,
        None => serve(&cli).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-service: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What `GET /` reports; field order is the JSON's.
#[derive(Serialize)]
struct Identity<'a> {
    service: &'a str,
    version: &'a str,
    host: &'a str,
    greeting: &'a str,
    pid: u32,
}

/// The pre-rendered answers (nothing changes after start-up).
struct Responses {
    root: Vec<u8>,
    health: Vec<u8>,
    not_found: Vec<u8>,
    bad_request: Vec<u8>,
    too_large: Vec<u8>,
}

async fn serve(cli: &Cli) -> anyhow::Result<()> {
    let version_file = cli.version_file.as_deref().context("--version-file is required")?;
    let version = std::fs::read_to_string(version_file)
        .with_context(|| format!("reading the version file {}", version_file.display()))?;
    let version = version.trim();
    let config = match &cli.config {
        Some(path) => read_config(path)?,
        None => BTreeMap::new(),
    };
    let greeting = config.get("greeting").map_or("hello", String::as_str);
    let host = host_name();
    let pid = std::process::id();
    let mut root = serde_json::to_vec(&Identity {
        service: "demo-service",
        version,
        host: &host,
        greeting,
        pid,
    })?;
    root.push(b'\n');
    let responses = Arc::new(Responses {
        root: response(200, "OK", "application/json", &root),
        health: response(200, "OK", "text/plain", b"ok\n"),
        not_found: response(404, "Not Found", "text/plain", b"not found\n"),
        bad_request: response(400, "Bad Request", "text/plain", b"bad request\n"),
        too_large: response(431, "Request Header Fields Too Large", "text/plain", b"too large\n"),
    });

    let listener = TcpListener::bind(("127.0.0.1", cli.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", cli.port))?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    if let Some(pid_file) = &cli.pid_file {
        write_pid_file(pid_file, pid)?;
    }
    eprintln!("demo-service {version} listening on 127.0.0.1:{} (pid {pid})", cli.port);

    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stopped_by = loop {
        let permit = tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            permit = permits.clone().acquire_owned() => permit?,
        };
        let stream = tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Per-connection failures (e.g. reset before accept) do not stop the server.
                Err(_) => continue,
            },
        };
        let responses = responses.clone();
        tokio::spawn(async move {
            handle(stream, &responses).await;
            drop(permit);
        });
    };
    if let Some(pid_file) = &cli.pid_file {
        remove_own_pid_file(pid_file, pid);
    }
    eprintln!("demo-service {version} stopped by {stopped_by}");
    Ok(())
}

/// `key=value` per line (split at the first `=`, both sides trimmed); blank lines and `#`
/// comments are skipped; a later key overrides an earlier one.
fn read_config(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let mut config = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("{}:{}: expected key=value, found {line:?}", path.display(), index + 1);
        };
        config.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(config)
}

/// `$DEMO_HOST`, else the kernel's host name, else `localhost`.
fn host_name() -> String {
    if let Ok(host) = std::env::var("DEMO_HOST")
        && !host.is_empty()
    {
        return host;
    }
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Written to a temporary file and renamed, so a reader never sees a partial pid.
fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{pid}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing the pid file {}", path.display()))
}

/// Removes the pid file only if it still names this process.
fn remove_own_pid_file(path: &Path, pid: u32) {
    let ours = std::fs::read_to_string(path).is_ok_and(|text| text.trim() == pid.to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

fn response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// One request: read the head (bounded in size and time), answer, close.
async fn handle(mut stream: TcpStream, responses: &Responses) {
    let timeout = Duration::from_millis(REQUEST_READ_TIMEOUT_MS);
    let answer = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
        Ok(Ok(Head::Complete(head))) => route(&head, responses),
        Ok(Ok(Head::TooLarge)) => &responses.too_large,
        // Timed out, closed early or failed: nobody to answer.
        Ok(Ok(Head::Truncated)) | Ok(Err(_)) | Err(_) => return,
    };
    let _ = stream.write_all(answer).await;
    let _ = stream.shutdown().await;
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Truncated,
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if head.len() >= MAX_REQUEST_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
        let room = (MAX_REQUEST_HEAD_BYTES - head.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(Head::Truncated);
        }
        // Search from a little before the new bytes so a terminator split across reads is found.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let tail = &head[from..];
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            return Ok(Head::Complete(head));
        }
    }
}

fn route<'a>(head: &[u8], responses: &'a Responses) -> &'a [u8] {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return &responses.bad_request;
    };
    if !version.starts_with("HTTP/") {
        return &responses.bad_request;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/") => &responses.root,
        ("GET", "/health") => &responses.health,
        _ => &responses.not_found,
    }
}

/// Retries until a 200 answer or `timeout`; connection failures and 5xx answers are retried,
/// any other status fails at once.
async fn probe(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let (host, port, path) = parse_http_url(url)?;
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = remaining.min(Duration::from_millis(PROBE_ATTEMPT_TIMEOUT_MS));
        let outcome = match tokio::time::timeout(attempt, get(&host, port, &path)).await {
            Ok(Ok((200, body))) => {
                print!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            Ok(Ok((status, body))) if status < 500 => {
                bail!("{url} answered {status}: {}", String::from_utf8_lossy(&body).trim());
            }
            Ok(Ok((status, _))) => format!("answered {status}"),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {} ms", attempt.as_millis()),
        };
        if Instant::now() >= deadline {
            bail!("{url} did not answer 200 within {} ms: {outcome}", timeout.as_millis());
        }
        tokio::time::sleep(Duration::from_millis(PROBE_RETRY_INTERVAL_MS)).await;
    }
}

/// `http://host[:port][/path]` → (host, port, path). Only plain http.
fn parse_http_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--probe takes an http:// URL, got {url:?}");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().with_context(|| format!("bad port in {url:?}"))?),
        None => (authority, 80),
    };
    if host.is_empty() {
        bail!("no host in {url:?}");
    }
    Ok((host.to_owned(), port, path.to_owned()))
}

/// One GET; reads until the server closes (it sends `Connection: close`).
async fn get(host: &str, port: u16, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream).take(MAX_PROBE_RESPONSE_BYTES as u64 + 1).read_to_end(&mut answer).await?;
    if answer.len() > MAX_PROBE_RESPONSE_BYTES {
        bail!("answer longer than {MAX_PROBE_RESPONSE_BYTES} bytes");
    }
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("answer without a complete HTTP head");
    };
    let status_line = String::from_utf8_lossy(&answer[..split]);
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {:?}", status_line.lines().next()))?;
    Ok((status, answer[split + 4..].to_vec()))
}
