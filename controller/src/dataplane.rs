//! What the data-plane replicas say: which are ready, and the status each gives every object.
//!
//! The replicas are found the way Kubernetes routes to them: the EndpointSlices (label
//! `kubernetes.io/service-name`) of the Service in front of their admin port (`sluice-admin`
//! in `deploy/`). Each ready endpoint's admin port (the EndpointSlice port named `admin`)
//! serves `/topology`, the same JSON `sluice get` reads, and
//! the controller folds those reports into Knative's conditions (IngressReady, FilterReady,
//! TriggerChannelReady, SubscriptionReady, ...). Parsing and folding are pure; only
//! [`observe`] does I/O.

use crate::conditions::State;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use serde_json::Value;
use sluice_core::topology::{Key, Kind, ObjectRef};
use std::collections::BTreeMap;
use std::time::Duration;

/// One object's status as one replica reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub state: State,
    pub reason: String,
    pub message: String,
}

/// One replica's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaReport {
    /// `ip:port` of its admin server.
    pub admin: String,
    pub objects: BTreeMap<ObjectRef, Reported>,
}

/// The data plane as the controller last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneView {
    /// Ready data-plane endpoints.
    pub ready_endpoints: usize,
    /// Reports of the ready replicas that answered.
    pub replicas: Vec<ReplicaReport>,
    /// Why the view is incomplete (no EndpointSlice, a replica that did not answer), for
    /// condition messages.
    pub problem: Option<String>,
}

/// The kinds a data plane reports, by the name `/topology` gives them.
fn kind_of(s: &str) -> Option<Kind> {
    Kind::from_name(s)
}

/// Parses a replica's `/topology` answer.
pub fn parse_topology(admin: &str, body: &Value) -> ReplicaReport {
    let mut objects = BTreeMap::new();
    let groups = body.as_object().into_iter().flat_map(|m| m.values());
    for item in groups.filter_map(Value::as_array).flatten() {
        let text = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
        let Some(kind) = kind_of(text("kind")) else {
            continue;
        };
        let state = match text("status") {
            "True" => State::True,
            "False" => State::False,
            _ => State::Unknown,
        };
        objects.insert(
            ObjectRef::new(kind, Key::new(text("namespace"), text("name"))),
            Reported {
                state,
                reason: text("reason").to_string(),
                message: text("message").to_string(),
            },
        );
    }
    ReplicaReport {
        admin: admin.to_string(),
        objects,
    }
}

/// The ready endpoints of the slices and, for each, its admin address (`ip:port`).
pub fn ready_admin_addresses(slices: &[EndpointSlice]) -> (usize, Vec<String>) {
    let mut ready = 0;
    let mut admins = Vec::new();
    for s in slices {
        let admin_port = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("admin"))
            .and_then(|p| p.port);
        for e in s.endpoints.iter().flatten() {
            // Kubernetes: a nil `ready` means ready.
            let is_ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !is_ready {
                continue;
            }
            ready += 1;
            if let (Some(port), Some(ip)) = (admin_port, e.addresses.first()) {
                let host = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.clone()
                };
                admins.push(format!("{host}:{port}"));
            }
        }
    }
    (ready, admins)
}

/// Where the data-plane replicas are.
#[derive(Debug, Clone)]
pub enum Replicas {
    /// The ready endpoints of the data plane's admin Service (in a cluster).
    Service { namespace: String, service: String },
    /// Fixed admin addresses (`host:port`): a controller run outside the cluster, or a data
    /// plane that is not behind a Service (the API server refuses loopback addresses in
    /// EndpointSlices, so local test processes are given this way).
    Static(Vec<String>),
}

