//! What `tt` prints for humans, as pure functions: API JSON, a fixed `now` and a colour switch
//! in, text out. The binary only decides `now` (the clock), whether to colour (TTY, `NO_COLOR`,
//! `--color`) and `-o wide`; everything here is tested with fixed inputs
//! (`tests/golden.rs` compares it with the files under `tests/golden/`).
//!
//! Human tables show times relative to `now` ("3m ago"); `-o wide` shows them absolute (UTC,
//! RFC 3339) with more columns; `-o json` prints the API's epoch milliseconds untouched.

use serde_json::Value;

use crate::client::table;

/// How a human table is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The moment relative times are counted from (epoch milliseconds).
    pub now_ms: i64,
    /// `-o wide`: absolute times and the extra columns.
    pub wide: bool,
    /// ANSI colour on state words.
    pub color: bool,
}

/// `--color`: when to colour human output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Only when stdout is a terminal and `NO_COLOR` is unset or empty.
    Auto,
    Always,
    Never,
}

/// Whether to colour: `always` and `never` win; `auto` colours a terminal unless `NO_COLOR` is
/// set to a non-empty value (<https://no-color.org>).
pub fn color_enabled(choice: ColorChoice, stdout_is_tty: bool, no_color: Option<&str>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stdout_is_tty && no_color.is_none_or(str::is_empty),
    }
}

/// A JSON field as table text: strings bare, `null` or absent as `-`.
pub fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

const MS_PER_SECOND: i64 = 1000;
const SECONDS_PER_MINUTE: i64 = 60;
const SECONDS_PER_HOUR: i64 = 3600;
const SECONDS_PER_DAY: i64 = 86_400;
/// Past this many days, relative times switch from days to the date.
const MAX_RELATIVE_DAYS: i64 = 365;

/// `then` relative to `now`: "just now", "42s ago", "3m ago", "2h ago", "5d ago", or "in 3m"
/// for the future; the date past a year.
pub fn relative(now_ms: i64, then_ms: i64) -> String {
    let secs = (now_ms - then_ms) / MS_PER_SECOND;
    let (future, secs) = (secs < 0, secs.abs());
    let amount = if secs < 1 {
        return "just now".into();
    } else if secs < SECONDS_PER_MINUTE {
        format!("{secs}s")
    } else if secs < SECONDS_PER_HOUR {
        format!("{}m", secs / SECONDS_PER_MINUTE)
    } else if secs < SECONDS_PER_DAY {
        format!("{}h", secs / SECONDS_PER_HOUR)
    } else if secs / SECONDS_PER_DAY <= MAX_RELATIVE_DAYS {
        format!("{}d", secs / SECONDS_PER_DAY)
    } else {
        return absolute(then_ms)[..10].to_string();
    };
    if future { format!("in {amount}") } else { format!("{amount} ago") }
}

