//! The filters of `GET /v1/deploys` (Teletraan's `DeployQueryFilterBean`): parsed from the
//! query string (the starred ones repeatable: `?deployState=RUNNING&deployState=FAILING`) and
//! matched against a deploy and its build. Pure, so the table below drives it directly.

use std::collections::BTreeSet;

use proto::beans::{BuildBean, DeployBean};
use proto::enums::{AcceptanceStatus, DeployState, DeployType, WireEnum};

/// A filter of `GET /v1/deploys`. Empty sets and `None` match everything.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeployQuery {
    pub env_ids: BTreeSet<String>,
    pub operators: BTreeSet<String>,
    pub types: BTreeSet<&'static str>,
    pub states: BTreeSet<&'static str>,
    pub acceptance: BTreeSet<&'static str>,
    /// The build's commit starts with this (a short sha matches).
    pub commit: Option<String>,
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// Deploys of builds committed at or after this (epoch ms): on one repo and branch, the
    /// deploys that contain a commit of that date.
    pub commit_date: Option<i64>,
    /// Deploys started strictly before / after (epoch ms).
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub page_index: Option<usize>,
    pub page_size: Option<usize>,
    pub oldest_first: bool,
    pub stale: bool,
}

fn one_of<T: WireEnum>(field: &str, value: &str) -> Result<&'static str, String> {
    value.parse::<T>().map(T::as_str).map_err(|e| format!("{field}: {e}"))
}

fn number<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, String> {
    value.trim().parse().map_err(|_| format!("{field} must be a number, not {value:?}"))
}

fn flag(field: &str, value: &str) -> Result<bool, String> {
    value.trim().parse().map_err(|_| format!("{field} must be true or false, not {value:?}"))
}

impl DeployQuery {
    /// Parses the query's pairs; an unknown parameter or a bad value is an error naming it.
    pub fn parse(pairs: &[(String, String)]) -> Result<DeployQuery, String> {
        let mut q = DeployQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "envId" => {
                    q.env_ids.insert(value.clone());
                }
                "operator" => {
                    q.operators.insert(value.clone());
                }
                "deployType" => {
                    q.types.insert(one_of::<DeployType>(key, value)?);
                }
                "deployState" => {
                    q.states.insert(one_of::<DeployState>(key, value)?);
                }
                "acceptanceStatus" => {
                    q.acceptance.insert(one_of::<AcceptanceStatus>(key, value)?);
                }
                "commit" => q.commit = Some(value.clone()),
                "repo" => q.repo = Some(value.clone()),
                "branch" => q.branch = Some(value.clone()),
                "commitDate" => q.commit_date = Some(number(key, value)?),
                "before" => q.before = Some(number(key, value)?),
                "after" => q.after = Some(number(key, value)?),
                "pageIndex" => q.page_index = Some(number(key, value)?),
                "pageSize" => q.page_size = Some(number(key, value)?),
                "oldestFirst" => q.oldest_first = flag(key, value)?,
                "stale" => q.stale = flag(key, value)?,
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; filters: envId, operator, deployType, deployState, acceptanceStatus, commit, repo, branch, commitDate, before, after, pageIndex, pageSize, oldestFirst"
                    ));
                }
            }
        }
        Ok(q)
    }

    /// Whether the filters on the build's fields are set (the build must then be looked up).
    fn needs_build(&self) -> bool {
        self.commit.is_some()
            || self.repo.is_some()
            || self.branch.is_some()
            || self.commit_date.is_some()
    }

    /// Whether `d` (whose build is `build`, if it still exists) passes every filter.
    pub fn matches(&self, d: &DeployBean, build: Option<&BuildBean>) -> bool {
        let in_set = |set: &BTreeSet<&'static str>, v: Option<&'static str>| {
            set.is_empty() || v.is_some_and(|v| set.contains(v))
        };
        let in_names = |set: &BTreeSet<String>, v: Option<&str>| {
            set.is_empty() || v.is_some_and(|v| set.contains(v))
        };
        let start = d.start_date.unwrap_or_default();
        in_names(&self.env_ids, d.env_id.as_ref().map(|e| e.as_str()))
            && in_names(&self.operators, d.operator.as_deref())
            && in_set(&self.types, d.deploy_type.map(DeployType::as_str))
            && in_set(&self.states, d.state.map(DeployState::as_str))
            && in_set(&self.acceptance, d.acceptance_status.map(AcceptanceStatus::as_str))
            && self.before.is_none_or(|b| start < b)
            && self.after.is_none_or(|a| start > a)
            && (!self.needs_build() || build.is_some_and(|b| self.build_matches(b)))
    }

    fn build_matches(&self, b: &BuildBean) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.commit.as_ref().is_none_or(|c| {
            !c.is_empty() && b.commit.as_ref().is_some_and(|have| have.starts_with(c.as_str()))
        }) && eq(&self.repo, &b.repo)
            && eq(&self.branch, &b.branch)
            && self.commit_date.is_none_or(|t| b.commit_date.is_some_and(|c| c >= t))
    }
}

