//! Tokens and role bindings (Teletraan's `tokens_and_roles` and `users_and_roles`).
//!
//! Only token hashes are replicated: the leader generates a token, answers it once, and
//! proposes its BLAKE3 hash. Lookups by hash serve the HTTP middleware (`crate::auth`).

use std::collections::BTreeMap;

use proto::auth::{ResourceType, Role, TokenKind, TokenRecord};
use proto::beans::EnvironBean;
use proto::command::{OpError, OpOutput, OpResult};

use super::{Key, State, invalid};

/// Most tokens one user may hold at once.
pub const MAX_TOKENS_PER_USER: usize = 32;

/// (resource type, resource id, user name): a user's role binding.
pub type BindingKey = (ResourceType, String, String);

/// Token records by hash and role bindings, with an index of tokens by owner.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AuthState {
    pub(super) tokens: BTreeMap<String, TokenRecord>,
    pub(super) bindings: BTreeMap<BindingKey, Role>,
}

impl State {
    pub(super) fn create_token(&mut self, now_ms: i64, token: TokenRecord) -> OpResult {
        if token.hash.len() != 64 || !token.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("a token record needs its 64-hex-digit BLAKE3 hash"));
        }
        if self.auth.tokens.contains_key(&token.hash) {
            return Err(OpError::Conflict { reason: "token already exists".into() });
        }
        match token.kind {
            TokenKind::Script => {
                if self.script_token(token.resource_type, &token.resource_id, &token.name).is_some()
                {
                    return Err(OpError::Conflict {
                        reason: format!(
                            "script {} already has a token on {}; delete it first",
                            token.name, token.resource_id
                        ),
                    });
                }
            }
            TokenKind::User => {
                let held = self.user_tokens(&token.name).count();
                if held >= MAX_TOKENS_PER_USER {
                    return Err(OpError::Conflict {
                        reason: format!(
                            "user {} already holds {held} tokens (at most {MAX_TOKENS_PER_USER}); delete one first",
                            token.name
                        ),
                    });
                }
            }
        }
        let mut token = token;
        token.created = now_ms;
        self.dirty.insert(Key::Token(token.hash.clone()));
        self.auth.tokens.insert(token.hash.clone(), token);
        Ok(OpOutput::Done)
    }

    pub(super) fn delete_token(&mut self, hash: &str) -> OpResult {
        self.auth.tokens.remove(hash).ok_or_else(|| OpError::NotFound { what: "token".into() })?;
        self.dirty.insert(Key::Token(hash.to_string()));
        Ok(OpOutput::Done)
    }

    pub(super) fn set_token_role(&mut self, hash: &str, role: Role) -> OpResult {
        let t = self
            .auth
            .tokens
            .get_mut(hash)
            .filter(|t| t.kind == TokenKind::Script)
            .ok_or_else(|| OpError::NotFound { what: "script token".into() })?;
        t.role = role;
        self.dirty.insert(Key::Token(hash.to_string()));
        Ok(OpOutput::Done)
    }

    pub(super) fn set_user_role(&mut self, key: BindingKey, role: Role) -> OpResult {
        if key.2.is_empty() || key.1.is_empty() {
            return Err(invalid("a role binding needs a user name and a resource"));
        }
        self.dirty.insert(Key::UserRole(key.clone()));
        self.auth.bindings.insert(key, role);
        Ok(OpOutput::Done)
    }

    pub(super) fn delete_user_role(&mut self, key: BindingKey) -> OpResult {
        self.auth.bindings.remove(&key).ok_or_else(|| OpError::NotFound {
            what: format!("role of user {} on {}", key.2, key.1),
        })?;
        self.dirty.insert(Key::UserRole(key));
        Ok(OpOutput::Done)
    }

    /// Creates a stage; on an env's first stage its creator becomes the env's ADMIN.
    pub(super) fn create_env_owned(
        &mut self,
        now_ms: i64,
        env: EnvironBean,
        creator: String,
    ) -> OpResult {
        let name = env.env_name.clone().unwrap_or_default();
        let first = !self.env_exists(&name);
        let out = self.create_env(now_ms, env)?;
        if first && !creator.is_empty() {
            self.set_user_role((ResourceType::Env, name, creator), Role::Admin)?;
        }
        Ok(out)
    }

    // ----- queries ---------------------------------------------------------------------------

    /// Whether any stage of the env exists.
    pub fn env_exists(&self, env_name: &str) -> bool {
        self.env_by_name
            .range((env_name.to_string(), String::new())..)
            .next()
            .is_some_and(|((e, _), _)| e == env_name)
    }

    pub fn token(&self, hash: &str) -> Option<&TokenRecord> {
        self.auth.tokens.get(hash)
    }

    pub fn script_token(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
        name: &str,
    ) -> Option<&TokenRecord> {
        self.auth.tokens.values().find(|t| {
            t.kind == TokenKind::Script
                && t.resource_type == resource_type
                && t.resource_id == resource_id
                && t.name == name
        })
    }

    /// Script tokens on a resource, by hash order.
    pub fn script_tokens<'a>(
        &'a self,
        resource_type: ResourceType,
        resource_id: &'a str,
    ) -> impl Iterator<Item = &'a TokenRecord> + 'a {
        self.auth.tokens.values().filter(move |t| {
            t.kind == TokenKind::Script
                && t.resource_type == resource_type
                && t.resource_id == resource_id
        })
    }

    pub fn user_tokens<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a TokenRecord> + 'a {
        self.auth.tokens.values().filter(move |t| t.kind == TokenKind::User && t.name == user)
    }

    /// Every user token.
    pub fn all_user_tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.auth.tokens.values().filter(|t| t.kind == TokenKind::User)
    }

    /// Role bindings on a resource: (user, role), by user name.
    pub fn user_roles<'a>(
        &'a self,
        resource_type: ResourceType,
        resource_id: &'a str,
    ) -> impl Iterator<Item = (&'a str, Role)> + 'a {
        self.auth
            .bindings
            .iter()
            .filter(move |((t, r, _), _)| *t == resource_type && r == resource_id)
            .map(|((_, _, u), role)| (u.as_str(), *role))
    }

    pub fn user_role(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
        user: &str,
    ) -> Option<Role> {
        let key = (resource_type, resource_id.to_string(), user.to_string());
        self.auth.bindings.get(&key).copied()
    }

    /// Every binding of a user: (type, resource, role).
    pub fn bindings_of<'a>(
        &'a self,
        user: &'a str,
    ) -> impl Iterator<Item = (ResourceType, &'a str, Role)> + 'a {
        self.auth
            .bindings
            .iter()
            .filter(move |((_, _, u), _)| u == user)
            .map(|((t, r, _), role)| (*t, r.as_str(), *role))
    }
}

/// The record key of a binding: `u/ENV/<env>/<user>` or `u/SYSTEM/*/<user>` (env names and
/// `*` contain no '/').
pub(super) fn binding_key(key: &BindingKey) -> Vec<u8> {
    let t = match key.0 {
        ResourceType::Env => "ENV",
        ResourceType::System => "SYSTEM",
    };
    format!("u/{t}/{}/{}", key.1, key.2).into_bytes()
}

pub(super) fn parse_binding_key(id: &str) -> Result<BindingKey, String> {
    let mut parts = id.splitn(3, '/');
    let (Some(t), Some(r), Some(u)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("role key {id:?} is not TYPE/resource/user"));
    };
    let t = match t {
        "ENV" => ResourceType::Env,
        "SYSTEM" => ResourceType::System,
        other => return Err(format!("role key {id:?}: unknown type {other}")),
    };
    Ok((t, r.to_string(), u.to_string()))
}
