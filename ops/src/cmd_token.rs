//! `tt token create|list|delete`: script tokens on an env or the system (Teletraan's
//! `token_roles`) and user tokens. A token is printed once, when it is created.

use anyhow::Context;
use ops::client::Client;
use serde_json::{Value, json};

use crate::{Output, print_json, s};

/// Whose tokens: a script's on an env or on the system, or a user's.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Owner {
    /// Script tokens scoped to this env (all its stages).
    #[arg(long)]
    env: Option<String>,
    /// Script tokens scoped to the whole system.
    #[arg(long)]
    system: bool,
    /// A user's tokens (the user's role bindings apply).
    #[arg(long)]
    user: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token and print it (it is shown only this once).
    Create {
        #[command(flatten)]
        owner: Owner,
        /// Script name (script tokens).
        #[arg(long)]
        name: Option<String>,
        /// READER, PINGER, PUBLISHER, EXECUTE, WRITE, DELETE, OPERATOR, MANAGE_SCRIPT_TOKEN or
        /// ADMIN (script tokens).
        #[arg(long)]
        role: Option<String>,
    },
    /// List tokens (never their values).
    List {
        #[command(flatten)]
        owner: Owner,
    },
    /// Delete a script token (by --name) or a user token (by --id).
    Delete {
        #[command(flatten)]
        owner: Owner,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
}

fn base(owner: &Owner) -> String {
    match (&owner.env, &owner.user) {
        (Some(env), _) => format!("/v1/envs/{env}/token_roles"),
        (_, Some(user)) => format!("/v1/users/{user}/tokens"),
        _ => "/v1/system/token_roles".into(),
    }
}

pub async fn run(client: &Client, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { owner, name, role } => {
            let body = if owner.user.is_some() {
                Value::Null
            } else {
                let name = name.context("--name is required for a script token")?;
                let role = role.context("--role is required for a script token")?;
                json!({"name": name, "role": role.to_ascii_uppercase()})
            };
            let t: Value = client
                .post(&base(&owner), &body)
                .await?
                .context("the service answered no token")?;
            if out.json() {
                print_json(&t);
            } else {
                println!("{}", s(&t, "token"));
                eprintln!(
                    "token for {} ({} on {}); it is not shown again",
                    s(&t, "name"),
                    s(&t, "role"),
                    s(&t, "resource")
                );
            }
        }
        TokenCmd::List { owner } => {
            let list: Vec<Value> = client.get(&base(&owner)).await?;
            if out.json() {
                print_json(&list);
                return Ok(());
            }
            print!("{}", ops::format::tokens(&list, &out.view));
        }
        TokenCmd::Delete { owner, name, id } => {
            let key = if owner.user.is_some() {
                id.context("--id is required to delete a user token (see tt token list)")?
            } else {
                name.context("--name is required to delete a script token")?
            };
            client.delete(&format!("{}/{key}", base(&owner))).await?;
            eprintln!("deleted");
        }
    }
    Ok(())
}
