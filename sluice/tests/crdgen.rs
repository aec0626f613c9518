//! `sluice crdgen`: the CRDs on stdout, or one file per CRD in a directory — the same files as
//! the ones checked in under `crds/yaml/`.

use std::path::Path;
use std::process::Command;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn crdgen_prints_every_crd() {
    let out = sluice().arg("crdgen").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 17);
    for name in [
        "brokers.eventing.knative.dev",
        "triggers.eventing.knative.dev",
        "eventtypes.eventing.knative.dev",
        "pingsources.sources.knative.dev",
        "kafkasources.sources.knative.dev",
        "apiserversources.sources.knative.dev",
        "sinkbindings.sources.knative.dev",
        "containersources.sources.knative.dev",
    ] {
        assert!(text.contains(&format!("name: {name}\n")), "{name}");
    }
}

#[test]
fn crdgen_out_dir_writes_what_is_checked_in_and_removes_stale_files() {
    let dir = std::env::temp_dir().join(format!("sluice-crdgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("oldkinds.example.dev.yaml"), "stale").unwrap();
    std::fs::write(dir.join("notes.txt"), "kept").unwrap();
    let out = sluice()
        .args(["crdgen", "--out-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!dir.join("oldkinds.example.dev.yaml").exists());
    assert!(
        dir.join("notes.txt").exists(),
        "only *.yaml files are removed"
    );

    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml");
    let mut n = 0;
    for entry in std::fs::read_dir(&checked_in).unwrap() {
        let name = entry.unwrap().file_name();
        let want = std::fs::read_to_string(checked_in.join(&name)).unwrap();
        let got = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("{name:?} not written: {e}"));
        assert_eq!(got, want, "{name:?}");
        n += 1;
    }
    assert_eq!(n, 18, "17 CRDs and kustomization.yaml");
    std::fs::remove_dir_all(&dir).unwrap();

    let out = sluice()
        .args(["crdgen", "--out-dir", "/proc/no-such-dir"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write the CRDs into /proc/no-such-dir"),
        "{err}"
    );
}
