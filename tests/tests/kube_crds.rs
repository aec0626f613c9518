//! Sluice's CRDs (`crds/yaml/`) and its deployment (`deploy/`) against a real kube-apiserver:
//! Knative's documentation examples apply unchanged, `kubectl get` prints Knative's columns,
//! bad objects are refused with a message naming the field, and the RBAC in `deploy/` gives
//! the controller and the data plane what they need and nothing more.
//!
//! One API server is shared by the tests in this binary; each test uses its own namespaces.

use sluice_tests::{eventually, shared_kube, KubeServer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::OnceCell;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn ok(r: Result<String, String>) -> String {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The CRD names in `crds/yaml/` (one file per CRD, named after it).
fn crd_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("crds/yaml"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".yaml").map(str::to_string))
        .filter(|n| n != "kustomization")
        .collect();
    names.sort();
    names
}

/// The shared server with every CRD applied (`kubectl apply -k crds/yaml`) and Established,
/// and served to kubectl's discovery.
async fn kube() -> &'static KubeServer {
    static READY: OnceCell<()> = OnceCell::const_new();
    let kube = shared_kube().await;
    READY
        .get_or_init(|| async {
            let dir = repo().join("crds/yaml");
            ok(kube.kubectl(&["apply", "-k", dir.to_str().unwrap()]).await);
            for name in crd_names() {
                eventually(
                    Duration::from_secs(60),
                    &format!("CRD {name} to be Established"),
                    || async {
                        let status = kube
                            .kubectl(&[
                                "get",
                                "crd",
                                &name,
                                "-o",
                                r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#,
                            ])
                            .await
                            .ok()?;
                        (status == "True").then_some(())
                    },
                )
                .await;
            }
            // kubectl learns new kinds through discovery, a moment after Established.
            eventually(
                Duration::from_secs(60),
                "kubectl to see the new kinds",
                || async {
                    let resources = kube
                        .kubectl(&["api-resources", "--categories=knative", "-o", "name"])
                        .await
                        .ok()?;
                    crd_names()
                        .iter()
                        .all(|n| resources.lines().any(|l| l == n))
                        .then_some(())
                },
            )
            .await;
        })
        .await;
    kube
}

async fn create_namespace(kube: &KubeServer, name: &str) {
    ok(kube.kubectl(&["create", "namespace", name]).await);
}

#[tokio::test]
async fn every_crd_is_established_with_knative_names_and_categories() {
    let kube = kube().await;
    let names = crd_names();
    assert_eq!(names.len(), 17, "{names:?}");
    let resources = ok(kube
        .kubectl(&[
            "api-resources",
            "--api-group=sources.knative.dev",
            "-o",
            "wide",
        ])
        .await);
    for kind in [
        "PingSource",
        "KafkaSource",
        "ApiServerSource",
        "SinkBinding",
        "ContainerSource",
    ] {
        let line = resources
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == kind))
            .unwrap_or_else(|| panic!("{kind} is not served:\n{resources}"));
        assert!(
            line.contains("sources"),
            "{kind} is not in `sources`: {line}"
        );
    }
    // `kubectl get sources` and `kubectl get eventing` list the kinds, as with Knative.
    let sources = ok(kube
        .kubectl(&["api-resources", "--categories=sources", "-o", "name"])
        .await);
    assert_eq!(sources.lines().count(), 5, "{sources}");
    let eventing = ok(kube
        .kubectl(&["api-resources", "--categories=eventing", "-o", "name"])
        .await);
    for n in [
        "brokers.eventing.knative.dev",
        "triggers.eventing.knative.dev",
        "eventtypes.eventing.knative.dev",
    ] {
        assert!(eventing.lines().any(|l| l == n), "{n} not in {eventing}");
    }
}

