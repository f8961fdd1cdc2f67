//! vigil-api: the local HTTP API and web page.
//!
//! ```text
//!  GET  /                                          web page (public: it holds no data)
//!  GET  /healthz  /readyz                          liveness + health report, readiness (public)
//!  GET  /metrics                                   Prometheus
//!  GET  /api/v1/openapi.json                       this API, described (public)
//!  GET  /api/v1/cameras[/{name}]                   status
//!  GET  /api/v1/cameras/{name}/snapshot.jpg        newest annotated frame
//!  GET  /api/v1/cameras/{name}/stream.mjpg         live annotated view (rate-capped)
//!  GET  /api/v1/events[?camera&type&after&limit]   recent events
//!  GET  /api/v1/events/stream                      live events (server-sent events)
//!  GET  /api/v1/snapshots/{name}                   a snapshot stored with an event
//!  GET  /api/v1/models[/{slot}]                    slots, versions, what is active
//!  POST /api/v1/models/{slot}/versions[?activate]  upload (body: the .onnx file)
//!  POST /api/v1/models/{slot}/versions/{v}/activate
//!  POST /api/v1/models/{slot}/rollback
//!  DELETE /api/v1/models/{slot}/versions/{v}
//!  GET  /api/v1/config                             the effective config, secrets left out
//! ```
//! Authentication: `Authorization: Bearer <token>` everywhere but the public
//! routes. GET requests may carry the token in the `vigil_token` cookie
//! instead (the web page's `<img>` and `EventSource` cannot set headers);
//! changes always need the header, which also shuts out cross-site requests.
//! Handlers never do CPU work on the async runtime: JPEG encoding and model
//! loading run on the blocking pool. Live streams read only the newest frame
//! and event: a slow client skips, it never slows the line.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::OpenApi;
use vigil_pipeline::models::ModelError;
use vigil_pipeline::{Appliance, SnapshotError, annotate};

/// How the API is set up, beyond the appliance.
#[derive(Clone)]
pub struct ApiSettings {
    /// `None`: no authentication (`http.auth = "none"`).
    pub token: Option<Arc<str>>,
    pub max_upload_bytes: u64,
    pub request_timeout: Duration,
    pub signing_key: Option<ed25519_dalek::VerifyingKey>,
    pub mjpeg_fps: f64,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("auth", &self.token.is_some())
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("signing", &self.signing_key.is_some())
            .finish()
    }
}

#[derive(Clone)]
struct ApiState {
    app: Arc<Appliance>,
    settings: Arc<ApiSettings>,
}

/// The API's routes over a running appliance.
pub fn router(app: Arc<Appliance>, settings: ApiSettings) -> Router {
    let timeout = settings.request_timeout;
    let state = ApiState { app, settings: Arc::new(settings) };
    let public = Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi));
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/cameras", get(cameras))
        .route("/api/v1/cameras/{name}", get(camera))
        .route("/api/v1/cameras/{name}/snapshot.jpg", get(snapshot))
        .route("/api/v1/events", get(events))
        .route("/api/v1/snapshots/{name}", get(event_snapshot))
        .route("/api/v1/models", get(models))
        .route("/api/v1/models/{slot}", get(model))
        .route("/api/v1/models/{slot}/versions/{version}", axum::routing::delete(delete_version))
        .route("/api/v1/config", get(config))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(DefaultBodyLimit::max(64 * 1024));
    // Activations load and self-test a model (up to the model's test_run_s):
    // a timeout here would answer 408 while the work went on, and the
    // client's retry would meet a 409. They run to the end as a task of their
    // own and answer when done; one at a time per slot.
    let activations = Router::new()
        .route("/api/v1/models/{slot}/versions/{version}/activate", post(activate))
        .route("/api/v1/models/{slot}/rollback", post(rollback))
        .layer(DefaultBodyLimit::max(64 * 1024));
    // Uploads and live streams are long by nature: no request timeout; uploads
    // enforce their own size limit while streaming to disk.
    let long = Router::new()
        .route("/api/v1/models/{slot}/versions", post(upload))
        .route("/api/v1/cameras/{name}/stream.mjpg", get(mjpeg))
        .route("/api/v1/events/stream", get(event_stream))
        .layer(DefaultBodyLimit::disable());
    let protected = protected
        .merge(activations)
        .merge(long)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    public.merge(protected).fallback(not_found).layer(middleware::from_fn(json_rejections)).with_state(state)
}

