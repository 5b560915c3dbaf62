//! The OpenAPI 3.1 description of payoutd's HTTP API, generated from the handlers' own
//! `#[utoipa::path]` annotations (next to each handler, so a change to a route and its
//! description is one diff) and served at `GET /openapi.json`. A test compares the document
//! with every `.route(...)` of this crate, so a route without a description (or the reverse)
//! fails the build's tests.
//!
//! Bodies are JSON objects described in words (the handlers read and write `serde_json`
//! values, validated field by field with every problem named); the docs in `docs/` and the
//! README give their fields.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{admin, batches_api, callbacks_api, health, operator_api, payouts_api, webhooks_api};

/// The conventional path of the document.
pub const PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "payoutd",
        description = "Durable payouts through payment providers: enqueue payouts one by one or in batches, \
                       follow them, receive provider callbacks, and operate on them. Scoped bearer tokens \
                       (`payoutd token create`): 401 without a valid token, 403 without the route's scope.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerTokens),
    paths(
        payouts_api::create,
        payouts_api::show,
        callbacks_api::receive,
        callbacks_api::receive_with_path,
        health::live,
        health::ready,
        admin::metrics,
        webhooks_api::create,
        webhooks_api::list,
        webhooks_api::show,
        webhooks_api::delete,
        webhooks_api::rotate,
        webhooks_api::enable,
        webhooks_api::list_events,
        webhooks_api::show_event,
        webhooks_api::redeliver_event,
        webhooks_api::redeliver_range,
        operator_api::list,
        operator_api::show,
        operator_api::resolve,
        operator_api::retry,
        operator_api::cancel,
        operator_api::status_query,
        operator_api::bulk,
        operator_api::pauses,
        operator_api::pause,
        operator_api::resume,
        operator_api::get_limits,
        operator_api::put_limits,
        operator_api::delete_limits,
        operator_api::run_retention,
        operator_api::events,
        batches_api::upload,
        batches_api::list,
        batches_api::show,
        batches_api::report,
        batches_api::approve,
        batches_api::cancel,
        batches_api::list_reconciliations,
        batches_api::show_reconciliation,
    ),
    tags(
        (name = "payouts", description = "Enqueue and read payouts (client tokens)"),
        (name = "batches", description = "Mass-payout batch files, their reports, reconciliation runs"),
        (name = "operator", description = "Operators: every client's payouts and the actions on them, pauses, limits, retention"),
        (name = "webhooks", description = "Webhook endpoints of a client, their events and deliveries"),
        (name = "callbacks", description = "Provider callbacks (no token: verified by the provider's signature)"),
        (name = "health", description = "Probes, also on the admin listener"),
        (name = "admin", description = "The admin listener (PAYOUTD_ADMIN_LISTEN)"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme every scoped route names.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token from `payoutd token create`; the route names its scope"))
                    .build(),
            ),
        );
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// `GET /openapi.json`.
pub async fn serve_document() -> impl IntoResponse {
    Json(document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every `(method, path)` routed by `source`: the `.route("path", get(..).post(..))` calls.
    fn routes_in(source: &str) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        let mut rest = source;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's text, up to its closing parenthesis.
            let mut depth = 1;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &rest[..end];
            let Some(path) = call.split('"').nth(1) else { continue };
            let path = path.replace("{*", "{");
            let bytes = call.as_bytes();
            for method in ["get", "post", "put", "delete", "patch"] {
                let pattern = format!("{method}(");
                let mut from = 0;
                while let Some(i) = call[from..].find(&pattern) {
                    let i = from + i;
                    let before = if i == 0 { b' ' } else { bytes[i - 1] };
                    if !(before.is_ascii_alphanumeric() || before == b'_') {
                        found.insert((method.to_owned(), path.clone()));
                    }
                    from = i + pattern.len();
                }
            }
        }
        found
    }

    #[test]
    fn the_route_parser_reads_chained_methods_and_wildcards() {
        let src = r#".route("/a/{id}", get(x).put(put_y).delete(z)) .route(
            "/b/{*rest}",
            post(h).layer(l),
        )"#;
        let got: Vec<_> = routes_in(src).into_iter().collect();
        let want = [("delete", "/a/{id}"), ("get", "/a/{id}"), ("post", "/b/{rest}"), ("put", "/a/{id}")];
        assert_eq!(got, want.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect::<Vec<_>>());
    }

    /// The document describes exactly the routes the API serves: no route without a
    /// description, no description of a route that does not exist. (The console's HTML pages
    /// under /console are not part of the API.)
    #[test]
    fn the_document_matches_every_route_of_the_api() {
        let sources = [
            include_str!("lib.rs"),
            include_str!("admin.rs"),
            include_str!("batches_api.rs"),
            include_str!("operator_api.rs"),
            include_str!("webhooks_api.rs"),
        ];
        let mut routed: BTreeSet<(String, String)> = sources.iter().flat_map(|s| routes_in(s)).collect();
        routed.insert(("get".to_owned(), PATH.to_owned()));
        let doc = serde_json::to_value(document()).expect("json");
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    described.insert((method.clone(), path.clone()));
                }
            }
        }
        described.insert(("get".to_owned(), PATH.to_owned()));
        let undocumented: Vec<_> = routed.difference(&described).collect();
        let phantom: Vec<_> = described.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes without a description: {undocumented:?}");
        assert!(phantom.is_empty(), "descriptions of routes that do not exist: {phantom:?}");
        assert!(routed.len() > 40, "the parser found the routes: {routed:?}");
    }

    #[test]
    fn it_is_openapi_3_1_with_a_bearer_scheme_and_every_operation_tagged() {
        let doc = serde_json::to_value(document()).expect("json");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                assert!(op["tags"].as_array().is_some_and(|t| !t.is_empty()), "{method} {path} has no tag");
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}");
            }
        }
    }
}
