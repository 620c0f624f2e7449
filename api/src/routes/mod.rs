//! The HTTP routes, one module per resource.

pub mod agents;
pub mod approvals;
pub mod apps;
pub mod comments;
pub mod events;
pub mod gql;
pub mod identity;
pub mod notifications;
pub mod openapi;
pub mod runs;
pub mod signing_keys;
pub mod skills;
pub mod system;
pub mod tasks;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use flowforge_commands::CommandHandler;
use flowforge_domain::access::Scope;
use flowforge_engine::EngineContext;
use serde::Serialize;
use serde_json::Value;

use crate::auth::{AuthError, AuthMode};
use crate::caller::Caller;
use crate::error::ApiError;
use crate::platform::Platform;

#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
    pub gql: gql::GqlSchema,
    pub commands: CommandHandler,
    pub login_limiter: Arc<crate::auth::limiter::LoginLimiter>,
    /// Each tenant's task board as this process last saw it (a stale one costs a
    /// conflict and a catch-up read, never a wrong number).
    pub task_boards: Arc<
        std::sync::Mutex<
            std::collections::HashMap<
                String,
                flowforge_commands::Loaded<flowforge_domain::task::BoardState>,
            >,
        >,
    >,
    /// The skills marketplace and well-known sites, with the configured timeouts.
    pub skill_sources: crate::skill_sources::Fetcher,
    /// API keys verified lately (see `auth::verified_keys`).
    pub verified_keys: Arc<crate::auth::verified_keys::VerifiedKeys>,
}

impl AppState {
    pub fn new(platform: Platform) -> Self {
        let verified_keys =
            crate::auth::verified_keys::VerifiedKeys::new(platform.config.auth.key_cache_ttl);
        // Without the engine's live feed this process would not hear of revocations
        // made elsewhere: then it keeps no key.
        if let Some(engine) = platform.engine() {
            verified_keys.follow(&engine.live);
        }
        Self {
            verified_keys,
            skill_sources: crate::skill_sources::Fetcher::new(&platform.config.skills),
            commands: CommandHandler::new(platform.store.clone()),
            platform: Arc::new(platform),
            gql: gql::schema(),
            login_limiter: Arc::new(crate::auth::limiter::LoginLimiter::new(
                crate::auth::limiter::WINDOW,
                crate::auth::limiter::PER_ACCOUNT as u32,
                crate::auth::limiter::PER_CLIENT,
            )),
            task_boards: Arc::default(),
        }
    }
}

impl AppState {
    pub fn engine(&self) -> Result<&Arc<EngineContext>, ApiError> {
        self.platform.engine().ok_or_else(|| {
            ApiError::unavailable("the execution engine is not running in this process")
        })
    }
}

/// The aggregate in `stream` folded from the log, when the stream exists and is the
/// caller's tenant's. Another tenant's stream answers `None`, like a missing one, so a
/// caller cannot learn which ids exist elsewhere.
pub(crate) async fn fold_in_tenant<D>(
    state: &AppState,
    caller: &Caller,
    stream: &str,
) -> Result<Option<D::State>, ApiError>
where
    D: flowforge_domain::Decider,
    D::Event: flowforge_domain::DomainEvent,
{
    let events = state.platform.store.read_stream(stream, 1).await?;
    if events
        .first()
        .is_none_or(|first| first.tenant_id() != caller.tenant())
    {
        return Ok(None);
    }
    let mut folded = D::initial();
    for stored in &events {
        folded = D::evolve(folded, &stored.decode().map_err(ApiError::internal)?);
    }
    Ok(Some(folded))
}

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness, readiness, login.
    Public,
    /// Anyone who knows the webhook's URL; the webhook's own signature check applies.
    Webhook,
    /// The event key is in the path (`/e/{key}`): checked by the handler.
    EventKey,
    /// The Inngest wire protocol: an app's signing-key bearer, or a FlowForge token or
    /// key holding the scope.
    Protocol(Scope),
    /// Any proven caller.
    Authenticated,
    Scope(Scope),
}

/// One route of the API: how to call it and what it asks of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

fn spec(method: Method, path: &'static str, access: Access, summary: &'static str) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        summary,
    }
}