/// Epoch milliseconds as UTC RFC 3339 to the second: `2026-12-06T15:16:32Z`.
pub fn absolute(ms: i64) -> String {
    let secs = ms.div_euclid(MS_PER_SECOND);
    let (days, rem) = (secs.div_euclid(SECONDS_PER_DAY), secs.rem_euclid(SECONDS_PER_DAY));
    let (y, m, d) = civil_date(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / SECONDS_PER_HOUR,
        rem % SECONDS_PER_HOUR / SECONDS_PER_MINUTE,
        rem % SECONDS_PER_MINUTE
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01, through 400-year eras of
/// 146097 days whose years start on March 1 (so the leap day ends a year).
fn civil_date(days: i64) -> (i64, u32, u32) {
    const DAYS_PER_ERA: i64 = 146_097;
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z.rem_euclid(DAYS_PER_ERA);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day)
}

/// A time field as a table cell: relative, absolute with `-o wide`, `-` when unset.
pub fn time_cell(v: &Value, key: &str, view: &View) -> String {
    match v.get(key).and_then(Value::as_i64) {
        None => "-".into(),
        Some(ms) if view.wide => absolute(ms),
        Some(ms) => relative(view.now_ms, ms),
    }
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

/// The colour of a deploy state, agent state or agent status word, if it has one.
fn state_color(word: &str) -> Option<&'static str> {
    match word {
        "SUCCEEDED" | "SUCCEEDING" | "SERVING_BUILD" | "ACCEPTED" => Some(GREEN),
        "FAILING" | "ABORTED" | "PAUSED_BY_SYSTEM" | "UNREACHABLE" | "TOO_MANY_RETRY"
        | "REJECTED" | "BAD_BUILD" => Some(RED),
        w if w.ends_with("_FAILED") || w.ends_with("_TIMEOUT") => Some(RED),
        "RUNNING" | "UNKNOWN" | "STOPPING" => Some(YELLOW),
        "PAUSED_BY_USER" | "RESET" | "STOP" | "STOPPED" => Some(CYAN),
        _ => None,
    }
}

/// A state word, coloured when `color` is on and the word has a colour.
pub fn paint(word: &str, color: bool) -> String {
    match state_color(word) {
        Some(c) if color => format!("{c}{word}{RESET}"),
        _ => word.to_string(),
    }
}

/// The width of `s` on a terminal: characters outside ANSI escape sequences.
pub fn visible_width(s: &str) -> usize {
    let mut width = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            width += 1;
        }
    }
    width
}

