//! The BitTorrent baseline of the swarm benchmark: Debian's `aria2` (one seeder and N
//! leechers, each its own process), `mktorrent` and `opentracker`, on loopback, under the same
//! caps as ours.
//!
//! A leecher runs a hook when its download is complete and verified (aria2 checks each piece's
//! SHA-1), before it starts seeding; the hook writes the time. Leechers keep seeding until all
//! have finished. The seeder's upload is read over aria2's JSON-RPC. DHT and local peer
//! discovery are off (the tracker is the only discovery, as for ours); peer exchange stays on,
//! as aria2 ships it.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};

use super::swarm::{MIB, RunReport, RunSpec};

/// The Debian tools the baseline needs.
pub const TOOLS: [&str; 3] = ["aria2c", "mktorrent", "opentracker"];
/// What installs them (as root).
pub const INSTALL_COMMAND: &str = "apt-get install -y aria2 mktorrent opentracker";
/// Torrent piece size as a power of two: 2^18 = 256 KiB, the same as ours.
pub const PIECE_LOG2: u32 = 18;
/// How long the tracker and the seeder may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after the seeder is up, so that its announce reaches the tracker first.
const ANNOUNCE_SETTLE: Duration = Duration::from_millis(500);
/// How often the bench looks for finished leechers.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The leechers' completion hook: the time, written atomically to `$TT_BENCH_DONE`.
const HOOK: &str = "#!/bin/sh\ndate +%s.%N > \"$TT_BENCH_DONE.tmp\" && mv \"$TT_BENCH_DONE.tmp\" \"$TT_BENCH_DONE\"\n";

/// Checks for the tools, installing them with apt-get when running as root; otherwise says
/// what to run.
pub fn ensure_tools() -> Result<(), String> {
    if missing_tools().is_empty() {
        return Ok(());
    }
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root && find_tool("apt-get").is_some() {
        println!("installing the BitTorrent baseline's tools: {INSTALL_COMMAND}");
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "aria2", "mktorrent", "opentracker"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            let _ = Command::new("apt-get").arg("update").stdout(Stdio::null()).status();
            install();
        }
    }
    let missing = missing_tools();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} not installed and could not be installed here; run `{}{INSTALL_COMMAND}` and \
             re-run the bench",
            missing.join(", "),
            if root { "" } else { "sudo " }
        ))
    }
}

fn missing_tools() -> Vec<&'static str> {
    TOOLS.into_iter().filter(|tool| find_tool(tool).is_none()).collect()
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}

/// Child processes, killed (and reaped) when dropped, whatever happened.
struct Processes(Vec<Child>);

