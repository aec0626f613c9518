//! Refs to objects of kinds Sluice does not run — a Knative Service, another project's
//! channel, any Addressable — resolved the Knative way: the object's `status.addresses[0].url`,
//! else `status.address.url` (SEMANTICS.md §8, destination resolution).
//!
//! Only the controller reads those objects (its ClusterRole aggregates every role labelled
//! `duck.knative.dev/addressable: "true"`, as Knative's addressable resolver does). It writes the
//! result into the referrer's status (`subscriberUri`, `sinkUri`, `deadLetterSinkUri`), and the
//! data plane takes it from there ([`use_resolved_status`]), as Knative's dispatchers do: the
//! data plane needs no rights on arbitrary kinds.

use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::Client;
use serde_json::Value;
use sluice_crds::types::{DeliverySpec, Destination};
use sluice_crds::{AddressableRef, Loaded, Resource};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use url::Url;

/// Looks every ref up in the API server. `kinds` caches discovery between passes.
pub async fn lookup(
    client: &Client,
    refs: &BTreeSet<AddressableRef>,
    kinds: &mut HashMap<String, ApiResource>,
) -> BTreeMap<AddressableRef, Result<Url, String>> {
    let mut out = BTreeMap::new();
    for r in refs {
        let found = one(client, r, kinds).await;
        out.insert(r.clone(), found);
    }
    out
}

async fn one(
    client: &Client,
    r: &AddressableRef,
    kinds: &mut HashMap<String, ApiResource>,
) -> Result<Url, String> {
    let what = format!("{} {}/{} ({})", r.kind, r.namespace, r.name, r.api_version);
    let cache_key = format!("{}/{}", r.api_version, r.kind);
    let ar = match kinds.get(&cache_key) {
        Some(ar) => ar.clone(),
        None => {
            let (group, version) = match r.api_version.split_once('/') {
                Some((g, v)) => (g, v),
                None => ("", r.api_version.as_str()),
            };
            let gvk = GroupVersionKind::gvk(group, version, &r.kind);
            let (ar, _) = kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(|e| {
                    format!(
                        "the API server does not serve {}/{}: {e}",
                        r.api_version, r.kind
                    )
                })?;
            kinds.insert(cache_key, ar.clone());
            ar
        }
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &r.namespace, &ar);
    let obj = api
        .get_opt(&r.name)
        .await
        .map_err(|e| format!("cannot read {what}: {e}"))?
        .ok_or_else(|| format!("{what} does not exist"))?;
    address_in_status(&obj.data).ok_or_else(|| {
        format!(
            "{what} has no address (status.address.url): it is not addressable, or not ready yet"
        )
    })
}

