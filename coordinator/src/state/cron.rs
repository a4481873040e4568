//! A small cron matcher for promote schedules, in UTC.
//!
//! Teletraan stores a Quartz expression (`sec min hour day-of-month month day-of-week [year]`,
//! day-of-week 1-7 = SUN-SAT, `?` for "no specific value"); operators also write the classic
//! five-field form (`min hour day-of-month month day-of-week`, day-of-week 0-7 with 0 and 7 =
//! SUN). Both are accepted: the field count tells them apart. Each field takes `*`, `?` (the two
//! day fields only), numbers, names (`JAN`-`DEC`, `SUN`-`SAT`), ranges `a-b`, steps `*/n`,
//! `a/n`, `a-b/n` and lists of those. Quartz's `L`, `W` and `#` are refused with a clear error
//! rather than silently misread.
//!
//! Day matching: when one of the day fields is unrestricted (`*` or `?`) the other decides; when
//! both are restricted, the five-field form matches either (classic cron), and the Quartz form is
//! refused (Quartz refuses it too).
//!
//! Pure: no clock. [`Cron::next_after`] is Quartz's `getTimeAfter` at one-second resolution.

/// First year a schedule can fire in (Quartz's range).
pub const YEAR_MIN: i64 = 1970;
/// Last year a schedule can fire in (Quartz's range).
pub const YEAR_MAX: i64 = 2199;
/// Upper bound on the search steps of [`Cron::next_after`] (each skips at least a second, and
/// usually a whole unit); enough for any expression over the whole year range.
pub const MAX_SEARCH_STEPS: usize = 200_000;
/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 256;

/// Why a schedule was refused; the message names the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error(
        "has {0} fields; write 5 (min hour day month weekday) or 6-7 (Quartz: sec min hour day month weekday [year])"
    )]
    FieldCount(usize),
    #[error("is longer than {MAX_EXPRESSION_LEN} characters")]
    TooLong,
    #[error("{field} field {text:?}: {reason}")]
    Field { field: &'static str, text: String, reason: String },
    #[error(
        "restricts both day-of-month and day-of-week; Quartz needs `?` in one of them (e.g. `0 0 10 ? * MON-FRI`)"
    )]
    BothDays,
}

/// A set of allowed values of one field, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Set([u64; 4]);

impl Set {
    const EMPTY: Set = Set([0; 4]);

    fn insert(&mut self, v: u32) {
        self.0[(v / 64) as usize] |= 1 << (v % 64);
    }

    fn contains(&self, v: u32) -> bool {
        v < 256 && self.0[(v / 64) as usize] & (1 << (v % 64)) != 0
    }
}

/// The allowed values of one field, and whether it was written unrestricted (`*` or `?`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    set: Set,
    any: bool,
}

struct Spec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// Value of `names[0]`.
    names_base: u32,
    /// Whether `?` is allowed (the day fields).
    question: bool,
}

const MONTHS: &[&str] =
    &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const SECOND: Spec =
    Spec { name: "second", min: 0, max: 59, names: &[], names_base: 0, question: false };
const MINUTE: Spec =
    Spec { name: "minute", min: 0, max: 59, names: &[], names_base: 0, question: false };
const HOUR: Spec =
    Spec { name: "hour", min: 0, max: 23, names: &[], names_base: 0, question: false };
const DAY_OF_MONTH: Spec =
    Spec { name: "day-of-month", min: 1, max: 31, names: &[], names_base: 0, question: true };
const MONTH: Spec =
    Spec { name: "month", min: 1, max: 12, names: MONTHS, names_base: 1, question: false };
/// Quartz numbering: 1-7 = SUN-SAT.
const WEEKDAY_QUARTZ: Spec =
    Spec { name: "day-of-week", min: 1, max: 7, names: DAYS, names_base: 1, question: true };
/// Classic numbering: 0-7, 0 and 7 = SUN.
const WEEKDAY_CLASSIC: Spec =
    Spec { name: "day-of-week", min: 0, max: 7, names: DAYS, names_base: 0, question: true };
/// Years are stored as offsets from [`YEAR_MIN`] (see [`parse_field`]).
const YEAR: Spec = Spec {
    name: "year",
    min: YEAR_MIN as u32,
    max: YEAR_MAX as u32,
    names: &[],
    names_base: 0,
    question: false,
};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: Set,
    minutes: Set,
    hours: Set,
    days: Field,
    months: Set,
    /// 0 = Sunday.
    weekdays: Field,
    /// Offsets from [`YEAR_MIN`]; `None` = every year.
    years: Option<Set>,
    /// Both day fields restricted: match either (five-field form only).
    days_either: bool,
}

fn field_error(spec: &Spec, text: &str, reason: impl Into<String>) -> CronError {
    CronError::Field { field: spec.name, text: text.to_string(), reason: reason.into() }
}

