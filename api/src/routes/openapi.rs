//! `GET /api/v1/openapi.json`: an OpenAPI 3.1 description of the API, generated from
//! the same route list the router is built from, so it names every route the server
//! serves, and each operation says what it requires of its caller.

use axum::Json;
use flowforge_domain::access::{Role, Scope};
use serde_json::{Map, Value, json};

use super::{Access, RouteSpec, catalogue};

/// The document, built once.
pub fn build() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for route in catalogue() {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(operations) = entry {
            operations.insert(
                route.method.as_str().to_ascii_lowercase(),
                operation(&route),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "FlowForge API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable workflows on one event log. Send `Authorization: Bearer <access token or API key>`; `x-flowforge-access` on each operation says what it requires.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An access token from POST /api/v1/auth/login, or an API key (ff_live_…, ff_test_…, ff_ro_…).",
                },
                "signingKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An Inngest-format signing key, hashed as the Inngest SDKs send it.",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": "string", "description": "The request field that is wrong."},
                            },
                        },
                    },
                },
            },
        },
        "paths": paths,
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

fn operation(route: &RouteSpec) -> Value {
    let parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let mut responses = Map::new();
    responses.insert("2XX".into(), json!({"description": "Success"}));
    responses.insert(
        "4XX".into(),
        error_response("The request was refused; `field` names what is wrong"),
    );
    let (security, access) = match route.access {
        Access::Public => (json!([]), json!({"kind": "public"})),
        Access::Webhook => (
            json!([]),
            json!({"kind": "webhook", "note": "the webhook's own signature check applies"}),
        ),
        Access::EventKey => (
            json!([]),
            json!({"kind": "event_key", "note": "an event key or an API key holding events:send, in the path"}),
        ),
        Access::Authenticated => {
            responses.insert("401".into(), error_response("No valid credentials"));
            (json!([{"bearer": []}]), json!({"kind": "authenticated"}))
        }
        Access::Scope(scope) => {
            responses.insert("401".into(), error_response("No valid credentials"));
            responses.insert("403".into(), error_response("The caller lacks the scope"));
            (json!([{"bearer": []}]), scoped("scope", scope))
        }
        Access::Protocol(scope) => {
            responses.insert("401".into(), error_response("No valid credentials"));
            responses.insert("403".into(), error_response("The caller lacks the scope"));
            (
                json!([{"signingKey": []}, {"bearer": []}]),
                scoped("protocol", scope),
            )
        }
    };
    json!({
        "operationId": format!(
            "{}_{}",
            route.method.as_str().to_ascii_lowercase(),
            route.path.trim_matches('/').replace(['/', '.', '-'], "_").replace(['{', '}'], "")
        ),
        "summary": route.summary,
        "parameters": parameters,
        "security": security,
        "responses": responses,
        "x-flowforge-access": access,
    })
}

fn scoped(kind: &str, scope: Scope) -> Value {
    let roles: Vec<&str> = Role::ALL
        .into_iter()
        .filter(|r| r.grants(scope))
        .map(Role::as_str)
        .collect();
    json!({"kind": kind, "scope": scope.as_str(), "roles": roles})
}

pub async fn document() -> Json<Value> {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    Json(DOCUMENT.get_or_init(build).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogued_route_is_an_operation_with_its_access() {
        let document = build();
        let routes = catalogue();
        let mut operations = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                let route = routes
                    .iter()
                    .find(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method))
                    .unwrap();
                assert_eq!(operation["summary"], route.summary);
                if let Access::Scope(scope) = route.access {
                    assert_eq!(operation["x-flowforge-access"]["scope"], scope.as_str());
                }
            }
        }
        assert_eq!(operations, routes.len());
        let runs = &document["paths"]["/api/v1/runs/{id}/cancel"]["post"];
        assert_eq!(runs["parameters"][0]["name"], "id");
        assert_eq!(
            runs["x-flowforge-access"]["roles"],
            json!(["member", "admin"])
        );
        let ids: std::collections::BTreeSet<_> = document["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), operations, "operation ids are unique");
    }
}