impl Processes {
    fn cpu_secs(&self) -> f64 {
        self.0
            .iter()
            .filter_map(|child| super::agent::cpu_and_rss(child.id()).ok())
            .map(|(cpu, _)| cpu)
            .sum()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

fn spawn(processes: &mut Processes, command: &mut Command, log: &Path) -> anyhow::Result<()> {
    let out = File::create(log).with_context(|| log.display().to_string())?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    processes.0.push(child);
    Ok(())
}

/// `n` distinct free TCP ports on loopback (free when this returns).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Options every aria2c gets: no config file, no DHT or LPD, seed until killed.
fn aria2c(dir: &Path, port: u16, rate: Option<u64>) -> Command {
    let limit = rate.unwrap_or(0).to_string();
    let mut command = Command::new("aria2c");
    command.args([
        "--no-conf=true",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--disable-ipv6=true",
        "--seed-ratio=0.0",
        "--file-allocation=falloc",
        "--auto-save-interval=0",
        "--summary-interval=0",
        "--console-log-level=warn",
    ]);
    command.arg(format!("--dir={}", dir.display()));
    command.arg(format!("--listen-port={port}"));
    command.arg(format!("--max-overall-upload-limit={limit}"));
    command
}

/// The seeder's uploaded bytes, or `None` until its RPC answers with an active torrent.
async fn seeder_upload(client: &reqwest::Client, rpc_port: u16) -> Option<u64> {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": "bench", "method": "aria2.tellActive",
        "params": [["uploadLength", "status"]],
    });
    let response = client
        .post(format!("http://127.0.0.1:{rpc_port}/jsonrpc"))
        .json(&body)
        .send()
        .await
        .ok()?;
    let value: serde_json::Value = response.json().await.ok()?;
    value["result"][0]["uploadLength"].as_str()?.parse().ok()
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Runs one BitTorrent distribution of `data` to `spec.hosts` leechers in `dir`.
pub async fn run(spec: &RunSpec, data: &[u8], dir: &Path) -> anyhow::Result<RunReport> {
    let seed_dir = dir.join("seed");
    let done_dir = dir.join("done");
    let log_dir = dir.join("logs");
    for d in [&seed_dir, &done_dir, &log_dir] {
        std::fs::create_dir_all(d)?;
    }
    let build = seed_dir.join("build.bin");
    std::fs::write(&build, data)?;
    let ports = free_ports(spec.hosts + 3)?;
    let (tracker_port, seeder_port, rpc_port) = (ports[0], ports[1], ports[2]);

    let torrent = dir.join("build.torrent");
    let made = Command::new("mktorrent")
        .args(["-a", &format!("http://127.0.0.1:{tracker_port}/announce")])
        .args(["-l", &PIECE_LOG2.to_string(), "-o"])
        .arg(&torrent)
        .arg(&build)
        .stdout(Stdio::null())
        .output()?;
    ensure!(made.status.success(), "mktorrent: {}", String::from_utf8_lossy(&made.stderr));
    // Debian's opentracker serves only whitelisted torrents.
    let shown = Command::new("aria2c").arg("-S").arg(&torrent).output()?;
    let info_hash = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Info Hash: ").map(str::trim).map(str::to_owned))
        .context("aria2c -S printed no info hash")?;
    let whitelist = dir.join("whitelist");
    std::fs::write(&whitelist, format!("{info_hash}\n"))?;
    let hook = dir.join("done-hook.sh");
    std::fs::write(&hook, HOOK)?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;

    let mut processes = Processes(Vec::new());
    spawn(
        &mut processes,
        Command::new("opentracker")
            .args(["-i", "127.0.0.1", "-p", &tracker_port.to_string(), "-w"])
            .arg(&whitelist),
        &log_dir.join("opentracker.log"),
    )?;
    let ready = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", tracker_port)).is_err() {
        ensure!(ready.elapsed() < READY_TIMEOUT, "opentracker did not come up");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let rate = spec.rate_bytes_per_sec;
    spawn(
        &mut processes,
        aria2c(&seed_dir, seeder_port, rate)
            .args(["--bt-seed-unverified=true", "--check-integrity=false", "--enable-rpc=true"])
            .arg(format!("--rpc-listen-port={rpc_port}"))
            .arg(&torrent),
        &log_dir.join("seeder.log"),
    )?;
    let client = reqwest::Client::new();
    while seeder_upload(&client, rpc_port).await.is_none() {
        ensure!(ready.elapsed() < READY_TIMEOUT, "the aria2 seeder did not come up");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    tokio::time::sleep(ANNOUNCE_SETTLE).await;

    let cpu_before = processes.cpu_secs();
    let machine_before = super::swarm::machine_busy_secs();
    let t0 = unix_secs(SystemTime::now());
    let started = Instant::now();
    let mut host_dirs = Vec::with_capacity(spec.hosts);
    for (i, port) in ports[3..].iter().enumerate() {
        let host_dir = dir.join(format!("host-{i:03}"));
        std::fs::create_dir_all(&host_dir)?;
        spawn(
            &mut processes,
            aria2c(&host_dir, *port, rate)
                .arg(format!("--max-overall-download-limit={}", rate.unwrap_or(0)))
                .arg(format!("--on-bt-download-complete={}", hook.display()))
                .env("TT_BENCH_DONE", done_dir.join(format!("host-{i:03}")))
                .arg(&torrent),
            &log_dir.join(format!("host-{i:03}.log")),
        )?;
        host_dirs.push(host_dir);
    }
    let start_spread = started.elapsed();

    let limit = spec.bound_s().map_or(Duration::from_secs(60), |b| {
        Duration::from_secs_f64(b * f64::from(super::swarm::RUN_LIMIT_BOUNDS))
    });
    let mut times: Vec<Option<f64>> = vec![None; spec.hosts];
    while times.iter().any(Option::is_none) {
        if started.elapsed() > limit {
            let done = times.iter().flatten().count();
            bail!("{done} of {} leechers finished within {limit:?}", spec.hosts);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        for (i, time) in times.iter_mut().enumerate().filter(|(_, t)| t.is_none()) {
            let file = done_dir.join(format!("host-{i:03}"));
            if let Ok(text) = std::fs::read_to_string(&file) {
                *time = text.trim().parse::<f64>().ok().map(|at| at - t0);
            }
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let origin_egress = seeder_upload(&client, rpc_port).await.unwrap_or(0);
    let cpu_s = processes.cpu_secs() - cpu_before;
    let machine_s = super::swarm::machine_busy_secs() - machine_before;
    drop(processes);

    let mut verified_hosts = 0;
    for host_dir in &host_dirs {
        if std::fs::read(host_dir.join("build.bin")).is_ok_and(|bytes| bytes == data) {
            verified_hosts += 1;
        }
    }
    let mut times: Vec<f64> = times.into_iter().flatten().collect();
    times.sort_by(f64::total_cmp);
    let bound = spec.bound_s();
    let ratio = |t: f64| bound.map(|b| t / b);
    let (p50, p99) = (super::percentile(&times, 50.0), super::percentile(&times, 99.0));
    let max = times.last().copied().unwrap_or(f64::NAN);
    let total = spec.build_bytes * spec.hosts as u64;
    Ok(RunReport {
        system: "bittorrent".to_owned(),
        hosts: spec.hosts,
        measured_hosts: times.len(),
        build_bytes: spec.build_bytes,
        rate_bytes_per_sec: rate,
        bound_s: bound,
        start_spread_ms: start_spread.as_secs_f64() * 1000.0,
        p50_s: p50,
        p99_s: p99,
        max_s: max,
        p50_x_bound: ratio(p50),
        p99_x_bound: ratio(p99),
        max_x_bound: ratio(max),
        min_host_mib_per_s: spec.build_bytes as f64 / MIB as f64 / max,
        origin_egress_bytes: origin_egress,
        origin_copies: origin_egress as f64 / spec.build_bytes as f64,
        bytes_from_peers: total.saturating_sub(origin_egress),
        bytes_from_origin: origin_egress,
        projected: false,
        verified_hosts,
        cpu_cores: cpu_s / wall_s,
        cpu_s_per_gib: cpu_s / (total as f64 / (1024.0 * MIB as f64)),
        other_load_cores: (machine_s - cpu_s) / wall_s,
        origin_declined: 0,
        origin_rescued: 0,
        pieces_relayed: 0,
        relays_reset: 0,
        faults: None,
        timeline: Vec::new(),
        note: Some(format!(
            "aria2 {} KiB pieces; from peers = hosts x build - seeder upload",
            (1u64 << PIECE_LOG2) / 1024
        )),
    })
}
