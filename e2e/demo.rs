//! The README's demo: a small sample cluster in the Kubernetes API stand-in,
//! BIRD as the top-of-rack router, and vipd on node-a announcing what the
//! cluster asks of it. Everything runs in network namespaces this program
//! creates and removes. Run through `bash e2e/demo.sh` (root).

#[path = "lab/mod.rs"]
mod lab;
#[path = "standin/mod.rs"]
mod standin;

use std::time::Duration;

use lab::*;
use standin::{obj, Kind, StandIn};

fn section(title: &str, body: &str) {
    println!("\n== {title} ==\n{}", body.trim_end());
}

fn main() {
    let lab = Lab::new("demo");
    lab.add_router_address("192.0.2.100/24");
    let api = StandIn::start("192.0.2.100:6443".parse().unwrap(), Some(&lab.router.name));

    // The sample cluster, seen from node-a (192.0.2.1).
    api.put(obj::node("node-a", &["192.0.2.1"]));
    api.put(obj::node("node-b", &["192.0.2.9"]));
    api.put(obj::service(
        "shop",
        "web",
        &["203.0.113.10", "2001:db8:ff::10"],
        false,
    ));
    api.put(obj::slice("shop", "web-1", "web", &[("node-b", true)]));
    let mut checkout = obj::service("shop", "checkout", &["203.0.113.11"], true);
    checkout["metadata"]["annotations"] = serde_json::json!({"vipd.io/communities": "65010:200"});
    api.put(checkout);
    api.put(obj::slice(
        "shop",
        "checkout-1",
        "checkout",
        &[("node-a", true)],
    ));
    api.put(obj::service("shop", "cache", &["203.0.113.12"], true));
    api.put(obj::slice("shop", "cache-1", "cache", &[("node-b", true)]));
    api.put(obj::service("shop", "oops", &["192.0.2.1"], false));
    api.put(obj::slice("shop", "oops-1", "oops", &[("node-b", true)]));
    section(
        "the sample cluster (Services of type LoadBalancer)",
        "shop/web       203.0.113.10, 2001:db8:ff::10  Cluster policy, ready endpoint on node-b\n\
         shop/checkout  203.0.113.11                   Local policy, ready endpoint on node-a, community 65010:200\n\
         shop/cache     203.0.113.12                   Local policy, endpoint on node-b only\n\
         shop/oops      192.0.2.1                      node-a's own address",
    );

    let bird = lab.dual_bird("");
    let kc = lab.dir.write("kubeconfig", &api.kubeconfig());
    let conf = kube_vipd_conf(&kc, "");
    section("vipd.toml", &conf);
    let vipd = Vipd::start(&lab.node, &lab.dir, &conf);
    let ok = wait_until(Duration::from_secs(20), || {
        bird.has("203.0.113.10/32")
            && bird.has("203.0.113.11/32")
            && bird.has("2001:db8:ff::10/128")
    });
    assert!(
        ok,
        "BIRD did not get the routes; vipd's log:\n{}",
        vipd.proc.log_tail(30)
    );
    section("birdc show protocols", &bird.cli("show protocols"));
    section(
        "birdc show route all (BIRD's own view)",
        &bird.cli("show route all"),
    );
    let events: Vec<String> = api
        .events()
        .iter()
        .map(|e| {
            format!(
                "{} {}: {}",
                e["involvedObject"]["name"], e["reason"], e["message"]
            )
        })
        .collect();
    section("Kubernetes Events vipd created", &events.join("\n"));
    for svc in ["shop/web", "shop/oops"] {
        let out = lab.node.exec(&vipd_bin(), &["explain", svc]);
        section(
            &format!("vipd explain {svc}"),
            &String::from_utf8_lossy(&out.stdout),
        );
    }

    api.delete(Kind::Service, "shop", "web");
    wait_until(Duration::from_secs(10), || !bird.has("203.0.113.10/32"));
    section(
        "after deleting shop/web: birdc show route",
        &bird.cli("show route"),
    );
    let log: Vec<&str> = vipd
        .proc
        .log_text()
        .leak()
        .lines()
        .filter(|l| (l.contains(" INFO ") || l.contains(" WARN ")) && l.contains("vipd::"))
        .collect();
    section("vipd's log (info and warnings)", &log.join("\n"));
    println!("\nThe namespaces, BIRD, vipd and the stand-in are removed on exit.");
}
