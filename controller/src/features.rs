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
}
