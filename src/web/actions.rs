//! Actions on an order's server over the API: `POST /api/v1/orders/{id}/actions` asks for one
//! (start, stop, reboot, reinstall, change_os), `GET` lists them. The customer (the order's
//! access token) and admins may ask; unknown orders and wrong tokens get the same 401 as every
//! other customer route.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::access::{Viewer, authorize};
use super::throttle::ClientAddr;
use super::views::{ActionView, OrderView};
use super::{ApiError, AppState};
use crate::domain::{ActionKind, Order};
use crate::store::ActionRequest;

/// The body of an action request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// start, stop, reboot, reinstall or change_os.
    action: String,
    /// The image for change_os: a `changeos` code or its readable name.
    os: Option<String>,
    /// Why (admins: required; customers: optional).
    reason: Option<String>,
}

/// Adds the server's last known state and its actions to an order's view.
pub(super) async fn add_server(
    state: &AppState,
    order: &Order,
    view: &mut OrderView,
) -> Result<(), ApiError> {
    if order.server_ip.is_none() {
        return Ok(());
    }
    let queries = state.engine.queries();
    view.server = queries
        .server_facts(&order.id)
        .await
        .map_err(ApiError::internal)?
        .map(Into::into);
    let actions = queries
        .actions(&order.id)
        .await
        .map_err(ApiError::internal)?;
    view.actions = Some(actions.iter().map(ActionView::from).collect());
    Ok(())
}

/// `GET /api/v1/orders/{id}/actions`: the actions on the order's server, oldest first.
pub(super) async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Result<Json<Vec<ActionView>>, ApiError> {
    let (_, order) = authorize(&state, &headers, client, &id).await?;
    let actions = state
        .engine
        .queries()
        .actions(&order.id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(actions.iter().map(ActionView::from).collect()))
}

/// `POST /api/v1/orders/{id}/actions` with `{"action": "reboot"}` (or `"change_os"` with
/// `"os"`): 202 with the action, queued as durable work. 409 while another action is pending on
/// the server or before the order is ready; 429 (with `Retry-After`) past the hourly limit.
pub(super) async fn request(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (viewer, order) = authorize(&state, &headers, client, &id).await?;
    let body: ActionBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the body must be JSON like {{\"action\": \"reboot\"}} or {{\"action\": \"change_os\", \"os\": \"2022\"}}: {e}"
            ),
        )
    })?;
    let kind = ActionKind::parse(&body.action, body.os.as_deref()).map_err(|why| {
        let field = if why.starts_with("unknown action") {
            "action"
        } else {
            "os"
        };
        ApiError::field(field, why)
    })?;
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let requested_by = match &viewer {
        Viewer::Admin(name) => {
            if reason.is_none() {
                return Err(ApiError::field(
                    "reason",
                    "is required: say why, it goes in the timeline",
                ));
            }
            format!("admin:{name}")
        }
        Viewer::Customer => "customer".to_string(),
    };
    if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::field("reason", "must be at most 500 characters"));
    }
    answer(
        state
            .engine
            .request_action(&order.id, kind, &requested_by, reason)
            .await
            .map_err(ApiError::internal)?,
        state.engine.clock().now(),
    )
}

/// The JSON of a stored action request, or why it was refused (for the CLI on the database).
///
/// # Errors
/// The refusal, in words.
pub fn action_answer(result: ActionRequest) -> Result<serde_json::Value, String> {
    let now = crate::clock::Timestamp(i64::MIN);
    match result {
        ActionRequest::Created(action) => Ok(json!({ "action": ActionView::from(&action) })),
        ActionRequest::TooMany { retry_at } => Err(format!(
            "this server's hourly limit of actions is used up; another may be asked for from {retry_at}"
        )),
        refused => Err(answer(refused, now)
            .err()
            .map(|e| e.message().to_string())
            .unwrap_or_default()),
    }
}

/// The HTTP answer to a stored or refused action request.
pub(super) fn answer(
    result: ActionRequest,
    now: crate::clock::Timestamp,
) -> Result<Response, ApiError> {
    match result {
        ActionRequest::Created(action) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "action": ActionView::from(&action) })),
        )
            .into_response()),
        ActionRequest::NoOrder => Err(ApiError::new(StatusCode::NOT_FOUND, "no such order")),
        ActionRequest::NotReady(s) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the order is {s}: actions are available once its server is ready"),
        )),
        ActionRequest::Busy(open) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "another action ({}, asked at {}) is still in progress on this server; try again when it is done",
                open.kind.as_str(),
                open.created_at
            ),
        )),
        ActionRequest::TooMany { retry_at } => {
            let secs = retry_at.since(now).as_secs().max(1);
            Err(ApiError::too_many(
                format!("this server's hourly limit of actions is used up; try again in {secs} s"),
                secs,
            ))
        }
    }
}
