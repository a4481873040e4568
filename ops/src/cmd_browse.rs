//! `tt diff BUILD_A BUILD_B` (two builds side by side) and `tt open ENV/STAGE` (the stage's
//! dashboard page).

use anyhow::Context;
use ops::client::{Client, urlencode};
use ops::ids::resolve_build;
use serde_json::Value;

use crate::{Output, print_json, split_stage};

pub async fn diff(client: &Client, out: Output, a: &str, b: &str) -> anyhow::Result<()> {
    let a: Value = client.get(&format!("/v1/builds/{}", resolve_build(client, a).await?)).await?;
    let b: Value = client.get(&format!("/v1/builds/{}", resolve_build(client, b).await?)).await?;
    if out.json() {
        print_json(&ops::format::build_diff_json(&a, &b));
    } else {
        print!("{}", ops::format::build_diff(&a, &b, &out.view));
    }
    Ok(())
}

/// Whether `tt open` starts a browser: asked for, or a terminal with a display to show it on.
pub fn should_open(browser_flag: bool, stdout_is_tty: bool, display: bool) -> bool {
    browser_flag || (stdout_is_tty && display)
}

pub async fn open(client: &Client, stage: &str, browser: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let (e, st) = split_stage(stage)?;
    // A stage that does not exist is a 404 here (exit 4), not a broken link in the browser.
    let _: Value = client.get(&format!("/v1/envs/{e}/{st}")).await?;
    let url = format!("{}/ui/env/{}/{}", client.addr(), urlencode(e), urlencode(st));
    println!("{url}");
    let display = ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some());
    if should_open(browser, std::io::stdout().is_terminal(), display) {
        let status = std::process::Command::new("xdg-open")
            .arg(&url)
            .status()
            .context("running xdg-open (install xdg-utils, or open the URL above yourself)")?;
        anyhow::ensure!(status.success(), "xdg-open {url} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_opens_when_asked_or_on_a_terminal_with_a_display() {
        assert!(should_open(true, false, false));
        assert!(should_open(false, true, true));
        assert!(!should_open(false, true, false), "no display: print only");
        assert!(!should_open(false, false, true), "piped: print only");
    }
}
