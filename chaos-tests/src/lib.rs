//! The chaos suite: real coordinator and agent processes, faults injected on schedule, and
//! checkers that judge the recorded history.
//!
//! - `proxy`: a UDP datagram fault proxy (QUIC is UDP); every link under test goes through one.
pub mod checkers;
pub mod history;
pub mod lab;
pub mod procnet;
pub mod proxy;
pub mod report;
pub mod run;
pub mod scenario;
pub mod workload;
