//! Control-plane failover benchmark, in a real IPVS kernel under QEMU (see
//! `e2e/vm/`): how long from an API server starting to fail its check
//! (`/readyz` answering 404) until IPVS no longer sends it connections, and
//! from its recovery until it is back, over repeated runs.
//!
//! The floor is set by the configuration, not by vipd: a failure needs
//! `fall` failed checks and a recovery `rise` good ones, one interval
//! apart, so the expected time is between (n - 1) and n intervals. The
//! figures are printed beside that floor. Timing inside the VM comes from
//! /proc/uptime (10 ms steps), and everything there runs under software
//! emulation, several times slower than on hardware.
//!
//! `cargo bench --bench controlplane` (root; e2e/install.sh). Knobs:
//! VIPD_BENCH_RUNS (default 20), VIPD_BENCH_INTERVAL_MS (default 200).

#[path = "../lab/mod.rs"]
mod lab;
#[path = "../vm/mod.rs"]
mod vm;

use lab::BGP;
use std::time::Duration;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: u64 = lab::knob("VIPD_BENCH_RUNS", 20);
    let interval: u64 = lab::knob("VIPD_BENCH_INTERVAL_MS", 200);
    let (rise, fall) = (2u64, 2u64);
    let conf = format!(
        "{BGP}\
         [control_plane]\nvip = \"192.0.2.100\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\n\
         [control_plane.health_check]\nkind = \"http\"\ninterval_ms = {interval}\ntimeout_ms = {interval}\n\
         rise = {rise}\nfall = {fall}\n"
    );
    let script = format!(
        r#"
backend 1 192.0.2.11
backend 2 192.0.2.12
vipd_start /etc/vipd.toml
until_ipvs 192.0.2.11:6443; until_ipvs 192.0.2.12:6443
now() {{ cut -d' ' -f1 /proc/uptime; }}
echo "=== runs"
i=0
while [ $i -lt {runs} ]; do
  t0=$(now); rm /w1/readyz
  while ipvsadm -Ln | grep -q -- "-> 192.0.2.11:6443"; do :; done
  t1=$(now); echo ok > /w1/readyz
  while ! ipvsadm -Ln | grep -q -- "-> 192.0.2.11:6443"; do :; done
  t2=$(now)
  echo "run $t0 $t1 $t2"
  i=$((i+1))
done
echo "=== end"
"#
    );
    vm::require();
    let k = vm::kernel();
    let dir = lab::Dir::new("cpbench");
    let img = vm::initrd(&dir, &k, &script, &[("/etc/vipd.toml", &conf)]);
    let limit = Duration::from_secs(120 + runs * 4 * interval / 100);
    let console = vm::boot(&dir, &k, &img, limit);
    let mut down = vec![];
    let mut up = vec![];
    for l in vm::step(&console, "runs") {
        let w: Vec<f64> = l
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [t0, t1, t2] = w[..] {
            down.push((t1 - t0) * 1000.0);
            up.push((t2 - t1) * 1000.0);
        }
    }
    assert_eq!(
        down.len() as u64,
        runs,
        "not every run finished; console:\n{console}"
    );
    let (fl, rl) = ((fall * interval) as f64, (rise * interval) as f64);
    println!(
        "control-plane failover, {runs} runs, interval {interval} ms, fall {fall}, rise {rise} (QEMU, software emulation)"
    );
    for (name, v, bound) in [
        ("failing -> out of IPVS", &mut down, fl),
        ("recovered -> back in IPVS", &mut up, rl),
    ] {
        let (p50, p99) = (lab::percentile(v, 0.5), lab::percentile(v, 0.99));
        println!(
            "  {name}: p50 {p50:.0} ms, p99 {p99:.0} ms; bound from the checks {bound:.0} ms; p50/bound {:.2}",
            p50 / bound
        );
    }
}
