//! Replays every file of the kept fuzz corpus (`fuzz/corpus/<target>/`) through the same
//! function the cargo-fuzz target calls. Runs on stable as part of `cargo test --workspace`, so
//! an input that once crashed (and was added to the corpus when fixed) keeps being checked
//! without nightly or libFuzzer.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    assert!(
        files.len() >= 10,
        "the corpus of `{target}` has {} files; it should hold the minimized corpus (see fuzz/README.md)",
        files.len()
    );
    for file in &files {
        let data =
            std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        // A panic names the file, so it can be replayed with `cargo fuzz run <target> <file>`.
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(
            result.is_ok(),
            "`{target}` panicked on {} (see the message above)",
            file.display()
        );
    }
}

#[test]
fn http_decode_corpus() {
    replay("http_decode", sluice_fuzz_targets::http_decode);
}

#[test]
fn cesql_corpus() {
    replay("cesql", sluice_fuzz_targets::cesql);
}

#[test]
fn jsonpath_corpus() {
    replay("jsonpath", sluice_fuzz_targets::jsonpath);
}

#[test]
fn yaml_load_corpus() {
    replay("yaml_load", sluice_fuzz_targets::yaml_load);
}
