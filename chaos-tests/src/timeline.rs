//! A run's picture: hosts against time coloured by deploy step, fault windows shaded, the
//! leader on its own row (a change of colour is a leader change). An SVG string, no IO.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{ProgressSample, StatusSample};
use crate::report::FaultEvent;

/// Drawing sizes, in SVG pixels.
const LABEL_W: f64 = 90.0;
const PLOT_W: f64 = 960.0;
const ROW_H: f64 = 20.0;
const ROW_GAP: f64 = 4.0;
const TOP: f64 = 40.0;
/// Time ticks every this many seconds.
const TICK_S: u64 = 2;
/// The leader row's resolution (the status sampler's period).
const LEADER_BUCKET_US: u64 = 200_000;

fn step_colour(step: &str, state: &str, deploy_index: usize) -> &'static str {
    match state {
        "UNREACHABLE" => return "#bdbdbd",
        "PAUSED_BY_SYSTEM" => return "#de2d26",
        _ => {}
    }
    match step {
        "PRE_DOWNLOAD" => "#c6dbef",
        "DOWNLOADING" => "#9ecae1",
        "POST_DOWNLOAD" => "#6baed6",
        "STAGING" => "#4292c6",
        "PRE_RESTART" => "#fdd0a2",
        "RESTARTING" => "#fd8d3c",
        "POST_RESTART" => "#d94801",
        // Alternate shades so that consecutive deploys are told apart.
        "SERVING_BUILD" if deploy_index.is_multiple_of(2) => "#74c476",
        "SERVING_BUILD" => "#31a354",
        _ => "#f0f0f0",
    }
}