/// `status.addresses[0].url`, else `status.address.url`.
pub fn address_in_status(object: &Value) -> Option<Url> {
    let status = object.get("status")?;
    let from_list = status
        .get("addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| a.get("url"));
    let url = from_list.or_else(|| status.get("address").and_then(|a| a.get("url")))?;
    Url::parse(url.as_str()?).ok()
}

/// For the data plane: each destination naming a kind `build` cannot resolve becomes the
/// URI the controller resolved and wrote into the object's status — when that status is of
/// the current generation (else the ref stays, and the object is reported unresolved until
/// the controller catches up).
pub fn use_resolved_status(loaded: &mut [Loaded]) {
    for l in loaded {
        match &mut l.resource {
            Resource::Trigger(t) => {
                let Some(st) = &t.status else { continue };
                if st.observed_generation.is_none()
                    || st.observed_generation != t.metadata.generation
                {
                    continue;
                }
                let (sub, dls) = (st.subscriber_uri.clone(), st.dead_letter_sink_uri.clone());
                replace(&mut t.spec.subscriber, sub);
                replace_dls(t.spec.delivery.as_mut(), dls);
            }
            Resource::Broker(b) => {
                let Some(st) = &b.status else { continue };
                if st.observed_generation.is_none()
                    || st.observed_generation != b.metadata.generation
                {
                    continue;
                }
                let dls = st.dead_letter_sink_uri.clone();
                replace_dls(b.spec.delivery.as_mut(), dls);
            }
            Resource::PingSource(p) => {
                let Some(st) = &p.status else { continue };
                if st.observed_generation.is_none()
                    || st.observed_generation != p.metadata.generation
                {
                    continue;
                }
                let sink = st.sink_uri.clone();
                replace(&mut p.spec.sink, sink);
            }
            Resource::KafkaSource(k) => {
                let Some(st) = &k.status else { continue };
                if st.observed_generation.is_none()
                    || st.observed_generation != k.metadata.generation
                {
                    continue;
                }
                let sink = st.sink_uri.clone();
                replace(&mut k.spec.sink, sink);
            }
            Resource::ApiServerSource(a) => {
                let Some(st) = &a.status else { continue };
                if st.observed_generation.is_none()
                    || st.observed_generation != a.metadata.generation
                {
                    continue;
                }
                let sink = st.sink_uri.clone();
                replace(&mut a.spec.sink, sink);
            }
            // Not read from the cluster (embedded mode only).
            // Channels, Subscriptions, flows and EventTransforms are not watched in
            // Kubernetes mode yet (they run in embedded mode).
            Resource::ConfigMap(_)
            | Resource::ContainerSource(_)
            // The controller resolves these itself (`sluice_crds::bound_sinks`).
            | Resource::SinkBinding(_)
            | Resource::Channel(_)
            | Resource::InMemoryChannel(_)
            | Resource::KafkaChannel(_)
            | Resource::NatsJetStreamChannel(_)
            | Resource::Subscription(_)
            | Resource::Sequence(_)
            | Resource::Parallel(_)
            | Resource::EventTransform(_)
            // Names no destination.
            | Resource::EventPolicy(_)
            // Services are read in embedded mode only (Knative Serving owns them in a cluster).
            | Resource::Service(_) => {}
        }
    }
}

fn replace_dls(delivery: Option<&mut DeliverySpec>, uri: Option<String>) {
    if let Some(d) = delivery.and_then(|d| d.dead_letter_sink.as_mut()) {
        replace(d, uri);
    }
}

fn replace(dest: &mut Destination, resolved: Option<String>) {
    let external = dest
        .reference
        .as_ref()
        .is_some_and(|r| !AddressableRef::is_native(&r.api_version, &r.kind));
    if let (true, Some(uri)) = (external, resolved) {
        dest.reference = None;
        dest.uri = Some(uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_address_comes_from_addresses_first_then_address() {
        let both = json!({"status": {
            "addresses": [{"name": "https", "url": "https://a.example/"}],
            "address": {"url": "http://b.example/"}}});
        assert_eq!(
            address_in_status(&both).unwrap().as_str(),
            "https://a.example/"
        );
        let one = json!({"status": {"address": {"url": "http://b.example/x"}}});
        assert_eq!(
            address_in_status(&one).unwrap().as_str(),
            "http://b.example/x"
        );
        assert_eq!(address_in_status(&json!({"status": {}})), None);
        assert_eq!(address_in_status(&json!({})), None);
    }

    fn trigger(yaml: &str) -> Loaded {
        sluice_crds::parse_yaml(yaml, "t.yaml").unwrap().remove(0)
    }

    #[test]
    fn the_data_plane_uses_the_uri_the_controller_resolved_for_its_generation_only() {
        let yaml = |gen: i64, observed: i64| {
            format!(
                "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t, namespace: ns, generation: {gen}}}\nspec:\n  broker: b\n  subscriber:\n    ref: {{apiVersion: serving.knative.dev/v1, kind: Service, name: fn}}\nstatus:\n  observedGeneration: {observed}\n  subscriberUri: http://fn.ns.example.com\n"
            )
        };
        let mut current = vec![trigger(&yaml(2, 2))];
        use_resolved_status(&mut current);
        let Resource::Trigger(t) = &current[0].resource else {
            unreachable!()
        };
        assert_eq!(
            t.spec.subscriber.uri.as_deref(),
            Some("http://fn.ns.example.com")
        );
        assert!(t.spec.subscriber.reference.is_none());

        let mut stale = vec![trigger(&yaml(3, 2))];
        use_resolved_status(&mut stale);
        let Resource::Trigger(t) = &stale[0].resource else {
            unreachable!()
        };
        assert!(
            t.spec.subscriber.reference.is_some(),
            "status of an older spec is not used"
        );
    }
}
