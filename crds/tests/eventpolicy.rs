//! EventPolicy YAML to the compiled policies the ingress decides with (SEMANTICS.md §11).

use sluice_core::topology::{Key, Kind, ObjectRef, Topology};
use sluice_core::{Event, SpecVersion};
use sluice_crds::{build, parse_yaml, Defaults};

fn build_str(yaml: &str, oidc: bool) -> Result<Topology, Vec<String>> {
    let mut d = Defaults::new("http://127.0.0.1:8080/".parse().unwrap());
    d.oidc = oidc;
    let loaded = parse_yaml(yaml, "test.yaml").map_err(|e| vec![e.to_string()])?;
    build(&loaded, &d).map_err(|es| es.iter().map(ToString::to_string).collect())
}

const TARGETS: &str = r#"
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: orders, namespace: shop, labels: {team: a}}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: audit, namespace: shop, labels: {team: b}}
---
apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata: {name: ch, namespace: shop, labels: {team: a}}
"#;

#[test]
fn policies_compile_with_refs_selectors_subjects_and_filters() {
    let yaml = format!(
        r#"{TARGETS}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {{name: p, namespace: shop}}
spec:
  to:
    - ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: audit}}
    - selector:
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        matchLabels: {{team: a}}
    - selector:
        apiVersion: messaging.knative.dev/v1
        kind: InMemoryChannel
        matchExpressions: [{{key: team, operator: In, values: [a]}}]
  from:
    - ref: {{apiVersion: sources.knative.dev/v1, kind: PingSource, name: tick}}
    - ref: {{apiVersion: eventing.knative.dev/v1, kind: Trigger, name: t, namespace: other}}
    - sub: "system:serviceaccount:partners:*"
  filters:
    - prefix: {{type: order.}}
---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {{name: everything, namespace: shop}}
spec:
  from: [{{sub: alice}}]
"#
    );
    let t = build_str(&yaml, true).unwrap();
    let p = &t.event_policies[&Key::new("shop", "p")];
    let b = |n: &str| ObjectRef::broker(Key::new("shop", n));
    assert_eq!(
        p.to.as_deref(),
        Some(
            &[
                b("audit"),
                b("orders"),
                ObjectRef::new(Kind::Channel, Key::new("shop", "ch"))
            ][..]
        )
    );
    assert_eq!(
        p.from,
        [
            "system:serviceaccount:shop:tick-oidc-sources.knative.dev-pingsource",
            "system:serviceaccount:other:t-oidc-eventing.knative.dev-trigger",
            "system:serviceaccount:partners:*",
        ]
    );
    let f = p.filter.as_ref().expect("filters compiled");
    assert!(f.matches(&Event::new(SpecVersion::V10, "1", "/s", "order.created")));
    assert!(!f.matches(&Event::new(SpecVersion::V10, "1", "/s", "user.created")));
    let all = &t.event_policies[&Key::new("shop", "everything")];
    assert_eq!(all.to, None, "an empty `to` covers the whole namespace");
    assert!(all.filter.is_none());
}

#[test]
fn policies_are_refused_while_oidc_is_off_and_bad_ones_say_why() {
    let policy = |spec: &str| {
        format!(
            "{TARGETS}\n---\napiVersion: eventing.knative.dev/v1alpha1\nkind: EventPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}\n"
        )
    };
    let off = build_str(&policy("  from: [{sub: alice}]"), false).unwrap_err();
    assert!(
        off[0].contains("EventPolicy shop/p") && off[0].contains("authentication-oidc"),
        "{off:?}"
    );
    let cases = [
        (
            "  from: [{sub: 'system:*:x'}]",
            "spec.from[0].sub",
            "only at the end",
        ),
        (
            "  from: [{sub: a, ref: {apiVersion: v1/x, kind: K, name: n}}]",
            "spec.from[0]",
            "exactly one of `ref` and `sub`",
        ),
        (
            "  to: [{ref: {apiVersion: v1, kind: Service, name: s}}]",
            "spec.to[0].ref",
            "not an addressable Sluice authorizes",
        ),
        ("  to: [{}]", "spec.to[0]", "exactly one of `ref` and `selector`"),
        (
            "  to: [{selector: {apiVersion: eventing.knative.dev/v1, kind: Broker, matchExpressions: [{key: k, operator: Near}]}}]",
            "spec.to[0].selector.matchExpressions[0].operator",
            "not an operator",
        ),
        (
            "  filters: [{cesql: \"type = \"}]",
            "spec.filters",
            "",
        ),
    ];
    for (spec, field, needle) in cases {
        let errs = build_str(&policy(spec), true).unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains(field) && e.contains(needle)),
            "{spec}: {errs:?}"
        );
    }
}
