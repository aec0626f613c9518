//! An event on its way through a broker, with the request headers that travel with it.

use crate::event::Event;
use http::HeaderMap;

/// What a channel stores: the event and the producer's pass-through headers, which delivery
/// copies onto every attempt (SEMANTICS.md §2: `x-request-id`, `retry-after`, names starting
/// `knative-` or `x-b3-`, and W3C trace context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event: Event,
    pub headers: Vec<(String, String)>,
}

impl Envelope {
    pub fn new(event: Event) -> Self {
        Envelope {
            event,
            headers: Vec::new(),
        }
    }

    pub fn with_headers(event: Event, headers: Vec<(String, String)>) -> Self {
        Envelope { event, headers }
    }
}

/// Whether a request header is passed through to subscribers.
pub fn is_passthrough_header(name: &str) -> bool {
    matches!(
        name,
        "x-request-id" | "retry-after" | "traceparent" | "tracestate"
    ) || name.starts_with("knative-")
        || name.starts_with("x-b3-")
}

/// The pass-through headers of a request, lower-case names, values that are visible ASCII.
pub fn passthrough_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| is_passthrough_header(n.as_str()))
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_only_the_documented_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-request-id", "r1"),
            ("retry-after", "5"),
            ("knative-foo", "a"),
            ("x-b3-traceid", "b"),
            ("traceparent", "00-abc-def-01"),
            ("tracestate", "k=v"),
            ("authorization", "secret"),
            ("ce-id", "1"),
            ("x-other", "no"),
        ] {
            h.insert(http::HeaderName::from_static(k), v.parse().unwrap());
        }
        let mut got: Vec<_> = passthrough_headers(&h)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "knative-foo",
                "retry-after",
                "traceparent",
                "tracestate",
                "x-b3-traceid",
                "x-request-id"
            ]
        );
    }
}
