//! Reading resource files and directories from disk into a validated topology.

use sluice_core::topology::{Kind, ObjectRef, Topology};
use sluice_crds::{Defaults, Loaded};
use std::path::{Path, PathBuf};

/// Every problem found, one per line, ready to print.
#[derive(Debug)]
pub struct Problems(pub Vec<String>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// The YAML files named by `paths`: files as given, directories searched recursively for
/// `*.yaml` / `*.yml`, sorted for a stable order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Problems> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => collect_dir(p, &mut out, &mut problems),
            Ok(_) => out.push(p.clone()),
            Err(e) => problems.push(format!("{}: cannot read: {e}", p.display())),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("{}: cannot read directory: {e}", dir.display()));
            return;
        }
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue; // editor swap files, .git
        }
        if p.is_dir() {
            collect_dir(&p, out, problems);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Reads and validates everything: the topology, or every problem found (start-up).
pub fn topology(paths: &[PathBuf], defaults: &Defaults) -> Result<Topology, Problems> {
    let files = files(paths)?;
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut problems = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => match sluice_crds::parse_yaml(&text, &name) {
                Ok(mut l) => loaded.append(&mut l),
                Err(e) => problems.push(e.to_string()),
            },
            Err(e) => problems.push(format!("{name}: cannot read: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(Problems(problems));
    }
    sluice_crds::build(&loaded, defaults)
        .map_err(|es| Problems(es.into_iter().map(|e| e.to_string()).collect()))
}

/// Reads everything again after an edit. One object's problem does not stop the others:
/// the object is listed in [`Topology::invalid`] and its `previous` version, if it had one,
/// is kept running. A problem that cannot be pinned to one object (a file that is not YAML,
/// a document without a kind or name, an unreadable path) refuses the whole reload, since
/// it is unknown which objects that file still holds; the problems are returned.
pub fn reload(
    paths: &[PathBuf],
    defaults: &Defaults,
    previous: &Topology,
) -> Result<(Topology, Vec<String>), Problems> {
    let files = files(paths)?;
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut errors = Vec::new();
    let mut fatal = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => {
                let (mut l, es) = sluice_crds::parse_yaml_lenient(&text, &name);
                loaded.append(&mut l);
                for e in es {
                    match e.object {
                        Some(_) => errors.push(e),
                        None => fatal.push(e.to_string()),
                    }
                }
            }
            Err(e) => fatal.push(format!("{name}: cannot read: {e}")),
        }
    }
    if !fatal.is_empty() {
        return Err(Problems(fatal));
    }
    Ok(rebuild(&loaded, errors, defaults, previous))
}

/// Builds the topology of `loaded` leniently: each object with a problem (from parsing,
/// `errors`, or from the build) is listed in [`Topology::invalid`] and keeps its `previous`
/// version, if it had one. Returns the topology and every problem, one message each. Used by
/// file reloads here and by `sluice dataplane` for each snapshot of the cluster.
pub fn rebuild(
    loaded: &[Loaded],
    mut errors: Vec<sluice_crds::LoadError>,
    defaults: &Defaults,
    previous: &Topology,
) -> (Topology, Vec<String>) {
    let (mut t, build_errors) = sluice_crds::build_lenient(loaded, defaults);
    errors.extend(build_errors);
    let mut messages = Vec::new();
    for e in errors {
        messages.push(e.to_string());
        let Some(obj) = e.object.as_deref().cloned() else {
            continue;
        };
        keep_previous(&mut t, previous, &obj);
        t.invalid
            .entry(obj)
            .and_modify(|m| {
                m.push_str("; ");
                m.push_str(&e.to_string());
            })
            .or_insert_with(|| e.to_string());
    }
    (t, messages)
}

/// Puts the running version of `obj` back into `t` (its new version is invalid).
fn keep_previous(t: &mut Topology, previous: &Topology, obj: &ObjectRef) {
    match obj.kind {
        Kind::Broker => {
            if let Some(b) = previous.brokers.get(&obj.key) {
                t.brokers.insert(obj.key.clone(), b.clone());
            }
        }
        Kind::Trigger => {
            if let Some(s) = previous.subscriptions.get(obj) {
                t.subscriptions.insert(obj.clone(), s.clone());
            }
        }
        Kind::PingSource => {
            if let Some(s) = previous.ping_sources.get(&obj.key) {
                t.ping_sources.insert(obj.key.clone(), s.clone());
            }
        }
        Kind::KafkaSource => {
            if let Some(s) = previous.kafka_sources.get(&obj.key) {
                t.kafka_sources.insert(obj.key.clone(), s.clone());
            }
        }
        Kind::ApiServerSource => {
            if let Some(s) = previous.apiserver_sources.get(&obj.key) {
                t.apiserver_sources.insert(obj.key.clone(), s.clone());
            }
        }
        Kind::ContainerSource => {
            if let Some(s) = previous.container_sources.get(&obj.key) {
                t.container_sources.insert(obj.key.clone(), s.clone());
            }
        }
        Kind::Subscription => {
            if let Some(s) = previous.subscriptions.get(obj) {
                t.subscriptions.insert(obj.clone(), s.clone());
            }
        }
        k if k.is_channel() => {
            if let Some(c) = previous.channels.get(&obj.key).filter(|c| &c.object == obj) {
                t.channels.insert(obj.key.clone(), c.clone());
            }
        }
        Kind::Sequence | Kind::Parallel => {
            // A flow is its channels and subscriptions: keep them all.
            if let Some(f) = previous.flows.get(obj) {
                for k in &f.channels {
                    if let Some(c) = previous.channels.get(k) {
                        t.channels.insert(k.clone(), c.clone());
                    }
                }
                for o in &f.subscriptions {
                    if let Some(s) = previous.subscriptions.get(o) {
                        t.subscriptions.insert(o.clone(), s.clone());
                    }
                }
                t.flows.insert(obj.clone(), f.clone());
            }
        }
        Kind::EventTransform => {
            if let Some(x) = previous.transforms.get(&obj.key) {
                t.transforms.insert(obj.key.clone(), x.clone());
            }
        }
        Kind::Service => {
            if let Some(s) = previous.services.get(&obj.key) {
                t.services.insert(obj.key.clone(), s.clone());
            }
        }
        _ => {}
    }
}
