//! Schedules (waves) and deploy constraints: `tt schedule ...`, `tt constraint ...`.

use clap::{Args, Subcommand, ValueEnum};
use ops::client::{Client, table};
use serde_json::{Value, json};

use crate::{Output, print_json, s, split_stage};

/// Show a stage's schedule (waves), or set, override or delete it.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub cmd: Option<ScheduleCmd>,
    /// ENV/STAGE whose schedule to show.
    pub stage: Option<String>,
}

#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Create or replace the waves: one entry per wave in --hosts and --cooldown. A new deploy
    /// starts at wave 1; after the last wave every remaining host may deploy.
    Set {
        stage: String,
        /// Hosts per wave: increments (`2,5,10`) or cumulative percentages (`10%,50%`).
        #[arg(long)]
        hosts: String,
        /// Minutes to wait after each wave; negative waits for `tt schedule override`.
        #[arg(long, allow_hyphen_values = true)]
        cooldown: String,
    },
    /// End wave SESSION (the current one) now and start the next.
    Override { stage: String, session: i32 },
    /// Remove the schedule: deploys go at the stage's parallelism.
    Delete { stage: String },
}

fn print_schedule(stage: &str, v: &Value) {
    let session = format!("{} of {}", s(v, "currentSession"), s(v, "totalSessions"));
    let rows: Vec<Vec<String>> = vec![
        vec!["state".into(), s(v, "state")],
        vec!["session".into(), session],
        vec!["hosts per wave".into(), s(v, "hostNumbers")],
        vec!["cooldown (min)".into(), s(v, "cooldownTimes")],
        vec!["id".into(), s(v, "id")],
    ];
    println!("schedule of {stage}");
    print!("{}", table(&["SETTING", "VALUE"], &rows));
}

pub async fn schedule(client: &Client, out: Output, a: ScheduleArgs) -> anyhow::Result<()> {
    let (stage, v): (String, Option<Value>) = match a.cmd {
        None => {
            let stage =
                a.stage.ok_or_else(|| anyhow::anyhow!("name a stage: tt schedule ENV/STAGE"))?;
            let (e, st) = split_stage(&stage)?;
            let v: Value = client.get(&format!("/v1/schedules/{e}/{st}")).await?;
            (stage, Some(v))
        }
        Some(ScheduleCmd::Set { stage, hosts, cooldown }) => {
            let (e, st) = split_stage(&stage)?;
            let n = hosts.split(',').count();
            let body = json!({"totalSessions": n, "hostNumbers": hosts, "cooldownTimes": cooldown});
            let v: Value =
                client.put_json(&format!("/v1/schedules/{e}/{st}/schedules"), &body).await?;
            (stage, Some(v))
        }
        Some(ScheduleCmd::Override { stage, session }) => {
            let (e, st) = split_stage(&stage)?;
            let path = format!("/v1/schedules/{e}/{st}/override?sessionNumber={session}");
            let v: Value = client.put_json(&path, &Value::Null).await?;
            (stage, Some(v))
        }
        Some(ScheduleCmd::Delete { stage }) => {
            let (e, st) = split_stage(&stage)?;
            let body = json!({"totalSessions": 0});
            client.put(&format!("/v1/schedules/{e}/{st}/schedules"), &body).await?;
            (stage, None)
        }
    };
    match (out.json(), v) {
        (true, Some(v)) => print_json(&v),
        (true, None) => print_json(&json!({"deleted": stage})),
        (_, Some(v)) => print_schedule(&stage, &v),
        (_, None) => println!("deleted the schedule of {stage}"),
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ConstraintType {
    /// One tag value at a time, in string order.
    #[value(name = "GROUP_BY_GROUP", alias = "group-by-group")]
    GroupByGroup,
    /// Every tag value at once, each capped at --max-parallel.
    #[value(name = "ALL_GROUPS_IN_PARALLEL", alias = "all-groups-in-parallel")]
    AllGroupsInParallel,
}

/// Show a stage's deploy constraint, or set or delete it.
#[derive(Args)]
pub struct ConstraintArgs {
    /// ENV/STAGE.
    pub stage: String,
    #[command(subcommand)]
    pub cmd: Option<ConstraintCmd>,
}

#[derive(Subcommand)]
pub enum ConstraintCmd {
    /// At most --max-parallel hosts with the same value of host tag --key deploy at once.
    Set {
        /// The host tag (from the agents' `ec2Tags`), e.g. az.
        #[arg(long)]
        key: String,
        #[arg(long)]
        max_parallel: i64,
        #[arg(long = "type", value_enum, default_value = "ALL_GROUPS_IN_PARALLEL")]
        constraint_type: ConstraintType,
    },
    /// Remove the constraint.
    Delete,
}

pub async fn constraint(client: &Client, out: Output, a: ConstraintArgs) -> anyhow::Result<()> {
    let (e, st) = split_stage(&a.stage)?;
    let path = format!("/v1/envs/{e}/{st}/deploy_constraint");
    let v: Option<Value> = match a.cmd {
        None => Some(client.get(&path).await?),
        Some(ConstraintCmd::Set { key, max_parallel, constraint_type }) => {
            let ty = constraint_type.to_possible_value().expect("named").get_name().to_string();
            let body =
                json!({"constraintKey": key, "maxParallel": max_parallel, "constraintType": ty});
            client.post::<_, Value>(&path, &body).await?
        }
        Some(ConstraintCmd::Delete) => {
            client.delete(&path).await?;
            None
        }
    };
    match (out.json(), v) {
        (true, Some(v)) => print_json(&v),
        (true, None) => print_json(&json!({"deleted": a.stage})),
        (_, Some(v)) => {
            let rows: Vec<Vec<String>> = [
                ("key", "constraintKey"),
                ("max parallel per value", "maxParallel"),
                ("type", "constraintType"),
                ("tag sync", "state"),
            ]
            .iter()
            .map(|(label, key)| vec![label.to_string(), s(&v, key)])
            .collect();
            println!("deploy constraint of {}", a.stage);
            print!("{}", table(&["SETTING", "VALUE"], &rows));
        }
        (_, None) => println!("deleted the deploy constraint of {}", a.stage),
    }
    Ok(())
}
