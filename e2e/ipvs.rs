//! Control-plane mode against a real IPVS kernel (QEMU, see `vm/`): the
//! API-server VIP balanced over the backends that pass their health checks,
//! and vipd's IPVS services told apart from everyone else's.

mod lab;
mod vm;

use lab::BGP;
use std::time::Duration;

use vm::{has_vip, ipvs, step, table};

const BOOT_LIMIT: Duration = Duration::from_secs(150);

fn config(backends: &str) -> String {
    format!(
        "{BGP}\
         [control_plane]\nvip = \"192.0.2.100\"\nbackends = [{backends}]\n\
         [control_plane.health_check]\nkind = \"http\"\ninterval_ms = 200\ntimeout_ms = 200\nrise = 2\nfall = 2\n"
    )
}

const NO_CONTROL_PLANE: &str = BGP;

fn run_vm(tag: &str, script: &str, files: &[(&str, &str)]) -> String {
    vm::require();
    let k = vm::kernel();
    let dir = lab::Dir::new(tag);
    let img = vm::initrd(&dir, &k, script, files);
    vm::boot(&dir, &k, &img, BOOT_LIMIT)
}

/// Lesson 2: a backend that fails its health check leaves the IPVS service,
/// and comes back when it recovers, without a restart; a client's
/// connections follow (Maglev hashing brings it back to the same server).
#[test]
fn failed_backend_leaves_ipvs_and_returns_when_it_recovers() {
    let script = r#"
backend 1 192.0.2.11
backend 2 192.0.2.12
vipd_start /etc/vipd.toml
until_ipvs 192.0.2.11:6443; until_ipvs 192.0.2.12:6443
show both
FIRST=$(ask)
echo "=== first"; echo "$FIRST"; echo "=== end"
# The backend that answered starts failing its check (404 for /readyz).
rm /w$FIRST/readyz
until_ipvs 192.0.2.1$FIRST:6443 gone
show failed
echo "=== answer while failed"; ask; echo "=== end"
# Then it stops altogether (connection refused).
eval kill \$HTTPD$FIRST
sleep 1
show stopped
# And comes back.
backend $FIRST 192.0.2.1$FIRST
until_ipvs 192.0.2.1$FIRST:6443
show recovered
echo "=== answer after recovery"; ask; echo "=== end"
# A graceful stop leaves the service serving; the next vipd takes it over
# without emptying it while its first checks are under way.
kill $VIPD; wait $VIPD
show after_stop
echo "--- restart ---" >> /tmp/vipd.log
vipd_start /etc/vipd.toml
fewest=9; i=0
while [ $i -lt 100 ]; do
  n=$(ipvsadm -Ln | grep -c -- "-> 192.0.2.1.:6443")
  [ $n -lt $fewest ] && fewest=$n
  i=$((i+1))
done
echo "=== fewest real servers while restarting"; echo $fewest; echo "=== end"
"#;
    let conf = config("\"192.0.2.11\", \"192.0.2.12\"");
    let console = run_vm("ipvsh", script, &[("/etc/vipd.toml", &conf)]);
    let explain = format!("console:\n{console}");
    let svc = "TCP 192.0.2.100:6443 mh";
    let both = step(&console, "both");
    assert_eq!(
        table(&both),
        ipvs(&[(svc, &["192.0.2.11:6443", "192.0.2.12:6443"])]),
        "{explain}"
    );
    assert!(
        has_vip(&both, "192.0.2.100/32"),
        "the VIP is not on lo: {explain}"
    );
    let first = step(&console, "first").join("");
    let (failed_one, other) = match first.trim() {
        "1" => ("192.0.2.11:6443", "2"),
        "2" => ("192.0.2.12:6443", "1"),
        x => panic!("the VIP answered {x:?}, not a backend: {explain}"),
    };
    let healthy_one = if other == "1" {
        "192.0.2.11:6443"
    } else {
        "192.0.2.12:6443"
    };
    for s in ["failed", "stopped"] {
        assert_eq!(
            table(&step(&console, s)),
            ipvs(&[(svc, &[healthy_one])]),
            "{s}: the failed backend {failed_one} must be out: {explain}"
        );
    }
    assert_eq!(
        step(&console, "answer while failed").join("").trim(),
        other,
        "connections go to the healthy backend: {explain}"
    );
    assert_eq!(
        table(&step(&console, "recovered")),
        ipvs(&[(svc, &["192.0.2.11:6443", "192.0.2.12:6443"])]),
        "the recovered backend is back: {explain}"
    );
    assert_eq!(
        step(&console, "answer after recovery").join("").trim(),
        first.trim(),
        "the client returns to its backend: {explain}"
    );
    assert_eq!(
        table(&step(&console, "after_stop")),
        ipvs(&[(svc, &["192.0.2.11:6443", "192.0.2.12:6443"])]),
        "a graceful stop keeps the service: {explain}"
    );
    assert_eq!(
        step(&console, "fewest real servers while restarting")
            .join("")
            .trim(),
        "2",
        "the restarted vipd emptied the service: {explain}"
    );
    let log = step(&console, "vipd log").join("\n");
    let (_, restarted) = log
        .split_once("--- restart ---")
        .expect("the restart marker");
    assert!(
        !restarted.contains("real server"),
        "the restarted vipd changed the real servers: {explain}"
    );
    assert!(
        log.contains("backend failed its health check")
            && log.contains("answered 404")
            && log.contains(&format!("delete real server {failed_one}")),
        "{explain}"
    );
}