/// axum's extractors refuse bad paths and queries (`/versions/-1`,
/// `?limit=x`) with a plain-text 400; every error of this API is JSON, so
/// clients parse one shape.
async fn json_rejections(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let plain = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !res.status().is_client_error() || !plain {
        return res;
    }
    let status = res.status();
    let text = match axum::body::to_bytes(res.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => status.canonical_reason().unwrap_or("bad request").to_owned(),
    };
    ApiError(status, text).into_response()
}

/// An error as JSON `{"error": "..."}` with a status code.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        let status = match &e {
            ModelError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ModelError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ModelError::Forbidden(_) => StatusCode::FORBIDDEN,
            ModelError::NotFound(_) => StatusCode::NOT_FOUND,
            ModelError::Conflict(_) => StatusCode::CONFLICT,
            ModelError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ModelError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// The JSON body of every error.
#[derive(utoipa::ToSchema, serde::Serialize)]
#[allow(dead_code)]
struct ErrorBody {
    error: String,
}

/// Constant-time comparison: how long a check takes says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_token(headers: &HeaderMap, method: &Method) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    if method == Method::GET {
        for c in headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()) {
            for part in c.split(';') {
                if let Some(t) = part.trim().strip_prefix("vigil_token=") {
                    return Some(t.to_owned());
                }
            }
        }
    }
    None
}

async fn require_token(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.settings.token else {
        return next.run(req).await;
    };
    match presented_token(req.headers(), req.method()) {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError(StatusCode::UNAUTHORIZED, "wrong token".into()).into_response(),
        None => {
            let mut r = ApiError(
                StatusCode::UNAUTHORIZED,
                "this route needs `Authorization: Bearer <token>` (the token is in <data_dir>/api-token, or http.token_env)".into(),
            )
            .into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            r
        }
    }
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route; see /api/v1/openapi.json".into())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Vigil", description = "The local API of a Vigil edge computer-vision appliance."),
    paths(
        healthz, readyz, metrics, openapi, cameras, camera, snapshot, mjpeg, events, event_stream, event_snapshot,
        models, model, upload, activate, rollback, delete_version, config
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The OpenAPI document served at `/api/v1/openapi.json`. Public so that
/// docs/api.md can be rendered from it (`api/tests/api_doc.rs`) and never
/// drift from the routes.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This API, as OpenAPI 3.1.
#[utoipa::path(get, path = "/api/v1/openapi.json", security(()), responses((status = 200, description = "The OpenAPI document", body = Object)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Liveness, with the full health report.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "Cameras, broker link, outbox, models", body = Object)))]
async fn healthz(State(s): State<ApiState>) -> Json<vigil_pipeline::Health> {
    Json(s.app.health())
}

/// Ready when every camera is past `starting`.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "Ready", body = Object),
    (status = 503, description = "Not ready, with what is missing", body = Object)
))]
async fn readyz(State(s): State<ApiState>) -> Response {
    // Ready or not, it says whether the box is degraded and why: a load
    // balancer reads the code, a person the reasons.
    let h = s.app.health();
    match s.app.readiness() {
        Ok(()) => {
            Json(serde_json::json!({ "ready": true, "status": h.status, "reasons": h.reasons })).into_response()
        }
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "waiting": why, "status": h.status, "reasons": h.reasons })),
        )
            .into_response(),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn metrics(State(s): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.app.prometheus()).into_response()
}

/// Every camera with its status.
#[utoipa::path(get, path = "/api/v1/cameras", responses(
    (status = 200, description = "Cameras", body = Object),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn cameras(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "cameras": s.app.health().cameras }))
}

/// One camera's status.
#[utoipa::path(get, path = "/api/v1/cameras/{name}", params(("name" = String, Path, description = "Camera name")), responses(
    (status = 200, description = "The camera", body = Object),
    (status = 404, description = "No such camera", body = ErrorBody),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn camera(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let h = s.app.health();
    let c = h
        .cameras
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no camera named {name:?}")))?;
    Ok(Json(serde_json::to_value(c).unwrap_or_default()))
}