/// Every route with its handler. The router and the catalogue are both made from this
/// one list, so no route can exist without saying who may call it.
fn routes() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use Access::{Authenticated, EventKey, Protocol, Public, Webhook};
    use Method as M;
    use flowforge_domain::access::Scope as S;
    vec![
        (
            spec(M::GET, "/health", Public, "Liveness: the process is up"),
            get(system::health),
        ),
        (
            spec(
                M::GET,
                "/ready",
                Public,
                "Readiness: databases, read-model lag, work queue",
            ),
            get(system::ready),
        ),
        (
            spec(
                M::GET,
                "/metrics",
                Access::Scope(S::RunsRead),
                "Prometheus metrics of this process",
            ),
            get(system::metrics),
        ),
        (
            spec(M::GET, "/api/v1/openapi.json", Public, "This document"),
            get(openapi::document),
        ),
        // The SDK protocol.
        (
            spec(
                M::POST,
                "/e/{key}",
                EventKey,
                "Send events with an event key or API key in the path (Inngest SDKs)",
            ),
            post(events::send_with_key),
        ),
        (
            spec(
                M::POST,
                "/fn/register",
                Protocol(S::FunctionsManage),
                "Sync an app's functions (Inngest SDKs)",
            ),
            post(apps::register),
        ),
        (
            spec(
                M::POST,
                "/v0/gql",
                Protocol(S::RunsRead),
                "Run status for Inngest SDKs (GraphQL)",
            ),
            post(gql::handle),
        ),
        (
            spec(
                M::GET,
                "/v1/events",
                Protocol(S::EventsRead),
                "Events in Inngest's REST shape",
            ),
            get(events::list_inngest),
        ),
        (
            spec(
                M::GET,
                "/v0/runs/{id}/batch",
                Protocol(S::RunsRead),
                "A run's triggering events (use_api)",
            ),
            get(runs::protocol_batch),
        ),
        (
            spec(
                M::GET,
                "/v0/runs/{id}/actions",
                Protocol(S::RunsRead),
                "A run's memoized steps (use_api)",
            ),
            get(runs::protocol_actions),
        ),
        // Identity.
        (
            spec(
                M::POST,
                "/api/v1/auth/login",
                Public,
                "Email and password for an access token",
            ),
            post(identity::login),
        ),
        (
            spec(
                M::POST,
                "/api/v1/auth/logout",
                Authenticated,
                "End the session of the token sent",
            ),
            post(identity::logout),
        ),
        (
            spec(
                M::GET,
                "/api/v1/auth/me",
                Authenticated,
                "The caller: tenant, identity, role or scopes",
            ),
            get(identity::me),
        ),
        (
            spec(
                M::GET,
                "/api/v1/users",
                Access::Scope(S::Admin),
                "Users of the caller's tenant",
            ),
            get(identity::list_users),
        ),
        (
            spec(
                M::POST,
                "/api/v1/users",
                Access::Scope(S::Admin),
                "Create a user with a role and a first password",
            ),
            post(identity::create_user),
        ),
        (
            spec(
                M::GET,
                "/api/v1/users/{id}",
                Access::Scope(S::Admin),
                "One user",
            ),
            get(identity::show_user),
        ),
        (
            spec(
                M::PATCH,
                "/api/v1/users/{id}",
                Access::Scope(S::Admin),
                "Change a user's role, disabled flag or password",
            ),
            patch(identity::update_user),
        ),
        (
            spec(
                M::GET,
                "/api/v1/api-keys",
                Access::Scope(S::Admin),
                "API keys of the caller's tenant (never the keys themselves)",
            ),
            get(identity::list_keys),
        ),
        (
            spec(
                M::POST,
                "/api/v1/api-keys",
                Access::Scope(S::Admin),
                "Create an API key; the answer is the only place the key appears",
            ),
            post(identity::create_key),
        ),
        (
            spec(
                M::DELETE,
                "/api/v1/api-keys/{id}",
                Access::Scope(S::Admin),
                "Revoke an API key, at once",
            ),
            delete(identity::revoke_key),
        ),
        (
            spec(
                M::GET,
                "/api/v1/signing-keys",
                Access::Scope(S::Admin),
                "The environment's signing keys (`?environment=test`), never the keys themselves",
            ),
            get(signing_keys::list),
        ),
        (
            spec(
                M::POST,
                "/api/v1/signing-keys",
                Access::Scope(S::Admin),
                "Create a signing key (the first signs at once, later ones wait to be rotated in); \
                 the answer is the only place the key appears",
            ),
            post(signing_keys::create),
        ),
        (
            spec(
                M::POST,
                "/api/v1/signing-keys/rotate",
                Access::Scope(S::Admin),
                "Make the next signing key current; the old one stays valid for a grace period",
            ),
            post(signing_keys::rotate),
        ),
        (
            spec(
                M::DELETE,
                "/api/v1/signing-keys/{id}",
                Access::Scope(S::Admin),
                "Revoke a next or retired signing key, at once",
            ),
            delete(signing_keys::revoke),
        ),
        // The REST API.
        (
            spec(
                M::POST,
                "/api/v1/events",
                Access::Scope(S::EventsSend),
                "Send one event or an array; ?wait=true waits for their runs",
            ),
            post(events::send),
        ),
        (
            spec(
                M::GET,
                "/api/v1/events",
                Access::Scope(S::EventsRead),
                "Events, newest first",
            ),
            get(events::list),
        ),
        (
            spec(
                M::GET,
                "/api/v1/events/{id}",
                Access::Scope(S::EventsRead),
                "One event and the runs it triggered",
            ),
            get(events::show),
        ),
        (
            spec(
                M::GET,
                "/api/v1/apps",
                Access::Scope(S::FunctionsRead),
                "Registered apps",
            ),
            get(apps::list_apps),
        ),
        (
            spec(
                M::PUT,
                "/api/v1/apps/{id}/owner",
                Access::Scope(S::FunctionsManage),
                "Set who is told when a run of the app's functions fails",
            ),
            put(apps::set_owner),
        ),
        (
            spec(
                M::GET,
                "/api/v1/functions",
                Access::Scope(S::FunctionsRead),
                "Registered functions",
            ),
            get(apps::list_functions),
        ),
        (
            spec(
                M::GET,
                "/api/v1/functions/{id}",
                Access::Scope(S::FunctionsRead),
                "One function",
            ),
            get(apps::show_function),
        ),
        (
            spec(
                M::POST,
                "/api/v1/functions/{id}/invoke",
                Access::Scope(S::RunsWrite),
                "Start a run now; ?wait=true answers its output",
            ),
            post(apps::invoke),
        ),
        (
            spec(
                M::GET,
                "/api/v1/runs",
                Access::Scope(S::RunsRead),
                "Runs, filtered, newest first",
            ),
            get(runs::list),
        ),
        (
            spec(
                M::GET,
                "/api/v1/runs/{id}",
                Access::Scope(S::RunsRead),
                "One run with its step timeline",
            ),
            get(runs::show),
        ),
        (
            spec(
                M::GET,
                "/api/v1/runs/{id}/events",
                Access::Scope(S::RunsRead),
                "A run's events from the log",
            ),
            get(runs::events),
        ),
        (
            spec(
                M::GET,
                "/api/v1/runs/{id}/stream",
                Access::Scope(S::RunsRead),
                "A run's events, live (server-sent events)",
            ),
            get(runs::stream),
        ),
        (
            spec(
                M::POST,
                "/api/v1/runs/{id}/cancel",
                Access::Scope(S::RunsWrite),
                "Cancel a run",
            ),
            post(runs::cancel),
        ),
        (
            spec(
                M::POST,
                "/api/v1/runs/{id}/replay",
                Access::Scope(S::RunsWrite),
                "Run a function again with a run's events",
            ),
            post(runs::replay),
        ),
        (
            spec(
                M::POST,
                "/api/v1/webhooks",
                Access::Scope(S::FunctionsManage),
                "Create a webhook",
            ),
            post(webhooks::create),
        ),
        (
            spec(
                M::GET,
                "/api/v1/webhooks",
                Access::Scope(S::FunctionsRead),
                "Webhooks of the caller's tenant",
            ),
            get(webhooks::list),
        ),
        (
            spec(
                M::GET,
                "/api/v1/webhooks/{id}",
                Access::Scope(S::FunctionsRead),
                "One webhook",
            ),
            get(webhooks::show),
        ),
        (
            spec(
                M::DELETE,
                "/api/v1/webhooks/{id}",
                Access::Scope(S::FunctionsManage),
                "Delete a webhook",
            ),
            delete(webhooks::delete),
        ),
        (
            spec(
                M::GET,
                "/api/v1/skills",
                Access::Scope(S::FunctionsRead),
                "Skills of the tenant; `kind`",
            ),
            get(skills::list),
        ),
        (
            spec(
                M::POST,
                "/api/v1/skills",
                Access::Scope(S::FunctionsManage),
                "Create a template skill, from a function (`from_function`) or given",
            ),
            post(skills::create),
        ),
        (
            spec(
                M::POST,
                "/api/v1/skills/upload",
                Access::Scope(S::FunctionsManage),
                "Import a skill folder given as files",
            ),
            post(skills::upload),
        ),
        (
            spec(
                M::GET,
                "/api/v1/skills/marketplace/search",
                Access::Scope(S::FunctionsRead),
                "Search the skills marketplace: `q`, `limit`, `owner`",
            ),
            get(skills::search),
        ),
        (
            spec(
                M::GET,
                "/api/v1/skills/marketplace/preview",
                Access::Scope(S::FunctionsRead),
                "A marketplace or site skill, validated, not imported: `source`",
            ),
            get(skills::preview),
        ),
        (
            spec(
                M::POST,
                "/api/v1/skills/marketplace/import",
                Access::Scope(S::FunctionsManage),
                "Import a skill from the marketplace or a site's index",
            ),
            post(skills::import),
        ),
        (
            spec(
                M::GET,
                "/api/v1/skills/{id}",
                Access::Scope(S::FunctionsRead),
                "One skill (id or name) with its versions; `version` adds files",
            ),
            get(skills::show),
        ),
        (
            spec(
                M::PATCH,
                "/api/v1/skills/{id}",
                Access::Scope(S::FunctionsManage),
                "Edit a template skill",
            ),
            patch(skills::edit),
        ),
        (
            spec(
                M::DELETE,
                "/api/v1/skills/{id}",
                Access::Scope(S::FunctionsManage),
                "Delete a skill (its versions stay in the log)",
            ),
            delete(skills::delete),
        ),
        (
            spec(
                M::POST,
                "/api/v1/skills/{id}/refresh",
                Access::Scope(S::FunctionsManage),
                "Fetch a skill again; a new version only if its content changed",
            ),
            post(skills::refresh),
        ),
        (
            spec(
                M::GET,
                "/api/v1/functions/{id}/skills",
                Access::Scope(S::FunctionsRead),
                "A function's enabled skills and the knowledge a model would be given",
            ),
            get(skills::function_skills),
        ),
        (
            spec(
                M::PUT,
                "/api/v1/functions/{id}/skills",
                Access::Scope(S::FunctionsManage),
                "Set which skills a function has enabled",
            ),
            put(skills::set_function_skills),
        ),
        (
            spec(
                M::GET,
                "/api/v1/tasks/{id}/stream",
                Access::Scope(S::TasksRead),
                "A task's timeline, live (server-sent events)",
            ),
            get(tasks::stream),
        ),
        (
            spec(
                M::GET,
                "/api/v1/approvals",
                Access::Scope(S::TasksRead),
                "Approvals runs asked for; `status`, `assignee` (`me` or a user id)",
            ),
            get(approvals::list),
        ),
        (
            spec(
                M::GET,
                "/api/v1/approvals/{id}",
                Access::Scope(S::TasksRead),
                "One approval, as the log has it",
            ),
            get(approvals::show),
        ),
        (
            spec(
                M::POST,
                "/api/v1/approvals/{id}/approve",
                Access::Scope(S::TasksWrite),
                "Approve: the waiting run resumes with `approved: true`",
            ),
            post(approvals::approve),
        ),
        (
            spec(
                M::POST,
                "/api/v1/approvals/{id}/reject",
                Access::Scope(S::TasksWrite),
                "Reject: the waiting run resumes with `approved: false`",
            ),
            post(approvals::reject),
        ),
        (
            spec(
                M::GET,
                "/api/v1/notifications",
                Access::Scope(S::TasksRead),
                "The caller's inbox: unread first; `kind`, `unread`, `archived`",
            ),
            get(notifications::list),
        ),
        (
            spec(
                M::GET,
                "/api/v1/notifications/unread-count",
                Access::Scope(S::TasksRead),
                "How many notifications the caller has not read",
            ),
            get(notifications::unread_count),
        ),
        (
            spec(
                M::POST,
                "/api/v1/notifications/read",
                Access::Scope(S::TasksRead),
                "Mark notifications read",
            ),
            post(notifications::mark_read),
        ),
        (
            spec(
                M::POST,
                "/api/v1/notifications/read-all",
                Access::Scope(S::TasksRead),
                "Mark everything so far read",
            ),
            post(notifications::mark_all_read),
        ),
        (
            spec(
                M::POST,
                "/api/v1/notifications/archive",
                Access::Scope(S::TasksRead),
                "Archive notifications",
            ),
            post(notifications::archive),
        ),
        (
            spec(
                M::POST,
                "/api/v1/comments",
                Access::Scope(S::TasksWrite),
                "Comment on a task or a run; @mentions are resolved",
            ),
            post(comments::create),
        ),
        (
            spec(
                M::GET,
                "/api/v1/comments",
                Access::Scope(S::TasksRead),
                "A thread: `task` (key or id) or `run`",
            ),
            get(comments::list),
        ),
        (
            spec(
                M::PATCH,
                "/api/v1/comments/{id}",
                Access::Scope(S::TasksWrite),
                "Edit a comment (its author or an admin)",
            ),
            patch(comments::update),
        ),
        (
            spec(
                M::DELETE,
                "/api/v1/comments/{id}",
                Access::Scope(S::TasksWrite),
                "Delete a comment (its author or an admin)",
            ),
            delete(comments::delete),
        ),
        (
            spec(
                M::POST,
                "/api/v1/comments/{id}/reactions",
                Access::Scope(S::TasksWrite),
                "React with an emoji (once per author and emoji)",
            ),
            post(comments::react),
        ),
        (
            spec(
                M::DELETE,
                "/api/v1/comments/{id}/reactions/{emoji}",
                Access::Scope(S::TasksWrite),
                "Take a reaction back",
            ),
            delete(comments::unreact),
        ),
        (
            spec(
                M::GET,
                "/api/v1/tasks/{id}/timeline",
                Access::Scope(S::TasksRead),
                "A task's events and comments in log order",
            ),
            get(tasks::timeline),
        ),
        (
            spec(
                M::POST,
                "/api/v1/agents",
                Access::Scope(S::AgentsManage),
                "Add an AI agent to the team",
            ),
            post(agents::create),
        ),
        (
            spec(
                M::GET,
                "/api/v1/agents",
                Access::Scope(S::TasksRead),
                "The team's agents; `status`, `include_deleted`",
            ),
            get(agents::list),
        ),
        (
            spec(
                M::GET,
                "/api/v1/agents/{id}",
                Access::Scope(S::TasksRead),
                "One agent, by id or name",
            ),
            get(agents::show),
        ),
        (
            spec(
                M::PATCH,
                "/api/v1/agents/{id}",
                Access::Scope(S::AgentsManage),
                "Change an agent's profile, status or skills",
            ),
            patch(agents::update),
        ),
        (
            spec(
                M::DELETE,
                "/api/v1/agents/{id}",
                Access::Scope(S::AgentsManage),
                "Remove an agent (its history stays)",
            ),
            delete(agents::delete),
        ),
        (
            spec(
                M::PUT,
                "/api/v1/agents/{id}/skills",
                Access::Scope(S::AgentsManage),
                "Set the skills an agent has enabled",
            ),
            put(agents::set_skills),
        ),
        (
            spec(
                M::POST,
                "/api/v1/tasks",
                Access::Scope(S::TasksWrite),
                "Create a task (numbered FF-n)",
            ),
            post(tasks::create),
        ),
        (
            spec(
                M::GET,
                "/api/v1/tasks",
                Access::Scope(S::TasksRead),
                "The board: filters status, assignee, label, priority, parent, q; counts per status",
            ),
            get(tasks::list),
        ),
        (
            spec(
                M::GET,
                "/api/v1/tasks/{id}",
                Access::Scope(S::TasksRead),
                "One task by key (FF-7) or id; `as_of` (log position or time) shows it as it was",
            ),
            get(tasks::show),
        ),
        (
            spec(
                M::PATCH,
                "/api/v1/tasks/{id}",
                Access::Scope(S::TasksWrite),
                "Change a task's fields, assignee or status",
            ),
            patch(tasks::update),
        ),
        (
            spec(
                M::GET,
                "/api/v1/tasks/{id}/history",
                Access::Scope(S::TasksRead),
                "A task's events from the log, with their actors",
            ),
            get(tasks::history),
        ),
        (
            spec(
                M::POST,
                "/hooks/{id}",
                Webhook,
                "A webhook's public delivery URL",
            ),
            post(webhooks::deliver),
        ),
    ]
}

