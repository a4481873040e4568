//! Teletraan's template language for hook scripts (`Transformer._translate`) and the
//! `<env>_SCRIPT_CONFIG` file its variables come from.
//!
//! [`render`] runs Teletraan's two passes over a template's text:
//!
//! 1. The regex `(\{\$|\$\{)TELETRAAN_(?P<KEY>[a-zA-Z0-9\-_]+)(?P<COLON>:)?(?P<VALUE>.*?)\}`
//!    finds `${TELETRAAN_KEY}`, `{$TELETRAAN_KEY}` and the forms with a default
//!    (`${TELETRAAN_KEY:default}`). Each match of the *original* text is replaced, with
//!    Python's `str.replace`, everywhere in the text as rewritten so far: by the variable if it
//!    is set, else by the default if there was a colon, else it is left alone.
//! 2. Python's `string.Template.safe_substitute` with delimiter `$TELETRAAN_` and identifier
//!    pattern `[a-zA-Z][_a-z0-9A-Z\-]*`: `$TELETRAAN_KEY` and `$TELETRAAN_{KEY}` become the
//!    variable if it is set (unknown names stay as written), `$TELETRAAN_$TELETRAAN_` is an
//!    escaped literal `$TELETRAAN_`.
//!
//! The scanners are written by hand and reproduce Python 3.11's matching exactly, including
//! its oddities (the tests pin each one against outputs of the Python code): `Template`
//! compiles its pattern with `re.IGNORECASE`, so the delimiter matches in any case
//! (`$teletraan_foo`) and the identifier classes also match the four non-ASCII letters that
//! fold into them (`İ`, `ı`, `ſ`, `K`). Values are inserted verbatim; pass 2 also substitutes
//! inside values that pass 1 inserted, as Teletraan does.
//!
//! One difference: Python reads and writes templates in text mode, which turns `\r\n` and a
//! lone `\r` into `\n`. [`render`] keeps line endings as they are.

use std::collections::BTreeMap;

/// What opens pass 1's braced forms (both are the same length).
const BRACED_OPENERS: [&[u8]; 2] = [b"${TELETRAAN_", b"{$TELETRAAN_"];
/// Pass 2's delimiter, and what an escaped delimiter (`$TELETRAAN_$TELETRAAN_`) becomes.
const DELIMITER: &str = "$TELETRAAN_";

/// Renders a template with Teletraan's two passes (see the module docs).
pub fn render(text: &str, vars: &BTreeMap<String, String>) -> String {
    let text = substitute_braced(text, vars);
    substitute_bare(&text, vars)
}

/// Parses an `<env>_SCRIPT_CONFIG` file as Teletraan does: one `key=value` per line, split at
/// the first `=`, with `"`, `'`, space and newline stripped from both ends of key and value;
/// a later line wins over an earlier one with the same key. Lines end at `\n`, `\r\n` or `\r`
/// (Python's universal newlines).
///
/// A line without `=` is skipped; in Teletraan it raises and the stager fails, which is no use
/// to anyone (a blank line is enough to trigger it).
pub fn parse_script_config(text: &str) -> BTreeMap<String, String> {
    const STRIPPED: &[char] = &['"', '\'', ' ', '\n'];
    let mut vars = BTreeMap::new();
    for line in text.split('\n').flat_map(|l| l.split('\r')) {
        let Some((key, value)) = line.split_once('=') else { continue };
        vars.insert(key.trim_matches(STRIPPED).to_owned(), value.trim_matches(STRIPPED).to_owned());
    }
    vars
}

/// Writes script variables the way Teletraan does (`key=value\n` per variable, here in key
/// order). Like Teletraan's, the format does not quote: a key containing `=`, a value
/// containing a line break, or a key or value starting or ending with `"`, `'` or a space does
/// not come back unchanged from [`parse_script_config`].
pub fn format_script_config(vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (key, value) in vars {
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    out
}

/// Pass 1. Python iterates over the matches of the original text and applies each one with
/// `str.replace` to the text as rewritten so far, so a value inserted by an earlier match is
/// rewritten by a later match with the same text; this does the same.
fn substitute_braced(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for m in braced_matches(text) {
        let replacement = vars.get(m.key).map(String::as_str).or(m.default);
        if let Some(replacement) = replacement {
            out = out.replace(m.whole, replacement);
        }
    }
    out
}

/// One match of pass 1's regex.
struct BracedMatch<'a> {
    /// The whole matched text, e.g. `${TELETRAAN_PORT:8080}`.
    whole: &'a str,
    key: &'a str,
    /// The text after the colon (`Some("")` for `${TELETRAAN_X:}`); `None` without a colon.
    default: Option<&'a str>,
}

