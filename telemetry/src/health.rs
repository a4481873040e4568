//! `/livez` and `/readyz` bodies in the Kubernetes API server's shape: machines read the
//! status (200 only if every check passes), humans ask `?verbose` for one line per check
//! (`[+]storage ok`, `[-]raft-leader-known failed: no leader known`).

/// One named check and its result (`Err` carries why it failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub result: Result<(), String>,
}

impl Check {
    pub fn ok(name: &'static str) -> Check {
        Check { name, result: Ok(()) }
    }

    pub fn failed(name: &'static str, reason: impl Into<String>) -> Check {
        Check { name, result: Err(reason.into()) }
    }
}

/// A rendered health answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether every check passed (HTTP 200; 503 otherwise).
    pub ok: bool,
    pub body: String,
}

impl Health {
    /// The HTTP status to answer with: 200, or 503 when a check failed.
    pub fn status(&self) -> u16 {
        if self.ok { 200 } else { 503 }
    }
}

/// Renders `checks` as the endpoint `what` (`livez`, `readyz`) answers them. Without
/// `verbose` the body is `ok` or the failed checks; with it, every check and a summary line.
pub fn render(what: &str, checks: &[Check], verbose: bool) -> Health {
    let ok = checks.iter().all(|c| c.result.is_ok());
    let mut body = String::new();
    for c in checks {
        match &c.result {
            Ok(()) if verbose => body.push_str(&format!("[+]{} ok\n", c.name)),
            Ok(()) => {}
            Err(reason) => body.push_str(&format!("[-]{} failed: {reason}\n", c.name)),
        }
    }
    if ok && verbose {
        body.push_str(&format!("{what} check passed\n"));
    } else if ok {
        body.push_str("ok\n");
    } else {
        body.push_str(&format!("{what} check failed\n"));
    }
    Health { ok, body }
}

/// Whether a query string asks for the verbose form (`verbose`, `verbose=1`, `verbose=true`).
pub fn wants_verbose(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| match kv.split_once('=') {
            None => kv == "verbose",
            Some((k, v)) => k == "verbose" && !matches!(v, "0" | "false"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_lists_every_check_and_passes_only_if_all_do() {
        let checks = [Check::ok("raft-leader-known"), Check::ok("storage")];
        let h = render("readyz", &checks, true);
        assert!(h.ok);
        assert_eq!(h.body, "[+]raft-leader-known ok\n[+]storage ok\nreadyz check passed\n");

        let checks = [
            Check::ok("raft-leader-known"),
            Check::failed("applied-caught-up", "applied 7 < committed 9"),
        ];
        let h = render("readyz", &checks, true);
        assert!(!h.ok);
        assert_eq!(
            h.body,
            "[+]raft-leader-known ok\n[-]applied-caught-up failed: applied 7 < committed 9\n\
             readyz check failed\n"
        );
    }

    #[test]
    fn terse_says_ok_or_names_the_failures() {
        assert_eq!(render("livez", &[Check::ok("ping-loop")], false).body, "ok\n");
        let h = render("readyz", &[Check::ok("a"), Check::failed("b", "why")], false);
        assert!(!h.ok);
        assert_eq!(h.body, "[-]b failed: why\nreadyz check failed\n");
    }

    #[test]
    fn verbose_is_read_from_the_query() {
        assert!(wants_verbose(Some("verbose")));
        assert!(wants_verbose(Some("x=1&verbose=true")));
        assert!(wants_verbose(Some("verbose=1")));
        assert!(!wants_verbose(Some("verbose=0")));
        assert!(!wants_verbose(Some("verbosely")));
        assert!(!wants_verbose(None));
    }
}