/// Lessons 3 and 5 for IPVS: services vipd did not create are never
/// touched (not even one at the VIP itself), and a control plane that is
/// removed, by reload or across a crash and restart, leaves no IPVS service
/// and no address behind.
#[test]
fn ipvs_services_of_others_are_untouched_and_a_removed_control_plane_leaves_nothing() {
    let script = r#"
# Someone else's services, there before vipd.
ipvsadm -A -t 198.51.100.7:80 -s rr
ipvsadm -a -t 198.51.100.7:80 -r 192.0.2.11:80 -m
ipvsadm -A -u 192.0.2.100:53 -s rr
backend 1 192.0.2.11
cp /etc/with.toml /etc/vipd.toml
vipd_start /etc/vipd.toml
until_ipvs 192.0.2.11:6443
show running
# Reloaded without [control_plane].
cp /etc/without.toml /etc/vipd.toml; kill -HUP $VIPD
until_ipvs 192.0.2.100:6443 gone
usleep 500000
show removed
# Back, then vipd killed without a chance to clean up ...
cp /etc/with.toml /etc/vipd.toml; kill -HUP $VIPD
until_ipvs 192.0.2.11:6443
kill -9 $VIPD
show crashed
# ... and started again without [control_plane]: it knows its own service.
cp /etc/without.toml /etc/vipd.toml
vipd_start /etc/vipd.toml
until_ipvs 192.0.2.100:6443 gone
show restarted
# Someone else's service at the VIP itself: vipd refuses to take it over.
ipvsadm -A -t 192.0.2.100:6443 -s rr
ipvsadm -a -t 192.0.2.100:6443 -r 192.0.2.99:6443 -m
cp /etc/with.toml /etc/vipd.toml; kill -HUP $VIPD
i=0; while [ $i -lt 100 ] && ! grep -q "not created by vipd" /tmp/vipd.log; do usleep 100000; i=$((i+1)); done
sleep 1
show foreign_at_the_vip
kill $VIPD; sleep 1
show stopped
"#;
    let with = config("\"192.0.2.11\"");
    let console = run_vm(
        "ipvso",
        script,
        &[
            ("/etc/with.toml", &with),
            ("/etc/without.toml", NO_CONTROL_PLANE),
        ],
    );
    let explain = format!("console:\n{console}");
    let theirs: &[(&str, &[&str])] = &[
        ("TCP 198.51.100.7:80 rr", &["192.0.2.11:80"]),
        ("UDP 192.0.2.100:53 rr", &[]),
    ];
    let with_ours = |reals: &'static [&'static str]| {
        let mut t = ipvs(theirs);
        t.extend(ipvs(&[("TCP 192.0.2.100:6443 mh", reals)]));
        t
    };
    for s in ["running", "crashed"] {
        let lines = step(&console, s);
        assert_eq!(
            table(&lines),
            with_ours(&["192.0.2.11:6443"]),
            "{s}: {explain}"
        );
        assert!(
            has_vip(&lines, "192.0.2.100/32"),
            "{s}: the VIP is not on lo: {explain}"
        );
    }
    for s in ["removed", "restarted"] {
        let lines = step(&console, s);
        assert_eq!(table(&lines), ipvs(theirs), "{s}: {explain}");
    }
    assert!(
        !has_vip(&step(&console, "removed"), "192.0.2.100/32"),
        "the VIP address stayed after the control plane was removed: {explain}"
    );
    let mut foreign = ipvs(theirs);
    foreign.extend(ipvs(&[("TCP 192.0.2.100:6443 rr", &["192.0.2.99:6443"])]));
    for s in ["foreign_at_the_vip", "stopped"] {
        assert_eq!(table(&step(&console, s)), foreign, "{s}: {explain}");
    }
    let log = step(&console, "vipd log").join("\n");
    assert!(
        log.contains("tcp 192.0.2.100:6443 exists and was not created by vipd: left alone"),
        "{explain}"
    );
}

