//! The demo artifact end to end without the agent: the real `demo-service` packaged by
//! `build_demo_tarball`, extracted and staged behind a `TARGET` symlink as the agent would, its
//! hooks run as processes with Teletraan's environment.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use ops::demo_build::{DemoBuild, build_demo_tarball};
use serde_json::Value;

const SERVICE_BIN: &str = env!("CARGO_BIN_EXE_demo-service");
/// Generous bound on any one hook or service run, so a bug fails the test instead of hanging it.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status.lines().any(|line| line.starts_with("State:") && !line.contains("Z (zombie)"))
    })
}

fn read_pid(pid_file: &Path) -> i32 {
    std::fs::read_to_string(pid_file).unwrap().trim().parse().unwrap()
}

/// Kills every demo-service this test saw, and whatever the pid file names, even if the test
/// fails half-way. Only processes whose command line carries the test's pid file are touched.
struct ServiceGuard {
    pid_file: PathBuf,
    seen: Vec<i32>,
}

impl ServiceGuard {
    fn track(&mut self, pid: i32) {
        self.seen.push(pid);
    }
}

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        let current = std::fs::read_to_string(&self.pid_file).ok();
        let pids = self.seen.iter().copied().chain(current.and_then(|p| p.trim().parse().ok()));
        let marker = self.pid_file.to_string_lossy().into_owned();
        for pid in pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// One deploy host's layout: builds, the `TARGET` symlink, the service's state directory.
struct Host {
    dir: tempfile::TempDir,
    port: u16,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("builds")).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        Host { dir, port: free_port() }
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("target")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn pid_file(&self) -> PathBuf {
        self.state_dir().join("demo-service.pid")
    }

    fn guard(&self) -> ServiceGuard {
        ServiceGuard { pid_file: self.pid_file(), seen: Vec::new() }
    }

    fn package(&self, version: &str) -> DemoBuild {
        let out = self.dir.path().join(format!("demo-{version}.tar.gz"));
        build_demo_tarball(&out, version, Path::new(SERVICE_BIN)).unwrap()
    }

    /// Extracts into `builds/<id>`, renders `service.conf.tmpl` by hand (the agent's renderer
    /// does this in a deploy; `None` keeps the template's default greeting) and swaps `target`.
    fn stage(&self, build: &DemoBuild, id: &str, greeting: Option<&str>) {
        let dir = self.dir.path().join("builds").join(id);
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&build.path).unwrap());
        tar::Archive::new(gz).unpack(&dir).unwrap();
        let teletraan = dir.join("teletraan");
        let template = std::fs::read_to_string(teletraan.join("service.conf.tmpl")).unwrap();
        let greeting_default = "${TELETRAAN_GREETING:hello from teletraan}";
        assert!(template.contains(greeting_default), "{template}");
        let rendered = template
            .replace(greeting_default, greeting.unwrap_or("hello from teletraan"))
            .replace("${TELETRAAN_PORT:8000}", &self.port.to_string());
        std::fs::write(teletraan.join("service.conf"), rendered).unwrap();
        let tmp = self.dir.path().join("target_tmp");
        std::os::unix::fs::symlink(&dir, &tmp).unwrap();
        std::fs::rename(&tmp, self.target()).unwrap();
    }

    /// Runs a hook as the agent does: exec'd directly from `teletraan/`, in its own process
    /// group, with Teletraan's variables. Returns (exit code, stdout + stderr).
    fn run_hook(&self, hook: &str) -> (i32, String) {
        let teletraan = self.target().join("teletraan");
        let mut child = Command::new(teletraan.join(hook))
            .current_dir(&teletraan)
            .env("TARGET", self.target())
            .env("DEMO_PORT", self.port.to_string())
            .env("DEMO_STATE_DIR", self.state_dir())
            .env("DEMO_HOST", "test-host-1")
            .env("DEPLOY_ID", "d-42")
            .env("DEPLOY_STEP", hook)
            .env("OPCODE", "DEPLOY")
            .env("DEPLOY_TYPE", "REGULAR")
            .env("ENV_NAME", "demo")
            .env("STAGE_NAME", "prod")
            .env("BUILD_ID", "b-7")
            .env("BUILD_COMMIT", "abc123")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        // Read both pipes to EOF: a daemon that kept the hook's output open would block an
        // agent that does the same.
        let (sender, receiver) = mpsc::channel();
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                let _ = sender.send(text);
            });
        }
        let deadline = Instant::now() + HOOK_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                panic!("{hook} did not finish within {HOOK_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut output = String::new();
        for _ in 0..2 {
            let text = receiver
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{hook} exited but its output stayed open"));
            output.push_str(&text);
        }
        (status.code().unwrap_or(-1), output)
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
    }
}

