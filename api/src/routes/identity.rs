//! Logging in and out, users, and API keys. Every change is a command on a User or
//! ApiKey stream; secrets (password and key hashes) go to the secret store only.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use flowforge_commands::CommandError;
use flowforge_domain::access::{Role, Scope};
use flowforge_domain::api_key::{
    self, ApiKey, ApiKeyCommand, ApiKeyCreated, ApiKeyError, ApiKeyState, KeyKind,
};
use flowforge_domain::user::{
    self, LoggedIn, LoginFailed, User, UserCommand, UserCreated, UserError, UserState,
};
use flowforge_domain::{Actor, EventMetadata, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::events::{parse_json, read_body};
use crate::auth::{keys, password};
use crate::caller::{Caller, Grants};
use crate::error::ApiError;

const BODY_LIMIT: usize = 64 * 1024;

/// The one answer to every failed login, whatever the reason.
fn login_refused() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "login_failed",
        "invalid email or password",
    )
}

fn too_many_attempts() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "too many failed logins; try again later",
    )
}

pub(crate) fn body_of<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        // serde names the offending field in its message (`missing field `email``).
        let field = message
            .split('`')
            .nth(1)
            .filter(|f| !f.contains(' '))
            .unwrap_or("body")
            .to_owned();
        ApiError::invalid_field(field, message)
    })
}

fn password_secret(user_id: Uuid) -> String {
    format!("password/{user_id}")
}