/// The values the documentation pages give for their own `<placeholders>`.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("<broker-name>", "default"),
    ("<pingsource-name>", "test-ping-source"),
    ("<cron-schedule>", "*/1 * * * *"),
    ("<content-type>", "application/json"),
    ("<data>", r#"{"message": "Hello world!"}"#),
    ("<base64-data>", "ZGF0YQ=="),
    ("<sink-kind>", "Service"),
    ("<sink-name>", "event-display"),
    ("<containersource-name>", "test-heartbeats"),
    (
        "<event-source-image-uri>",
        "gcr.io/knative-nightly/knative.dev/eventing/cmd/heartbeats",
    ),
    ("<container-name>", "heartbeats"),
    ("<pod-name>", "mypod"),
    ("<pod-namespace>", "event-test"),
    ("<sink>", "event-display"),
    ("<apiserversource>", "testevents"),
    ("<service-account>", "events-sa"),
];

#[tokio::test]
async fn knative_documentation_examples_are_accepted_unchanged() {
    let kube = kube().await;
    let dir = repo().join("tests/fixtures/knative-docs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "only {} fixtures", files.len());
    let mut kinds = std::collections::BTreeSet::new();
    for (i, file) in files.iter().enumerate() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.starts_with("# Knative docs, "),
            "{name} must say which documentation page it comes from"
        );
        // Each example in its own namespace: several share a name (`my-service-trigger`).
        let ns = format!("docs-{i}");
        create_namespace(kube, &ns).await;
        let mut yaml = text.replace("<namespace>", &ns);
        for (placeholder, value) in PLACEHOLDERS {
            yaml = yaml.replace(placeholder, value);
        }
        assert!(
            !yaml.contains('<'),
            "{name} has a placeholder the test does not fill"
        );
        // Objects that name their namespace (e.g. `default`) go there; others into `ns`.
        let names_namespace = yaml
            .lines()
            .any(|l| l.trim_start().starts_with("namespace: "));
        let mut args = vec!["apply", "-o", "name", "-f", "-"];
        if !names_namespace {
            args.extend(["-n", &ns]);
        }
        let out = kube
            .kubectl_stdin(&args, &yaml)
            .await
            .unwrap_or_else(|e| panic!("{name} was refused: {e}"));
        // `apply -o name` prints `<resource>.<group>/<name>` per object created.
        let created: Vec<&str> = out.lines().collect();
        assert_eq!(
            created.len(),
            yaml.matches("\nkind: ").count(),
            "{name}: {out}"
        );
        for c in created {
            kinds.insert(c.split('/').next().unwrap().to_string());
        }
    }
    // Every kind Sluice serves has at least one documentation example, except those whose
    // Knative examples are not kept yet: the Subscription examples use the retired v1beta1
    // or name a namespace of their own, and no page shows a complete InMemoryChannel,
    // NatsJetStreamChannel or EventTransform (crds/tests/fixtures/knative/ and
    // sluice/tests/flows.rs cover them in embedded mode).
    const NO_EXAMPLE_YET: &[&str] = &[
        "inmemorychannels.messaging.knative.dev",
        "natsjetstreamchannels.messaging.knative.dev",
        "subscriptions.messaging.knative.dev",
        "eventtransforms.eventing.knative.dev",
        // Covered by sluice/tests/oidc.rs and kube_oidc.rs (applied with kubectl there).
        "eventpolicies.eventing.knative.dev",
    ];
    for crd in crd_names() {
        if NO_EXAMPLE_YET.contains(&crd.as_str()) {
            continue;
        }
        let (plural, group) = crd.split_once('.').unwrap();
        let kind = format!("{}.{group}", plural.trim_end_matches('s'));
        assert!(
            kinds.contains(&kind),
            "no documentation example for {crd} (created: {kinds:?})"
        );
    }
}

