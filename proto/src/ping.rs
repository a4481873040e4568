//! The ping protocol (`POST /v1/system/ping`): what an agent reports and the one goal it gets
//! back, field for field as Teletraan's `PingRequestBean`, `PingReportBean`,
//! `PingResponseBean` and `DeployGoalBean` (see the null rules in [`crate::beans`]).
//!
//! The same types travel over the native agent protocol in postcard frames.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::beans::BuildBean;
use crate::enums::{
    AgentState, AgentStatus, DeployStage, DeployType, EnvType, KnoxStatus, NormandieStatus, OpCode,
};
use crate::ids::{DeployId, EnvId, HostId};
use crate::nulls::null_as_default;

/// The group Teletraan substitutes when a ping reports no groups.
pub const NULL_HOST_GROUP: &str = "NULL";

/// An agent's ping: who the host is and one report per stage it has local status for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PingRequestBean {
    /// Required (Teletraan: `@NotEmpty`).
    pub host_id: HostId,
    /// Empty means "same as `hostId`".
    pub host_name: Option<String>,
    pub host_ip: Option<String>,
    pub autoscaling_group: Option<String>,
    pub availability_zone: Option<String>,
    /// A JSON *string* holding the host's tag map.
    pub ec2_tags: Option<String>,
    pub agent_version: Option<String>,
    pub stage_type: Option<EnvType>,
    /// Host groups; `null`, absent and empty all mean none (Teletraan then uses
    /// [`NULL_HOST_GROUP`]).
    #[serde(default, deserialize_with = "null_as_default")]
    pub groups: BTreeSet<String>,
    /// Cloud account id.
    pub account_id: Option<String>,
    pub normandie_status: Option<NormandieStatus>,
    pub knox_status: Option<KnoxStatus>,
    /// `null`, absent and empty all mean no reports.
    #[serde(default, deserialize_with = "null_as_default")]
    pub reports: Vec<PingReportBean>,
}

impl PingRequestBean {
    /// A request with only the host id set.
    pub fn new(host_id: HostId) -> Self {
        Self {
            host_id,
            host_name: None,
            host_ip: None,
            autoscaling_group: None,
            availability_zone: None,
            ec2_tags: None,
            agent_version: None,
            stage_type: None,
            groups: BTreeSet::new(),
            account_id: None,
            normandie_status: None,
            knox_status: None,
            reports: Vec::new(),
        }
    }
}

/// The `extraInfo` key under which an agent reports where its DOWNLOADING step got the build
/// (ours; shown on the dashboard's host page).
pub const DOWNLOAD_SOURCE_KEY: &str = "downloadSource";

/// An agent's status for one stage: the last stage it ran and how that went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PingReportBean {
    pub deploy_id: Option<DeployId>,
    pub env_id: Option<EnvId>,
    pub deploy_stage: Option<DeployStage>,
    pub agent_status: Option<AgentStatus>,
    /// Exit code of the last step, or 1.
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    /// Attempts that failed.
    pub fail_count: Option<i32>,
    pub extra_info: Option<BTreeMap<String, String>>,
    /// Echo of the goal's `deployAlias` (rollback bookkeeping).
    pub deploy_alias: Option<DeployId>,
    pub container_health_status: Option<String>,
    /// A free string in Teletraan; only `"RESET_BY_SYSTEM"` has meaning (see
    /// [`Self::is_reset_by_system`]).
    pub agent_state: Option<String>,
}

impl PingReportBean {
    /// Whether the agent asks for a redeploy because its container was unhealthy.
    pub fn is_reset_by_system(&self) -> bool {
        self.agent_state.as_deref() == Some(AgentState::ResetBySystem.as_str())
    }
}

/// The answer to a ping: at most one goal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PingResponseBean {
    /// A `null` or absent op code reads as NOOP, as the agent treats it.
    #[serde(deserialize_with = "null_as_default")]
    pub op_code: OpCode,
    pub deploy_goal: Option<DeployGoalBean>,
}

/// What the agent must do next for one stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeployGoalBean {
    /// The deploy id the agent knows (rollback goals swap it with `deployAlias`).
    pub deploy_id: Option<DeployId>,
    pub deploy_type: Option<DeployType>,
    pub env_id: Option<EnvId>,
    pub env_name: Option<String>,
    pub stage_name: Option<String>,
    pub stage_type: Option<EnvType>,
    /// The step to run.
    pub deploy_stage: Option<DeployStage>,
    /// Set only when `deployStage` is DOWNLOADING.
    pub build: Option<BuildBean>,
    pub deploy_alias: Option<DeployId>,
    /// Agent configs, with this step's `"<STAGE>."` key prefix stripped.
    pub agent_configs: Option<BTreeMap<String, String>>,
    /// Set only when `deployStage` is PRE_DOWNLOAD. `Some(empty)` (`{}`) means "clear the
    /// script variables"; `None` (`null`) means "leave them as they are".
    pub script_variables: Option<BTreeMap<String, String>>,
    pub first_deploy: Option<bool>,
    pub is_docker: Option<bool>,
}

