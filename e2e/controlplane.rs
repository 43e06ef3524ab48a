//! Control-plane mode against BIRD: the API-server VIP is announced while at
//! least one backend passes its health check, withdrawn when none does, and
//! removed with the control plane. (IPVS itself is tested in a real IPVS
//! kernel by `ipvs.rs`; this host kernel has none, which one test uses.)

mod lab;
mod standin;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lab::*;
use standin::{obj, StandIn};

const VIP: &str = "198.51.100.100/32";

/// An HTTP server in a namespace answering every request with `status`;
/// stopping it closes the listener (connections are then refused).
struct Backend {
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(ns: &Netns, addr: &'static str) -> Backend {
        let listener = in_netns(&ns.name, move || TcpListener::bind(addr).unwrap());
        listener.set_nonblocking(true).unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (status.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let code = st.load(Ordering::SeqCst);
                        let _ = write!(
                            s,
                            "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Backend {
            status,
            stop,
            thread: Some(thread),
        }
    }

    fn answer(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn conf(lab: &Lab, backends: &str, kind: &str, ipvs: bool) -> String {
    format!(
        "{BGP}\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
         [[announce]]\nprefix = \"203.0.113.1/32\"\n\
         [dataplane]\nipvs_state = \"{}\"\n\
         [control_plane]\nvip = \"198.51.100.100\"\nbackends = [{backends}]\nipvs = {ipvs}\n\
         communities = [\"65010:6443\"]\n\
         [control_plane.health_check]\nkind = \"{kind}\"\ninterval_ms = 200\ntimeout_ms = 200\nrise = 2\nfall = 2\n",
        lab.dir.path("ipvs").display()
    )
}

fn bird(lab: &Lab) -> Bird {
    Bird::start(
        &lab.router,
        &lab.dir,
        &bird_conf(&lab.dir, &[("v4", ROUTER4, NODE4, "ipv4", "")]),
    )
}

fn vip_on_lo(ns: &Netns) -> bool {
    ns.ip(&["-4", "addr", "show", "dev", "lo"])
        .contains("198.51.100.100/32")
}

fn add_lo(ns: &Netns, addr: &str) {
    ns.ip(&["addr", "add", addr, "dev", "lo"]);
}

#[test]
fn vip_is_announced_while_a_backend_is_healthy_and_leaves_with_the_control_plane() {
    let lab = Lab::new("cph");
    add_lo(&lab.node, "192.0.2.11/32");
    add_lo(&lab.node, "192.0.2.12/32");
    let b1 = Backend::start(&lab.node, "192.0.2.11:6443");
    let mut b2 = Backend::start(&lab.node, "192.0.2.12:6443");
    let bird = bird(&lab);
    let config = conf(&lab, "\"192.0.2.11\", \"192.0.2.12\"", "http", false);
    let vipd = Vipd::start(&lab.node, &lab.dir, &config);
    let t = Duration::from_secs(20);
    assert!(wait_until(t, || bird.has(VIP)), "the VIP never arrived");
    let route = bird.route(VIP);
    assert!(route.contains("(65010,6443)"), "{route}");
    assert!(route.contains("BGP.as_path: 65010"), "{route}");
    assert!(vip_on_lo(&lab.node), "the VIP is not on lo");
    let (code, text) = vipd_status(&lab.node);
    assert_eq!(code, Some(0), "{text}");
    assert_lines(
        &text,
        &[
            "control plane: VIP 198.51.100.100 announced, IPVS not used",
            "  192.0.2.11:6443 healthy",
            "  192.0.2.12:6443 healthy",
        ],
    );
    let metrics = status_get(&lab.node, "/metrics");
    assert_lines(
        &metrics,
        &[
            "vipd_controlplane_vip_announced{vip=\"198.51.100.100\"} 1",
            "vipd_controlplane_backend_healthy{backend=\"192.0.2.11:6443\"} 1",
            "vipd_bgp_session_established{peer=\"192.0.2.2\",asn=\"65002\"} 1",
            "vipd_bgp_prefixes_announced{peer=\"192.0.2.2\",asn=\"65002\",family=\"ipv4\"} 2",
        ],
    );
    let ready = status_get(&lab.node, "/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 200 OK") && ready.ends_with("ready\n"),
        "{ready}"
    );
    // One backend fails: the VIP stays.
    b1.answer(500);
    assert!(vipd.wait_log("backend failed its health check", t));
    holds_for(Duration::from_millis(500), || {
        assert!(bird.has(VIP), "withdrawn although 192.0.2.12 is healthy")
    });
    // The other stops: nothing healthy, the VIP is withdrawn.
    b2.stop();
    assert!(wait_until(t, || !bird.has(VIP)), "the VIP stayed");
    assert!(bird.has("203.0.113.1/32"), "the session went down");
    let (_, text) = vipd_status(&lab.node);
    assert_lines(
        &text,
        &[
            "control plane: VIP 198.51.100.100 not announced, IPVS not used",
            "  192.0.2.11:6443 failing: answered 500",
            "  192.0.2.12:6443 failing: connect: Connection refused (os error 111)",
        ],
    );
    let log = vipd.log();
    assert!(
        log.contains("backend=192.0.2.12:6443 reason=\"connect:"),
        "{log}"
    );
    let metrics = status_get(&lab.node, "/metrics");
    assert_lines(
        &metrics,
        &[
            "vipd_controlplane_vip_announced{vip=\"198.51.100.100\"} 0",
            "vipd_controlplane_backend_healthy{backend=\"192.0.2.12:6443\"} 0",
            "vipd_bgp_prefixes_announced{peer=\"192.0.2.2\",asn=\"65002\",family=\"ipv4\"} 1",
        ],
    );
    // The first recovers: announced again, without a restart.
    b1.answer(200);
    assert!(wait_until(t, || bird.has(VIP)), "the VIP did not come back");
    // A reload that only changes the route's community keeps everything
    // else in place.
    vipd.reload(&config.replace("65010:6443", "65010:7"));
    assert!(
        wait_until(t, || bird.route(VIP).contains("(65010,7)")),
        "{}",
        bird.route(VIP)
    );
    assert!(vip_on_lo(&lab.node), "the reload removed the VIP address");
    assert!(vipd.log().contains("control plane reconfigured"));
    // The control plane removed from the configuration: nothing left.
    let without = config[..config.find("[control_plane]").unwrap()].to_string();
    vipd.reload(&without);
    assert!(wait_until(t, || !bird.has(VIP)), "the VIP stayed announced");
    assert!(
        wait_until(t, || !vip_on_lo(&lab.node)),
        "the VIP address stayed on lo"
    );
    assert!(bird.has("203.0.113.1/32"));
}

/// The default check: `GET /readyz` over TLS, against `openssl s_server`.
#[test]
fn https_check_against_a_tls_server() {
    let lab = Lab::new("cps");
    require(&["openssl"]);
    add_lo(&lab.node, "192.0.2.13/32");
    let (key, cert) = (lab.dir.path("key.pem"), lab.dir.path("cert.pem"));
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-days",
            "1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    let mut cmd = lab.node.command("openssl");
    cmd.args(["s_server", "-accept", "192.0.2.13:6443", "-www", "-cert"])
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let mut tls = Proc::spawn("openssl", cmd, lab.dir.path("openssl.log"));
    let bird = bird(&lab);
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &conf(&lab, "\"192.0.2.13\"", "https", false),
    );
    let t = Duration::from_secs(20);
    assert!(wait_until(t, || bird.has(VIP)), "the VIP never arrived");
    assert!(vipd
        .log()
        .contains("backend healthy backend=192.0.2.13:6443"));
    tls.stop(Duration::from_secs(2));
    assert!(wait_until(t, || !bird.has(VIP)), "the VIP stayed");
}

/// With IPVS asked for and a kernel without it, vipd says so and does not
/// announce a VIP it cannot serve; the rest of its announcements go out.
#[test]
fn vip_is_not_announced_when_ipvs_cannot_be_programmed() {
    let lab = Lab::new("cpi");
    add_lo(&lab.node, "192.0.2.11/32");
    let _b = Backend::start(&lab.node, "192.0.2.11:6443");
    let bird = bird(&lab);
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &conf(&lab, "\"192.0.2.11\"", "http", true),
    );
    let t = Duration::from_secs(20);
    assert!(wait_until(t, || bird.has("203.0.113.1/32")));
    assert!(vipd.wait_log("backend healthy", t));
    assert!(vipd.wait_log("IPVS is not available in this kernel", t));
    holds_for(Duration::from_millis(500), || {
        assert!(!bird.has(VIP), "announced a VIP that IPVS does not serve")
    });
    let (code, text) = vipd_status(&lab.node);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l
                == "control plane: VIP 198.51.100.100 not announced, IPVS failing (see the log)"),
        "{text}"
    );
    // Once vipd is gone, `vipd status` says it cannot reach it.
    let mut vipd = vipd;
    vipd.proc.stop(Duration::from_secs(5));
    let (code, text) = vipd_status(&lab.node);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.starts_with("vipd status: cannot reach vipd at 127.0.0.1:9179"),
        "{text}"
    );
}

