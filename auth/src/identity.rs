//! Names of OIDC identities (SEMANTICS.md §11): the audience an addressable's tokens carry,
//! the ServiceAccount a sender uses and the subject of its tokens.

use sluice_core::topology::{Kind, ObjectRef};

/// The audience of an addressable: lower-case `<group>/<kind>/<namespace>/<name>`, e.g.
/// `eventing.knative.dev/broker/default/default`.
pub fn audience(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{group}/{kind}/{namespace}/{name}").to_ascii_lowercase()
}

/// The API group of a kind Sluice runs.
pub fn group_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Broker | Kind::Trigger | Kind::EventTransform | Kind::EventPolicy => {
            "eventing.knative.dev"
        }
        Kind::Channel
        | Kind::InMemoryChannel
        | Kind::KafkaChannel
        | Kind::NatsJetStreamChannel
        | Kind::Subscription => "messaging.knative.dev",
        Kind::Sequence | Kind::Parallel => "flows.knative.dev",
        Kind::PingSource
        | Kind::KafkaSource
        | Kind::ApiServerSource
        | Kind::ContainerSource
        | Kind::SinkBinding => "sources.knative.dev",
        Kind::Service => "serving.knative.dev",
        Kind::ConfigMap => "",
    }
}

/// The audience of an object Sluice serves.
pub fn audience_of(object: &ObjectRef) -> String {
    audience(
        group_of(object.kind),
        object.kind.as_str(),
        &object.key.namespace,
        &object.key.name,
    )
}

/// Longest Kubernetes object name (a DNS label for ServiceAccounts' uses in tokens).
const MAX_NAME: usize = 253;

/// The ServiceAccount a sender (Trigger, Subscription, source) sends with:
/// `<name>-oidc-<group>-<kind>`, lower case.
pub fn service_account(name: &str, group: &str, kind: &str) -> String {
    let mut sa = format!("{name}-oidc-{group}-{kind}").to_ascii_lowercase();
    sa.truncate(MAX_NAME);
    sa
}

/// [`service_account`] of an object Sluice runs.
pub fn service_account_of(object: &ObjectRef) -> String {
    service_account(
        &object.key.name,
        group_of(object.kind),
        object.kind.as_str(),
    )
}

/// The subject of a ServiceAccount's tokens: `system:serviceaccount:<namespace>:<name>`.
pub fn subject(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::topology::Key;

    #[test]
    fn names_follow_semantics_11() {
        let broker = ObjectRef::broker(Key::new("Team-A", "Default"));
        assert_eq!(
            audience_of(&broker),
            "eventing.knative.dev/broker/team-a/default"
        );
        let ch = ObjectRef::new(Kind::InMemoryChannel, Key::new("ns", "c"));
        assert_eq!(
            audience_of(&ch),
            "messaging.knative.dev/inmemorychannel/ns/c"
        );
        let trigger = ObjectRef::trigger(Key::new("ns", "t1"));
        assert_eq!(
            service_account_of(&trigger),
            "t1-oidc-eventing.knative.dev-trigger"
        );
        let ping = ObjectRef::new(Kind::PingSource, Key::new("ns", "Tick"));
        assert_eq!(
            service_account_of(&ping),
            "tick-oidc-sources.knative.dev-pingsource"
        );
        assert_eq!(subject("ns", "sa"), "system:serviceaccount:ns:sa");
    }
}