/// Sends `request` raw; returns the status and the body.
fn http_get(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{answer:?}"));
    assert!(head.contains("Connection: close"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_owned())
}

fn identity(host: &Host) -> Value {
    let (status, body) = host.get("/");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn hooks_start_upgrade_and_stop_the_service() {
    let host = Host::new();
    let mut guard = host.guard();
    let v1 = host.package("1.0.0");
    let v2 = host.package("2.0.0");
    assert_ne!(v1.blake3_hex, v2.blake3_hex);

    // v1: RESTARTING starts it, POST_RESTART checks it.
    host.stage(&v1, "b-1", Some("hello from v1"));
    let (code, out) = host.run_hook("PRE_RESTART");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("not running"), "{out}");
    let (code, out) = host.run_hook("RESTARTING");
    assert_eq!(code, 0, "{out}");
    let pid1 = read_pid(&host.pid_file());
    guard.track(pid1);
    assert!(alive(pid1));
    let (code, out) = host.run_hook("POST_RESTART");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("version 1.0.0 is healthy"), "{out}");
    for line in
        ["DEPLOY_ID=d-42", "DEPLOY_STEP=POST_RESTART", "BUILD_COMMIT=abc123", "ENV_NAME=demo"]
    {
        assert!(out.lines().any(|l| l == line), "{line} missing from:\n{out}");
    }
    assert!(out.contains(&format!("TARGET={}", host.target().display())), "{out}");
    let v = identity(&host);
    assert_eq!(v["service"], "demo-service");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["greeting"], "hello from v1");
    assert_eq!(v["host"], "test-host-1");
    assert_eq!(v["pid"], pid1);
    assert_eq!(host.get("/health"), (200, "ok\n".to_owned()));

    // v2 staged under the running v1: v1 still reports its own version, then RESTARTING
    // replaces it (a RESTARTING without PRE_RESTART, as a retried hook would be).
    host.stage(&v2, "b-2", None);
    assert_eq!(identity(&host)["version"], "1.0.0");
    let (code, out) = host.run_hook("RESTARTING");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("stopping demo-service pid {pid1}")), "{out}");
    let pid2 = read_pid(&host.pid_file());
    guard.track(pid2);
    assert_ne!(pid1, pid2);
    assert!(!alive(pid1), "v1 (pid {pid1}) still runs");
    let (code, out) = host.run_hook("POST_RESTART");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("version 2.0.0 is healthy"), "{out}");
    let v = identity(&host);
    assert_eq!(
        (v["version"].as_str(), v["greeting"].as_str()),
        (Some("2.0.0"), Some("hello from teletraan"))
    );
    assert_eq!(v["pid"], pid2);

    // STOPPING: the process is gone, its pid file too, the port closed.
    let (code, out) = host.run_hook("STOPPING");
    assert_eq!(code, 0, "{out}");
    assert!(!alive(pid2), "pid {pid2} still runs after STOPPING");
    assert!(!host.pid_file().exists());
    assert!(TcpStream::connect(("127.0.0.1", host.port)).is_err(), "port {} still open", host.port);
    let (code, out) = host.run_hook("STOPPING");
    assert_eq!(code, 0, "a second STOPPING is harmless: {out}");
}

#[test]
fn a_stale_pid_file_never_gets_another_process_killed() {
    let host = Host::new();
    let _guard = host.guard();
    host.stage(&host.package("1.0.0"), "b-1", None);
    let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
    std::fs::write(host.pid_file(), format!("{}\n", bystander.id())).unwrap();

    let (code, out) = host.run_hook("STOPPING");
    let bystander_alive = alive(bystander.id() as i32);
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(bystander_alive, "STOPPING killed a process that is not demo-service: {out}");
    assert!(out.contains("stale pid file"), "{out}");
    assert!(!host.pid_file().exists());
}

#[test]
fn restarting_fails_when_the_service_cannot_start() {
    let host = Host::new();
    let _guard = host.guard();
    host.stage(&host.package("1.0.0"), "b-1", None);
    let _squatter = TcpListener::bind(("127.0.0.1", host.port)).unwrap();

    let (code, out) = host.run_hook("RESTARTING");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("did not start"), "{out}");
    assert!(out.contains(&format!("binding 127.0.0.1:{}", host.port)), "the log tail: {out}");
}

#[test]
fn service_answers_only_its_routes_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pid_file = dir.path().join("demo.pid");
    std::fs::write(dir.path().join("VERSION"), "  3.1.4\n").unwrap();
    std::fs::write(dir.path().join("demo.conf"), "# comment\n\ngreeting = hi = there \n").unwrap();
    let mut guard = ServiceGuard { pid_file: pid_file.clone(), seen: Vec::new() };
    let mut child = Command::new(SERVICE_BIN)
        .args(["--port", &port.to_string(), "--config"])
        .arg(dir.path().join("demo.conf"))
        .arg("--version-file")
        .arg(dir.path().join("VERSION"))
        .arg("--pid-file")
        .arg(&pid_file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    guard.track(child.id() as i32);
    let deadline = Instant::now() + HOOK_TIMEOUT;
    while !pid_file.exists() {
        assert!(child.try_wait().unwrap().is_none(), "demo-service exited at start");
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_pid(&pid_file), child.id() as i32);

    let (status, body) = http_get(port, "GET /?x=1 HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["version"].as_str(), v["greeting"].as_str()),
        (Some("3.1.4"), Some("hi = there"))
    );
    assert_eq!(http_get(port, "GET /health HTTP/1.0\n\n"), (200, "ok\n".to_owned()));
    assert_eq!(http_get(port, "GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http_get(port, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, 404);
    assert_eq!(http_get(port, "nonsense\r\n\r\n").0, 400);
    let huge = format!("GET / HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "a".repeat(8 * 1024));
    assert_eq!(http_get(port, &huge).0, 431);

    // The probe: the body on 200; exit 1 at once on 404.
    let probe = |path: &str, timeout_ms: &str| {
        Command::new(SERVICE_BIN)
            .args(["--probe", &format!("http://127.0.0.1:{port}{path}")])
            .args(["--probe-timeout-ms", timeout_ms])
            .output()
            .unwrap()
    };
    let out = probe("/health", "5000");
    assert!(out.status.success());
    assert_eq!(out.stdout, b"ok\n");
    let out = probe("/nope", "20000");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered 404"));

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "demo-service ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!pid_file.exists(), "the pid file outlived the service");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(
        stderr.contains("3.1.4 listening") && stderr.contains("stopped by SIGTERM"),
        "{stderr}"
    );

    let out = probe("/health", "300");
    assert_eq!(out.status.code(), Some(1), "a probe of a closed port must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer 200 within 300 ms"));
}