/// Every route the router serves, with what it asks of its caller.
pub fn catalogue() -> Vec<RouteSpec> {
    routes().into_iter().map(|(spec, _)| spec).collect()
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (spec, handler) in routes() {
        let guard = middleware::from_fn_with_state((state.clone(), spec.access), authorize);
        router = router.route(spec.path, handler.route_layer(guard));
    }
    router.with_state(state)
}

/// Proves who is calling and whether they may call the route, then hands the handler
/// a [`Caller`].
async fn authorize(
    State((state, access)): State<(AppState, Access)>,
    mut request: Request,
    next: Next,
) -> Response {
    match caller_for(&state, access, request.headers()).await {
        Ok(mut caller) => {
            caller.request_id = crate::caller::request_id(request.headers());
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

async fn caller_for(
    state: &AppState,
    access: Access,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, ApiError> {
    let platform = &state.platform;
    let auth = &platform.config.auth;
    let authenticate = || async {
        crate::auth::authenticate(
            auth,
            &state.commands,
            &*platform.secrets,
            &state.verified_keys,
            headers,
        )
        .await
        .map_err(|error| match error {
            AuthError::Unavailable(message) => {
                ApiError::unavailable(format!("cannot check credentials now: {message}"))
            }
            other => {
                tracing::info!(reason = %other, "request not authenticated");
                ApiError::unauthenticated()
            }
        })
    };
    let require = |caller: Caller, scope: Scope| {
        if caller.may(scope) {
            Ok(caller)
        } else {
            Err(ApiError::forbidden(scope))
        }
    };
    match access {
        // Their handlers resolve the tenant from the key or webhook they name.
        Access::Public | Access::Webhook | Access::EventKey => Ok(Caller::dev_admin()),
        Access::Authenticated => authenticate().await,
        Access::Scope(scope) => require(authenticate().await?, scope),
        Access::Protocol(scope) => {
            let authorization = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if authorization.is_some_and(crate::auth::is_flowforge_credential) {
                return require(authenticate().await?, scope);
            }
            if let Some(bearer) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
                return match platform.signing_keys.authenticate(bearer).await {
                    Ok(Some(app)) => require(Caller::app(app), scope),
                    Ok(None) => Err(signing_key_refused()),
                    Err(error) => Err(ApiError::unavailable(format!(
                        "cannot check credentials now: {error}"
                    ))),
                };
            }
            // No credentials: only a development server without signing keys takes
            // syncs and protocol calls from anyone (as Inngest's dev server does).
            match auth.mode {
                _ if platform.signing_keys.has_configured() => Err(signing_key_refused()),
                AuthMode::Open => Ok(Caller::dev_admin()),
                AuthMode::Required => Err(ApiError::unauthenticated()),
            }
        }
    }
}

fn signing_key_refused() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send your environment's signing key, hashed, as Authorization: Bearer, \
         or a FlowForge API key",
    )
}

/// A page of a list, newest first.
#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<Value>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl Page {
    pub fn new<T>(
        mut rows: Vec<T>,
        limit: u32,
        to_json: impl Fn(&T) -> Value,
        cursor_of: impl Fn(&T) -> String,
    ) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Self {
            next_cursor: if more {
                rows.last().map(&cursor_of)
            } else {
                None
            },
            items: rows.iter().map(to_json).collect(),
        }
    }
}

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(ApiError::invalid_field("limit", "limit must be at least 1")),
        Some(n) if n > MAX_PAGE => Err(ApiError::invalid_field(
            "limit",
            format!("limit must be at most {MAX_PAGE}"),
        )),
        Some(n) => Ok(n),
    }
}

/// An opaque cursor over (timestamp, key) ordering.
pub fn cursor(at: i64, key: &str) -> String {
    format!("{at}_{key}")
}

/// The (timestamp, key) to continue before; the start of the list without a cursor.
pub fn parse_cursor(cursor: Option<&str>) -> Result<(i64, String), ApiError> {
    match cursor {
        None => Ok((i64::MAX, String::new())),
        Some(c) => {
            let (at, key) = c.split_once('_').ok_or_else(|| {
                ApiError::invalid_field("cursor", "not a cursor this API returned")
            })?;
            let at = at
                .parse()
                .map_err(|_| ApiError::invalid_field("cursor", "not a cursor this API returned"))?;
            Ok((at, key.to_owned()))
        }
    }
}