fn snapshot_error(e: SnapshotError) -> ApiError {
    match e {
        SnapshotError::UnknownCamera(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
        SnapshotError::NoFrameYet(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        SnapshotError::Encode(_) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The newest processed frame, with boxes and labels drawn.
#[utoipa::path(get, path = "/api/v1/cameras/{name}/snapshot.jpg", params(("name" = String, Path, description = "Camera name")), responses(
    (status = 200, description = "JPEG", content_type = "image/jpeg", body = Vec<u8>),
    (status = 404, description = "No such camera", body = ErrorBody),
    (status = 503, description = "No frame yet", body = ErrorBody),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn snapshot(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let app = s.app.clone();
    let jpeg = tokio::task::spawn_blocking(move || app.snapshot_jpeg(&name))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(snapshot_error)?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg).into_response())
}

/// The live annotated view, as MJPEG (`multipart/x-mixed-replace`), at most `http.mjpeg_fps`.
#[utoipa::path(get, path = "/api/v1/cameras/{name}/stream.mjpg", params(("name" = String, Path, description = "Camera name")), responses(
    (status = 200, description = "MJPEG stream", content_type = "multipart/x-mixed-replace; boundary=vigilframe", body = Vec<u8>),
    (status = 404, description = "No such camera", body = ErrorBody),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn mjpeg(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    if !s.app.camera_names().contains(&name) {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no camera named {name:?}")));
    }
    let period = Duration::from_secs_f64(1.0 / s.settings.mjpeg_fps);
    let app = s.app.clone();
    // Each part is made only when the client has taken the previous one: a
    // slow client gets fewer frames and holds nothing of the pipeline's.
    let stopping = s.app.stopping();
    let stream =
        futures_util::stream::unfold((app, name, None::<u64>), move |(app, name, last_seq)| async move {
            loop {
                let latest = app.latest(&name);
                let fresh = latest.as_ref().map(|p| p.frame.seq()).filter(|seq| Some(*seq) != last_seq);
                if let (Some(p), Some(seq)) = (latest, fresh) {
                    let jpeg = tokio::task::spawn_blocking(move || {
                        let f = &p.frame;
                        let rgb = annotate::annotated(f, &p.prediction);
                        annotate::encode_jpeg(&rgb, f.width(), f.height(), 75)
                    })
                    .await;
                    if let Ok(Ok(jpeg)) = jpeg {
                        let mut part = format!(
                            "--vigilframe\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                            jpeg.len()
                        )
                        .into_bytes();
                        part.extend_from_slice(&jpeg);
                        part.extend_from_slice(b"\r\n");
                        tokio::time::sleep(period).await;
                        return Some((
                            Ok::<_, std::io::Error>(bytes::Bytes::from(part)),
                            (app, name, Some(seq)),
                        ));
                    }
                }
                tokio::time::sleep(period).await;
            }
        })
        // Ends at shutdown: axum's graceful drain waits for every open body,
        // and this one never ends by itself.
        .take_until(stopping.cancelled_owned());
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "multipart/x-mixed-replace; boundary=vigilframe")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(stream))
        .unwrap_or_default())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Only this camera's events.
    camera: Option<String>,
    /// Only this type, e.g. `object.end`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    /// Only events with a `seq` above this.
    after: Option<u64>,
    /// At most this many, the newest (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Recent events (the last 1000 kept in memory), oldest first.
#[utoipa::path(get, path = "/api/v1/events", params(EventsQuery), responses(
    (status = 200, description = "Events", body = Object),
    (status = 400, description = "Bad path or query parameter", body = ErrorBody),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn events(
    State(s): State<ApiState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("limit = {limit}: use 1 to 1000")));
    }
    let list = s.app.recent_events(q.camera.as_deref(), q.kind.as_deref(), q.after, limit as usize);
    Ok(Json(serde_json::json!({ "events": list })))
}

/// Events as they happen (server-sent events, one JSON event per message).
#[utoipa::path(get, path = "/api/v1/events/stream", responses(
    (status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn event_stream(
    State(s): State<ApiState>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = BroadcastStream::new(s.app.subscribe_events()).filter_map(|r| async move {
        // A lagging reader skips what it missed; the list endpoint has them.
        r.ok().map(|v| Ok(Event::default().event(v["type"].as_str().unwrap_or("event")).data(v.to_string())))
    });
    // Ends at shutdown, like the live view (the keep-alive would hold it open).
    Sse::new(stream.take_until(s.app.stopping().cancelled_owned())).keep_alive(KeepAlive::default())
}

/// A snapshot stored with an event (its `snapshot` field points here).
#[utoipa::path(get, path = "/api/v1/snapshots/{name}", params(("name" = String, Path, description = "File name")), responses(
    (status = 200, description = "JPEG", content_type = "image/jpeg", body = Vec<u8>),
    (status = 404, description = "No such snapshot", body = ErrorBody),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn event_snapshot(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let path = s.app.snapshots().and_then(|st| st.path(&name)).ok_or_else(|| {
        ApiError(StatusCode::NOT_FOUND, format!("no snapshot {name:?} (it may have aged out)"))
    })?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "max-age=86400, immutable")], bytes)
        .into_response())
}