fn user_error(error: CommandError<UserError>) -> ApiError {
    match error {
        CommandError::Domain(UserError::Invalid { field, message }) => {
            ApiError::invalid_field(field, message)
        }
        CommandError::Domain(UserError::NotFound) => ApiError::not_found("no such user"),
        CommandError::Domain(UserError::AlreadyExists) => {
            ApiError::conflict("a user with this email already exists")
        }
        CommandError::Domain(UserError::Disabled) => ApiError::conflict("the user is disabled"),
        CommandError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}

fn key_error(error: CommandError<ApiKeyError>) -> ApiError {
    match error {
        CommandError::Domain(ApiKeyError::Invalid { field, message }) => {
            ApiError::invalid_field(field, message)
        }
        CommandError::Domain(ApiKeyError::NotFound) => ApiError::not_found("no such API key"),
        CommandError::Domain(ApiKeyError::AlreadyExists) => {
            ApiError::conflict("an API key with this id already exists")
        }
        CommandError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}

/// The users of the caller's tenant, folded from their streams.
pub async fn tenant_users(state: &AppState, caller: &Caller) -> Result<Vec<UserState>, ApiError> {
    let mut users = Vec::new();
    for stream in state
        .platform
        .reads(caller)
        .stream_ids(user::STREAM_TYPE)
        .await?
    {
        let loaded = state
            .commands
            .load::<User>(&stream)
            .await
            .map_err(user_error)?;
        if loaded
            .state
            .profile
            .as_ref()
            .is_some_and(|p| p.tenant == caller.tenant())
        {
            users.push(loaded.state);
        }
    }
    Ok(users)
}

fn user_json(state: &UserState) -> Value {
    let Some(profile) = &state.profile else {
        return Value::Null;
    };
    json!({
        "id": profile.user_id,
        "email": profile.email,
        "name": profile.name,
        "role": state.role,
        "disabled": state.disabled,
        "created_at": profile.created_at,
        "last_login_at": state.last_login_at,
    })
}

fn key_json(state: &ApiKeyState) -> Value {
    let Some(key) = &state.key else {
        return Value::Null;
    };
    json!({
        "id": key.key_id,
        "prefix": key.prefix,
        "name": key.name,
        "kind": key.kind,
        "scopes": key.scopes,
        "created_at": key.at,
        "revoked_at": state.revoked_at,
    })
}

// ------------------------------------------------------------------ sessions

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

/// `POST /api/v1/auth/login`: email and password for an access token.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Body,
) -> Result<Response, ApiError> {
    let body: LoginBody = body_of(parse_json(&read_body(body, BODY_LIMIT).await?)?)?;
    let Some(tokens) = state.platform.config.auth.tokens.clone() else {
        return Err(ApiError::unavailable(
            "login is not enabled on this server: set FLOWFORGE_JWT_SECRET",
        ));
    };
    let email = user::normalise_email(&body.email);
    let client = client.ip().to_string();
    let limiter = &state.login_limiter;
    if !limiter.allows(&email, &client) {
        return Err(too_many_attempts());
    }
    let user_id = user::user_id_for_email(&email);
    let stream = user::stream_id(user_id);
    let loaded = state
        .commands
        .load::<User>(&stream)
        .await
        .map_err(user_error)?;
    // The account's own limit comes from its stream: it holds across processes and
    // restarts (the in-memory limiter above covers client addresses and unknown emails).
    let window = chrono::Duration::from_std(crate::auth::limiter::WINDOW)
        .unwrap_or(chrono::Duration::minutes(15));
    if loaded.state.failures_since(Utc::now() - window) >= crate::auth::limiter::PER_ACCOUNT {
        return Err(too_many_attempts());
    }
    let tenant = loaded.state.profile.as_ref().map(|p| p.tenant.clone());
    let stored = match &tenant {
        Some(tenant) => {
            state
                .platform
                .secrets
                .secret(tenant, &password_secret(user_id))
                .await?
        }
        None => None,
    };
    // The same work whether or not the account exists: verify against a decoy.
    let hash = stored
        .clone()
        .unwrap_or_else(|| password::decoy_hash().to_owned());
    let presented = body.password.clone();
    let verified = tokio::task::spawn_blocking(move || password::verify(&presented, &hash))
        .await
        .map_err(ApiError::internal)?;
    let meta =
        |tenant: &str| EventMetadata::new(TenantId::new(tenant), Actor::user(user_id.to_string()));
    let now = Utc::now();
    let Some(tenant) = tenant.filter(|_| verified && stored.is_some()) else {
        limiter.record_failure(&email, &client);
        if let Some(profile) = &loaded.state.profile {
            let failed = LoginFailed {
                reason: "wrong_password".into(),
                client: Some(client.clone()),
                at: now,
            };
            state
                .commands
                .handle_from::<User>(&stream, &meta(&profile.tenant), Some(loaded), || {
                    UserCommand::RecordFailedLogin(failed.clone())
                })
                .await
                .map_err(user_error)?;
        } else {
            tracing::info!(client = %client, "login for an unknown account refused");
        }
        return Err(login_refused());
    };
    let session = Uuid::now_v7();
    let ttl = chrono::Duration::from_std(state.platform.config.auth.token_ttl)
        .unwrap_or(chrono::Duration::minutes(15));
    let expires = now + ttl;
    let login = LoggedIn {
        session_id: session,
        expires_at: expires,
        client: Some(client.clone()),
        at: now,
    };
    let recorded = state
        .commands
        .handle_from::<User>(&stream, &meta(&tenant), Some(loaded.clone()), || {
            UserCommand::RecordLogin(login.clone())
        })
        .await;
    let handled = match recorded {
        Ok(handled) => handled,
        Err(CommandError::Domain(UserError::Disabled)) => {
            limiter.record_failure(&email, &client);
            let failed = LoginFailed {
                reason: "disabled".into(),
                client: Some(client),
                at: now,
            };
            state
                .commands
                .handle::<User>(&stream, &meta(&tenant), || {
                    UserCommand::RecordFailedLogin(failed.clone())
                })
                .await
                .map_err(user_error)?;
            return Err(login_refused());
        }
        Err(other) => return Err(user_error(other)),
    };
    limiter.record_success(&email);
    if stored.as_deref().is_some_and(password::needs_rehash) {
        // Stronger parameters than when it was set: store a new hash of the same password.
        if let Ok(rehashed) = hash_password(&body.password).await {
            state
                .platform
                .secrets
                .put_secret(&tenant, &password_secret(user_id), &rehashed)
                .await?;
        }
    }
    let token = tokens
        .issue(user_id, &tenant, session, now, expires)
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": expires,
        "expires_in": ttl.num_seconds(),
        "tenant": tenant,
        "user": user_json(&handled.state),
    }))
    .into_response())
}