/// `default/kubernetes`'s EndpointSlice listing `addrs` as ready API servers.
fn api_slice(addrs: &[&str]) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = addrs
        .iter()
        .map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "kubernetes",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
    })
}

/// `discover = true`: the backends are the API servers `default/kubernetes`
/// lists, followed as the list changes.
#[test]
fn backends_are_discovered_from_default_kubernetes() {
    let lab = Lab::new("cpd");
    lab.add_router_address("192.0.2.100/24");
    let api = StandIn::start("192.0.2.100:6443".parse().unwrap(), Some(&lab.router.name));
    api.put(obj::node("node-a", &["192.0.2.1"]));
    api.put(api_slice(&["192.0.2.11", "192.0.2.12"]));
    add_lo(&lab.node, "192.0.2.11/32");
    add_lo(&lab.node, "192.0.2.12/32");
    let _b1 = Backend::start(&lab.node, "192.0.2.11:6443");
    let _b2 = Backend::start(&lab.node, "192.0.2.12:6443");
    let bird = lab.dual_bird("");
    let kc = lab.dir.write("kubeconfig", &api.kubeconfig());
    let extra = format!(
        "[dataplane]\nipvs_state = \"{}\"\n\
         [control_plane]\nvip = \"198.51.100.100\"\ndiscover = true\nipvs = false\n\
         [control_plane.health_check]\nkind = \"http\"\ninterval_ms = 200\ntimeout_ms = 200\n",
        lab.dir.path("ipvs").display()
    );
    let vipd = Vipd::start(&lab.node, &lab.dir, &kube_vipd_conf(&kc, &extra));
    let t = Duration::from_secs(20);
    assert!(wait_until(t, || bird.has(VIP)), "the VIP never arrived");
    let backends = || {
        let (_, text) = vipd_status(&lab.node);
        text.lines()
            .filter(|l| l.starts_with("  192.0.2.1"))
            .map(|l| l.trim().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(t, || backends()
            == ["192.0.2.11:6443 healthy", "192.0.2.12:6443 healthy"]),
        "{:?}",
        backends()
    );
    assert!(vipd
        .log()
        .contains("API servers listed by default/kubernetes"));
    // One API server leaves the list: it is no longer checked or used.
    api.put(api_slice(&["192.0.2.12"]));
    assert!(
        wait_until(t, || backends() == ["192.0.2.12:6443 healthy"]),
        "{:?}",
        backends()
    );
    assert!(bird.has(VIP));
    // None listed: nothing to serve, the VIP is withdrawn.
    api.put(api_slice(&[]));
    assert!(wait_until(t, || !bird.has(VIP)), "the VIP stayed");
}

/// The VIP already on lo as someone else's address (added by hand, without
/// vipd's mark): vipd takes it as serving (no warning, announced) and
/// leaves it where it was after the control plane goes.
#[test]
fn a_vip_address_someone_else_put_there_is_used_and_left_alone() {
    let lab = Lab::new("cpf");
    add_lo(&lab.node, "192.0.2.11/32");
    add_lo(&lab.node, "198.51.100.100/32");
    let _b1 = Backend::start(&lab.node, "192.0.2.11:6443");
    let bird = bird(&lab);
    let vipd = Vipd::start(
        &lab.node,
        &lab.dir,
        &conf(&lab, "\"192.0.2.11\"", "http", false),
    );
    let t = Duration::from_secs(20);
    assert!(
        wait_until(t, || bird.has(VIP)),
        "the VIP never arrived\n{}\n{}",
        bird.cli("show route all"),
        vipd.proc.log_tail(20)
    );
    assert!(
        !vipd.log().contains("adding the VIP address"),
        "{}",
        vipd.proc.log_tail(20)
    );
    let plain = &format!(
        "{BGP}\
                 [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
                 [[announce]]\nprefix = \"203.0.113.1/32\"\n"
    );
    vipd.reload(plain);
    assert!(wait_until(t, || !bird.has(VIP)), "the VIP stayed announced");
    holds_for(Duration::from_secs(1), || {
        assert!(vip_on_lo(&lab.node), "someone else's address was removed")
    });
}