/// Looks at the data plane: which replicas are ready, then each one's report.
pub async fn observe(
    client: &kube::Client,
    http: &reqwest::Client,
    replicas: &Replicas,
) -> DataplaneView {
    let (ready_endpoints, admins, mut problem) = match replicas {
        Replicas::Service { namespace, service } => {
            from_endpoint_slices(client, namespace, service).await
        }
        Replicas::Static(admins) => (0, admins.clone(), None),
    };
    let mut view = DataplaneView {
        ready_endpoints,
        ..Default::default()
    };
    let fetches = admins.iter().map(|a| async move {
        let url = format!("http://{a}/topology");
        let r = http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match r {
            Ok(r) => r
                .json::<Value>()
                .await
                .map(|v| parse_topology(a, &v))
                .map_err(|e| format!("{url}: {e}")),
            Err(e) => Err(format!("{url}: {e}")),
        }
    });
    for r in futures::future::join_all(fetches).await {
        match r {
            Ok(report) => view.replicas.push(report),
            Err(e) => problem = Some(format!("a data-plane replica did not answer: {e}")),
        }
    }
    if let Replicas::Static(_) = replicas {
        // No Service to ask: a replica is ready when it answers.
        view.ready_endpoints = view.replicas.len();
    }
    if view.ready_endpoints == 0 && problem.is_none() {
        problem = Some("no data-plane replica answered".into());
    }
    view.problem = problem;
    view
}

async fn from_endpoint_slices(
    client: &kube::Client,
    namespace: &str,
    service: &str,
) -> (usize, Vec<String>, Option<String>) {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    match api.list(&lp).await {
        Ok(l) => {
            let (ready, admins) = ready_admin_addresses(&l.items);
            let problem = (ready == 0).then(|| format!(
                "service {namespace}/{service} has no ready endpoint: is the sluice-dataplane Deployment running?"
            ));
            (ready, admins, problem)
        }
        Err(e) => (
            0,
            Vec::new(),
            Some(format!(
                "cannot list the EndpointSlices of service {namespace}/{service}: {e}"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_topology_json_of_a_replica() {
        let body = json!({
            "brokers": [{"kind": "Broker", "namespace": "ns", "name": "b", "status": "True"}],
            "triggers": [{"kind": "Trigger", "namespace": "ns", "name": "t", "status": "False",
                          "reason": "SubscriptionFailed", "message": "no"}],
            "sources": [{"kind": "Unheard", "namespace": "ns", "name": "x", "status": "True"}],
        });
        let r = parse_topology("10.0.0.1:9090", &body);
        assert_eq!(r.objects.len(), 2, "unknown kinds are skipped");
        let t = &r.objects[&ObjectRef::trigger(Key::new("ns", "t"))];
        assert_eq!(t.state, State::False);
        assert_eq!(t.reason, "SubscriptionFailed");
    }

    #[test]
    fn only_ready_endpoints_count_and_the_admin_port_is_found_by_name() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
            ],
        }))
        .unwrap();
        let (ready, admins) = ready_admin_addresses(&[slice]);
        assert_eq!(ready, 2);
        assert_eq!(admins, vec!["10.0.0.1:9090", "10.0.0.3:9090"]);
    }

    #[test]
    fn the_view_folds_replica_reports_into_one_condition() {
        let obj = ObjectRef::trigger(Key::new("ns", "t"));
        let rep = |s: State| ReplicaReport {
            admin: "a".into(),
            objects: [(
                obj.clone(),
                Reported {
                    state: s,
                    reason: "R".into(),
                    message: "m".into(),
                },
            )]
            .into(),
        };
        let view = |rs: Vec<ReplicaReport>| DataplaneView {
            ready_endpoints: rs.len(),
            replicas: rs,
            problem: None,
        };
        let cases = [
            (vec![rep(State::True), rep(State::True)], State::True),
            (vec![rep(State::True), rep(State::False)], State::False),
            (vec![rep(State::True), rep(State::Unknown)], State::Unknown),
            (vec![], State::Unknown),
            (vec![ReplicaReport::default()], State::Unknown),
        ];
        for (reports, want) in cases {
            let c = view(reports.clone()).object_condition("SubscriptionReady", &obj);
            assert_eq!(c.status, want, "{reports:?}");
        }
    }
}
