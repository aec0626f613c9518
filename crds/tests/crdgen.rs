//! The CRDs checked in under `crds/yaml/` are exactly what the types generate, so a change to a
//! type cannot ship without its CRD (and `deploy/`, which includes that directory).

use sluice_crds::crds::REGENERATE;
use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    let mut problems = Vec::new();
    let files = sluice_crds::crd_files();
    for (name, want) in &files {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(have) if &have == want => {}
            Ok(_) => problems.push(format!("crds/yaml/{name} differs from the generated CRD")),
            Err(e) => problems.push(format!("crds/yaml/{name} cannot be read: {e}")),
        }
    }
    let generated: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !generated.contains(name.as_str()) {
            problems.push(format!("crds/yaml/{name} is not generated any more"));
        }
    }
    assert!(
        problems.is_empty(),
        "the checked-in CRDs are out of date:\n  {}\nRegenerate them with `{REGENERATE}` and commit crds/yaml/.",
        problems.join("\n  ")
    );
}

#[test]
fn one_file_per_crd_named_plural_dot_group() {
    let files = sluice_crds::crd_files();
    for crd in sluice_crds::crds() {
        let want = format!("{}.{}.yaml", crd.spec.names.plural, crd.spec.group);
        assert!(files.iter().any(|(n, _)| *n == want), "no {want}");
        let (_, text) = files.iter().find(|(n, _)| *n == want).unwrap();
        assert!(text.starts_with("# Generated"), "{want} has no header");
        assert!(
            text.contains(REGENERATE),
            "{want} does not say how to regenerate it"
        );
    }
    let (_, kustomization) = files
        .iter()
        .find(|(n, _)| n == "kustomization.yaml")
        .expect("a kustomization.yaml");
    for (name, _) in files.iter().filter(|(n, _)| n != "kustomization.yaml") {
        assert!(kustomization.contains(&format!("- {name}\n")), "{name}");
    }
}

#[test]
fn knative_versions_and_columns_are_served() {
    let crds = sluice_crds::crds();
    let get = |name: &str| {
        crds.iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no CRD {name}"))
    };
    let versions = |name: &str| -> Vec<(String, bool)> {
        get(name)
            .spec
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.storage))
            .collect()
    };
    assert_eq!(
        versions("kafkasources.sources.knative.dev"),
        [("v1".to_string(), true), ("v1beta1".to_string(), false)]
    );
    assert_eq!(
        versions("eventtypes.eventing.knative.dev"),
        [
            ("v1beta3".to_string(), true),
            ("v1beta2".to_string(), false)
        ]
    );
    let columns = |name: &str| -> Vec<String> {
        get(name).spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.to_uppercase())
            .collect()
    };
    assert_eq!(
        columns("brokers.eventing.knative.dev"),
        ["URL", "AGE", "READY", "REASON"]
    );
    assert_eq!(
        columns("triggers.eventing.knative.dev"),
        ["BROKER", "SUBSCRIBER_URI", "AGE", "READY", "REASON"]
    );
    for source in [
        "pingsources",
        "kafkasources",
        "apiserversources",
        "sinkbindings",
        "containersources",
    ] {
        let name = format!("{source}.sources.knative.dev");
        assert_eq!(columns(&name), ["SINK", "AGE", "READY", "REASON"], "{name}");
        let crd = get(&name);
        let categories = crd.spec.names.categories.clone().unwrap_or_default();
        assert!(categories.contains(&"sources".to_string()), "{name}");
        assert!(
            crd.spec
                .versions
                .iter()
                .all(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some())),
            "{name} has no status subresource"
        );
    }
}