fn slot_json(slot: &vigil_pipeline::models::ModelSlot) -> serde_json::Value {
    let current = slot.current();
    let info = current.info();
    serde_json::json!({
        "name": slot.name,
        "active": slot.active_version(),
        "previous": slot.previous_version(),
        "cameras": slot.cameras,
        "required_labels": slot.required_labels,
        "provider": info.provider,
        "activating": slot.activating(),
        "warnings": slot.warnings(),
        "versions": slot.versions().into_iter().map(|v| {
            let status = if v.version == slot.active_version() { "active" } else { "ready" };
            serde_json::json!({
                "version": v.version,
                "status": status,
                "sha256": v.sha256,
                "size_bytes": v.size_bytes,
                "origin": v.origin,
                "added_at": v.added_at,
                "decoder": v.decoder,
                "classes": v.labels.len(),
                "labels": v.labels,
                "input": v.input,
            })
        }).collect::<Vec<_>>(),
    })
}

fn find_slot(s: &ApiState, slot: &str) -> Result<Arc<vigil_pipeline::models::ModelSlot>, ApiError> {
    s.app
        .model(slot)
        .cloned()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no model slot {slot:?}")))
}

/// Model slots with their versions.
#[utoipa::path(get, path = "/api/v1/models", responses(
    (status = 200, description = "Slots", body = Object),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn models(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "models": s.app.model_slots().iter().map(|m| slot_json(m)).collect::<Vec<_>>() }),
    )
}

/// One model slot.
#[utoipa::path(get, path = "/api/v1/models/{slot}", params(("slot" = String, Path, description = "Model slot (the config's model name)")), responses(
    (status = 200, description = "The slot", body = Object),
    (status = 404, description = "No such slot", body = ErrorBody),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn model(
    State(s): State<ApiState>,
    Path(slot): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = find_slot(&s, &slot)?;
    Ok(Json(slot_json(&m)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// Activate the new version right after it is accepted.
    activate: Option<bool>,
}

/// Upload a new version: the request body is the `.onnx` file. It is checked
/// (size limit, signature when signing is on, it loads, a decoder fits, it
/// has the labels the slot's rules use) before it is kept; nothing changes on
/// refusal.
#[utoipa::path(post, path = "/api/v1/models/{slot}/versions",
    params(("slot" = String, Path, description = "Model slot"), UploadQuery,
           ("X-Vigil-Signature" = Option<String>, Header, description = "Base64 Ed25519 signature of the file's SHA-256 (required when signing is on)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The ONNX model"),
    responses(
        (status = 201, description = "Stored (and activated, if asked)", body = Object),
        (status = 400, description = "Empty upload, or a bad query parameter", body = ErrorBody),
        (status = 403, description = "Missing or wrong signature", body = ErrorBody),
        (status = 404, description = "No such slot", body = ErrorBody),
        (status = 409, description = "Already stored", body = ErrorBody),
        (status = 413, description = "Over the size limit", body = ErrorBody),
        (status = 422, description = "Not a model this slot can run, with the reason", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody)
    ))]
async fn upload(
    State(s): State<ApiState>,
    Path(slot): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = find_slot(&s, &slot)?;
    let signature = headers.get("x-vigil-signature").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let stream = body.into_data_stream().map(|r| r.map_err(|e| format!("the upload was cut off: {e}")));
    let rec = m
        .upload(
            Box::pin(stream),
            s.settings.max_upload_bytes,
            s.settings.signing_key.as_ref(),
            signature.as_deref(),
        )
        .await?;
    let mut out = serde_json::json!({ "version": rec });
    if q.activate.unwrap_or(false) {
        let a = activate_to_the_end(&s, slot, rec.version).await?;
        out["activation"] = serde_json::to_value(a).unwrap_or_default();
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Activate a version: loaded, validated, warmed up and self-tested on the
/// cameras' latest frames while the current version keeps serving, then
/// swapped in at once. On any failure the current version stays.
#[utoipa::path(post, path = "/api/v1/models/{slot}/versions/{version}/activate",
    params(("slot" = String, Path, description = "Model slot"), ("version" = u32, Path, description = "Version")),
    responses(
        (status = 200, description = "Activated: timings of the preparation and of the switch", body = Object),
        (status = 400, description = "Bad path or query parameter", body = ErrorBody),
        (status = 404, description = "No such slot or version", body = ErrorBody),
        (status = 409, description = "Already active, or another activation of this slot is under way", body = ErrorBody),
        (status = 422, description = "Failed its checks, with the reason", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody)
    ))]
async fn activate(
    State(s): State<ApiState>,
    Path((slot, version)): Path<(String, u32)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let a = activate_to_the_end(&s, slot, version).await?;
    Ok(Json(serde_json::to_value(a).unwrap_or_default()))
}

/// Runs an activation as a task of its own: a client that goes away does not
/// cut it short (its result still lands, and the slot stays marked as
/// activating until it does, so a retry gets 409 rather than a second copy).
async fn activate_to_the_end(
    s: &ApiState,
    slot: String,
    version: u32,
) -> Result<vigil_pipeline::models::Activation, ApiError> {
    let app = s.app.clone();
    let a = tokio::spawn(async move { app.activate(&slot, version).await })
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the activation failed: {e}")))??;
    Ok(a)
}

/// Go back to the previous version (instant when it ran in this session).
#[utoipa::path(post, path = "/api/v1/models/{slot}/rollback", params(("slot" = String, Path, description = "Model slot")), responses(
    (status = 200, description = "Rolled back", body = Object),
    (status = 404, description = "No such slot", body = ErrorBody),
    (status = 409, description = "Nothing to roll back to, or an activation of this slot is under way", body = ErrorBody),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn rollback(
    State(s): State<ApiState>,
    Path(slot): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let app = s.app.clone();
    let a = tokio::spawn(async move { app.rollback(&slot).await })
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the rollback failed: {e}")))??;
    Ok(Json(serde_json::to_value(a).unwrap_or_default()))
}

/// Delete a stored version (refused while it is active, and for the config's own file).
#[utoipa::path(delete, path = "/api/v1/models/{slot}/versions/{version}",
    params(("slot" = String, Path, description = "Model slot"), ("version" = u32, Path, description = "Version")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad path or query parameter", body = ErrorBody),
        (status = 404, description = "No such slot or version", body = ErrorBody),
        (status = 409, description = "In use, or the config's file", body = ErrorBody),
        (status = 401, description = "No or wrong token", body = ErrorBody)
    ))]