/// Headers and rows of a listing; the wide columns are appended when `view.wide`.
fn listing(
    base: &[&str],
    wide: &[&str],
    rows: impl Iterator<Item = (Vec<String>, Vec<String>)>,
    view: &View,
) -> String {
    let mut headers = base.to_vec();
    if view.wide {
        headers.extend_from_slice(wide);
    }
    let rows: Vec<Vec<String>> = rows
        .map(|(mut row, extra)| {
            if view.wide {
                row.extend(extra);
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

/// Deploys (`tt history`, `tt status`, `tt deploy`), newest first as given.
pub fn deploys(deploys: &[Value], view: &View) -> String {
    listing(
        &["DEPLOY", "TYPE", "STATE", "BUILD", "DONE", "FAILED", "ACCEPTANCE", "STARTED"],
        &["UPDATED", "OPERATOR", "DESCRIPTION"],
        deploys.iter().map(|d| {
            (
                vec![
                    field(d, "id"),
                    field(d, "type"),
                    paint(&field(d, "state"), view.color),
                    field(d, "buildId"),
                    format!("{}/{}", field(d, "successTotal"), field(d, "total")),
                    field(d, "failTotal"),
                    paint(&field(d, "acceptanceStatus"), view.color),
                    time_cell(d, "startDate", view),
                ],
                vec![
                    time_cell(d, "lastUpdateDate", view),
                    field(d, "operator"),
                    field(d, "description"),
                ],
            )
        }),
        view,
    )
}

/// Builds (`tt build list|get`).
pub fn builds(builds: &[Value], view: &View) -> String {
    listing(
        &["ID", "NAME", "BRANCH", "COMMIT", "PUBLISHED", "ARTIFACT"],
        &["SIZE", "BLAKE3", "PUBLISHER"],
        builds.iter().map(|b| {
            (
                vec![
                    field(b, "id"),
                    field(b, "name"),
                    field(b, "branch"),
                    if view.wide { field(b, "commit") } else { field(b, "commitShort") },
                    time_cell(b, "publishDate", view),
                    field(b, "artifactUrl"),
                ],
                vec![field(b, "artifactSize"), field(b, "artifactBlake3"), field(b, "publisher")],
            )
        }),
        view,
    )
}

/// Agent rows of a stage (`tt hosts`, `tt status`).
pub fn agents(agents: &[Value], view: &View) -> String {
    listing(
        &["HOST", "STEP", "STATE", "STATUS", "DEPLOY", "UPDATED"],
        &["HOST ID", "STEP STARTED", "ERROR CODE"],
        agents.iter().map(|a| {
            (
                vec![
                    field(a, "hostName"),
                    field(a, "deployStage"),
                    paint(&field(a, "state"), view.color),
                    paint(&field(a, "status"), view.color),
                    field(a, "deployId"),
                    time_cell(a, "lastUpdateDate", view),
                ],
                vec![
                    field(a, "hostId"),
                    time_cell(a, "stageStartDate", view),
                    field(a, "lastErrno"),
                ],
            )
        }),
        view,
    )
}

/// Stages (`tt env list|get`).
pub fn stages(envs: &[Value], view: &View) -> String {
    listing(
        &["STAGE", "TYPE", "BUILD NAME", "MAX PARALLEL", "MAX %", "STATE", "CURRENT DEPLOY"],
        &["UPDATED", "OPERATOR", "DESCRIPTION"],
        envs.iter().map(|e| {
            (
                vec![
                    format!("{}/{}", field(e, "envName"), field(e, "stageName")),
                    field(e, "stageType"),
                    field(e, "buildName"),
                    field(e, "maxParallel"),
                    field(e, "maxParallelPct"),
                    field(e, "envState"),
                    field(e, "deployId"),
                ],
                vec![
                    time_cell(e, "lastUpdate", view),
                    field(e, "lastOperator"),
                    field(e, "description"),
                ],
            )
        }),
        view,
    )
}

/// Tokens (`tt token list`): never their values, which the API does not list either.
pub fn tokens(tokens: &[Value], view: &View) -> String {
    listing(
        &["NAME", "ID", "TYPE", "RESOURCE", "ROLE", "EXPIRES"],
        &[],
        tokens.iter().map(|t| {
            (
                vec![
                    field(t, "name"),
                    field(t, "id"),
                    field(t, "type"),
                    field(t, "resource"),
                    field(t, "role"),
                    time_cell(t, "expireDate", view),
                ],
                vec![],
            )
        }),
        view,
    )
}

/// One line of `tt status -w` off a terminal: printed again only when it changes.
pub fn watch_line(d: &Value, color: bool) -> String {
    format!(
        "{:<10} {}/{} hosts done, {} failed (deploy {})",
        paint(&field(d, "state"), color),
        field(d, "successTotal"),
        field(d, "total"),
        field(d, "failTotal"),
        field(d, "id")
    )
}

/// The block `tt status -w` redraws in place on a terminal: the deploy, a count of hosts per
/// state and step, and the hosts.
pub fn watch_frame(stage: &str, d: &Value, agents: &[Value], view: &View) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for a in agents {
        let key = match field(a, "status").as_str() {
            "SUCCEEDED" if field(a, "deployStage") == "SERVING_BUILD" => "done".to_string(),
            "SUCCEEDED" | "UNKNOWN" => field(a, "deployStage").to_lowercase(),
            other => other.to_lowercase(),
        };
        *counts.entry(key).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "{stage}  deploy {}  {}  {}/{} done, {} failed  started {}\nhosts: {}\n\n{}",
        field(d, "id"),
        paint(&field(d, "state"), view.color),
        field(d, "successTotal"),
        field(d, "total"),
        field(d, "failTotal"),
        time_cell(d, "startDate", view),
        if counts.is_empty() { "none".to_string() } else { counts.join(", ") },
        self::agents(agents, view)
    )
}

/// The escape sequence that moves the cursor to the start of a block of `lines` lines just
/// printed and clears from there to the end of the screen (nothing for an empty block).
pub fn erase_lines(lines: usize) -> String {
    if lines == 0 { String::new() } else { format!("\x1b[{lines}A\r\x1b[J") }
}

/// `tt diff A B`: the two builds side by side, a mark on the rows that differ, and the commit
/// range when both name a commit.
pub fn build_diff(a: &Value, b: &Value, view: &View) -> String {
    let cell = |v: &Value, key: &str| {
        if key.ends_with("Date") { time_cell(v, key, view) } else { field(v, key) }
    };
    let rows: Vec<Vec<String>> = [("id", "id")]
        .iter()
        .chain(DIFF_FIELDS)
        .map(|(label, key)| {
            let (x, y) = (cell(a, key), cell(b, key));
            let mark = if a.get(*key) == b.get(*key) { " " } else { "≠" };
            vec![format!("{mark} {label}"), x, y]
        })
        .collect();
    let mut out = table(&["  FIELD", "A", "B"], &rows);
    if let Some(range) = commit_range(a, b) {
        let repo = match (a.get("repo"), b.get("repo")) {
            (Some(Value::String(r)), Some(Value::String(s))) if r == s => format!(" in {r}"),
            _ => String::new(),
        };
        out.push_str(&format!("\ncommits: {range}{repo}\n"));
    }
    out
}

/// Fields `tt diff` compares: (label, API name).
pub const DIFF_FIELDS: &[(&str, &str)] = &[
    ("name", "name"),
    ("branch", "branch"),
    ("repo", "repo"),
    ("commit", "commit"),
    ("commit date", "commitDate"),
    ("published", "publishDate"),
    ("publisher", "publisher"),
    ("artifact", "artifactUrl"),
    ("size (bytes)", "artifactSize"),
    ("blake3", "artifactBlake3"),
];

/// `tt diff A B -o json`: both builds as the API gives them, the fields that differ and the
/// commit range.
pub fn build_diff_json(a: &Value, b: &Value) -> Value {
    let differ: Vec<&str> =
        DIFF_FIELDS.iter().map(|(_, key)| *key).filter(|k| a.get(*k) != b.get(*k)).collect();
    serde_json::json!({"a": a, "b": b, "differ": differ, "commitRange": commit_range(a, b)})
}

/// `A..B` of the two builds' commits (what `git log A..B` takes), `same commit A` when they
/// share one, `None` unless both name a commit.
pub fn commit_range(a: &Value, b: &Value) -> Option<String> {
    let (x, y) = (a.get("commit")?.as_str()?, b.get("commit")?.as_str()?);
    Some(if x == y { format!("same commit {x}") } else { format!("{x}..{y}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_pick_the_largest_whole_unit() {
        let now = 1_800_000_000_000;
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now, now - 42_000), "42s ago");
        assert_eq!(relative(now, now - 3 * 60_000 - 59_000), "3m ago");
        assert_eq!(relative(now, now - 2 * 3_600_000), "2h ago");
        assert_eq!(relative(now, now - 5 * 86_400_000), "5d ago");
        assert_eq!(relative(now, now + 179 * 86_400_000), "in 179d");
        assert_eq!(relative(now, now - 400 * 86_400_000), "2025-12-11");
    }

    #[test]
    fn absolute_times_are_utc_rfc3339() {
        assert_eq!(absolute(0), "1970-01-01T00:00:00Z");
        assert_eq!(absolute(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(absolute(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(absolute(4_102_444_799_000), "2099-12-31T23:59:59Z");
        assert_eq!(absolute(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use ColorChoice::*;
        assert!(color_enabled(Auto, true, None));
        assert!(color_enabled(Auto, true, Some("")), "an empty NO_COLOR does not count");
        assert!(!color_enabled(Auto, true, Some("1")));
        assert!(!color_enabled(Auto, false, None));
        assert!(color_enabled(Always, false, Some("1")));
        assert!(!color_enabled(Never, true, None));
    }

    #[test]
    fn coloured_cells_keep_tables_aligned() {
        let red = paint("FAILING", true);
        assert_eq!(red, "\x1b[31mFAILING\x1b[0m");
        assert_eq!(visible_width(&red), 7);
        assert_eq!(paint("FAILING", false), "FAILING");
        assert_eq!(paint("DEPLOY", true), "DEPLOY", "words without a colour stay plain");
        let t = table(&["A", "B"], &[vec![red, "x".into()], vec!["RUNNING".into(), "y".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1].find('x').unwrap() - 9, lines[2].find('y').unwrap());
    }
}
