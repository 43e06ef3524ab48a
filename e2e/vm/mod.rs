//! A real IPVS kernel for the tests: QEMU boots the Debian cloud kernel
//! (IPVS built as modules; the host kernel has none) with an initrd holding
//! busybox, vipd, ipvsadm and the modules, runs a scenario script as /init
//! and powers off. The console is the result: the script prints each step
//! between `=== NAME` and `=== end` lines, and vipd's log at the end.
//!
//! `e2e/install.sh` puts the kernel under `target/vm-kernel` (or
//! `$VIPD_VM_KERNEL`). QEMU runs under software emulation (`-enable-kvm`
//! hangs on this kind of machine), about ten seconds a boot.

// Each test or benchmark crate uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::lab::{run_ok, vipd_bin, wait_until, Dir, Proc};

/// Mounts, loads IPVS, and defines the helpers scenarios use.
const PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# The kernel loads IPVS and its schedulers through modprobe, in /bin here.
echo /bin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
echo
# ip_vs is not loaded beforehand: the kernel loads it when vipd (or
# ipvsadm) first asks for the IPVS netlink family, as on a fresh node.
VIP=192.0.2.100
# show NAME: the kernel's IPVS table and the VIP's address, as a step.
show() { echo "=== $1"; ipvsadm -Ln; ip addr show dev lo | grep -o "inet6\? $VIP/[0-9]*" ; echo "=== end"; }
# until_ipvs PATTERN [gone]: up to 15 s for ipvsadm -Ln to show (or lose) PATTERN.
until_ipvs() {
  i=0
  while [ $i -lt 150 ]; do
    if ipvsadm -Ln | grep -q -- "$1"; then [ -z "$2" ] && return 0; else [ -n "$2" ] && return 0; fi
    usleep 100000; i=$((i+1))
  done
  echo "=== note: timed out waiting for '$1' $2"
}
# backend N ADDR: an HTTP server on ADDR:6443 answering /readyz and /id (N).
backend() {
  mkdir -p /w$1; echo ok > /w$1/readyz; echo $1 > /w$1/id
  case $2 in
    # No DAD on lo (and busybox ip has no nodad).
    *:*) ip addr add $2/128 dev lo 2>/dev/null; httpd -f -p [$2]:6443 -h /w$1 & ;;
    *) ip addr add $2/32 dev lo 2>/dev/null; httpd -f -p $2:6443 -h /w$1 & ;;
  esac
  eval "HTTPD$1=\$!"
}
# ask: which backend answers a connection to the VIP.
ask() { printf 'GET /id HTTP/1.0\r\n\r\n' | nc -w 3 $VIP 6443 | tail -n 1; }
# vipd_start CONFIG: vipd in the background, its PID in $VIPD.
vipd_start() { vipd run --config $1 --log debug >> /tmp/vipd.log 2>&1 & VIPD=$!; }
finish() { echo "=== vipd log"; cat /tmp/vipd.log; echo "=== end"; echo "=== done"; poweroff -f; }
"#;

pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// The kernel e2e/install.sh fetched; a clear failure when it is missing.
pub fn kernel() -> Kernel {
    let dir = std::env::var_os("VIPD_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vm-kernel"));
    let boot = dir.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .ok()
        .and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no kernel in {}: run e2e/install.sh (it fetches the Debian cloud kernel)",
                boot.display()
            )
        });
    let version = vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
    Kernel {
        modules: dir.join("lib/modules").join(&version),
        vmlinuz,
    }
}

