use axum::http::Method;
use proto::auth::{ResourceType, Role};

use super::*;

fn env(e: &str) -> Scope {
    Scope::Env(e.into())
}

fn principal(grants: &[(Role, Scope)]) -> Principal {
    Principal {
        name: "p".into(),
        kind: PrincipalKind::Script,
        grants: grants
            .iter()
            .map(|(role, scope)| Grant { role: *role, scope: scope.clone() })
            .collect(),
    }
}

#[test]
fn grants_cover_their_scope_and_roles_below() {
    // (grants, needed role, on, allowed)
    type Case<'a> = (&'a [(Role, Scope)], Role, Scope, bool);
    let table: &[Case<'_>] = &[
        (&[(Role::Admin, env("web"))], Role::Execute, env("web"), true),
        (&[(Role::Admin, env("web"))], Role::Execute, env("api"), false),
        (&[(Role::Admin, env("web"))], Role::Pinger, Scope::System, false),
        (&[(Role::Admin, Scope::System)], Role::Delete, env("api"), true),
        (&[(Role::Reader, env("web"))], Role::Read, env("web"), true),
        (&[(Role::Reader, env("web"))], Role::Write, env("web"), false),
        (&[(Role::Write, env("web"))], Role::Execute, env("web"), false),
        (&[(Role::Execute, env("web"))], Role::Write, env("web"), false),
        (&[(Role::Operator, env("web"))], Role::Write, env("web"), true),
        (&[(Role::Operator, env("web"))], Role::Admin, env("web"), false),
        (&[(Role::Pinger, Scope::System)], Role::Pinger, Scope::System, true),
        (&[(Role::Pinger, Scope::System)], Role::Publisher, Scope::System, false),
        (&[(Role::Reader, env("a")), (Role::Execute, env("b"))], Role::Execute, env("b"), true),
        (&[], Role::Read, env("web"), false),
    ];
    for (grants, role, scope, want) in table {
        assert_eq!(principal(grants).allows(*role, scope), *want, "{grants:?} {role} on {scope}");
    }
    assert!(Principal::anonymous().allows(Role::Admin, &Scope::System));
}

#[test]
fn routes_need_teletraans_roles_and_fix_the_gaps() {
    let g = Method::GET;
    let p = Method::POST;
    let u = Method::PUT;
    let d = Method::DELETE;
    // (method, pattern, need)
    let table = [
        (&g, "/livez", Need::Public),
        (&g, "/v1/cluster/read-index", Need::Public),
        (&g, "/v1/envs/{env}/{stage}", on(Role::Read, Target::Anywhere)),
        (&Method::HEAD, "/v1/blobs/{hash}", on(Role::Read, Target::Anywhere)),
        (&p, "/v1/system/ping", on(Role::Pinger, Target::System)),
        (&p, "/v1/envs", Need::Authenticated),
        (&u, "/v1/envs/{env}/{stage}", on(Role::Write, Target::PathEnv)),
        (&d, "/v1/envs/{env}/{stage}", on(Role::Delete, Target::PathEnv)),
        (&p, "/v1/envs/{env}/{stage}/deploys", on(Role::Execute, Target::PathEnv)),
        (&p, "/v1/envs/{env}/{stage}/deploys/current/actions", on(Role::Execute, Target::PathEnv)),
        (&u, "/v1/deploys/{id}", on(Role::Write, Target::DeployEnv)),
        (&p, "/v1/builds", on(Role::Publisher, Target::Anywhere)),
        // §6.4: tag writes needed only READ.
        (&p, "/v1/tags", on(Role::Execute, Target::Anywhere)),
        (&d, "/v1/tags/{id}", on(Role::Execute, Target::Anywhere)),
        (&p, "/v1/envs/{env}/token_roles", on(Role::ManageScriptToken, Target::PathEnv)),
        (&p, "/v1/envs/{env}/user_roles", on(Role::Admin, Target::PathEnv)),
        // Teletraan: WRITE on SYSTEM, which lets a writer make itself ADMIN.
        (&p, "/v1/system/user_roles", on(Role::Admin, Target::System)),
        (&p, "/v1/cluster/nodes", on(Role::Admin, Target::System)),
        // Unlisted writes fail closed.
        (&p, "/v1/some/new/route", on(Role::Admin, Target::System)),
    ];
    for (method, pattern, want) in table {
        assert_eq!(rule(method, pattern), want, "{method} {pattern}");
    }
}

#[test]
fn every_rule_names_a_route_once() {
    let mut seen = std::collections::BTreeSet::new();
    for (m, p, _) in RULES {
        assert!(seen.insert((m, p)), "{m} {p} listed twice");
        assert!(p.starts_with('/'), "{p}");
    }
}

