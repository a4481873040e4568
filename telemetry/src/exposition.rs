//! A reader of the Prometheus / OpenMetrics text exposition: the samples of a scrape as
//! `(name, labels, value)`, for tests and tools that check what a daemon exports.

use std::collections::BTreeMap;

/// The `Content-Type` of a scrape in the OpenMetrics text format (what prometheus-client writes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A line that is neither a comment nor a sample.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// Every sample of `text`, in order. Comments (`# HELP`, `# TYPE`, `# EOF`) are skipped;
/// exemplars and timestamps after the value are ignored.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason| ParseError { line: i + 1, reason, text: raw.to_string() };
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or(err("no value"))?;
        let name = &line[..name_end];
        if name.is_empty() {
            return Err(err("no metric name"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            let (labels, rest) = parse_labels(&line[name_end + 1..]).ok_or(err("bad labels"))?;
            (labels, rest)
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest.split_whitespace().next().ok_or(err("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("value is not a number"))?,
        };
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(samples)
}

/// Parses `a="x",b="y"}` (after the opening brace); returns the labels and the rest.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

/// The value of the one sample named `name` whose labels include `labels`; `None` if there
/// is none. Panics if several match (the caller's selector is ambiguous).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = samples.iter().filter(|s| {
        s.name == name
            && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
    });
    let first = found.next()?;
    assert!(found.next().is_none(), "several samples of {name} match {labels:?}");
    Some(first.value)
}

/// The sum of every sample named `name` whose labels include `labels` (0 if none).
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP tt_x_pings Pings.\n# TYPE tt_x_pings counter\n\
        tt_x_pings_total{protocol=\"native\",result=\"noop\"} 12\n\
        tt_x_pings_total{protocol=\"json\",result=\"deploy\"} 3\n\
        tt_x_lag 0\n\
        tt_x_seconds_bucket{le=\"+Inf\",route=\"/a,b\"} 4 # {trace=\"x\"} 1.0\n\
        tt_x_odd{v=\"say \\\"hi\\\"\"} 1.5e3\n# EOF\n";

    #[test]
    fn samples_are_read_with_their_labels() {
        let s = parse(SCRAPE).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(value(&s, "tt_x_pings_total", &[("protocol", "native")]), Some(12.0));
        assert_eq!(sum(&s, "tt_x_pings_total", &[]), 15.0);
        assert_eq!(value(&s, "tt_x_lag", &[]), Some(0.0));
        assert_eq!(value(&s, "tt_x_seconds_bucket", &[("route", "/a,b")]), Some(4.0));
        assert_eq!(s[3].labels["le"], "+Inf");
        assert_eq!(value(&s, "tt_x_odd", &[("v", "say \"hi\"")]), Some(1500.0));
        assert_eq!(value(&s, "tt_x_missing", &[]), None);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("tt_x{a=\"1\" 3\n").is_err());
        assert!(parse("tt_x{a=\"1\"} three\n").is_err());
        assert!(parse("tt_x\n").is_err());
    }
}