/// `POST /api/v1/auth/logout`: ends the session of the token sent.
pub async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    let Some(session) = caller.session else {
        return Err(ApiError::invalid_field(
            "authorization",
            "only a user's access token can log out; revoke API keys instead",
        ));
    };
    let user_id: Uuid = caller
        .actor
        .id
        .parse()
        .map_err(|_| ApiError::invalid_field("authorization", "not a user's token"))?;
    state
        .commands
        .handle::<User>(&user::stream_id(user_id), &caller.metadata(), || {
            UserCommand::Logout {
                session_id: session,
                at: Utc::now(),
            }
        })
        .await
        .map_err(user_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/auth/me`
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let (role, scopes): (Option<Role>, Vec<Scope>) = match &caller.grants {
        Grants::Role(role) => (
            Some(*role),
            Scope::ALL.into_iter().filter(|s| role.grants(*s)).collect(),
        ),
        Grants::Scopes(scopes) => (None, scopes.iter().copied().collect()),
    };
    let user = match caller.actor.id.parse::<Uuid>() {
        Ok(id) if caller.session.is_some() => {
            let loaded = state
                .commands
                .load::<User>(&user::stream_id(id))
                .await
                .map_err(user_error)?;
            user_json(&loaded.state)
        }
        _ => Value::Null,
    };
    Ok(Json(json!({
        "tenant": caller.tenant(),
        "actor": caller.actor,
        "role": role,
        "scopes": scopes,
        "environment": caller.environment,
        "user": user,
    })))
}

// ------------------------------------------------------------------ users

/// A user of the caller's tenant; another tenant's user is as absent as a missing one.
async fn tenant_user(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(Uuid, flowforge_commands::Loaded<UserState>), ApiError> {
    let user_id: Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found("no such user"))?;
    let loaded = state
        .commands
        .load::<User>(&user::stream_id(user_id))
        .await
        .map_err(user_error)?;
    match &loaded.state.profile {
        Some(profile) if profile.tenant == caller.tenant() => Ok((user_id, loaded)),
        _ => Err(ApiError::not_found("no such user")),
    }
}

/// `GET /api/v1/users`
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = tenant_users(&state, &caller)
        .await?
        .iter()
        .map(user_json)
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `GET /api/v1/users/{id}`
pub async fn show_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (_, loaded) = tenant_user(&state, &caller, &id).await?;
    Ok(Json(user_json(&loaded.state)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserBody {
    email: String,
    name: String,
    role: String,
    password: String,
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::parse(role)
        .ok_or_else(|| ApiError::invalid_field("role", "must be admin, member or viewer"))
}

/// `POST /api/v1/users`: a user of the caller's tenant, with a first password.
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let body: CreateUserBody = body_of(parse_json(&read_body(body, BODY_LIMIT).await?)?)?;
    let role = parse_role(&body.role)?;
    password::check_strength(&body.password)
        .map_err(|e| ApiError::invalid_field("password", e.to_string()))?;
    let handled =
        create_user_with(&state, &caller.metadata(), caller.tenant(), &body, role).await?;
    Ok((StatusCode::CREATED, Json(user_json(&handled))).into_response())
}

async fn create_user_with(
    state: &AppState,
    meta: &EventMetadata,
    tenant: &str,
    body: &CreateUserBody,
    role: Role,
) -> Result<UserState, ApiError> {
    let email = user::normalise_email(&body.email);
    let user_id = user::user_id_for_email(&email);
    let created = UserCreated {
        user_id,
        tenant: tenant.to_owned(),
        email,
        name: body.name.trim().to_owned(),
        role,
        at: Utc::now(),
    };
    let hash = hash_password(&body.password).await?;
    // The user first, its password second: a create that loses a race for the email
    // must not touch the winner's password.
    let handled = state
        .commands
        .handle::<User>(&user::stream_id(user_id), meta, || {
            UserCommand::Create(created.clone())
        })
        .await
        .map_err(user_error)?;
    state
        .platform
        .secrets
        .put_secret(tenant, &password_secret(user_id), &hash)
        .await?;
    Ok(handled.state)
}

async fn hash_password(password: &str) -> Result<String, ApiError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            password::PasswordError::Weak => ApiError::invalid_field("password", e.to_string()),
            other => ApiError::internal(other),
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUserBody {
    role: Option<String>,
    disabled: Option<bool>,
    password: Option<String>,
}

/// `PATCH /api/v1/users/{id}`: role, disabled, password.
pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body: UpdateUserBody = body_of(parse_json(&read_body(body, BODY_LIMIT).await?)?)?;
    let role = body.role.as_deref().map(parse_role).transpose()?;
    let (user_id, _) = tenant_user(&state, &caller, &id).await?;
    let stream = user::stream_id(user_id);
    let meta = caller.metadata();
    let now = Utc::now();
    if let Some(password) = &body.password {
        let hash = hash_password(password).await?;
        state
            .platform
            .secrets
            .put_secret(caller.tenant(), &password_secret(user_id), &hash)
            .await?;
        state
            .commands
            .handle::<User>(&stream, &meta, || UserCommand::RecordPasswordChange {
                at: now,
            })
            .await
            .map_err(user_error)?;
    }
    if let Some(role) = role {
        state
            .commands
            .handle::<User>(&stream, &meta, || UserCommand::ChangeRole { role, at: now })
            .await
            .map_err(user_error)?;
    }
    if let Some(disabled) = body.disabled {
        state
            .commands
            .handle::<User>(&stream, &meta, || {
                if disabled {
                    UserCommand::Disable { at: now }
                } else {
                    UserCommand::Enable { at: now }
                }
            })
            .await
            .map_err(user_error)?;
    }
    let (_, loaded) = tenant_user(&state, &caller, &id).await?;
    Ok(Json(user_json(&loaded.state)))
}

// ------------------------------------------------------------------ API keys

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    name: String,
    kind: String,
    scopes: Vec<String>,
}

/// `POST /api/v1/api-keys`: the key is in this answer and nowhere else, ever.
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let body: CreateKeyBody = body_of(parse_json(&read_body(body, BODY_LIMIT).await?)?)?;
    let kind = KeyKind::parse(&body.kind)
        .ok_or_else(|| ApiError::invalid_field("kind", "must be live, test or ro"))?;
    let mut scopes = BTreeSet::new();
    for scope in &body.scopes {
        scopes.insert(Scope::parse(scope).ok_or_else(|| {
            ApiError::invalid_field("scopes", format!("`{scope}` is not a scope"))
        })?);
    }
    if let Err(scope) = crate::auth::grantable(&caller, &scopes) {
        return Err(ApiError::forbidden(scope));
    }
    let (key_id, key) = keys::generate(kind);
    let created = ApiKeyCreated {
        key_id: key_id.clone(),
        tenant: caller.tenant().to_owned(),
        kind,
        name: body.name.trim().to_owned(),
        prefix: api_key::display_prefix(kind, &key_id),
        scopes,
        at: Utc::now(),
    };
    // The hash first: a key whose event is recorded can always be checked. A hash
    // without its event (the append failed) names a key that does not exist.
    state
        .platform
        .secrets
        .put_secret(
            caller.tenant(),
            &keys::secret_name(&key_id),
            &keys::hash(&key),
        )
        .await?;
    let handled = state
        .commands
        .handle::<ApiKey>(&api_key::stream_id(&key_id), &caller.metadata(), || {
            ApiKeyCommand::Create(created.clone())
        })
        .await
        .map_err(key_error)?;
    let mut answer = key_json(&handled.state);
    answer["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /api/v1/api-keys`
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let mut items = Vec::new();
    for stream in state
        .platform
        .reads(&caller)
        .stream_ids(api_key::STREAM_TYPE)
        .await?
    {
        let loaded = state
            .commands
            .load::<ApiKey>(&stream)
            .await
            .map_err(key_error)?;
        if let Some(key) = loaded
            .state
            .key
            .as_ref()
            .filter(|k| k.tenant == caller.tenant())
        {
            let last_used = state
                .platform
                .secrets
                .credential_last_used(&key.tenant, &key.key_id)
                .await?
                .and_then(chrono::DateTime::<Utc>::from_timestamp_millis);
            let mut item = key_json(&loaded.state);
            item["last_used_at"] = json!(last_used);
            items.push(item);
        }
    }
    Ok(Json(json!({ "items": items })))
}

