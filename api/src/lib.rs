//! vigil-api: the local HTTP API and web page.
//!
//! ```text
//!  GET /                                   web page: live snapshot per camera, health
//!  GET /healthz                            liveness + full health report (JSON)
//!  GET /api/v1/cameras                     cameras and their status (JSON)
//!  GET /api/v1/cameras/{name}/snapshot.jpg newest processed frame, boxes drawn
//!  GET /api/v1/snapshots/{name}            a snapshot stored with an event
//! ```
//! Handlers never do CPU work on the async runtime: JPEG encoding runs on the
//! blocking pool.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use vigil_pipeline::{Appliance, SnapshotError};

/// The API's routes over a running appliance.
pub fn router(app: Arc<Appliance>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/api/v1/cameras", get(cameras))
        .route("/api/v1/cameras/{name}/snapshot.jpg", get(snapshot))
        .route("/api/v1/snapshots/{name}", get(event_snapshot))
        .with_state(app)
}

/// An error as JSON `{"error": "..."}` with a status code.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

async fn healthz(State(app): State<Arc<Appliance>>) -> Json<vigil_pipeline::Health> {
    Json(app.health())
}

async fn cameras(State(app): State<Arc<Appliance>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "cameras": app.health().cameras }))
}

async fn snapshot(State(app): State<Arc<Appliance>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let jpeg = tokio::task::spawn_blocking(move || app.snapshot_jpeg(&name))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            SnapshotError::UnknownCamera(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            SnapshotError::NoFrameYet(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            SnapshotError::Encode(_) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg).into_response())
}

/// A snapshot stored with an event (its `snapshot` field points here).
async fn event_snapshot(
    State(app): State<Arc<Appliance>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let path = app.snapshots().and_then(|s| s.path(&name)).ok_or_else(|| {
        ApiError(StatusCode::NOT_FOUND, format!("no snapshot {name:?} (it may have aged out)"))
    })?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "max-age=86400, immutable")], bytes)
        .into_response())
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