#[cfg(test)]
mod tests {
    use proto::ids::{BuildId, EnvId};

    use super::*;

    fn q(query: &str) -> Result<DeployQuery, String> {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        DeployQuery::parse(&pairs)
    }

    #[test]
    fn filter_table() {
        let build = BuildBean {
            id: Some(BuildId::new("b1")),
            commit: Some("abcdef123456".into()),
            repo: Some("svc".into()),
            branch: Some("main".into()),
            commit_date: Some(1_000),
            ..Default::default()
        };
        let d = DeployBean {
            env_id: Some(EnvId::new("e1")),
            operator: Some("ann".into()),
            deploy_type: Some(DeployType::Rollback),
            state: Some(DeployState::Failing),
            acceptance_status: Some(AcceptanceStatus::PendingDeploy),
            start_date: Some(5_000),
            build_id: Some(BuildId::new("b1")),
            ..Default::default()
        };
        let cases = [
            ("", true),
            ("envId=e1&envId=e2", true),
            ("envId=e2", false),
            ("operator=bob&operator=ann", true),
            ("deployType=REGULAR", false),
            ("deployType=REGULAR&deployType=ROLLBACK", true),
            ("deployState=RUNNING&deployState=FAILING", true),
            ("deployState=SUCCEEDED", false),
            ("acceptanceStatus=PENDING_DEPLOY", true),
            ("acceptanceStatus=ACCEPTED", false),
            ("commit=abcdef1", true),
            ("commit=abd", false),
            ("repo=svc&branch=main", true),
            ("branch=dev", false),
            ("commitDate=1000", true),
            ("commitDate=1001", false),
            ("before=5001&after=4999", true),
            ("before=5000", false),
            ("after=5000", false),
        ];
        for (query, want) in cases {
            let f = q(query).unwrap();
            assert_eq!(f.matches(&d, Some(&build)), want, "{query}");
        }
        // A build filter never matches a deploy whose build is gone.
        assert!(!q("repo=svc").unwrap().matches(&d, None));
        assert!(q("envId=e1").unwrap().matches(&d, None));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, want) in [
            ("deployState=DONE", "deployState"),
            ("deployType=x", "deployType"),
            ("before=yesterday", "before"),
            ("pageSize=-1", "pageSize"),
            ("oldestFirst=yes", "oldestFirst"),
            ("envName=x", "unknown parameter \"envName\""),
        ] {
            let err = q(query).unwrap_err();
            assert!(err.contains(want), "{query}: {err}");
        }
        let f = q("pageIndex=2&pageSize=10&oldestFirst=true&stale=true").unwrap();
        assert_eq!(
            (f.page_index, f.page_size, f.oldest_first, f.stale),
            (Some(2), Some(10), true, true)
        );
    }
}
