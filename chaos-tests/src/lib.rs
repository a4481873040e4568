//! The chaos suite: real coordinator and agent processes, faults injected on schedule, and
//! checkers that judge the recorded history.
//!
//! - [`proxy`]: a UDP datagram fault proxy (QUIC is UDP); every link under test goes through one,
//!   or through a [`tcp_proxy`], its TCP counterpart (the coordinators' HTTP between each other).
//! - [`lab`]: the cluster and the agents behind their proxies, and the faults done to them
//!   ([`procnet`] finds a process's UDP ports).
//! - [`scenario`]: the TOML scenario files; [`workload`]: the recorded operator traffic;
//!   [`run`]: one scenario from start to verdicts; [`report`] and [`timeline`]: its results.
//! - [`swarm_lab`]: the agents' blob swarm behind proxies, and [`badpeer`]: peers that corrupt,
//!   lie or crawl on purpose (`chaos bad-peer`).
//! - [`actions`]: the operator's deploy actions, pauses, host actions and setting changes;
//!   [`simagents`]: the simulated-agent process for scale.
//! - [`checkers`]: pure functions from a recorded [`history`] to a verdict per invariant.

pub mod actions;
pub mod badpeer;
pub mod checkers;
pub mod history;
pub mod lab;
pub mod procnet;
pub mod proxy;
pub mod report;
pub mod run;
pub mod scenario;
pub mod simagents;
pub mod swarm_lab;
pub mod tcp_proxy;
pub mod timeline;
pub mod workload;