/// Answer of `POST /v1/system/ping/alldeploycandidates`: one response per install candidate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeployCandidatesResponse {
    #[serde(deserialize_with = "null_as_default")]
    pub candidates: Vec<PingResponseBean>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A ping as Teletraan's Python agent sends it (`PingRequest.to_json`): falsy optional
    /// fields omitted, report fields present with nulls.
    const DEPLOYD_PING: &str = r#"{"hostId":"i-0abc","hostName":"web-1","hostIp":"10.1.2.3",
        "availabilityZone":"us-east-1a","agentVersion":"1.2.76","groups":["web-prod"],
        "reports":[{"deployId":"D2","envId":"E1","deployStage":"PRE_RESTART",
        "agentStatus":"SUCCEEDED","errorCode":0,"errorMessage":null,"failCount":0,
        "deployAlias":null,"containerHealthStatus":null,"agentState":null}]}"#;

    #[test]
    fn parses_a_deployd_ping() {
        let ping: PingRequestBean = serde_json::from_str(DEPLOYD_PING).unwrap();
        assert_eq!(ping.host_id, "i-0abc");
        assert_eq!(ping.host_name.as_deref(), Some("web-1"));
        assert_eq!(ping.availability_zone.as_deref(), Some("us-east-1a"));
        assert_eq!(ping.autoscaling_group, None);
        assert_eq!(ping.groups, BTreeSet::from(["web-prod".to_owned()]));
        assert_eq!(ping.reports.len(), 1);
        let report = &ping.reports[0];
        assert_eq!(report.deploy_id, Some(DeployId::new("D2")));
        assert_eq!(report.env_id, Some(EnvId::new("E1")));
        assert_eq!(report.deploy_stage, Some(DeployStage::PreRestart));
        assert_eq!(report.agent_status, Some(AgentStatus::Succeeded));
        assert_eq!(report.error_code, Some(0));
        assert_eq!(report.fail_count, Some(0));
        assert!(!report.is_reset_by_system());

        let bytes = postcard::to_stdvec(&ping).unwrap();
        assert_eq!(postcard::from_bytes::<PingRequestBean>(&bytes).unwrap(), ping);
    }

    #[test]
    fn ping_request_writes_every_teletraan_field() {
        let mut ping = PingRequestBean::new(HostId::new("i-0abc"));
        ping.ec2_tags = Some(r#"{"Name":"web-1"}"#.to_owned());
        ping.autoscaling_group = Some("web-prod".to_owned());
        ping.stage_type = Some(EnvType::Canary);
        ping.knox_status = Some(KnoxStatus::Ok);
        ping.reports.push(PingReportBean {
            extra_info: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
            agent_state: Some("RESET_BY_SYSTEM".to_owned()),
            ..PingReportBean::default()
        });
        let written = serde_json::to_value(&ping).unwrap();
        let expected = json!({
            "hostId": "i-0abc",
            "hostName": null,
            "hostIp": null,
            "autoscalingGroup": "web-prod",
            "availabilityZone": null,
            "ec2Tags": "{\"Name\":\"web-1\"}",
            "agentVersion": null,
            "stageType": "CANARY",
            "groups": [],
            "accountId": null,
            "normandieStatus": null,
            "knoxStatus": "OK",
            "reports": [{
                "deployId": null,
                "envId": null,
                "deployStage": null,
                "agentStatus": null,
                "errorCode": null,
                "errorMessage": null,
                "failCount": null,
                "extraInfo": {"k": "v"},
                "deployAlias": null,
                "containerHealthStatus": null,
                "agentState": "RESET_BY_SYSTEM"
            }]
        });
        assert_eq!(written, expected);
        assert!(ping.reports[0].is_reset_by_system());
        let back: PingRequestBean = serde_json::from_value(written).unwrap();
        assert_eq!(back, ping);
    }

    #[test]
    fn ping_request_tolerates_null_collections_and_requires_host_id() {
        let ping: PingRequestBean =
            serde_json::from_str(r#"{"hostId":"i-1","groups":null,"reports":null}"#).unwrap();
        assert!(ping.groups.is_empty());
        assert!(ping.reports.is_empty());
        let bare: PingRequestBean = serde_json::from_str(r#"{"hostId":"i-1"}"#).unwrap();
        assert_eq!(bare, PingRequestBean::new(HostId::new("i-1")));

        let err = serde_json::from_str::<PingRequestBean>(r#"{"hostName":"web-1"}"#).unwrap_err();
        assert!(err.to_string().contains("hostId"), "{err}");
    }

    #[test]
    fn ping_request_refuses_unknown_enum_values() {
        let err = serde_json::from_str::<PingRequestBean>(
            r#"{"hostId":"i-1","reports":[{"deployStage":"SLEEPING"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("SLEEPING"), "{err}");
    }

    fn install_response_json() -> Value {
        json!({
            "opCode": "DEPLOY",
            "deployGoal": {
                "deployId": "D2",
                "deployType": "REGULAR",
                "envId": "E1",
                "envName": "web",
                "stageName": "prod",
                "stageType": "PRODUCTION",
                "deployStage": "DOWNLOADING",
                "build": {
                    "id": "B1_3f9a2c1",
                    "name": "web",
                    "artifactUrl": "https://artifacts.example.com/web/3f9a2c1.tar.gz",
                    "type": "Github",
                    "repo": "example/web",
                    "branch": "master",
                    "commit": "3f9a2c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39",
                    "commitShort": "3f9a2c1",
                    "commitInfo": "https://github.com/example/web/commit/3f9a2c1",
                    "commitDate": 1_699_990_000_000_i64,
                    "publishInfo": "UNKNOWN",
                    "publisher": "ci-bot",
                    "publishDate": 1_700_000_000_000_i64,
                    "artifactBlake3": "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
                    "artifactSize": 4096
                },
                "deployAlias": null,
                "agentConfigs": {"max_retry": "5"},
                "scriptVariables": null,
                "firstDeploy": false,
                "isDocker": false
            }
        })
    }

    #[test]
    fn install_response_round_trips_exactly() {
        let literal = install_response_json();
        let response: PingResponseBean = serde_json::from_value(literal.clone()).unwrap();
        assert_eq!(response.op_code, OpCode::Deploy);
        let goal = response.deploy_goal.as_ref().unwrap();
        assert_eq!(goal.deploy_stage, Some(DeployStage::Downloading));
        assert_eq!(goal.build.as_ref().unwrap().commit_short.as_deref(), Some("3f9a2c1"));
        assert_eq!(goal.agent_configs.as_ref().unwrap()["max_retry"], "5");
        assert_eq!(serde_json::to_value(&response).unwrap(), literal);

        let bytes = postcard::to_stdvec(&response).unwrap();
        assert_eq!(postcard::from_bytes::<PingResponseBean>(&bytes).unwrap(), response);
    }

    #[test]
    fn script_variables_distinguish_empty_from_null() {
        let clear: DeployGoalBean = serde_json::from_str(r#"{"scriptVariables":{}}"#).unwrap();
        assert_eq!(clear.script_variables, Some(BTreeMap::new()));
        let keep: DeployGoalBean = serde_json::from_str(r#"{"scriptVariables":null}"#).unwrap();
        assert_eq!(keep.script_variables, None);
        assert_eq!(serde_json::to_value(&clear).unwrap()["scriptVariables"], json!({}));
        assert_eq!(serde_json::to_value(&keep).unwrap()["scriptVariables"], Value::Null);

        for goal in [clear, keep] {
            let bytes = postcard::to_stdvec(&goal).unwrap();
            assert_eq!(postcard::from_bytes::<DeployGoalBean>(&bytes).unwrap(), goal);
        }
    }

    #[test]
    fn missing_or_null_op_code_means_noop() {
        let empty: PingResponseBean = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.op_code, OpCode::Noop);
        assert_eq!(empty.deploy_goal, None);
        let null: PingResponseBean =
            serde_json::from_str(r#"{"opCode":null,"deployGoal":null}"#).unwrap();
        assert_eq!(null.op_code, OpCode::Noop);
        assert_eq!(
            serde_json::to_value(PingResponseBean::default()).unwrap(),
            json!({"opCode": "NOOP", "deployGoal": null})
        );
        let err = serde_json::from_str::<PingResponseBean>(r#"{"opCode":"TERMINATE"}"#);
        assert!(err.unwrap_err().to_string().contains("TERMINATE"));
    }

    #[test]
    fn deploy_candidates_round_trip() {
        let literal = json!({"candidates": [install_response_json()]});
        let candidates: DeployCandidatesResponse = serde_json::from_value(literal.clone()).unwrap();
        assert_eq!(candidates.candidates.len(), 1);
        assert_eq!(serde_json::to_value(&candidates).unwrap(), literal);
        let none: DeployCandidatesResponse =
            serde_json::from_str(r#"{"candidates":null}"#).unwrap();
        assert!(none.candidates.is_empty());
    }
}