fn leader_colour(node: Option<u64>) -> &'static str {
    match node {
        Some(1) => "#756bb1",
        Some(2) => "#1c9099",
        Some(3) => "#b8a33a",
        Some(_) => "#636363",
        None => "#ffffff",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The SVG. `window_start_us` anchors fault offsets; `deploys` orders deploy ids (for shades).
pub fn svg(
    title: &str,
    progress: &[ProgressSample],
    status: &[StatusSample],
    faults: &[FaultEvent],
    window_start_us: u64,
    deploys: &[String],
) -> String {
    let t0 = progress.first().map_or(0, |s| s.t_us).min(window_start_us);
    let t1 = progress.last().map_or(t0 + 1, |s| s.t_us).max(t0 + 1);
    let x = |t: u64| LABEL_W + (t.saturating_sub(t0) as f64 / (t1 - t0) as f64) * PLOT_W;
    let mut hosts: Vec<&str> =
        progress.iter().flat_map(|s| s.rows.iter().map(|r| r.host.as_str())).collect();
    hosts.sort();
    hosts.dedup();
    let rows = hosts.len() + 1;
    let height = TOP + rows as f64 * (ROW_H + ROW_GAP) + 60.0;
    let width = LABEL_W + PLOT_W + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<text x="4" y="16" font-size="14">{}</text>"#, esc(title));
    let row_y = |i: usize| TOP + i as f64 * (ROW_H + ROW_GAP);

    // The leader row, from the nodes that call themselves leader.
    let _ = writeln!(s, r#"<text x="4" y="{}">leader</text>"#, row_y(0) + 14.0);
    let mut by_time: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    for st in status {
        let e = by_time.entry(st.t_us / LEADER_BUCKET_US).or_insert(None);
        if st.state == "Leader" {
            *e = Some(st.node);
        }
    }
    let points: Vec<(u64, Option<u64>)> =
        by_time.into_iter().map(|(k, v)| (k * LEADER_BUCKET_US, v)).collect();
    for w in points.windows(2) {
        let (a, b) = (w[0], w[1]);
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{}" width="{:.1}" height="{ROW_H}" fill="{}"/>"#,
            x(a.0),
            row_y(0),
            (x(b.0) - x(a.0)).max(0.5),
            leader_colour(a.1)
        );
    }

    // Hosts.
    let deploy_index = |d: &Option<String>| {
        d.as_ref().and_then(|d| deploys.iter().position(|x| x == d)).unwrap_or(0)
    };
    for (i, host) in hosts.iter().enumerate() {
        let y = row_y(i + 1);
        let _ = writeln!(s, r#"<text x="4" y="{}">{}</text>"#, y + 14.0, esc(host));
        for w in progress.windows(2) {
            let Some(r) = w[0].rows.iter().find(|r| r.host == *host) else { continue };
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y}" width="{:.1}" height="{ROW_H}" fill="{}"><title>{} {} {} {}</title></rect>"#,
                x(w[0].t_us),
                (x(w[1].t_us) - x(w[0].t_us)).max(0.5),
                step_colour(&r.step, &r.state, deploy_index(&r.deploy)),
                esc(&r.step),
                esc(&r.state),
                esc(&r.status),
                esc(r.deploy.as_deref().unwrap_or("")),
            );
        }
    }

    // Fault windows over everything.
    let bottom = row_y(rows);
    for f in faults {
        let a = window_start_us + f.at_ms * 1000;
        let b = window_start_us + f.until_ms.unwrap_or(f.at_ms) * 1000;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{}" width="{:.1}" height="{:.1}" fill="#000000" fill-opacity="0.12" stroke="#000000" stroke-dasharray="3,2"/><text x="{:.1}" y="{}">{}</text>"##,
            x(a),
            TOP - 4.0,
            (x(b) - x(a)).max(1.0),
            bottom - TOP + 4.0,
            x(a) + 2.0,
            TOP - 8.0,
            esc(&f.label)
        );
    }

    // Time axis.
    let _ = writeln!(
        s,
        r##"<line x1="{LABEL_W}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#000000"/>"##,
        LABEL_W + PLOT_W
    );
    let mut t = 0;
    while t0 + t * 1_000_000 <= t1 {
        let tx = x(t0 + t * 1_000_000);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{bottom}" x2="{tx:.1}" y2="{}" stroke="#000000"/><text x="{:.1}" y="{}">{}s</text>"##,
            bottom + 4.0,
            tx - 6.0,
            bottom + 16.0,
            t
        );
        t += TICK_S;
    }

    // Legend.
    let legend = [
        ("PRE_DOWNLOAD", "#c6dbef"),
        ("DOWNLOADING", "#9ecae1"),
        ("POST_DOWNLOAD", "#6baed6"),
        ("STAGING", "#4292c6"),
        ("PRE_RESTART", "#fdd0a2"),
        ("RESTARTING", "#fd8d3c"),
        ("POST_RESTART", "#d94801"),
        ("SERVING_BUILD", "#74c476"),
        ("UNREACHABLE", "#bdbdbd"),
        ("failed", "#de2d26"),
    ];
    for (i, (name, colour)) in legend.iter().enumerate() {
        let lx = LABEL_W + i as f64 * 96.0;
        let ly = bottom + 28.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{ly}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{name}</text>"#,
            lx + 13.0,
            ly + 9.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HostRow;

    fn row(host: &str, step: &str, state: &str) -> HostRow {
        HostRow {
            host: host.into(),
            deploy: Some("d1".into()),
            step: step.into(),
            state: state.into(),
            status: "SUCCEEDED".into(),
        }
    }

    #[test]
    fn draws_hosts_faults_and_the_leader() {
        let progress = vec![
            ProgressSample { t_us: 0, rows: vec![row("host-1", "RESTARTING", "NORMAL")] },
            ProgressSample {
                t_us: 1_000_000,
                rows: vec![row("host-1", "SERVING_BUILD", "NORMAL")],
            },
            ProgressSample {
                t_us: 2_000_000,
                rows: vec![row("host-1", "SERVING_BUILD", "UNREACHABLE")],
            },
            ProgressSample { t_us: 3_000_000, rows: vec![] },
        ];
        let st = |t_us, node, state: &str| StatusSample {
            t_us,
            node,
            term: 1,
            state: state.into(),
            leader: Some(node),
            applied_index: 0,
        };
        let status =
            vec![st(0, 1, "Leader"), st(1_000_000, 2, "Leader"), st(2_000_000, 2, "Leader")];
        let faults = vec![FaultEvent {
            at_ms: 500,
            at_us: 500_000,
            until_ms: Some(1500),
            label: "kill -9 <leader>".into(),
            targets: vec!["node 1".into()],
            leader_before: Some(1),
            hits_leader: true,
            failpoint_fired: None,
            sim_hit: None,
        }];
        let svg = svg("t", &progress, &status, &faults, 0, &["d1".into()]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">host-1<"));
        assert!(svg.contains("#fd8d3c"), "RESTARTING drawn");
        assert!(svg.contains("#bdbdbd"), "UNREACHABLE drawn");
        assert!(svg.contains(leader_colour(Some(1))) && svg.contains(leader_colour(Some(2))));
        assert!(svg.contains("kill -9 &lt;leader&gt;"), "fault labels are escaped");
        assert!(svg.contains("fill-opacity=\"0.12\""), "the fault window is shaded");
    }
}