fn parse_value(spec: &Spec, whole: &str, s: &str) -> Result<u32, CronError> {
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(spec.names_base + i as u32);
    }
    if let Some(c) = s.chars().find(|c| matches!(c, 'L' | 'W' | '#' | 'l' | 'w')) {
        return Err(field_error(spec, whole, format!("`{c}` is not supported")));
    }
    let v: u32 =
        s.parse().map_err(|_| field_error(spec, whole, format!("{s:?} is not a value")))?;
    if v < spec.min || v > spec.max {
        return Err(field_error(spec, whole, format!("{v} is outside {}-{}", spec.min, spec.max)));
    }
    Ok(v)
}

/// Parses one field into the values it allows (as given, before any renumbering).
fn parse_field(spec: &Spec, text: &str) -> Result<(Vec<u32>, bool), CronError> {
    if text == "*" || (spec.question && text == "?") {
        return Ok(((spec.min..=spec.max).collect(), true));
    }
    if text == "?" {
        return Err(field_error(spec, text, "`?` is allowed only in the day fields"));
    }
    let mut values = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    field_error(spec, text, format!("step {s:?} is not a positive number"))
                })?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (parse_value(spec, text, a)?, parse_value(spec, text, b)?)
        } else {
            let v = parse_value(spec, text, range)?;
            // `a/n` runs from a to the end of the field's range.
            (v, if part.contains('/') { spec.max } else { v })
        };
        if lo > hi {
            return Err(field_error(spec, text, format!("range {lo}-{hi} is backwards")));
        }
        values.extend((lo..=hi).step_by(step as usize));
    }
    Ok((values, false))
}

fn set_of(values: impl IntoIterator<Item = u32>) -> Set {
    let mut set = Set::EMPTY;
    for v in values {
        set.insert(v);
    }
    set
}

