//! `sluice send`: one CloudEvent to a URL, the response printed.

use crate::cli::SendArgs;
use anyhow::Context as _;
use http::{HeaderMap, HeaderValue};
use sluice_core::{Event, SpecVersion};

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let spec = SpecVersion::parse(&args.specversion)
        .with_context(|| format!("--specversion {} is not 1.0 or 0.3", args.specversion))?;
    let id = args.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut event = Event::new(spec, id, args.source, args.ty);
    event.set(
        "time",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    if let Some(data) = args.data {
        let ct = args
            .content_type
            .unwrap_or_else(|| "application/json".into());
        event.set("datacontenttype", ct);
        event.set_data(data, false);
    } else if let Some(ct) = args.content_type {
        event.set("datacontenttype", ct);
    }
    for (k, v) in args.ext {
        if !sluice_core::event::is_valid_attribute_name(&k) {
            anyhow::bail!(
                "--ext {k}=...: extension names use only lower-case letters a-z and digits 0-9"
            );
        }
        event.set(k, v);
    }
    event.validate()?;
    let mut headers = HeaderMap::new();
    let body = if args.structured {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(sluice_core::http::STRUCTURED_CONTENT_TYPE),
        );
        bytes::Bytes::from(sluice_core::http::encode_structured(&event))
    } else {
        sluice_core::http::encode_binary(&event, &mut headers)
    };
    let client = reqwest::Client::builder().no_proxy().build()?;
    let resp = client
        .post(&args.url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .with_context(|| format!("could not send to {}", args.url))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if !text.is_empty() {
        println!("{text}");
    }
    if status.is_success() {
        Ok(())
    } else {
        anyhow::bail!("the event was not accepted ({status})")
    }
}
