//! Unique id prefixes: `tt` accepts the first characters of a deploy or build id (like Nomad's
//! `8990cfbc`) and resolves them against the service's list. The choice is the pure
//! [`unique_prefix`]; [`resolve_build`] and [`resolve_deploy`] first try the argument as a full
//! id (one request), and only when that is not found fetch the candidates.

use crate::client::{Client, ClientError, urlencode};
use serde_json::Value;

/// Ids asked for per page while resolving a prefix (the API's largest page).
pub const PREFIX_PAGE_SIZE: usize = 1000;
/// Pages scanned at most while resolving a prefix (100,000 ids); past that, give the full id.
pub const MAX_PREFIX_PAGES: usize = 100;
/// Candidates an ambiguity error lists.
pub const MAX_LISTED_CANDIDATES: usize = 10;

/// Why a prefix names no single id.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// No id starts with the prefix: check it, or list the ids (`tt history`, `tt build list`).
    #[error("no {kind} id starts with {prefix:?}")]
    NotFound { kind: &'static str, prefix: String },
    /// Several ids start with it: give more characters.
    #[error(
        "{prefix:?} is ambiguous: {} {kind} ids start with it ({}); give more characters",
        candidates.len(),
        listed(candidates)
    )]
    Ambiguous { kind: &'static str, prefix: String, candidates: Vec<String> },
    /// An empty prefix or too many ids to scan.
    #[error("{0}")]
    Usage(String),
}

fn listed(candidates: &[String]) -> String {
    let mut shown = candidates.iter().take(MAX_LISTED_CANDIDATES).cloned().collect::<Vec<_>>();
    if candidates.len() > MAX_LISTED_CANDIDATES {
        shown.push(format!("and {} more", candidates.len() - MAX_LISTED_CANDIDATES));
    }
    shown.join(", ")
}

impl PrefixError {
    /// `tt`'s exit code: 4 when nothing matches (as a 404), 2 (usage) when the argument must
    /// be longer.
    pub fn exit_code(&self) -> i32 {
        match self {
            PrefixError::NotFound { .. } => crate::client::EXIT_NOT_FOUND,
            PrefixError::Ambiguous { .. } | PrefixError::Usage(_) => crate::client::EXIT_USAGE,
        }
    }
}

/// The one id among `ids` that equals `prefix` or starts with it.
pub fn unique_prefix<'a>(
    kind: &'static str,
    prefix: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<String, PrefixError> {
    if prefix.is_empty() {
        return Err(PrefixError::Usage(format!("an empty {kind} id")));
    }
    let mut candidates: Vec<String> = Vec::new();
    for id in ids {
        if id == prefix {
            return Ok(id.to_string());
        }
        if id.starts_with(prefix) && !candidates.iter().any(|c| c == id) {
            candidates.push(id.to_string());
        }
    }
    match candidates.len() {
        0 => Err(PrefixError::NotFound { kind, prefix: prefix.to_string() }),
        1 => Ok(candidates.remove(0)),
        _ => {
            candidates.sort();
            Err(PrefixError::Ambiguous { kind, prefix: prefix.to_string(), candidates })
        }
    }
}

fn ids_of(items: &[Value]) -> impl Iterator<Item = &str> {
    items.iter().filter_map(|v| v.get("id").and_then(Value::as_str))
}

/// Whether `arg` is a whole id: `GET {collection}/{arg}` answers (a 404 says no; any other
/// error is the caller's).
async fn exists(client: &Client, collection: &str, arg: &str) -> Result<bool, ClientError> {
    match client.get::<Value>(&format!("{collection}/{}", urlencode(arg))).await {
        Ok(_) => Ok(true),
        Err(ClientError::Api { status: 404, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The build id `arg` names (a full id, or a unique prefix of one).
pub async fn resolve_build(client: &Client, arg: &str) -> anyhow::Result<String> {
    if !arg.is_empty() && exists(client, "/v1/builds", arg).await? {
        return Ok(arg.to_string());
    }
    let mut ids = Vec::new();
    for page in 1..=MAX_PREFIX_PAGES {
        let builds: Vec<Value> =
            client.get(&format!("/v1/builds?pageSize={PREFIX_PAGE_SIZE}&pageIndex={page}")).await?;
        ids.extend(ids_of(&builds).filter(|id| id.starts_with(arg)).map(str::to_string));
        if builds.len() < PREFIX_PAGE_SIZE {
            return Ok(unique_prefix("build", arg, ids.iter().map(String::as_str))?);
        }
    }
    Err(too_many("build", arg).into())
}

/// The deploy id `arg` names (a full id, or a unique prefix of one), among every stage's.
pub async fn resolve_deploy(client: &Client, arg: &str) -> anyhow::Result<String> {
    if !arg.is_empty() && exists(client, "/v1/deploys", arg).await? {
        return Ok(arg.to_string());
    }
    let mut ids = Vec::new();
    for page in 1..=MAX_PREFIX_PAGES {
        let v: Value = client
            .get(&format!("/v1/deploys?pageSize={PREFIX_PAGE_SIZE}&pageIndex={page}"))
            .await?;
        let deploys = v["deploys"].as_array().map_or(&[][..], Vec::as_slice);
        ids.extend(ids_of(deploys).filter(|id| id.starts_with(arg)).map(str::to_string));
        if v["truncated"] != Value::Bool(true) {
            return Ok(unique_prefix("deploy", arg, ids.iter().map(String::as_str))?);
        }
    }
    Err(too_many("deploy", arg).into())
}

fn too_many(kind: &'static str, arg: &str) -> PrefixError {
    PrefixError::Usage(format!(
        "more than {} {kind}s to search for {arg:?}; give the full id",
        MAX_PREFIX_PAGES * PREFIX_PAGE_SIZE
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &[&str] = &["aXk3", "aXq9", "b77", "b7"];

    #[test]
    fn a_unique_prefix_names_its_id() {
        assert_eq!(unique_prefix("deploy", "aXk", IDS.iter().copied()), Ok("aXk3".into()));
        assert_eq!(unique_prefix("deploy", "b7", IDS.iter().copied()), Ok("b7".into()), "exact");
    }

    #[test]
    fn ambiguous_and_unknown_prefixes_are_refused_with_their_exit_codes() {
        let e = unique_prefix("build", "aX", IDS.iter().copied()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"aX\" is ambiguous: 2 build ids start with it (aXk3, aXq9); give more characters"
        );
        assert_eq!(e.exit_code(), 2);
        let e = unique_prefix("build", "zz", IDS.iter().copied()).unwrap_err();
        assert_eq!(e.to_string(), "no build id starts with \"zz\"");
        assert_eq!(e.exit_code(), 4);
        assert_eq!(unique_prefix("build", "", IDS.iter().copied()).unwrap_err().exit_code(), 2);
    }
}
