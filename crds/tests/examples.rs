//! Every example file in `examples/` loads and validates, so the README's examples stay true.

use sluice_crds::{build, parse_yaml, Defaults};

#[test]
fn every_example_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.display().to_string();
        let loaded = parse_yaml(&text, &name).unwrap_or_else(|e| panic!("{e}"));
        let defaults = Defaults::new("http://127.0.0.1:8080/".parse().unwrap());
        if let Err(errors) = build(&loaded, &defaults) {
            panic!("{name}: {errors:#?}");
        }
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} examples found in {}", dir.display());
}