#[tokio::test]
async fn documented_values_survive_the_round_trip() {
    let kube = kube().await;
    let ns = "round-trip";
    create_namespace(kube, ns).await;
    // The same KafkaSource through Knative's v1beta1 and read back as v1.
    ok(kube
        .kubectl_stdin(
            &["apply", "-n", ns, "-f", "-"],
            r#"{"apiVersion": "sources.knative.dev/v1beta1", "kind": "KafkaSource",
                "metadata": {"name": "orders"},
                "spec": {"bootstrapServers": ["kafka:9092"], "topics": ["orders"],
                         "consumerGroup": "g", "initialOffset": "earliest",
                         "sink": {"uri": "http://sink.example/"}}}"#,
        )
        .await);
    let v1 = ok(kube
        .kubectl(&[
            "get",
            "kafkasources.v1.sources.knative.dev",
            "orders",
            "-n",
            ns,
            "-o",
            "jsonpath={.apiVersion} {.spec.topics[0]} {.spec.initialOffset}",
        ])
        .await);
    assert_eq!(v1, "sources.knative.dev/v1 orders earliest");

    // A v1beta2 EventType keeps its v1beta2 fields when read as v1beta3 (no conversion
    // webhook: the v1beta3 schema accepts them rather than pruning them).
    let created = kube
        .kubectl_stdin(
            &["apply", "-n", ns, "-f", "-"],
            r#"{"apiVersion": "eventing.knative.dev/v1beta2", "kind": "EventType",
                "metadata": {"name": "push"},
                "spec": {"type": "dev.knative.source.github.push",
                         "source": "https://github.com/knative/eventing",
                         "reference": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}}"#,
        )
        .await;
    let created = ok(created);
    assert!(created.contains("eventtype"), "{created}");
    let v1beta3 = ok(kube
        .kubectl(&[
            "get",
            "eventtypes.v1beta3.eventing.knative.dev",
            "push",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.type} {.spec.reference.kind}",
        ])
        .await);
    assert_eq!(v1beta3, "dev.knative.source.github.push Broker");

    // A v1beta3 EventType with attributes.
    ok(kube
        .kubectl_stdin(
            &["apply", "-n", ns, "-f", "-"],
            r#"{"apiVersion": "eventing.knative.dev/v1beta3", "kind": "EventType",
                "metadata": {"name": "ping"},
                "spec": {"reference": {"apiVersion": "sources.knative.dev/v1", "kind": "PingSource", "name": "p"},
                         "description": "pings",
                         "attributes": [{"name": "type", "required": true, "value": "dev.knative.sources.ping"},
                                        {"name": "source", "required": true}, {"name": "specversion", "required": true},
                                        {"name": "id", "required": true}]}}"#,
        )
        .await);
    let table = ok(kube.kubectl(&["get", "eventtypes", "-n", ns]).await);
    let header = table.lines().next().unwrap();
    for col in [
        "REFERENCE NAME",
        "REFERENCE KIND",
        "DESCRIPTION",
        "AGE",
        "READY",
        "REASON",
    ] {
        assert!(header.contains(col), "{col} missing: {table}");
    }
    assert!(table.contains("pings"), "{table}");
}

fn columns(header: &str) -> Vec<&str> {
    header.split_whitespace().collect()
}

