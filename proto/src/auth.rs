//! Teletraan's authorization model: roles, the resources they are scoped to, the role beans of
//! the REST API, and the token records the replicated state keeps.
//!
//! A token's value never enters the Raft log: the leader generates it, answers it once and
//! proposes only its BLAKE3 hash ([`TokenRecord::hash`]).

use serde::{Deserialize, Serialize};

use crate::EpochMillis;

/// Teletraan's `TeletraanPrincipalRole`, in Java order (postcard encodes the index; append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Read,
    Reader,
    Pinger,
    Publisher,
    Execute,
    Write,
    Delete,
    Operator,
    ManageScriptToken,
    Admin,
}

impl Role {
    pub const ALL: [Role; 10] = [
        Role::Read,
        Role::Reader,
        Role::Pinger,
        Role::Publisher,
        Role::Execute,
        Role::Write,
        Role::Delete,
        Role::Operator,
        Role::ManageScriptToken,
        Role::Admin,
    ];

    /// Teletraan's role value (`ValueBasedRole`).
    pub fn value(self) -> i32 {
        match self {
            Role::Read => -1,
            Role::Reader => 0,
            Role::Pinger | Role::Publisher => 1,
            Role::Execute | Role::Write | Role::Delete => 9,
            Role::Operator => 10,
            Role::ManageScriptToken => 15,
            Role::Admin => 20,
        }
    }

    /// Teletraan's `isEqualOrSuperior`: the same role, or a strictly higher value. Roles of
    /// equal value do not satisfy each other (PINGER is not PUBLISHER; WRITE, EXECUTE and
    /// DELETE are three different rights), OPERATOR satisfies all three, ADMIN everything.
    pub fn satisfies(self, needed: Role) -> bool {
        self == needed || self.value() > needed.value()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "READ",
            Role::Reader => "READER",
            Role::Pinger => "PINGER",
            Role::Publisher => "PUBLISHER",
            Role::Execute => "EXECUTE",
            Role::Write => "WRITE",
            Role::Delete => "DELETE",
            Role::Operator => "OPERATOR",
            Role::ManageScriptToken => "MANAGE_SCRIPT_TOKEN",
            Role::Admin => "ADMIN",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown role {s:?}; expected one of: {}", all.join(", "))
        })
    }
}

/// `AuthZResource.Type`, the two kinds a role binding can name (append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceType {
    /// An env: all its stages. The resource id is the env name.
    Env,
    /// The whole system. The resource id is `"*"`.
    System,
}

/// The resource id of [`ResourceType::System`] bindings.
pub const SYSTEM_RESOURCE: &str = "*";

/// What a token stands for (append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TokenKind {
    /// A script token (`tokens_and_roles`): it carries its own role and resource.
    Script,
    /// A user's token: the user's role bindings (`users_and_roles`) apply.
    User,
}

/// A token as the replicated state keeps it (fields append only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// BLAKE3 of the token, lowercase hex. The token itself is never stored.
    pub hash: String,
    pub kind: TokenKind,
    /// Script name, or the user's name.
    pub name: String,
    pub resource_type: ResourceType,
    pub resource_id: String,
    /// The script's role (for a user token, unused: the user's bindings apply).
    pub role: Role,
    pub created: EpochMillis,
    pub expire_date: EpochMillis,
}

impl TokenRecord {
    /// The short id a user token is listed and deleted by (a prefix of the hash).
    pub fn id(&self) -> &str {
        &self.hash[..TOKEN_ID_HEX.min(self.hash.len())]
    }
}

/// Hex digits of the hash that name a token in listings.
pub const TOKEN_ID_HEX: usize = 16;

/// A user's role on a resource (`users_and_roles`; Teletraan's `UserRolesBean` JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserRolesBean {
    pub name: Option<String>,
    pub resource: Option<String>,
    #[serde(rename = "type")]
    pub resource_type: Option<ResourceType>,
    pub role: Option<Role>,
}

/// A script token's role (`TokenRolesBean` JSON). `token` is set only in the answer that
/// creates it; `id` names user tokens (our extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TokenRolesBean {
    pub name: Option<String>,
    pub resource: Option<String>,
    #[serde(rename = "type")]
    pub resource_type: Option<ResourceType>,
    pub role: Option<Role>,
    pub token: Option<String>,
    pub expire_date: Option<EpochMillis>,
    pub id: Option<String>,
}

impl TokenRolesBean {
    /// The listing of a stored token: everything but the token.
    pub fn from_record(r: &TokenRecord) -> Self {
        TokenRolesBean {
            name: Some(r.name.clone()),
            resource: Some(r.resource_id.clone()),
            resource_type: Some(r.resource_type),
            role: (r.kind == TokenKind::Script).then_some(r.role),
            token: None,
            expire_date: Some(r.expire_date),
            id: Some(r.id().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_compare_like_teletraan() {
        use Role::*;
        // (have, needed, satisfies)
        let table = [
            (Admin, Execute, true),
            (Admin, ManageScriptToken, true),
            (Operator, Write, true),
            (Operator, Execute, true),
            (Operator, Delete, true),
            (Operator, ManageScriptToken, false),
            (Write, Execute, false),
            (Execute, Write, false),
            (Delete, Write, false),
            (Pinger, Publisher, false),
            (Publisher, Pinger, false),
            (Publisher, Read, true),
            (Reader, Read, true),
            (Reader, Pinger, false),
            (Execute, Execute, true),
        ];
        for (have, needed, want) in table {
            assert_eq!(have.satisfies(needed), want, "{have} satisfies {needed}");
        }
    }

    #[test]
    fn json_names_are_teletraans() {
        let b = UserRolesBean {
            name: Some("alice".into()),
            resource: Some("web".into()),
            resource_type: Some(ResourceType::Env),
            role: Some(Role::ManageScriptToken),
        };
        let j = serde_json::to_string(&b).unwrap();
        assert_eq!(
            j,
            r#"{"name":"alice","resource":"web","type":"ENV","role":"MANAGE_SCRIPT_TOKEN"}"#
        );
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert!("root".parse::<Role>().is_err());
    }
}
