//! The containerlab topologies and Kubernetes manifests users are pointed
//! to: each topology valid against containerlab's own schema
//! (`shared/schemas/clab.schema.json`), every file it binds present, and the
//! vipd configurations inside them accepted by `vipd check-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a Python snippet with Debian's python3 (yaml, jsonschema).
fn python(script: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("/usr/bin/python3 (run e2e/install.sh)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const VALIDATE: &str = r#"
import json, os, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
topo = yaml.safe_load(open(sys.argv[2]))
jsonschema.validate(topo, schema)
base = os.path.dirname(sys.argv[2])
for name, node in (topo["topology"]["nodes"] or {}).items():
    for b in (node or {}).get("binds", []):
        src = b.split(":")[0]
        if "target/release" in src:
            continue
        assert os.path.exists(os.path.join(base, src)), f"{name}: bind source {src} missing"
    sc = (node or {}).get("startup-config")
    if sc:
        assert os.path.exists(os.path.join(base, sc)), f"{name}: startup-config {sc} missing"
print("valid", len(topo["topology"]["nodes"]), "nodes")
"#;

fn schema() -> PathBuf {
    let p = root().join("../shared/schemas/clab.schema.json");
    assert!(
        p.exists(),
        "{} not found: shared/ must sit beside the repository",
        p.display()
    );
    p
}

#[test]
fn topologies_are_valid_containerlab_files() {
    let dir = root().join("containerlab");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(".clab.yml") {
            continue;
        }
        let (ok, out) = python(VALIDATE, &[schema().to_str().unwrap(), p.to_str().unwrap()]);
        assert!(ok, "{}: {out}", p.display());
        n += 1;
    }
    assert_eq!(n, 2, "expected the two topologies");
}

#[test]
fn the_validator_rejects_a_broken_topology() {
    // The check above means something only if a wrong file fails it.
    let tmp = std::env::temp_dir().join(format!("vipd-clab-{}.clab.yml", std::process::id()));
    std::fs::write(
        &tmp,
        "name: bad\ntopology:\n  nodes:\n    r1:\n      kind: no-such-kind\n",
    )
    .unwrap();
    let (ok, out) = python(
        VALIDATE,
        &[schema().to_str().unwrap(), tmp.to_str().unwrap()],
    );
    std::fs::remove_file(&tmp).unwrap();
    assert!(!ok, "accepted: {out}");
    assert!(out.contains("no-such-kind"), "{out}");
}

fn check_config(path: &Path, env: &[(&str, &str)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .arg("check-config")
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn configurations_in_topologies_and_manifests_are_valid() {
    check_config(&root().join("containerlab/node/vipd.toml"), &[]);
    // The TOML inside the DaemonSet's ConfigMap, with what the pod sets.
    let (ok, toml) = python(
        "import sys, yaml\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n    if d and d.get('kind') == 'ConfigMap':\n        print(d['data']['vipd.toml'])",
        &[root().join("configs/kubernetes/vipd.yaml").to_str().unwrap()],
    );
    assert!(ok && toml.contains("[kubernetes]"), "{toml}");
    let tmp = std::env::temp_dir().join(format!("vipd-cm-{}.toml", std::process::id()));
    std::fs::write(&tmp, toml).unwrap();
    check_config(
        &tmp,
        &[
            ("NODE_NAME", "node-a"),
            ("VIPD_BGP__ROUTER_ID", "192.0.2.12"),
        ],
    );
    std::fs::remove_file(&tmp).unwrap();
}