#[test]
fn path_params_come_from_the_pattern() {
    let pat = "/v1/envs/{env}/{stage}/deploys";
    assert_eq!(path_param(pat, "/v1/envs/web/prod/deploys", "{env}"), Some("web"));
    assert_eq!(path_param(pat, "/v1/envs/web/prod/deploys", "{stage}"), Some("prod"));
    assert_eq!(path_param("/v1/deploys/{id}", "/v1/deploys/abc", "{id}"), Some("abc"));
    assert_eq!(path_param("/v1/builds", "/v1/builds", "{env}"), None);
}

#[test]
fn tokens_are_random_and_hashed() {
    let (a, ha) = new_token();
    let (b, hb) = new_token();
    assert_ne!(a, b);
    assert!(a.starts_with(TOKEN_PREFIX));
    assert_eq!(a.len(), TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
    assert_eq!(ha, hash_token(&a));
    assert_ne!(ha, hb);
    assert_eq!(ha.len(), 64);
}

#[test]
fn stored_tokens_give_their_grants_until_they_expire() {
    let mut state = Replicated::default();
    let script = TokenRecord {
        hash: "a".repeat(64),
        kind: TokenKind::Script,
        name: "ci".into(),
        resource_type: ResourceType::Env,
        resource_id: "web".into(),
        role: Role::Execute,
        created: 0,
        expire_date: 1_000,
    };
    let p = principal_of(&state, &script, 999).unwrap();
    assert!(p.allows(Role::Execute, &env("web")));
    assert!(!p.allows(Role::Execute, &env("api")));
    assert_eq!(principal_of(&state, &script, 1_000), None);

    let user = TokenRecord {
        hash: "b".repeat(64),
        kind: TokenKind::User,
        name: "alice".into(),
        resource_type: ResourceType::System,
        resource_id: "*".into(),
        role: Role::Read,
        created: 0,
        expire_date: 1_000,
    };
    state
        .apply(
            1,
            proto::command::Op::SetUserRole {
                resource_type: ResourceType::Env,
                resource_id: "web".into(),
                user: "alice".into(),
                role: Role::Admin,
            },
        )
        .unwrap();
    let p = principal_of(&state, &user, 1).unwrap();
    assert!(p.is_user());
    assert!(p.allows(Role::Admin, &env("web")));
    assert!(!p.allows(Role::Read, &env("api")));
}

fn stage(env: &str, stage: &str, id: &str) -> proto::beans::EnvironBean {
    proto::beans::EnvironBean {
        id: Some(proto::ids::EnvId::new(id)),
        env_name: Some(env.into()),
        stage_name: Some(stage.into()),
        ..Default::default()
    }
}

#[test]
fn the_first_creator_of_an_env_becomes_its_admin_and_records_persist() {
    use proto::command::Op;
    let mut state = Replicated::default();
    let create = |env, st, id, who: &str| Op::CreateEnvOwned {
        env: stage(env, st, id),
        creator: who.into(),
    };
    state.apply(1, create("web", "prod", "e1", "alice")).unwrap();
    state.apply(2, create("web", "canary", "e2", "bob")).unwrap();
    assert_eq!(state.user_role(ResourceType::Env, "web", "alice"), Some(Role::Admin));
    assert_eq!(state.user_role(ResourceType::Env, "web", "bob"), None, "not the first stage");
    // A refused create grants nothing.
    assert!(state.apply(3, create("web", "prod", "e3", "mallory")).is_err());
    assert_eq!(state.user_role(ResourceType::Env, "web", "mallory"), None);

    let token = TokenRecord {
        hash: "c".repeat(64),
        kind: TokenKind::Script,
        name: "ci".into(),
        resource_type: ResourceType::Env,
        resource_id: "web".into(),
        role: Role::Execute,
        created: 0,
        expire_date: i64::MAX,
    };
    state.apply(4, Op::CreateToken { token: token.clone() }).unwrap();
    let again = TokenRecord { hash: "d".repeat(64), ..token.clone() };
    let e = state.apply(5, Op::CreateToken { token: again }).unwrap_err();
    assert!(e.to_string().contains("already has a token"), "{e}");
    let bad = TokenRecord { hash: "not-a-hash".into(), ..token.clone() };
    assert!(state.apply(5, Op::CreateToken { token: bad }).is_err());

    // Persist and reload: the same tokens and bindings.
    let mut loaded = Replicated::default();
    for (k, v) in state.take_dirty() {
        if let Some(v) = v {
            loaded.load_record(&k, &v).unwrap();
        }
    }
    loaded.finish_load();
    assert_eq!(loaded.user_role(ResourceType::Env, "web", "alice"), Some(Role::Admin));
    assert_eq!(loaded.token(&token.hash).map(|t| t.created), Some(4));

    state.apply(6, Op::DeleteToken { hash: token.hash.clone() }).unwrap();
    assert!(state.token(&token.hash).is_none());
    assert!(state.apply(7, Op::DeleteToken { hash: token.hash }).is_err());
}
