use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::etcd::{EtcdCluster, EtcdPut};
use super::ours::BuildPublish;
use super::{ETCD_TARGET, LoadReport, LoadSpec, format_table, loadgen, write_path_compare};

/// A hand-written HTTP/1.1 server on 127.0.0.1 that answers every request with `status_line`
/// and keeps connections alive. It counts connections and keeps the first request it saw.
struct Stub {
    base_url: String,
    connections: Arc<AtomicUsize>,
    first_request: Arc<Mutex<Option<String>>>,
}

impl Stub {
    async fn spawn(status_line: &'static str) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let first_request = Arc::new(Mutex::new(None));
        let stub = Stub {
            base_url,
            connections: Arc::clone(&connections),
            first_request: Arc::clone(&first_request),
        };
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(Stub::serve(stream, status_line, Arc::clone(&first_request)));
            }
        });
        stub
    }

    async fn serve(
        stream: TcpStream,
        status_line: &'static str,
        first_request: Arc<Mutex<Option<String>>>,
    ) {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let mut head = String::new();
            let mut content_length = 0;
            loop {
                let mut line = String::new();
                if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return; // The client closed the connection.
                }
                if line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    content_length = value.trim().parse().unwrap();
                }
                head.push_str(&line);
            }
            let mut body = vec![0; content_length];
            read.read_exact(&mut body).await.unwrap();
            first_request
                .lock()
                .unwrap()
                .get_or_insert_with(|| head + "\r\n" + &String::from_utf8_lossy(&body));
            let response = format!(
                "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\n\
                 content-length: 2\r\n\r\n{{}}"
            );
            if write.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

fn short_spec(concurrency: usize) -> LoadSpec {
    LoadSpec {
        concurrency,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
        value_bytes: 256,
    }
}

#[tokio::test]
async fn loadgen_counts_writes_over_one_connection_per_worker() {
    let stub = Stub::spawn("200 OK").await;
    let target = EtcdPut { base_url: stub.base_url.clone(), key_prefix: "t/".to_owned() };

    let report = loadgen::run(&short_spec(4), Arc::new(target)).await;

    assert_eq!(report.target, ETCD_TARGET);
    assert_eq!(report.concurrency, 4);
    assert!(report.ops > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms, "{report:?}");
    assert!(report.p99_ms <= report.max_ms, "{report:?}");
    assert_eq!(stub.connections.load(Ordering::SeqCst), 4);
    let first_request = stub.first_request.lock().unwrap().clone().unwrap();
    assert!(first_request.starts_with("POST /v3/kv/put HTTP/1.1\r\n"), "{first_request}");
}

#[tokio::test]
async fn loadgen_counts_http_failures_as_errors() {
    let stub = Stub::spawn("500 Internal Server Error").await;
    let target = BuildPublish { base_url: stub.base_url.clone() };

    let report = loadgen::run(&short_spec(2), Arc::new(target)).await;

    assert_eq!(report.ops, 0, "{report:?}");
    assert!(report.errors > 0, "{report:?}");
    let first_request = stub.first_request.lock().unwrap().clone().unwrap();
    assert!(first_request.starts_with("POST /v1/builds HTTP/1.1\r\n"), "{first_request}");
}

#[tokio::test]
async fn loadgen_counts_refused_connections_as_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let target = BuildPublish { base_url };

    let report = loadgen::run(&short_spec(2), Arc::new(target)).await;

    assert_eq!(report.ops, 0, "{report:?}");
    assert!(report.errors > 0, "{report:?}");
}

#[test]
fn etcd_put_body_is_base64_of_a_distinct_key_and_the_value() {
    let put = EtcdPut { base_url: String::new(), key_prefix: "bench/n64/".to_owned() };
    let body = put.body(3, 17, b"abc");
    // base64("bench/n64/w3/17") and base64("abc").
    assert_eq!(body, serde_json::json!({ "key": "YmVuY2gvbjY0L3czLzE3", "value": "YWJj" }));
    assert_ne!(put.body(3, 18, b"abc")["key"], body["key"]);
    assert_ne!(put.body(4, 17, b"abc")["key"], body["key"]);
}

#[test]
fn build_publish_body_carries_value_bytes_of_strings() {
    let value = vec![b'v'; 256];
    for (worker, seq) in [(0, 0), (7, 12_345), (255, u64::MAX)] {
        let body = BuildPublish::body(worker, seq, &value);
        let fields = body.as_object().unwrap();
        let payload_bytes: usize = fields.values().map(|v| v.as_str().unwrap().len()).sum();
        assert_eq!(payload_bytes, 256, "{body}");
        assert_eq!(fields["name"], format!("bench-w{worker}"));
        assert_eq!(fields["artifactUrl"], format!("file:///bench/{worker}/{seq}"));
        assert_eq!(fields["commit"].as_str().unwrap().len(), 40);
        assert_eq!(fields["branch"], "main");
        assert_eq!(fields["repo"], "bench");
    }
}

#[test]
fn table_puts_ratios_on_our_rows() {
    let report = |target: &str, concurrency, ops_per_sec, p99_ms| LoadReport {
        target: target.to_owned(),
        concurrency,
        ops: 0,
        errors: 0,
        ops_per_sec,
        p50_ms: 1.0,
        p90_ms: 2.0,
        p99_ms,
        max_ms: 10.0,
    };
    let reports = [
        report("ours", 64, 20_000.0, 10.0),
        report("etcd", 64, 8_000.0, 20.0),
        report("ours", 256, 5_000.0, 30.0),
    ];
    let expected = "\
target   clients      ops/s    p50 ms    p99 ms   errors  ops/s ratio    p99 ratio
ours          64      20000      1.00     10.00        0         2.50         0.50
etcd          64       8000      1.00     20.00        0                          
ours         256       5000      1.00     30.00        0                          
";
    assert_eq!(format_table(&reports), expected);
}

#[tokio::test]
async fn etcd_start_refuses_a_used_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("member-0")).unwrap();

    let error = EtcdCluster::start(dir.path(), 23890).await.err().unwrap();

    assert!(format!("{error:#}").contains("already exists"), "{error:#}");
}

/// Launches a real three-member etcd and measures it at the baseline's client counts. Slow (about
/// 45 s with the default shape), so it runs only with `RUN_SLOW_TESTS=1`; set `BENCH_DURATION_S`
/// and `BENCH_WARMUP_S` to change the shape. Prints the table; run with `--nocapture` to see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_write_path_three_members() {
    if std::env::var("RUN_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: set RUN_SLOW_TESTS=1 to launch etcd");
        return;
    }
    let seconds = |name: &str, default: u64| {
        let value = std::env::var(name).map(|text| text.parse().unwrap()).unwrap_or(default);
        Duration::from_secs(value)
    };
    let spec = LoadSpec {
        concurrency: 0, // Set per client count.
        warmup: seconds("BENCH_WARMUP_S", 2),
        duration: seconds("BENCH_DURATION_S", 12),
        value_bytes: 256,
    };
    let dir = tempfile::tempdir().unwrap();

    let reports =
        write_path_compare(None, Some(dir.path().to_owned()), &[1, 64, 256], &spec).await.unwrap();

    println!("{}", serde_json::to_string_pretty(&reports).unwrap());
    assert_eq!(reports.len(), 3);
    for report in &reports {
        assert!(report.ops > 0, "{report:?}");
        assert_eq!(report.errors, 0, "{report:?}");
    }
}