/// `DELETE /api/v1/api-keys/{id}`: revoked at once, in every process.
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if id.len() != api_key::ID_LEN || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::not_found("no such API key"));
    }
    let stream = api_key::stream_id(&id);
    let loaded = state
        .commands
        .load::<ApiKey>(&stream)
        .await
        .map_err(key_error)?;
    if loaded
        .state
        .key
        .as_ref()
        .is_none_or(|k| k.tenant != caller.tenant())
    {
        return Err(ApiError::not_found("no such API key"));
    }
    let handled = state
        .commands
        .handle_from::<ApiKey>(&stream, &caller.metadata(), Some(loaded), || {
            ApiKeyCommand::Revoke { at: Utc::now() }
        })
        .await
        .map_err(key_error)?;
    // This process's live feed would tell its cache too, a moment later: the next
    // request must not find the key.
    state.verified_keys.forget(&id);
    Ok(Json(key_json(&handled.state)))
}

/// What `flowforge create-admin` does: the tenant if needed, then an admin user.
pub async fn create_admin(
    state: &AppState,
    tenant: &str,
    email: &str,
    name: &str,
    password: &str,
) -> Result<UserState, ApiError> {
    use flowforge_domain::tenant::{self, Tenant, TenantCommand, TenantCreated, TenantError};
    let meta = EventMetadata::new(TenantId::new(tenant), Actor::system("create-admin"));
    state
        .commands
        .handle::<Tenant>(&tenant::stream_id(tenant), &meta, || {
            TenantCommand::Ensure(TenantCreated {
                tenant_id: tenant.to_owned(),
                name: tenant.to_owned(),
                at: Utc::now(),
            })
        })
        .await
        .map_err(|e| match e {
            CommandError::Domain(TenantError::Invalid { field, message }) => {
                ApiError::invalid_field(field, message)
            }
            CommandError::Store(e) => e.into(),
            other => ApiError::internal(other),
        })?;
    let body = CreateUserBody {
        email: email.to_owned(),
        name: name.to_owned(),
        role: Role::Admin.as_str().to_owned(),
        password: password.to_owned(),
    };
    create_user_with(state, &meta, tenant, &body, Role::Admin).await
}