#[tokio::test]
async fn kubectl_get_prints_knative_columns_from_the_status() {
    let kube = kube().await;
    let ns = "columns";
    create_namespace(kube, ns).await;
    ok(kube
        .kubectl_stdin(
            &["apply", "-n", ns, "-f", "-"],
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n---\n\
             apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\n\
             spec: {broker: default, subscriber: {uri: 'http://sink.example/'}}\n---\n\
             apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {name: p}\n\
             spec: {sink: {uri: 'http://sink.example/'}}\n",
        )
        .await);
    // What the controller will write through the status subresource.
    let now = "2026-01-01T00:00:00Z";
    let patch = |kind: &'static str, status: String| async move {
        ok(kube
            .kubectl(&[
                "patch",
                kind,
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &format!(r#"{{"status": {status}}}"#),
            ])
            .await)
    };
    patch(
        "broker/default",
        format!(
            r#"{{"observedGeneration": 1,
                "address": {{"name": "http", "url": "http://sluice-ingress.sluice-system.svc.cluster.local/columns/default"}},
                "addresses": [{{"name": "http", "url": "http://sluice-ingress.sluice-system.svc.cluster.local/columns/default"}}],
                "conditions": [{{"type": "Ready", "status": "True", "lastTransitionTime": "{now}"}},
                               {{"type": "IngressReady", "status": "True", "lastTransitionTime": "{now}"}}]}}"#
        ),
    )
    .await;
    patch(
        "trigger/t",
        format!(
            r#"{{"observedGeneration": 1, "subscriberUri": "http://sink.example/",
                "conditions": [{{"type": "Ready", "status": "False", "reason": "BrokerDoesNotExist",
                                 "message": "Broker \"default\" does not exist", "lastTransitionTime": "{now}"}}]}}"#
        ),
    )
    .await;
    patch(
        "pingsource/p",
        format!(
            r#"{{"observedGeneration": 1, "sinkUri": "http://sink.example/",
                "ceAttributes": [{{"type": "dev.knative.sources.ping", "source": "/apis/v1/namespaces/columns/pingsources/p"}}],
                "conditions": [{{"type": "Ready", "status": "Unknown", "reason": "NewObservedGenFailure", "lastTransitionTime": "{now}"}}]}}"#
        ),
    )
    .await;

    let brokers = ok(kube.kubectl(&["get", "brokers", "-n", ns]).await);
    let mut lines = brokers.lines();
    assert_eq!(
        columns(lines.next().unwrap()),
        ["NAME", "URL", "AGE", "READY", "REASON"],
        "{brokers}"
    );
    let row = columns(lines.next().unwrap());
    assert_eq!(row[0], "default");
    assert_eq!(
        row[1],
        "http://sluice-ingress.sluice-system.svc.cluster.local/columns/default"
    );
    assert_eq!(row[3], "True", "{brokers}");

    let triggers = ok(kube.kubectl(&["get", "triggers", "-n", ns]).await);
    let mut lines = triggers.lines();
    assert_eq!(
        columns(lines.next().unwrap()),
        ["NAME", "BROKER", "SUBSCRIBER_URI", "AGE", "READY", "REASON"],
        "{triggers}"
    );
    let row = columns(lines.next().unwrap());
    assert_eq!(
        row[..3],
        ["t", "default", "http://sink.example/"],
        "{triggers}"
    );
    assert_eq!(row[4..], ["False", "BrokerDoesNotExist"], "{triggers}");

    let sources = ok(kube.kubectl(&["get", "pingsources", "-n", ns]).await);
    let mut lines = sources.lines();
    assert_eq!(
        columns(lines.next().unwrap()),
        ["NAME", "SINK", "AGE", "READY", "REASON"],
        "{sources}"
    );
    let row = columns(lines.next().unwrap());
    assert_eq!(row[..2], ["p", "http://sink.example/"], "{sources}");
    assert_eq!(row[3..], ["Unknown", "NewObservedGenFailure"], "{sources}");

    // The status fields the controller writes are kept (not pruned by the schema).
    let kept = ok(kube
        .kubectl(&[
            "get",
            "pingsource/p",
            "-n",
            ns,
            "-o",
            "jsonpath={.status.ceAttributes[0].type} {.status.conditions[0].lastTransitionTime} {.status.observedGeneration}",
        ])
        .await);
    assert_eq!(kept, format!("dev.knative.sources.ping {now} 1"));
    // `kubectl get knative` lists them all, as Knative's category does.
    let all = ok(kube
        .kubectl(&["get", "knative", "-n", ns, "-o", "name"])
        .await);
    assert_eq!(all.lines().count(), 3, "{all}");
}