async fn delete_version(
    State(s): State<ApiState>,
    Path((slot, version)): Path<(String, u32)>,
) -> Result<StatusCode, ApiError> {
    find_slot(&s, &slot)?.delete(version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The configuration in effect. Secrets (passwords, keys) are never included.
#[utoipa::path(get, path = "/api/v1/config", responses(
    (status = 200, description = "The effective config", body = Object),
    (status = 401, description = "No or wrong token", body = ErrorBody)
))]
async fn config(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let mut v = serde_json::to_value(s.app.config()).unwrap_or_default();
    // Passwords are never serialized; a camera URL may still carry one
    // (`rtsp://user:pass@cam/…`).
    if let Some(cams) = v["cameras"].as_array_mut() {
        for c in cams {
            if let Some(src) = c["source"].as_str() {
                c["source"] = vigil_pipeline::redact_source(src).into();
            }
        }
    }
    Json(v)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_in_constant_time_and_correctly() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn reads_the_token_from_the_header_or_a_cookie_on_get_only() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; vigil_token=xyz".parse().expect("header"));
        assert_eq!(presented_token(&h, &Method::GET).as_deref(), Some("xyz"));
        assert_eq!(presented_token(&h, &Method::POST), None, "no cookie auth for changes");
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().expect("header"));
        assert_eq!(presented_token(&h, &Method::POST).as_deref(), Some("tok"));
    }

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        for p in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/openapi.json",
            "/api/v1/cameras",
            "/api/v1/cameras/{name}",
            "/api/v1/cameras/{name}/snapshot.jpg",
            "/api/v1/cameras/{name}/stream.mjpg",
            "/api/v1/events",
            "/api/v1/events/stream",
            "/api/v1/snapshots/{name}",
            "/api/v1/models",
            "/api/v1/models/{slot}",
            "/api/v1/models/{slot}/versions",
            "/api/v1/models/{slot}/versions/{version}/activate",
            "/api/v1/models/{slot}/rollback",
            "/api/v1/models/{slot}/versions/{version}",
            "/api/v1/config",
        ] {
            assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
        }
    }
}
