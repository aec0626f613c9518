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
    let ca = match &args.ca_cert {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?,
        ),
        None => None,
    };
    // The delivery client: http, or https verified against the system roots,
    // $SLUICE_TRUST_BUNDLE and --ca-cert.
    let client = sluice_delivery::http_client(ca.as_deref())
        .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", ca_path(args.ca_cert.as_deref())))?;
    let uri: http::Uri = args
        .url
        .parse()
        .with_context(|| format!("{} is not a URL", args.url))?;
    let mut req = http::Request::post(uri)
        .body(http_body_util::Full::new(body))
        .context("building the request")?;
    *req.headers_mut() = headers;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .with_context(|| format!("no answer from {} within 30 s", args.url))?
        .map_err(|e| {
            let chain = error_chain(&e);
            let hint = if chain.contains("certificate") {
                " (trust the CA that signed the server's certificate with --ca-cert, or add it to $SLUICE_TRUST_BUNDLE)"
            } else {
                ""
            };
            anyhow::anyhow!("could not send to {}: {chain}{hint}", args.url)
        })?;
    let status = resp.status();
    let text = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
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

fn ca_path(path: Option<&std::path::Path>) -> String {
    path.map(|p| p.display().to_string()).unwrap_or_default()
}

/// An error and its causes on one line (a TLS failure's reason is two levels down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