impl Cron {
    /// Parses a five-, six- or seven-field expression (see the module docs).
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(CronError::TooLong);
        }
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let quartz = match fields.len() {
            5 => false,
            6 | 7 => true,
            n => return Err(CronError::FieldCount(n)),
        };
        let (seconds, rest) = if quartz {
            (set_of(parse_field(&SECOND, fields[0])?.0), &fields[1..])
        } else {
            (set_of([0]), &fields[..])
        };
        let minutes = set_of(parse_field(&MINUTE, rest[0])?.0);
        let hours = set_of(parse_field(&HOUR, rest[1])?.0);
        let (d, d_any) = parse_field(&DAY_OF_MONTH, rest[2])?;
        let months = set_of(parse_field(&MONTH, rest[3])?.0);
        let weekday_spec = if quartz { &WEEKDAY_QUARTZ } else { &WEEKDAY_CLASSIC };
        let (w, w_any) = parse_field(weekday_spec, rest[4])?;
        // Internally 0 = Sunday: Quartz's 1-7 shift down; classic 7 is Sunday too.
        let weekdays = w.into_iter().map(|v| if quartz { v - 1 } else { v % 7 });
        let years = match rest.get(5) {
            Some(y) => {
                let (values, any) = parse_field(&YEAR, y)?;
                (!any).then(|| set_of(values.into_iter().map(|v| v - YEAR_MIN as u32)))
            }
            None => None,
        };
        let days_either = !d_any && !w_any;
        if days_either && quartz {
            return Err(CronError::BothDays);
        }
        Ok(Cron {
            seconds,
            minutes,
            hours,
            days: Field { set: set_of(d), any: d_any },
            months,
            weekdays: Field { set: set_of(weekdays), any: w_any },
            years,
            days_either,
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let d = self.days.set.contains(day);
        let w = self.weekdays.set.contains(weekday);
        match (self.days.any, self.weekdays.any) {
            (true, true) => true,
            (true, false) => w,
            (false, true) => d,
            (false, false) => {
                debug_assert!(self.days_either);
                d || w
            }
        }
    }

    /// The first time this schedule fires strictly after `after_ms` (milliseconds since the
    /// epoch, UTC), at one-second resolution; `None` if it never fires again before
    /// [`YEAR_MAX`] ends.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut t = after_ms.div_euclid(1000) + 1;
        for _ in 0..MAX_SEARCH_STEPS {
            let days = t.div_euclid(86_400);
            let secs = t.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            if y > YEAR_MAX {
                return None;
            }
            if y < YEAR_MIN || self.years.is_some_and(|s| !s.contains((y - YEAR_MIN) as u32)) {
                t = days_from_civil(y + 1, 1, 1) * 86_400;
                continue;
            }
            if !self.months.contains(m) {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = days_from_civil(ny, nm, 1) * 86_400;
                continue;
            }
            let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday.
            if !self.day_matches(d, weekday) {
                t = (days + 1) * 86_400;
                continue;
            }
            let (h, min, s) = ((secs / 3600) as u32, (secs / 60 % 60) as u32, (secs % 60) as u32);
            if !self.hours.contains(h) {
                t = days * 86_400 + (i64::from(h) + 1) * 3600;
                continue;
            }
            if !self.minutes.contains(min) {
                t = days * 86_400 + i64::from(h) * 3600 + (i64::from(min) + 1) * 60;
                continue;
            }
            if !self.seconds.contains(s) {
                t += 1;
                continue;
            }
            return Some(t * 1000);
        }
        None
    }

    /// Whether the schedule fired in the `window_ms` up to and including `now_ms` (Teletraan's
    /// `isWithinScheduledWindow`: a fire time in `(now - window, now]`).
    pub fn fired_within(&self, now_ms: i64, window_ms: i64) -> bool {
        self.next_after(now_ms - window_ms).is_some_and(|t| t <= now_ms)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * 1000
    }

    #[test]
    fn calendar_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [-1000, 0, 59, 60, 11_016, 11_017, 19_000, 47_482, 80_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn next_fire_times() {
        // (expression, after, expected next fire)
        let start = at(2025, 1, 15, 10, 30, 0); // a Wednesday
        let cases: &[(&str, i64, Option<i64>)] = &[
            // Five fields: every minute fires on the next whole minute, strictly after.
            ("* * * * *", start, Some(at(2025, 1, 15, 10, 31, 0))),
            ("* * * * *", start - 1, Some(start)),
            ("*/15 * * * *", start + 1, Some(at(2025, 1, 15, 10, 45, 0))),
            ("0 9 * * *", start, Some(at(2025, 1, 16, 9, 0, 0))),
            ("0 9-17/4 * * *", start, Some(at(2025, 1, 15, 13, 0, 0))),
            ("30 10 * * 1-5", start, Some(at(2025, 1, 16, 10, 30, 0))),
            ("0 0 * * SAT,SUN", start, Some(at(2025, 1, 18, 0, 0, 0))),
            ("0 0 * * 7", start, Some(at(2025, 1, 19, 0, 0, 0))),
            ("0 0 1 * *", start, Some(at(2025, 2, 1, 0, 0, 0))),
            ("0 0 29 2 *", start, Some(at(2028, 2, 29, 0, 0, 0))),
            ("0 0 1 JAN *", start, Some(at(2026, 1, 1, 0, 0, 0))),
            // Both day fields restricted: either (classic cron): the 20th or a Friday.
            ("0 0 20 * FRI", start, Some(at(2025, 1, 17, 0, 0, 0))),
            // Quartz: seconds first, `?`, 1 = SUN.
            ("0 0 10 ? * MON-FRI", start, Some(at(2025, 1, 16, 10, 0, 0))),
            ("0 0 10 ? * 1", start, Some(at(2025, 1, 19, 10, 0, 0))),
            ("15 30 10 15 1 ?", start, Some(at(2025, 1, 15, 10, 30, 15))),
            ("0 30 3 * * ?", start, Some(at(2025, 1, 16, 3, 30, 0))),
            ("0 0 0 1 1 ? 2030", start, Some(at(2030, 1, 1, 0, 0, 0))),
            ("0 0 0 1 1 ? 2020", start, None),
            ("0 0 0 30 2 ?", start, None),
        ];
        for (expr, after, want) in cases {
            let cron = Cron::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(cron.next_after(*after), *want, "{expr}");
        }
    }

    #[test]
    fn window_is_the_buffer_after_a_fire_time() {
        let cron = Cron::parse("0 10 * * *").unwrap();
        let fire = at(2025, 1, 15, 10, 0, 0);
        let window = 120_000;
        assert!(cron.fired_within(fire, window), "at the fire time");
        assert!(cron.fired_within(fire + window - 1, window), "inside the buffer");
        assert!(!cron.fired_within(fire + window, window), "the buffer has passed");
        assert!(!cron.fired_within(fire - 1, window), "just before");
    }

    #[test]
    fn bad_expressions_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("* * * *", "has 4 fields"),
            ("61 * * * *", "minute field \"61\": 61 is outside 0-59"),
            ("* 24 * * *", "hour field"),
            ("* * 0 * *", "day-of-month field"),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day-of-week field"),
            ("* * * * MON#2", "`#` is not supported"),
            ("0 0 0 L * ?", "`L` is not supported"),
            ("*/0 * * * *", "step \"0\""),
            ("5-1 * * * *", "backwards"),
            ("? * * * *", "only in the day fields"),
            ("0 0 10 1 * MON", "restricts both"),
            ("x * * * *", "\"x\" is not a value"),
        ];
        for (expr, want) in cases {
            let e = Cron::parse(expr).expect_err(expr).to_string();
            assert!(e.contains(want), "{expr}: {e}");
        }
    }
}