/// The non-overlapping matches of pass 1's regex, left to right (`re.finditer`).
fn braced_matches(text: &str) -> Vec<BracedMatch<'_>> {
    let mut found = Vec::new();
    let mut start = 0;
    while start < text.len() {
        match braced_match_at(text, start) {
            Some(m) => {
                start += m.whole.len();
                found.push(m);
            }
            None => start += 1,
        }
    }
    found
}

/// The regex anchored at byte `start`. Matches only begin at an ASCII `$` or `{`, so every
/// slice taken here is on a char boundary.
///
/// The regex cannot match differently from this: KEY is greedy and its class excludes `:` and
/// `}`; VALUE (`.*?`, no newline) runs to the first `}` on the line, and when there is none,
/// shortening KEY or dropping the colon cannot help, since VALUE would still need that `}`.
fn braced_match_at(text: &str, start: usize) -> Option<BracedMatch<'_>> {
    let bytes = &text.as_bytes()[start..];
    let opener_len = BRACED_OPENERS[0].len();
    if !BRACED_OPENERS.iter().any(|opener| bytes.starts_with(opener)) {
        return None;
    }
    let key_len = bytes[opener_len..].iter().take_while(|&&b| is_braced_key_byte(b)).count();
    if key_len == 0 {
        return None;
    }
    let key_end = opener_len + key_len;
    let has_colon = bytes.get(key_end) == Some(&b':');
    let value_start = key_end + usize::from(has_colon);
    let close = value_start + bytes[value_start..].iter().position(|&b| b == b'}' || b == b'\n')?;
    if bytes[close] != b'}' {
        return None;
    }
    Some(BracedMatch {
        whole: &text[start..start + close + 1],
        key: &text[start + opener_len..start + key_end],
        default: has_colon.then(|| &text[start + value_start..start + close]),
    })
}

/// Pass 1's key class `[a-zA-Z0-9\-_]` (that regex is case-sensitive and ASCII-only).
fn is_braced_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Pass 2: `string.Template.safe_substitute` with Teletraan's delimiter and identifiers.
/// Every delimiter is one match of Python's pattern, whose alternatives are tried in order:
/// escaped (a second delimiter), named (`$TELETRAAN_id`), braced (`$TELETRAAN_{id}`), and
/// invalid (the delimiter alone, kept as is). Scanning resumes after the match.
fn substitute_bare(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_delimiter(rest) {
        out.push_str(&rest[..at]);
        let after = &rest[at + DELIMITER.len()..];
        let (consumed, replacement) = if starts_with_delimiter(after) {
            // Python returns `self.delimiter`, i.e. upper case whatever case was written.
            (DELIMITER.len(), Some(DELIMITER))
        } else if let Some(name_len) = identifier_len(after) {
            (name_len, vars.get(&after[..name_len]).map(String::as_str))
        } else if let Some(name_len) = after.strip_prefix('{').and_then(identifier_len)
            && after.as_bytes().get(1 + name_len) == Some(&b'}')
        {
            (name_len + 2, vars.get(&after[1..1 + name_len]).map(String::as_str))
        } else {
            (0, None)
        };
        let matched_len = DELIMITER.len() + consumed;
        out.push_str(replacement.unwrap_or(&rest[at..at + matched_len]));
        rest = &rest[at + matched_len..];
    }
    out.push_str(rest);
    out
}

/// Byte offset of the first delimiter in `text`, in any ASCII case. (None of `TELETRAAN`'s
/// letters has a non-ASCII case fold, so Python's IGNORECASE matches nothing more.)
fn find_delimiter(text: &str) -> Option<usize> {
    text.match_indices('$').map(|(at, _)| at).find(|&at| starts_with_delimiter(&text[at..]))
}

fn starts_with_delimiter(text: &str) -> bool {
    text.as_bytes()
        .get(..DELIMITER.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(DELIMITER.as_bytes()))
}

