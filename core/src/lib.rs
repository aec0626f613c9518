//! # sluice-core
//!
//! The shared vocabulary of Sluice, with no I/O:
//!
//! - [`event`]: the lossless CloudEvent model (attributes verbatim, data as `Bytes`);
//! - [`http`]: the CloudEvents HTTP binding — binary, structured and batched modes, and the
//!   percent-encoding rules of SEMANTICS.md §2 — used by the broker ingress, by delivery and by
//!   the CLI tools;
//! - [`envelope`]: an event plus the request headers that travel with it through a channel;
//! - [`delivery`]: the validated delivery policy (retries, backoff, timeouts, dead letter);
//! - [`topology`]: the plain structs (brokers, triggers with compiled filters, destinations)
//!   that embedded and Kubernetes modes both build and every runtime component reads;
//! - [`status`]: per-object Ready/reason/message/observed generation, written by reconcilers;
//! - [`metrics`]: the Prometheus registry shared by all components;
//! - [`trace`]: W3C trace context in and out of headers, and the OpenTelemetry spans of an
//!   event's path (off, and free, unless the binary turns it on).
//!
//! Data flows edge → core → edge: the ingress decodes HTTP into an [`Envelope`], channels store
//! it, the dispatcher filters it against the [`topology`] and delivery encodes it back to HTTP.

pub mod delivery;
pub mod envelope;
pub mod event;
pub mod eventtypes;
pub mod http;
pub mod metrics;
pub mod offsets;
pub mod status;
pub mod topology;
pub mod trace;
pub mod transport;

pub use envelope::Envelope;
pub use event::{AttrValue, Event, SpecVersion};

/// Errors from decoding or validating events. The messages are shown to producers verbatim
/// (in a 400 response body), so each says what is wrong and how to fix it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("missing required attribute `{0}` (binary mode: send header `ce-{0}`; structured mode: add the JSON member `\"{0}\"`)")]
    MissingAttribute(&'static str),
    #[error("required attribute `{0}` is empty")]
    EmptyAttribute(&'static str),
    #[error("attribute `{0}` must be a string")]
    AttributeNotString(String),
    #[error("attribute name `{0}` is invalid: CloudEvents attribute names use only lower-case letters a-z and digits 0-9")]
    InvalidAttributeName(String),
    #[error("attribute name `{0}` is reserved: the JSON event format carries the event's data in the member `{0}`; rename the attribute (binary mode: the header `ce-{0}`)")]
    ReservedAttributeName(String),
    #[error("`datacontenttype` {0:?} contains control characters, which a Content-Type header cannot carry; send a media type such as `application/json`")]
    InvalidDataContentType(String),
    #[error("missing `specversion` (binary mode: send header `ce-specversion: 1.0`; structured mode: add `\"specversion\": \"1.0\"`)")]
    MissingSpecVersion,
    #[error("unsupported specversion `{0}`: Sluice accepts 1.0 and 0.3")]
    BadSpecVersion(String),
    #[error("header `{header}` is not valid UTF-8 after percent-decoding")]
    InvalidHeaderEncoding { header: String },
    #[error("malformed structured event: {0}")]
    Structured(String),
    #[error("malformed batch: {0}")]
    Batch(String),
    #[error("event {index} of the batch is invalid: {source}")]
    BatchItem {
        index: usize,
        #[source]
        source: Box<Error>,
    },
    #[error("the request is not a CloudEvent: no `ce-specversion` header and the Content-Type is not `application/cloudevents+json` or `application/cloudevents-batch+json`")]
    NotACloudEvent,
    #[error(
        "unsupported structured event format `{0}`: Sluice reads application/cloudevents+json"
    )]
    UnsupportedFormat(String),
}