/// Applies `yaml` in `ns` and returns kubectl's error; panics if it was accepted.
async fn refused(kube: &KubeServer, ns: &str, what: &str, yaml: &str) -> String {
    match kube
        .kubectl_stdin(&["apply", "-n", ns, "-f", "-"], yaml)
        .await
    {
        Ok(out) => panic!("{what} was accepted: {out}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn bad_objects_are_refused_with_the_field_and_what_is_wrong() {
    let kube = kube().await;
    let ns = "refused";
    create_namespace(kube, ns).await;
    let trigger = |delivery: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\n\
             spec: {{broker: default, subscriber: {{uri: 'http://s/'}}, delivery: {delivery}}}\n"
        )
    };

    let e = refused(kube, ns, "a negative retry", &trigger("{retry: -1}")).await;
    assert!(e.contains("spec.delivery.retry"), "{e}");
    assert!(e.contains("retry must be 0 or more"), "{e}");

    let e = refused(
        kube,
        ns,
        "an unknown backoffPolicy",
        &trigger("{backoffPolicy: fibonacci}"),
    )
    .await;
    assert!(e.contains("spec.delivery.backoffPolicy"), "{e}");
    assert!(
        e.contains("backoffPolicy must be linear or exponential"),
        "{e}"
    );

    // The same rules hold wherever a DeliverySpec appears.
    let e = refused(
        kube,
        ns,
        "a broker with a negative retry",
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\nspec: {delivery: {retry: -3}}\n",
    )
    .await;
    assert!(e.contains("spec.delivery.retry"), "{e}");

    let e = refused(
        kube,
        ns,
        "a trigger without a broker",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: nb}\nspec: {subscriber: {uri: 'http://s/'}}\n",
    )
    .await;
    assert!(e.contains("spec.broker: Required value"), "{e}");
    // An empty name is refused too, by the rule that says what to give.
    let e = refused(
        kube,
        ns,
        "a trigger with an empty broker",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: eb}\nspec: {broker: '', subscriber: {uri: 'http://s/'}}\n",
    )
    .await;
    assert!(e.contains("spec.broker is required"), "{e}");

    let e = refused(
        kube,
        ns,
        "a trigger without a subscriber",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: ns}\nspec: {broker: default}\n",
    )
    .await;
    assert!(e.contains("spec.subscriber"), "{e}");

    let e = refused(
        kube,
        ns,
        "a filter on an attribute name that cannot exist",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: key}\n\
         spec: {broker: default, filter: {attributes: {Type: x}}, subscriber: {uri: 'http://s/'}}\n",
    )
    .await;
    assert!(e.contains("spec.filter.attributes"), "{e}");
    assert!(e.contains("CloudEvents attribute names"), "{e}");

    let e = refused(
        kube,
        ns,
        "a misspelt field",
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: typo}\nspec: {brokr: default, subscriber: {uri: 'http://s/'}}\n",
    )
    .await;
    assert!(e.contains("brokr"), "{e}");

    // Changing spec.broker on update is refused; the trigger keeps its broker.
    ok(kube
        .kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &trigger("{retry: 2}"))
        .await);
    let e = kube
        .kubectl(&[
            "patch",
            "trigger",
            "t",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec": {"broker": "other"}}"#,
        ])
        .await
        .expect_err("changing spec.broker must be refused");
    assert!(e.contains("spec.broker"), "{e}");
    assert!(e.contains("Immutable fields changed"), "{e}");
    let broker = ok(kube
        .kubectl(&[
            "get",
            "trigger",
            "t",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.broker}",
        ])
        .await);
    assert_eq!(broker, "default");
    // Other fields of the trigger may change.
    ok(kube
        .kubectl(&[
            "patch",
            "trigger",
            "t",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec": {"delivery": {"retry": 5}}}"#,
        ])
        .await);

    // Broker spec.config is immutable too, including adding one later.
    ok(kube
        .kubectl_stdin(
            &["apply", "-n", ns, "-f", "-"],
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: cfg}\n\
             spec: {config: {apiVersion: v1, kind: ConfigMap, name: one}}\n---\n\
             apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: bare}\n",
        )
        .await);
    let e = kube
        .kubectl(&[
            "patch",
            "broker",
            "cfg",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec": {"config": {"name": "two"}}}"#,
        ])
        .await
        .expect_err("changing spec.config must be refused");
    assert!(e.contains("spec.config"), "{e}");
    assert!(e.contains("Immutable fields changed"), "{e}");
    let e = kube
        .kubectl(&[
            "patch",
            "broker",
            "bare",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec": {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": "late"}}}"#,
        ])
        .await
        .expect_err("adding spec.config must be refused");
    assert!(e.contains("spec.config"), "{e}");

    // Sources: a sink is required, and the enums are checked.
    let e = refused(
        kube,
        ns,
        "a PingSource without a sink",
        "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {name: p}\nspec: {schedule: '* * * * *'}\n",
    )
    .await;
    assert!(e.contains("spec.sink: Required value"), "{e}");
    let e = refused(
        kube,
        ns,
        "a PingSource with an empty sink",
        "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {name: p}\nspec: {sink: {}}\n",
    )
    .await;
    assert!(e.contains("spec.sink"), "{e}");
    assert!(e.contains("needs a `ref` or a `uri`"), "{e}");
    let e = refused(
        kube,
        ns,
        "an ApiServerSource in an unknown mode",
        "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata: {name: a}\n\
         spec: {mode: Everything, resources: [{apiVersion: v1, kind: Pod}], sink: {uri: 'http://s/'}}\n",
    )
    .await;
    assert!(e.contains("spec.mode"), "{e}");
    let e = refused(
        kube,
        ns,
        "an ApiServerSource watching nothing",
        "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata: {name: a}\nspec: {sink: {uri: 'http://s/'}}\n",
    )
    .await;
    assert!(e.contains("spec.resources"), "{e}");
    let e = refused(
        kube,
        ns,
        "a SinkBinding with both name and selector",
        "apiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata: {name: s}\n\
         spec: {subject: {apiVersion: apps/v1, kind: Deployment, name: d, selector: {matchLabels: {a: b}}}, sink: {uri: 'http://s/'}}\n",
    )
    .await;
    assert!(e.contains("spec.subject"), "{e}");
    let e = refused(
        kube,
        ns,
        "a KafkaSource without topics",
        "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata: {name: k}\n\
         spec: {bootstrapServers: ['k:9092'], sink: {uri: 'http://s/'}}\n",
    )
    .await;
    assert!(e.contains("spec.topics"), "{e}");
    // A KafkaSource's consumer group holds its offsets: it cannot change.
    ok(kube
        .kubectl_stdin(
            &["apply", "-n", ns, "-f", "-"],
            "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata: {name: k}\n\
             spec: {bootstrapServers: ['k:9092'], topics: [t], consumerGroup: g1, sink: {uri: 'http://s/'}}\n",
        )
        .await);
    let e = kube
        .kubectl(&[
            "patch",
            "kafkasource",
            "k",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec": {"consumerGroup": "g2"}}"#,
        ])
        .await
        .expect_err("changing spec.consumerGroup must be refused");
    assert!(
        e.contains("Immutable fields changed: spec.consumerGroup"),
        "{e}"
    );
    let e = refused(
        kube,
        ns,
        "an EventType without the required attributes",
        "apiVersion: eventing.knative.dev/v1beta3\nkind: EventType\nmetadata: {name: e}\n\
         spec: {attributes: [{name: type, required: true}]}\n",
    )
    .await;
    assert!(e.contains("spec.attributes"), "{e}");
}