/// Byte length of the identifier `[a-zA-Z][_a-z0-9A-Z\-]*` (greedy, under IGNORECASE) at the
/// start of `text`, if there is one.
fn identifier_len(text: &str) -> Option<usize> {
    let mut chars = text.char_indices();
    let (_, first) = chars.next()?;
    if !(first.is_ascii_alphabetic() || is_folded_letter(first)) {
        return None;
    }
    let end = chars
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || is_folded_letter(c)))
        .map_or(text.len(), |(at, _)| at);
    Some(end)
}

/// The non-ASCII characters Python 3.11's `re.IGNORECASE | re.UNICODE` matches with `[a-zA-Z]`
/// (found by testing every code point): `İ` U+0130, `ı` U+0131, `ſ` U+017F, Kelvin `K` U+212A.
fn is_folded_letter(c: char) -> bool {
    matches!(c, '\u{130}' | '\u{131}' | '\u{17f}' | '\u{212a}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The variables of the Python run that produced the golden outputs below.
    fn golden_vars() -> BTreeMap<String, String> {
        vars(&[
            ("foo", "bar"),
            ("Wh-O", "test2"),
            ("TEST", "test3"),
            ("PORT", "9090"),
            ("a", "${TELETRAAN_b}"),
            ("b", "B"),
            ("nest", "$TELETRAAN_foo"),
            ("k", "v"),
            ("foo-", "dash"),
            ("x_y", "XY"),
            ("\u{17f}", "longs"),
            ("empty", ""),
        ])
    }

    /// Asserts `render` on each `(template, expected)` pair; every expected string is the
    /// output of Teletraan's `_translate` logic run under Python 3.11.
    fn check(cases: &[(&str, &str)], vars: &BTreeMap<String, String>) {
        for (template, expected) in cases {
            assert_eq!(render(template, vars), *expected, "template {template:?}");
        }
    }

    #[test]
    fn spec_examples() {
        // §A.5's examples with {foo: bar}, plus the sentinel's PORT line.
        let foo = vars(&[("foo", "bar"), ("Wh-O", "test2")]);
        check(
            &[
                ("foo-${TELETRAAN_foo}", "foo-bar"),
                ("${TELETRAAN_bar:foo}", "foo"),
                ("${TELETRAAN_bar}", "${TELETRAAN_bar}"),
                ("$TELETRAAN_Wh-O", "test2"),
                ("PORT=${TELETRAAN_PORT:8080}", "PORT=8080"),
            ],
            &foo,
        );
        check(&[("PORT=${TELETRAAN_PORT:8080}", "PORT=9090")], &golden_vars());
    }

    #[test]
    fn teletraan_transformer_test_lines() {
        // Teletraan's test_transformer.py, test_translate1 (its dictionary) and
        // test_translate2 (no SCRIPT_CONFIG: empty dictionary).
        let lines = [
            "foo1=foo-${TELETRAAN_foo}-${TELETRAAN_foo}\n",
            "foo2=foo-{$TELETRAAN_foo}-{$TELETRAAN_foo}\n",
            "foo3=foo-$TELETRAAN_foo $TELETRAAN_foo\n",
            "foo4=foo-${TELETRAAN_foo:foo}-${TELETRAAN_foo:foo}\n",
            "foo5=foo-{$TELETRAAN_foo:foo}-{$TELETRAAN_foo:foo}\n",
            "foo6=foo-${TELETRAAN_bar:foo}-${TELETRAAN_bar:foo}\n",
            "foo7=foo-{$TELETRAAN_bar:foo}-{$TELETRAAN_bar:foo}\n",
            "foo8=foo-${TELETRAAN_bar}-${TELETRAAN_bar:}\n",
            "foo9=foo-{$TELETRAAN_bar}-{$TELETRAAN_bar:}\n",
            "foo10=foo-$TELETRAAN_bar $TELETRAAN_bar\n",
        ]
        .concat();
        let translated1 = [
            "foo1=foo-bar-bar\n",
            "foo2=foo-bar-bar\n",
            "foo3=foo-bar bar\n",
            "foo4=foo-bar-bar\n",
            "foo5=foo-bar-bar\n",
            "foo6=foo-foo-foo\n",
            "foo7=foo-foo-foo\n",
            "foo8=foo-${TELETRAAN_bar}-\n",
            "foo9=foo-{$TELETRAAN_bar}-\n",
            "foo10=foo-$TELETRAAN_bar $TELETRAAN_bar\n",
        ]
        .concat();
        let translated2 = [
            "foo1=foo-${TELETRAAN_foo}-${TELETRAAN_foo}\n",
            "foo2=foo-{$TELETRAAN_foo}-{$TELETRAAN_foo}\n",
            "foo3=foo-$TELETRAAN_foo $TELETRAAN_foo\n",
            "foo4=foo-foo-foo\n",
            "foo5=foo-foo-foo\n",
            "foo6=foo-foo-foo\n",
            "foo7=foo-foo-foo\n",
            "foo8=foo-${TELETRAAN_bar}-\n",
            "foo9=foo-{$TELETRAAN_bar}-\n",
            "foo10=foo-$TELETRAAN_bar $TELETRAAN_bar\n",
        ]
        .concat();
        let config = "foo = \"bar\"\nWh-O =   'test2'\nTEST = test3\n";
        let dictionary = parse_script_config(config);
        assert_eq!(dictionary, vars(&[("foo", "bar"), ("Wh-O", "test2"), ("TEST", "test3")]));
        assert_eq!(render(&lines, &dictionary), translated1);
        assert_eq!(render("$TEST=\"$TELETRAAN_Wh-O\"", &dictionary), "$TEST=\"test2\"");
        assert_eq!(render(&lines, &BTreeMap::new()), translated2);
    }

    #[test]
    fn braced_pass_matches_python_regex() {
        check(
            &[
                // Without a colon VALUE may still be non-empty; a known key replaces it all.
                ("${TELETRAAN_foo bar}", "bar"),
                ("${TELETRAAN_bar baz}", "${TELETRAAN_bar baz}"),
                // KEY stops at the first colon; the default runs to the first `}`.
                ("${TELETRAAN_foo:x:y}", "bar"),
                ("${TELETRAAN_bar:x:y}", "x:y"),
                ("${TELETRAAN_bar:{x}}", "{x}"),
                ("${TELETRAAN_bar:${TELETRAAN_foo}}", "${TELETRAAN_foo}"),
                // `.` does not cross a newline, so there is no match.
                ("${TELETRAAN_bar:a\nb}", "${TELETRAAN_bar:a\nb}"),
                ("${TELETRAAN_foo\n}", "${TELETRAAN_foo\n}"),
                // KEY needs one character; the regex is case-sensitive.
                ("${TELETRAAN_}", "${TELETRAAN_}"),
                ("${teletraan_foo}", "${teletraan_foo}"),
                // `-` belongs to KEY, so this looks up `foo-`.
                ("${TELETRAAN_foo-:z}", "dash"),
                // The search restarts one character on: `{$` inside `${$`.
                ("${$TELETRAAN_foo}", "$bar"),
                ("{${TELETRAAN_foo}", "{bar"),
                // Each match replaces every occurrence in the rewritten text, so a value that
                // an earlier match inserted is rewritten by a later match, not the reverse.
                ("${TELETRAAN_a}", "${TELETRAAN_b}"),
                ("${TELETRAAN_a}/${TELETRAAN_b}", "B/B"),
                ("${TELETRAAN_b}/${TELETRAAN_a}", "B/${TELETRAAN_b}"),
                // A set but empty variable wins over the default.
                ("${TELETRAAN_empty:dflt}", ""),
                ("${TELETRAAN_bar:dflt} and ${TELETRAAN_bar:other}", "dflt and other"),
                ("${TELETRAAN_bar:\u{e9}\u{20ac}}", "\u{e9}\u{20ac}"),
                // Pass 2 then runs over what pass 1 inserted.
                ("${TELETRAAN_bar:$TELETRAAN_foo}", "bar"),
                ("${TELETRAAN_nest}", "bar"),
            ],
            &golden_vars(),
        );
    }

    #[test]
    fn bare_pass_matches_python_template() {
        check(
            &[
                // Escapes: two delimiters give one, in upper case (`self.delimiter`).
                ("$TELETRAAN_$TELETRAAN_foo", "$TELETRAAN_foo"),
                ("$Teletraan_$tELETRAAN_foo", "$TELETRAAN_foo"),
                ("$TELETRAAN_$TELETRAAN_$TELETRAAN_k", "$TELETRAAN_v"),
                // IGNORECASE: the delimiter matches in any case.
                ("$teletraan_foo", "bar"),
                // Braced identifiers, which Python's Template supports for any delimiter.
                ("$TELETRAAN_{foo}", "bar"),
                ("$TELETRAAN_{foo}x", "barx"),
                ("$TELETRAAN_{bar}", "$TELETRAAN_{bar}"),
                ("$TELETRAAN_{foo", "$TELETRAAN_{foo"),
                ("$TELETRAAN_{ foo}", "$TELETRAAN_{ foo}"),
                // Identifiers are greedy and include `-`: a trailing dash is part of the name.
                ("$TELETRAAN_foo-", "dash"),
                ("$TELETRAAN_foo-bar", "$TELETRAAN_foo-bar"),
                ("$TELETRAAN_x_y.z", "XY.z"),
                ("$TELETRAAN_empty|", "|"),
                // Identifiers start with a letter; otherwise the delimiter stays as written.
                ("$TELETRAAN_1foo", "$TELETRAAN_1foo"),
                ("$TELETRAAN_-foo", "$TELETRAAN_-foo"),
                ("$TELETRAAN_", "$TELETRAAN_"),
                ("$$TELETRAAN_foo", "$bar"),
                ("$TELETRAAN_foo$TELETRAAN_k", "barv"),
                ("$TELETRAAN_unknown$TELETRAAN_k", "$TELETRAAN_unknownv"),
                // IGNORECASE also lets `ſ` (U+017F) into the identifier; `é` ends it.
                ("$TELETRAAN_\u{17f}", "longs"),
                ("$TELETRAAN_foo\u{e9}", "bar\u{e9}"),
            ],
            &golden_vars(),
        );
        check(
            &[("$TELETRAAN_foo", "$TELETRAAN_foo"), ("$TELETRAAN_$TELETRAAN_", "$TELETRAAN_")],
            &BTreeMap::new(),
        );
    }

    #[test]
    fn non_ascii_text_around_placeholders_is_kept() {
        let v = vars(&[("name", "w\u{f6}rld")]);
        assert_eq!(
            render("\u{4f60}\u{597d} ${TELETRAAN_name} \u{20ac}$TELETRAAN_name\u{e9}$", &v),
            "\u{4f60}\u{597d} w\u{f6}rld \u{20ac}w\u{f6}rld\u{e9}$"
        );
        // Line endings are kept (Python's text mode would turn `\r\n` into `\n`).
        assert_eq!(render("a=${TELETRAAN_name}\r\n", &v), "a=w\u{f6}rld\r\n");
    }

    #[test]
    fn script_config_parses_like_teletraan() {
        // Each expected map is what Teletraan's `_load_config` builds from the same bytes.
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("a=b=c\n", &[("a", "b=c")]),
            ("a=1\r\nb=2\r\n", &[("a", "1"), ("b", "2")]),
            ("a=1\rb=2", &[("a", "1"), ("b", "2")]),
            // Tabs are not stripped, only `"`, `'`, space and newline.
            ("k=\t v \t\n", &[("k", "\t v \t")]),
            ("k=\"'x'\"\n", &[("k", "x")]),
            (" \"q k\" = 'v v' \n", &[("q k", "v v")]),
            ("=v\n", &[("", "v")]),
            ("k=\n", &[("k", "")]),
            ("a=1\na=2\n", &[("a", "2")]),
            ("k=\u{e9}\u{20ac}", &[("k", "\u{e9}\u{20ac}")]),
            ("", &[]),
            // Teletraan raises on a line without `=`; we skip it.
            ("a=1\n\nnoeq\nb=2\n", &[("a", "1"), ("b", "2")]),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_script_config(text), vars(expected), "config {text:?}");
        }
    }

    #[test]
    fn script_config_round_trips_plain_values() {
        let v = vars(&[("PORT", "8080"), ("Wh-O", "a b=c"), ("URL", "https://x/?q=1&r='s'&t=u")]);
        let text = format_script_config(&v);
        assert_eq!(text, "PORT=8080\nURL=https://x/?q=1&r='s'&t=u\nWh-O=a b=c\n");
        assert_eq!(parse_script_config(&text), v);
        assert_eq!(format_script_config(&BTreeMap::new()), "");
        // Documented loss, as in Teletraan: surrounding quotes and spaces are stripped on read.
        let quoted = vars(&[("Q", "\"quoted\" ")]);
        assert_eq!(parse_script_config(&format_script_config(&quoted)), vars(&[("Q", "quoted")]));
    }
}
