//! EventTransforms on the ingress (SEMANTICS.md §12): each event POSTed to
//! `/<ns>/eventtransforms/<name>` is transformed by the JSONata expression, then
//!
//! - without a sink: answered as the HTTP response (200, binary mode) — the caller, a
//!   Trigger or Subscription, takes it as its reply;
//! - with a sink: sent there (one attempt: the caller's own delivery retries the whole
//!   transform), and the sink's answer returned as it is, transformed by `reply.jsonata`,
//!   or dropped (`reply.discard`: an empty 202).
//!
//! An expression that fails on an event, or produces something that is not a CloudEvent, is
//! a 400 with a JSON body saying why (a terminal failure for the caller: retrying the same
//! event would fail the same way).

use async_trait::async_trait;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use sluice_broker::EventHandler;
use sluice_core::topology::{EventTransform, TransformReply};
use sluice_core::{Envelope, Event};
use sluice_delivery::{Outcome, Sender};
use sluice_filter::transform::apply;
use std::sync::Arc;

pub(crate) struct Transformer {
    pub(crate) spec: Arc<EventTransform>,
    pub(crate) sender: Sender,
}

fn event_response(event: &Event) -> Response {
    let mut headers = HeaderMap::new();
    let body = sluice_core::http::encode_binary(event, &mut headers);
    (StatusCode::OK, headers, body).into_response()
}

fn error_response(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({"error": message, "status": status.as_u16()});
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[async_trait]
impl EventHandler for Transformer {
    async fn handle(&self, event: Event, headers: Vec<(String, String)>) -> Response {
        let spec = &self.spec;
        let out = match apply(&spec.expression, &event) {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(transform = %spec.key, id = event.id(), error = %e, "transformation failed");
                return error_response(StatusCode::BAD_REQUEST, e.to_string());
            }
        };
        let Some(sink) = &spec.sink else {
            return event_response(&out);
        };
        let envelope = Envelope::with_headers(out, headers);
        let outcome = self
            .sender
            .attempt(
                sink,
                &envelope,
                spec.delivery.format,
                Some(&spec.key.namespace),
                spec.delivery.timeout,
            )
            .await;
        match outcome {
            Outcome::Accepted { reply: None } => StatusCode::ACCEPTED.into_response(),
            Outcome::Accepted { reply: Some(r) } => match &spec.reply {
                TransformReply::Pass => event_response(&r),
                TransformReply::Discard => StatusCode::ACCEPTED.into_response(),
                TransformReply::Jsonata(expr) => match apply(expr, &r) {
                    Ok(e) => event_response(&e),
                    Err(e) => error_response(
                        StatusCode::BAD_GATEWAY,
                        format!("the sink's answer could not be transformed: {e}"),
                    ),
                },
            },
            // The sink's refusal, passed on so the caller's retry rules apply to it.
            Outcome::Failed(f) => {
                let status = f
                    .status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let mut resp = error_response(status, format!("sink {sink}: {}", f.reason));
                if let Some(after) = f.retry_after {
                    if let Ok(v) = http::HeaderValue::from_str(&after.as_secs().to_string()) {
                        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
                    }
                }
                resp
            }
        }
    }
}
