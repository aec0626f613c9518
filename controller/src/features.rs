//! Knative's feature flags from the `config-features` ConfigMap in Sluice's own namespace
//! (SEMANTICS.md §11). Read from the same snapshot as every other resource, so the
//! controller (which addresses it publishes) and each data-plane replica (which listener
//! serves events) follow an edit of the ConfigMap without a restart.

use sluice_core::transport::{TransportEncryption, CONFIG_FEATURES};
use sluice_crds::{Loaded, Resource};

/// `transport-encryption` of `config-features` in `system_namespace`: `Ok(None)` when the
/// ConfigMap or the key is absent (the process's own default applies), an error naming the
/// ConfigMap when the value is not one Knative knows.
pub fn transport_encryption(
    resources: &[Loaded],
    system_namespace: &str,
) -> Result<Option<TransportEncryption>, String> {
    let Some(cm) = resources.iter().find_map(|r| match &r.resource {
        Resource::ConfigMap(cm) if r.namespace == system_namespace && r.name == CONFIG_FEATURES => {
            Some(cm)
        }
        _ => None,
    }) else {
        return Ok(None);
    };
    let Some(value) = cm
        .data
        .as_ref()
        .and_then(|d| d.get(sluice_core::transport::CONFIG_KEY))
    else {
        return Ok(None);
    };
    TransportEncryption::parse(value)
        .map(Some)
        .map_err(|e| format!("ConfigMap {system_namespace}/{CONFIG_FEATURES}: {e}"))
}

/// The label Knative puts on trust-bundle ConfigMaps (CA certificates clients trust).
pub const TRUST_BUNDLE_LABEL: &str = "networking.knative.dev/trust-bundle";

/// The PEM values of the ConfigMaps in `system_namespace` labelled
/// `networking.knative.dev/trust-bundle: "true"`, in name and key order.
pub fn trust_bundles(resources: &[Loaded], system_namespace: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut maps: Vec<_> = resources
        .iter()
        .filter(|r| r.namespace == system_namespace)
        .filter_map(|r| match &r.resource {
            Resource::ConfigMap(cm) => Some((&r.name, cm)),
            _ => None,
        })
        .filter(|(_, cm)| {
            cm.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(TRUST_BUNDLE_LABEL))
                .is_some_and(|v| v == "true")
        })
        .collect();
    maps.sort_by_key(|(name, _)| name.as_str());
    for (_, cm) in maps {
        for pem in cm.data.iter().flat_map(|d| d.values()) {
            if pem.contains("-----BEGIN CERTIFICATE-----") {
                out.push(pem.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(ns: &str, name: &str, data: &str) -> Vec<Loaded> {
        let yaml = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata: {{{data}}}\n"
        );
        sluice_crds::load::parse_yaml(&yaml, "f").unwrap()
    }

    #[test]
    fn the_system_namespaces_config_features_decides() {
        use TransportEncryption::*;
        type Case = (
            Vec<Loaded>,
            Result<Option<TransportEncryption>, &'static str>,
        );
        let cases: &[Case] = &[
            (vec![], Ok(None)),
            (cm("sluice-system", "config-features", "authentication-oidc: enabled"), Ok(None)),
            (cm("sluice-system", "config-features", "transport-encryption: Strict"), Ok(Some(Strict))),
            (cm("sluice-system", "config-features", "transport-encryption: permissive"), Ok(Some(Permissive))),
            // Another namespace's or another ConfigMap's keys do not count.
            (cm("default", "config-features", "transport-encryption: strict"), Ok(None)),
            (cm("sluice-system", "config-other", "transport-encryption: strict"), Ok(None)),
            (
                cm("sluice-system", "config-features", "transport-encryption: on"),
                Err("ConfigMap sluice-system/config-features: transport-encryption \"on\" is not one of"),
            ),
        ];
        for (resources, want) in cases {
            let got = transport_encryption(resources, "sluice-system");
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g),
                (Err(w), Err(g)) => assert!(g.contains(w), "{g}"),
                _ => panic!("got {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn trust_bundles_are_the_labelled_config_maps_of_the_system_namespace() {
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let yaml = format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: b, namespace: sluice-system, labels: {{networking.knative.dev/trust-bundle: "true"}}}}
data: {{ca.crt: "{p}", note: "not a certificate"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: unlabelled, namespace: sluice-system}}
data: {{ca.crt: "{p}"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: elsewhere, namespace: default, labels: {{networking.knative.dev/trust-bundle: "true"}}}}
data: {{ca.crt: "{p}"}}
"#,
            p = pem.replace('\n', "\\n")
        );
        let resources = sluice_crds::load::parse_yaml(&yaml, "f").unwrap();
        assert_eq!(
            trust_bundles(&resources, "sluice-system"),
            vec![pem.to_string()]
        );
        assert!(trust_bundles(&resources, "other").is_empty());
    }
}
