//! The container image: `packaging/image.sh` builds it FROM scratch with
//! buildah (no registry is reachable from these machines, and none is
//! needed). The test opens the OCI archive it writes, as a runtime would:
//! the image runs vipd from its own root file system (nothing from the
//! host), starts it as the DaemonSet does, and holds nothing but vipd, its
//! libraries and the CA roots.

#[path = "lab/mod.rs"]
mod lab;

use std::path::Path;

use lab::*;
use serde_json::Value;

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(dir: &Path, digest: &str) -> std::path::PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
}

#[test]
fn the_image_is_vipd_alone_and_runs_from_its_own_root() {
    require(&["buildah", "tar", "chroot"]);
    let dir = Dir::new("img");
    let archive = dir.path("vipd-image.tar");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(repo.join("packaging/image.sh"))
        .arg(vipd_bin())
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "image.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let size = std::fs::metadata(&archive).unwrap().len();
    eprintln!("image archive: {:.1} MiB", size as f64 / 1048576.0);

    let oci = dir.path("oci");
    std::fs::create_dir_all(&oci).unwrap();
    run_ok(
        "tar",
        &[
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            oci.to_str().unwrap(),
        ],
    );
    let index = json(&oci.join("index.json"));
    let manifest = json(&blob(
        &oci,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let config = json(&blob(&oci, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/vipd"]),
        "{config:#}"
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["run", "--config", "/etc/vipd/vipd.toml"])
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "FROM scratch and one COPY: {manifest:#}");

    let root = dir.path("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    let layer = blob(&oci, layers[0]["digest"].as_str().unwrap());
    run_ok(
        "tar",
        &["-xf", layer.to_str().unwrap(), "-C", root.to_str().unwrap()],
    );
    let files = run_ok("find", &[root.to_str().unwrap(), "-type", "f"]);
    let mut files: Vec<&str> = files
        .lines()
        .map(|l| l.strip_prefix(root.to_str().unwrap()).unwrap())
        .collect();
    files.sort();
    let expected_prefixes = [
        "/usr/local/bin/vipd",
        "/etc/ssl/certs/ca-certificates.crt",
        "/lib",
    ];
    for f in &files {
        assert!(
            expected_prefixes.iter().any(|p| f.starts_with(p)),
            "{f} in the image: only vipd, its libraries and the CA roots belong there:\n{files:#?}"
        );
    }
    assert!(
        !files.iter().any(|f| f.ends_with("/sh")),
        "a shell in the image"
    );

    // vipd from the image's own root: the libraries it needs are there.
    let version = run_ok(
        "chroot",
        &[root.to_str().unwrap(), "/usr/local/bin/vipd", "--version"],
    );
    assert!(version.starts_with("vipd "), "{version}");
    std::fs::copy(
        repo.join("configs/vipd.toml"),
        root.join("etc/vipd/vipd.toml"),
    )
    .unwrap();
    let check = run_ok(
        "chroot",
        &[
            root.to_str().unwrap(),
            "/usr/local/bin/vipd",
            "check-config",
            "/etc/vipd/vipd.toml",
        ],
    );
    assert!(check.contains(": valid ("), "{check}");

    // Started as the DaemonSet starts it, in a network namespace of its
    // own, it runs and answers its status command from inside the image.
    let ns = Netns::new("img");
    std::fs::write(
        root.join("etc/vipd/vipd.toml"),
        // No peer in this namespace: ready without one, on purpose.
        format!(
            "{BGP}[status]\nready_needs_peer = false\n[[announce]]\nprefix = \"203.0.113.1/32\"\n"
        ),
    )
    .unwrap();
    let mut cmd = ns.command("chroot");
    cmd.args([
        root.to_str().unwrap(),
        "/usr/local/bin/vipd",
        "run",
        "--config",
        "/etc/vipd/vipd.toml",
    ]);
    let _vipd = Proc::spawn("vipd (image)", cmd, dir.path("vipd.log"));
    let mut status = String::new();
    let up = wait_until(std::time::Duration::from_secs(10), || {
        let out = ns.exec(
            "chroot",
            &[root.to_str().unwrap(), "/usr/local/bin/vipd", "status"],
        );
        status = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert!(
        up,
        "vipd from the image never answered `vipd status`: {status}"
    );
    assert!(status.contains("table: 1 prefixes (1 static)"), "{status}");
}
