//! Prometheus metrics, all prefixed `sluice_`.
//!
//! Components take an `Arc<Metrics>` and, on their hot paths, resolve the label set once (at
//! dispatcher start, say) and keep the returned counter handles, so counting an event is one
//! atomic add.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One `serving.knative.dev/v1` Service run by embedded mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    pub namespace: String,
    pub broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub namespace: String,
    pub broker: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub namespace: String,
    pub broker: String,
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub namespace: String,
    pub broker: String,
    pub trigger: String,
    pub reason: String,
}

/// Labels of a source's counters: `kind` is `PingSource` or `KafkaSource`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub namespace: String,
    pub source: String,
    pub kind: String,
}

impl SourceLabels {
    pub fn new(namespace: &str, source: &str, kind: &str) -> Self {
        SourceLabels {
            namespace: namespace.into(),
            source: source.into(),
            kind: kind.into(),
        }
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 18,
    ))
}

/// Every metric Sluice exports.
pub struct Metrics {
    registry: Registry,
    pub accepted: Family<BrokerLabels, Counter>,
    pub rejected: Family<RejectLabels, Counter>,
    pub delivered: Family<TriggerLabels, Counter>,
    pub retried: Family<TriggerLabels, Counter>,
    pub dead_lettered: Family<TriggerLabels, Counter>,
    pub dropped: Family<DropLabels, Counter>,
    pub filtered_out: Family<TriggerLabels, Counter>,
    pub replies: Family<TriggerLabels, Counter>,
    pub delivery_latency: Family<TriggerLabels, Histogram, fn() -> Histogram>,
    pub source_produced: Family<SourceLabels, Counter>,
    pub source_delivered: Family<SourceLabels, Counter>,
    pub source_dead_lettered: Family<SourceLabels, Counter>,
    pub source_failed: Family<SourceLabels, Counter>,
    /// Autoscaled Services: replicas the KPA wants.
    pub autoscaler_desired: Family<ServiceLabels, Gauge>,
    /// Replicas running (starting or ready).
    pub autoscaler_actual: Family<ServiceLabels, Gauge>,
    /// Replicas taking requests.
    pub autoscaler_ready: Family<ServiceLabels, Gauge>,
    /// 1 while the KPA is in panic mode.
    pub autoscaler_panic: Family<ServiceLabels, Gauge>,
    /// Requests waiting in the activator for a replica.
    pub activator_queue_depth: Family<ServiceLabels, Gauge>,
    /// Requests sent to replicas and not answered yet.
    pub activator_in_flight: Family<ServiceLabels, Gauge>,
    /// Events waiting in channels for a Service (counted as its demand).
    pub autoscaler_backlog: Family<ServiceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            accepted: Family::default(),
            rejected: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            dropped: Family::default(),
            filtered_out: Family::default(),
            replies: Family::default(),
            delivery_latency: Family::new_with_constructor(latency_histogram),
            source_produced: Family::default(),
            source_delivered: Family::default(),
            source_dead_lettered: Family::default(),
            source_failed: Family::default(),
            autoscaler_desired: Family::default(),
            autoscaler_actual: Family::default(),
            autoscaler_ready: Family::default(),
            autoscaler_panic: Family::default(),
            activator_queue_depth: Family::default(),
            activator_in_flight: Family::default(),
            autoscaler_backlog: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_accepted",
            "Events accepted by a broker's ingress (answered 202)",
            m.accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Events refused by a broker's ingress, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "events_delivered",
            "Events a subscriber accepted",
            m.delivered.clone(),
        );
        registry.register(
            "events_retried",
            "Delivery attempts that failed and were retried",
            m.retried.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events sent to a dead-letter sink after the last failed attempt",
            m.dead_lettered.clone(),
        );
        registry.register(
            "events_dropped",
            "Events given up on without a dead-letter sink, or replies dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "events_filtered_out",
            "Events a trigger's filter did not match",
            m.filtered_out.clone(),
        );
        registry.register(
            "replies",
            "Replies from subscribers published back to the broker",
            m.replies.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from broker arrival to the subscriber's final answer",
            m.delivery_latency.clone(),
        );
        registry.register(
            "source_events_produced",
            "Events a source created (a Ping tick, a Kafka record)",
            m.source_produced.clone(),
        );
        registry.register(
            "source_events_delivered",
            "Source events the sink accepted",
            m.source_delivered.clone(),
        );
        registry.register(
            "source_events_dead_lettered",
            "Source events sent to the dead-letter sink after the last failed attempt",
            m.source_dead_lettered.clone(),
        );
        registry.register(
            "source_events_failed",
            "Source events that reached neither the sink nor a dead-letter sink (dropped, or a Ping tick skipped because too many deliveries were in flight)",
            m.source_failed.clone(),
        );
        registry.register(
            "autoscaler_desired_replicas",
            "Replicas the autoscaler (KPA) wants for a Service",
            m.autoscaler_desired.clone(),
        );
        registry.register(
            "autoscaler_actual_replicas",
            "Replicas of a Service running (starting or ready)",
            m.autoscaler_actual.clone(),
        );
        registry.register(
            "autoscaler_ready_replicas",
            "Replicas of a Service taking requests",
            m.autoscaler_ready.clone(),
        );
        registry.register(
            "autoscaler_panic",
            "1 while a Service's autoscaler is in panic mode",
            m.autoscaler_panic.clone(),
        );
        registry.register(
            "activator_queue_depth",
            "Requests waiting in a Service's activator for a replica",
            m.activator_queue_depth.clone(),
        );
        registry.register(
            "activator_in_flight",
            "Requests sent to a Service's replicas and not answered yet",
            m.activator_in_flight.clone(),
        );
        registry.register(
            "autoscaler_backlog",
            "Events waiting in trigger channels for a Service, counted as its demand",
            m.autoscaler_backlog.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Registry for components that add their own metrics (sources, channels).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl TriggerLabels {
    pub fn new(namespace: &str, broker: &str, trigger: &str) -> Self {
        TriggerLabels {
            namespace: namespace.into(),
            broker: broker.into(),
            trigger: trigger.into(),
        }
    }
}
