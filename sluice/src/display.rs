//! `sluice display`: an event-display sink, like Knative's `event_display`. Prints every
//! CloudEvent it receives (any content mode) and answers with the configured status, or
//! with `--reply` echoes each event back as a reply (a stand-in for a Sequence step or a
//! Parallel filter, like Knative's `appender`).

use crate::cli::DisplayArgs;
use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use sluice_core::Event;
use std::fmt::Write as _;

pub async fn display(args: DisplayArgs) -> anyhow::Result<()> {
    let status = StatusCode::from_u16(args.status)
        .with_context(|| format!("--status {} is not an HTTP status", args.status))?;
    let app = Router::new()
        .fallback(handle)
        .with_state((status, args.reply));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (choose another with --listen)",
                args.listen
            )
        })?;
    eprintln!(
        "sluice display: listening on http://{}/ ({})",
        args.listen,
        if args.reply {
            "replying with each event, its source set to the request path".to_string()
        } else {
            format!("answering {}", status.as_u16())
        }
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn handle(
    State((status, reply)): State<(StatusCode, bool)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match sluice_core::http::decode(&headers, body) {
        Ok(events) => {
            for e in &events {
                println!("{}(received on {})\n", render(e), uri.path());
            }
            if let (true, Some(first)) = (reply, events.into_iter().next()) {
                let mut answer = first;
                answer.set("source", uri.path());
                let mut out = HeaderMap::new();
                let body = sluice_core::http::encode_binary(&answer, &mut out);
                return (StatusCode::OK, out, body).into_response();
            }
        }
        Err(e) => println!("☁️  not a CloudEvent: {e}\n"),
    }
    status.into_response()
}

/// The event as Knative's event_display prints it.
pub fn render(e: &Event) -> String {
    let mut out = String::from("☁️  cloudevents.Event\nContext Attributes,\n");
    let _ = writeln!(out, "  specversion: {}", e.spec_version());
    let mut exts = Vec::new();
    for (name, value) in e.attributes() {
        if sluice_core::event::is_context_attribute(name) {
            let _ = writeln!(out, "  {name}: {}", value.to_string_form());
        } else {
            exts.push((name, value));
        }
    }
    if !exts.is_empty() {
        out.push_str("Extensions,\n");
        for (name, value) in exts {
            let _ = writeln!(out, "  {name}: {}", value.to_string_form());
        }
    }
    if let Some(data) = e.data() {
        out.push_str("Data,\n  ");
        match std::str::from_utf8(data) {
            Ok(s) => match serde_json::from_str::<serde_json::Value>(s) {
                Ok(v) => out.push_str(
                    &serde_json::to_string_pretty(&v)
                        .unwrap_or_else(|_| s.to_string())
                        .replace('\n', "\n  "),
                ),
                Err(_) => out.push_str(s),
            },
            Err(_) => {
                let _ = write!(out, "<{} bytes of binary data>", data.len());
            }
        }
        out.push('\n');
    }
    out
}
