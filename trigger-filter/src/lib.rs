//! Trigger filters: decides, for each event a broker stores, whether a trigger wants it.
//!
//! A Knative Trigger says what it wants in two ways: the classic `spec.filter.attributes` (exact
//! matches on attributes) and the newer `spec.filters`, a list of CloudEvents Subscriptions API
//! dialects — `exact`, `prefix`, `suffix`, `all`, `any`, `not` and `cesql` (CloudEvents SQL) —
//! to which Sluice adds `jsonpath`, a query over the event's data.
//!
//! # How data flows
//!
//! ```text
//!  Trigger YAML / CRD ──serde──▶ SubscriptionsApiFilter ─┐
//!  spec.filter.attributes ───────────────────────────────┴─▶ compile() ──▶ CompiledFilter
//!                                (sluice-crds, once per trigger version)     │ Arc<dyn EventFilter>
//!                                                                            ▼ in the topology
//!  channel ──▶ dispatcher ──▶ CompiledFilter::matches(&Event) ──▶ true: deliver / false: ack & skip
//! ```
//!
//! 1. `sluice-crds` deserializes a Trigger; its `spec.filters` elements are
//!    [`SubscriptionsApiFilter`] values (this crate owns the type, with its JSON schema).
//! 2. [`compile`] validates everything once — attribute names, one dialect per element, CESQL and
//!    JSONPath syntax — and returns a [`CompiledFilter`] or a [`FilterError`] that names the
//!    offending place (`filters[1].any[0].cesql`), what is wrong, and how to fix it. The caller
//!    prefixes the trigger's name and reports it in the trigger's status.
//! 3. The compiled filter goes into the topology as `Arc<dyn EventFilter>`. Dispatchers call
//!    [`EventFilter::matches`] on every event: a pure function of the event, with no I/O and, for
//!    the attribute dialects and CESQL on string attributes, no allocation — attribute values are
//!    borrowed from the event, `LIKE` patterns and constants were prepared at compile time. Only
//!    the `jsonpath` dialect parses the event's data, once per event.
//!
//! # Semantics in brief
//!
//! - `filter.attributes`: every listed attribute must exist and equal the value exactly; the
//!   value `""` only requires the attribute to exist.
//! - `filters`: the elements are ANDed. `exact` / `prefix` / `suffix` compare the string form of
//!   an attribute, which must exist; `all` is AND, `any` is OR, `not` negates. As in Knative, an
//!   empty `all` or `any` filters nothing (it neither passes nor fails its list).
//! - `cesql`: CloudEvents SQL v1 ([`cesql`]); the event passes only when the expression yields
//!   Boolean `true` without an evaluation error.
//! - `jsonpath`: passes when the query selects at least one node of the data parsed as JSON;
//!   absent or non-JSON data fails.
//!
//! # Example
//!
//! ```
//! use sluice_core::topology::EventFilter;
//! use sluice_core::{Event, SpecVersion};
//! use sluice_filter::{compile, SubscriptionsApiFilter};
//! use std::sync::Arc;
//!
//! // What sluice-crds hands over: the Trigger's `spec.filters` (and `spec.filter.attributes`).
//! let filters: Vec<SubscriptionsApiFilter> = serde_json::from_str(
//!     r#"[{"prefix": {"type": "com.example."}}, {"cesql": "INT(priority) > 3"}]"#,
//! )?;
//! let filter: Arc<dyn EventFilter> = Arc::new(compile(None, &filters)?);
//!
//! let mut event = Event::new(SpecVersion::V10, "1", "/shop", "com.example.order.created");
//! event.set("priority", "5");
//! assert!(filter.matches(&event));
//! event.set("priority", "1");
//! assert!(!filter.matches(&event));
//!
//! // Invalid filters are rejected once, with the place, the problem and the fix.
//! let bad: Vec<SubscriptionsApiFilter> = serde_json::from_str(r#"[{"cesql": "type = "}]"#)?;
//! let err = compile(None, &bad).unwrap_err();
//! assert_eq!(err.path(), "filters[0].cesql");
//! assert!(err.to_string().contains("column 8"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The README beside this crate lists the places where the CESQL TCK and the spec disagree and
//! what Sluice does there.

// FilterError is large (it carries positions and the offending text), but it is built once per
// trigger load, never on the per-event path: its detail matters, its size does not.
#![allow(clippy::result_large_err)]

pub mod cesql;
mod error;
mod filter;
mod jsonpath;
mod spec;
pub mod transform;

pub use error::{FilterError, MapDialect};
pub use filter::{compile, CompiledFilter};
pub use spec::SubscriptionsApiFilter;

#[cfg(doc)]
use sluice_core::topology::EventFilter;
