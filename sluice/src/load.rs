//! Reading resource files and directories from disk into a validated topology.

use sluice_core::topology::Topology;
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

/// Reads and validates everything: the topology, or every problem found.
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