fn copy(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// The shared libraries a dynamic binary needs, as ldd names them.
fn libs(bin: &str) -> Vec<PathBuf> {
    run_ok("ldd", &[bin])
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Builds the initrd: busybox, vipd (stripped), ipvsadm, their libraries,
/// the IPVS modules with their dependencies, `files`, and `script` as /init
/// after the prelude.
pub fn initrd(dir: &Dir, k: &Kernel, script: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = dir.path("root");
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"));
    let vipd = vipd_bin();
    run_ok(
        "strip",
        &["-o", root.join("bin/vipd").to_str().unwrap(), &vipd],
    );
    let ipvsadm = run_ok("sh", &["-c", "command -v ipvsadm"])
        .trim()
        .to_string();
    copy(Path::new(&ipvsadm), &root.join("bin/ipvsadm"));
    for lib in libs(&vipd).into_iter().chain(libs(&ipvsadm)) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        if !to.exists() {
            copy(&fs::canonicalize(&lib).unwrap(), &to);
        }
    }
    let version = k.modules.file_name().unwrap().to_string_lossy().to_string();
    let mods = root.join("lib/modules").join(&version);
    for m in [
        "kernel/net/netfilter/ipvs",
        "kernel/net/netfilter/nf_conntrack.ko",
        "kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko",
        "kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko",
        "kernel/lib/libcrc32c.ko",
    ] {
        let (from, to) = (k.modules.join(m), mods.join(m));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        run_ok("cp", &["-r", from.to_str().unwrap(), to.to_str().unwrap()]);
    }
    run_ok(
        "busybox",
        &["depmod", "-b", root.to_str().unwrap(), &version],
    );
    let init = root.join("init");
    fs::write(&init, format!("{PRELUDE}\n{script}\nfinish\n")).unwrap();
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
    for (name, text) in files {
        let p = root.join(name.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    let img = dir.path("initrd.img");
    run_ok(
        "sh",
        &[
            "-c",
            &format!(
                "cd {} && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > {}",
                root.display(),
                img.display()
            ),
        ],
    );
    img
}

/// Boots the VM and returns its console once it powers off. QEMU is
/// killed by PID if it runs past `limit` (or the test fails meanwhile).
pub fn boot(dir: &Dir, k: &Kernel, initrd: &Path, limit: Duration) -> String {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-m",
        "512",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&k.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 quiet panic=-1"]);
    let mut qemu = Proc::spawn("qemu", cmd, dir.path("console.log"));
    let done = wait_until(limit, || !qemu.alive());
    let console = qemu.log_text().replace('\r', "");
    if !done {
        qemu.stop(Duration::from_secs(1));
        panic!(
            "the VM did not power off within {limit:?}; its console:\n{}",
            console
        );
    }
    console
}

/// The lines of step `name` (between `=== name` and `=== end`).
pub fn step<'a>(console: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!("=== {name}");
    // The first line of the console also carries the firmware's escapes.
    let mut lines = console
        .lines()
        .skip_while(|l| !l.trim_end().ends_with(&head));
    assert!(
        lines.next().is_some(),
        "step {name:?} is not in the console:\n{console}"
    );
    lines.take_while(|l| l.trim_end() != "=== end").collect()
}

/// The IPVS table in a step: "TCP 192.0.2.100:6443 mh" -> real servers.
pub fn table(lines: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut t: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            [p, addr, sched, ..] if *p == "TCP" || *p == "UDP" => {
                let k = format!("{p} {addr} {sched}");
                t.entry(k.clone()).or_default();
                current = Some(k);
            }
            ["->", real, ..] if *real != "RemoteAddress:Port" => {
                if let Some(k) = &current {
                    t.get_mut(k).unwrap().insert(real.to_string());
                }
            }
            _ => {}
        }
    }
    t
}

/// A table literal for assertions.
pub fn ipvs(entries: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    entries
        .iter()
        .map(|(s, r)| (s.to_string(), r.iter().map(|x| x.to_string()).collect()))
        .collect()
}

/// Whether the step shows the VIP (`$VIP` in the script) on lo.
pub fn has_vip(lines: &[&str], vip: &str) -> bool {
    lines
        .iter()
        .any(|l| l.trim() == format!("inet {vip}") || l.trim() == format!("inet6 {vip}"))
}

/// Everything the VM test needs is on the machine (a clear failure otherwise).
pub fn require() {
    crate::lab::require(&[
        "qemu-system-x86_64",
        "busybox",
        "ipvsadm",
        "strip",
        "ldd",
        "gzip",
    ]);
}