/// The same over IPv6: an IPv6 VIP, IPv6 API servers, the failing one out
/// and back. With the scheduler, the forwarding method and the check's
/// path set: `wrr`, direct routing (ipvsadm's "Route"), `/healthz` (a
/// backend still answering /readyz but not /healthz is out).
#[test]
fn ipv6_vip_over_ipv6_backends() {
    let script = r#"
VIP=2001:db8::100
backend 1 2001:db8::11
backend 2 2001:db8::12
echo ok > /w1/healthz; echo ok > /w2/healthz
vipd_start /etc/vipd.toml
until_ipvs "\[2001:db8::11\]:6443"; until_ipvs "\[2001:db8::12\]:6443"
show both
rm /w2/healthz
until_ipvs "\[2001:db8::12\]:6443" gone
show failed
echo ok > /w2/healthz
until_ipvs "\[2001:db8::12\]:6443"
show recovered
"#;
    let conf = config("\"2001:db8::11\", \"2001:db8::12\"")
        .replace("192.0.2.100", "2001:db8::100")
        .replace(
            "[control_plane.health_check]\n",
            "scheduler = \"wrr\"\nforwarding = \"direct\"\n[control_plane.health_check]\npath = \"/healthz\"\n",
        );
    let console = run_vm("ipvs6", script, &[("/etc/vipd.toml", &conf)]);
    let explain = format!("console:\n{console}");
    let svc = "TCP [2001:db8::100]:6443 wrr";
    let both = ipvs(&[(svc, &["[2001:db8::11]:6443", "[2001:db8::12]:6443"])]);
    let lines = step(&console, "both");
    assert_eq!(table(&lines), both, "{explain}");
    let reals: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("-> [2001:db8::1"))
        .collect();
    assert!(
        reals.len() == 2
            && reals
                .iter()
                .all(|l| l.split_whitespace().nth(2) == Some("Route")),
        "direct routing (Route) expected: {explain}"
    );
    assert!(
        has_vip(&lines, "2001:db8::100/128"),
        "the VIP is not on lo: {explain}"
    );
    assert_eq!(
        table(&step(&console, "failed")),
        ipvs(&[(svc, &["[2001:db8::11]:6443"])]),
        "{explain}"
    );
    assert_eq!(table(&step(&console, "recovered")), both, "{explain}");
}