/// `kubectl auth can-i` as `user`: true for "yes".
async fn can(kube: &KubeServer, user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", user];
    all.extend_from_slice(args);
    match kube.kubectl(&all).await {
        Ok(out) => out.trim() == "yes",
        Err(e) => {
            assert!(
                e.trim_end().ends_with("no"),
                "kubectl auth can-i failed: {e}"
            );
            false
        }
    }
}

#[tokio::test]
async fn deploy_gives_controller_and_data_plane_least_privilege() {
    let kube = kube().await;
    let deploy = repo().join("deploy");
    let out = ok(kube
        .kubectl(&["apply", "-k", deploy.to_str().unwrap()])
        .await);
    assert!(out.contains("deployment.apps/sluice-controller"), "{out}");
    assert!(out.contains("service/sluice-ingress"), "{out}");
    let svc = ok(kube
        .kubectl(&[
            "get",
            "service",
            "sluice-ingress",
            "-n",
            "sluice-system",
            "-o",
            "jsonpath={.spec.ports[0].port}->{.spec.ports[0].targetPort}",
        ])
        .await);
    assert_eq!(svc, "80->http");
    let target = ok(kube
        .kubectl(&[
            "get",
            "deployment",
            "sluice-dataplane",
            "-n",
            "sluice-system",
            "-o",
            r#"jsonpath={.spec.template.spec.containers[0].ports[?(@.name=="http")].containerPort}"#,
        ])
        .await);
    assert_eq!(target, "8080");

    let controller = "system:serviceaccount:sluice-system:sluice-controller";
    let dataplane = "system:serviceaccount:sluice-system:sluice-dataplane";
    // The bindings reach the authorizer through a watch.
    eventually(
        Duration::from_secs(30),
        "the controller's role binding to apply",
        || async {
            can(
                kube,
                controller,
                &["list", "brokers.eventing.knative.dev", "-A"],
            )
            .await
            .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the data plane's role binding to apply",
        || async {
            can(
                kube,
                dataplane,
                &["list", "triggers.eventing.knative.dev", "-A"],
            )
            .await
            .then_some(())
        },
    )
    .await;

    let knative = [
        "brokers.eventing.knative.dev",
        "triggers.eventing.knative.dev",
        "eventtypes.eventing.knative.dev",
        "pingsources.sources.knative.dev",
        "kafkasources.sources.knative.dev",
        "apiserversources.sources.knative.dev",
        "sinkbindings.sources.knative.dev",
        "containersources.sources.knative.dev",
    ];
    let mut wrong = Vec::new();
    let mut check = |who: &str, verb: &str, what: &str, extra: &[&str], want: bool, got: bool| {
        if want != got {
            wrong.push(format!(
                "{who} {verb} {what} {}: want {}, got {}",
                extra.join(" "),
                if want { "allowed" } else { "denied" },
                if got { "allowed" } else { "denied" }
            ));
        }
    };
    for kind in knative {
        for verb in ["get", "list", "watch", "update", "patch"] {
            let got = can(kube, controller, &[verb, kind, "-A"]).await;
            check("controller", verb, kind, &["-A"], true, got);
        }
        for verb in ["get", "update", "patch"] {
            let got = can(
                kube,
                controller,
                &[verb, kind, "--subresource=status", "-n", "default"],
            )
            .await;
            check("controller", verb, kind, &["status"], true, got);
        }
        for verb in ["create", "delete", "deletecollection"] {
            let got = can(kube, controller, &[verb, kind, "-n", "default"]).await;
            check("controller", verb, kind, &[], false, got);
        }
        for verb in ["get", "list", "watch"] {
            let got = can(kube, dataplane, &[verb, kind, "-A"]).await;
            check("dataplane", verb, kind, &["-A"], true, got);
        }
        for verb in ["update", "patch", "create", "delete"] {
            let got = can(kube, dataplane, &[verb, kind, "-n", "default"]).await;
            check("dataplane", verb, kind, &[], false, got);
        }
        for verb in ["update", "patch"] {
            let got = can(
                kube,
                dataplane,
                &[verb, kind, "--subresource=status", "-n", "default"],
            )
            .await;
            check("dataplane", verb, kind, &["status"], false, got);
        }
    }
    for what in [
        "services",
        "configmaps",
        "namespaces",
        "endpointslices.discovery.k8s.io",
    ] {
        for verb in ["get", "list", "watch"] {
            let got = can(kube, controller, &[verb, what, "-A"]).await;
            check("controller", verb, what, &["-A"], true, got);
        }
        for verb in ["create", "update", "delete"] {
            let got = can(kube, controller, &[verb, what, "-n", "default"]).await;
            check("controller", verb, what, &[], false, got);
        }
    }
    for verb in ["create", "patch"] {
        let got = can(kube, controller, &[verb, "events", "-n", "default"]).await;
        check("controller", verb, "events", &[], true, got);
    }
    // Leases only in its own namespace.
    for verb in ["get", "create", "update"] {
        let got = can(
            kube,
            controller,
            &[verb, "leases.coordination.k8s.io", "-n", "sluice-system"],
        )
        .await;
        check(
            "controller",
            verb,
            "leases",
            &["-n sluice-system"],
            true,
            got,
        );
        let got = can(
            kube,
            controller,
            &[verb, "leases.coordination.k8s.io", "-n", "default"],
        )
        .await;
        check("controller", verb, "leases", &["-n default"], false, got);
    }
    let got = can(
        kube,
        controller,
        &[
            "delete",
            "leases.coordination.k8s.io",
            "-n",
            "sluice-system",
        ],
    )
    .await;
    check("controller", "delete", "leases", &[], false, got);
    for (verb, what) in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ] {
        let got = can(kube, controller, &[verb, what, "-A"]).await;
        check("controller", verb, what, &["-A"], false, got);
        let got = can(kube, dataplane, &[verb, what, "-A"]).await;
        check("dataplane", verb, what, &["-A"], false, got);
    }
    for verb in ["get", "list", "watch"] {
        let got = can(kube, dataplane, &[verb, "configmaps", "-A"]).await;
        check("dataplane", verb, "configmaps", &["-A"], true, got);
    }
    // The controller writes the pods of the kinds pods run: a ContainerSource's Deployment,
    // a SinkBinding's K_SINK in its subjects' templates. The data plane writes no workload.
    for (verb, what, allowed) in [
        ("create", "deployments.apps", true),
        ("patch", "deployments.apps", true),
        ("delete", "deployments.apps", true),
        ("patch", "statefulsets.apps", true),
        ("patch", "daemonsets.apps", true),
        ("patch", "replicasets.apps", true),
        ("create", "statefulsets.apps", false),
        ("delete", "statefulsets.apps", false),
    ] {
        let got = can(kube, controller, &[verb, what, "-A"]).await;
        check("controller", verb, what, &["-A"], allowed, got);
        let got = can(kube, dataplane, &[verb, what, "-A"]).await;
        check("dataplane", verb, what, &["-A"], false, got);
    }
    // The data plane elects the runner of the ApiServerSources on a Lease in its namespace,
    // and may not impersonate (opt-in: deploy/optional/apiserversource-impersonation.yaml).
    for verb in ["get", "create", "update"] {
        let got = can(
            kube,
            dataplane,
            &[verb, "leases.coordination.k8s.io", "-n", "sluice-system"],
        )
        .await;
        check(
            "dataplane",
            verb,
            "leases",
            &["-n sluice-system"],
            true,
            got,
        );
        let got = can(
            kube,
            dataplane,
            &[verb, "leases.coordination.k8s.io", "-n", "default"],
        )
        .await;
        check("dataplane", verb, "leases", &["-n default"], false, got);
    }
    let got = can(kube, dataplane, &["impersonate", "serviceaccounts", "-A"]).await;
    check(
        "dataplane",
        "impersonate",
        "serviceaccounts",
        &["-A"],
        false,
        got,
    );
    for (verb, what) in [
        ("list", "services"),
        ("list", "namespaces"),
        ("list", "endpointslices.discovery.k8s.io"),
        ("create", "events"),
        ("delete", "leases.coordination.k8s.io"),
        ("update", "configmaps"),
    ] {
        let got = can(kube, dataplane, &[verb, what, "-n", "sluice-system"]).await;
        check("dataplane", verb, what, &[], false, got);
    }
    assert!(
        wrong.is_empty(),
        "RBAC in deploy/ is wrong:\n{}",
        wrong.join("\n")
    );

    // And as the real identity (a token of the service account), not only impersonation.
    let dp = kube
        .service_account("sluice-system", "sluice-dataplane")
        .await;
    let (status, body) = kube
        .request_as(&dp, "GET", "/apis/eventing.knative.dev/v1/brokers", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = kube
        .request_as(&dp, "GET", "/api/v1/namespaces/sluice-system/secrets", None)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
}
