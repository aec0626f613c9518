//! EventTransform → [`EventTransform`](sluice_core::topology::EventTransform): the JSONata
//! expressions are checked here, once, so a syntax error refuses the resource with its
//! position instead of failing every event.

use crate::convert::{fingerprint_of, resolve, Ctx};
use crate::load::{Loaded, Resource};
use crate::types::KReference;
use sluice_core::delivery::{DeliveryPolicy, Endpoint};
use sluice_core::topology::{EventTransform, Key, Topology, TransformReply};
use std::sync::Arc;
use url::Url;

/// The address of an EventTransform on the ingress: `<ingress>/<ns>/eventtransforms/<name>`.
pub(crate) fn transform_url(ctx: &Ctx, key: &Key) -> Option<Endpoint> {
    let url = ctx
        .defaults
        .ingress_url
        .join(&format!("{}/eventtransforms/{}", key.namespace, key.name))
        .ok()?;
    Endpoint::new(url).ok()
}

/// A `Destination.ref` to an EventTransform: its address.
pub(crate) fn address_of(
    ctx: &mut Ctx,
    r: &Loaded,
    reference: &KReference,
    ns: &str,
    path: &str,
) -> Option<Url> {
    let key = Key::new(ns, &reference.name);
    if !ctx.transforms.contains(&key) {
        ctx.error(
            r,
            &format!("{path}.ref"),
            format!("EventTransform {key} is not defined in any loaded file"),
        );
        return None;
    }
    transform_url(ctx, &key).map(|e| e.url().clone())
}

fn expression(ctx: &mut Ctx, r: &Loaded, expr: &str, field: &str) -> Option<String> {
    if expr.trim().is_empty() {
        ctx.error(r, field, "is required: a JSONata expression producing the new event, e.g. `$merge([$, {\"type\": \"new.type\"}])`");
        return None;
    }
    match sluice_filter::transform::check(expr) {
        Ok(()) => Some(expr.to_string()),
        Err(e) => {
            ctx.error(r, field, e.to_string());
            None
        }
    }
}

pub(crate) fn build(ctx: &mut Ctx, resources: &[Loaded], topology: &mut Topology) {
    for r in resources {
        let Resource::EventTransform(t) = &r.resource else {
            continue;
        };
        let before = ctx.errors.len();
        let spec = &t.spec;
        let expr = match &spec.jsonata {
            None => {
                ctx.error(
                    r,
                    "spec.jsonata",
                    "is required: set `jsonata.expression` (the only transformation Sluice runs)",
                );
                None
            }
            Some(j) => expression(ctx, r, &j.expression, "spec.jsonata.expression"),
        };
        let sink = spec.sink.as_ref().map(|d| resolve(ctx, r, d, "spec.sink"));
        let reply = match &spec.reply {
            None => Some(TransformReply::Pass),
            Some(_) if spec.sink.is_none() => {
                ctx.error(
                    r,
                    "spec.reply",
                    "needs `sink`: without a sink the transformed event is itself the answer",
                );
                None
            }
            Some(rs) => match (&rs.jsonata, rs.discard) {
                (Some(j), None | Some(false)) => {
                    expression(ctx, r, &j.expression, "spec.reply.jsonata.expression")
                        .map(TransformReply::Jsonata)
                }
                (None, Some(true)) => Some(TransformReply::Discard),
                _ => {
                    ctx.error(r, "spec.reply", "set exactly one of `jsonata` (transform the sink's answer) and `discard: true`");
                    None
                }
            },
        };
        let key = Key::new(&r.namespace, &r.name);
        let address = transform_url(ctx, &key);
        if ctx.errors.len() > before {
            continue;
        }
        let (Some(expression), Some(reply), Some(address)) = (expr, reply, address) else {
            continue;
        };
        let sink = sink.flatten();
        let delivery = DeliveryPolicy::default();
        let fingerprint = fingerprint_of(spec, &format!("{sink:?} {address}"));
        topology.transforms.insert(
            key.clone(),
            Arc::new(EventTransform {
                key,
                expression,
                sink,
                reply,
                delivery,
                address,
                fingerprint,
            }),
        );
    }
}
