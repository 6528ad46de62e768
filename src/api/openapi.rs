//! `/openapi.json`: the OpenAPI document of every route a node serves, generated from the
//! handlers' `#[utoipa::path]` annotations as they are registered on the router
//! ([`utoipa_axum::router::OpenApiRouter`]), so a route cannot exist without being described.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

/// Druid's `ErrorResponse`, the body of every error answer (the Coordinator's, worker config
/// and basic-security routes answer `{"error": "<message>"}` instead).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ErrorBody {
    /// `druidException`.
    pub error: String,
    /// What went wrong, as a code: `invalidInput`, `notFound`, `unauthorized`, `forbidden`,
    /// `capacityExceeded`, `unavailable`, ...
    pub error_code: String,
    /// `USER`, `ADMIN` or `OPERATOR`.
    pub persona: String,
    /// Druid's category, which gives the status: `INVALID_INPUT` (400), `UNAUTHORIZED` (401),
    /// `FORBIDDEN` (403), `NOT_FOUND` (404), `CAPACITY_EXCEEDED` (429), `SERVICE_UNAVAILABLE`
    /// (503), ...
    pub category: String,
    /// What was wrong, for a person.
    pub error_message: String,
    pub context: std::collections::BTreeMap<String, String>,
}

/// The refusals every route may answer, in every route's description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Refused {
    /// Refused, changing nothing: bad input (400), no credentials (401), no permission (403),
    /// not found (404), over a limit (413, 429).
    #[response(status = "4XX", description = "Druid's error shape: refused, changing nothing")]
    Client(ErrorBody),
    /// No leader yet, or the write did not commit in time: retry.
    #[response(
        status = 503,
        description = "no leader yet, or the write did not commit in time; retry"
    )]
    Unavailable(ErrorBody),
}

/// The document's title, version and description.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("raftlord")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Apache Druid's Overlord, MiddleManager and Coordinator APIs on Raft. Errors are Druid's \
                     ErrorResponse; routes need HTTP Basic credentials when the node runs with users (--auth basic).",
                ))
                .build(),
        )
        .build();
    let mut components = utoipa::openapi::Components::new();
    components
        .schemas
        .insert("ErrorBody".into(), <ErrorBody as utoipa::PartialSchema>::schema());
    doc.components = Some(components);
    doc
}

/// The route that serves `doc`.
pub fn route(doc: utoipa::openapi::OpenApi) -> axum::Router {
    let json: Arc<str> = doc.to_json().unwrap_or_else(|_| "{}".into()).into();
    axum::Router::new().route(
        "/openapi.json",
        axum::routing::get(move || {
            let json = json.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], json.to_string()).into_response() }
        }),
    )
}
