//! A raw TCP client speaks broken BGP to vipd: each malformed message gets
//! the NOTIFICATION the RFCs name (or, where RFC 7606 says so, is treated as
//! a withdrawal and the session stays up), while vipd's session with BIRD
//! keeps running untouched. Also: connection collisions (RFC 4271 6.8).

#[path = "lab/mod.rs"]
mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use lab::*;

const RAW: &str = "192.0.2.3";

/// Runs `f` on a thread inside the namespace, so its sockets live there.
fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(t);
    m.extend_from_slice(body);
    m
}

/// An OPEN body: version, AS, hold time, identifier, optional parameters.
fn open_body(version: u8, asn: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&asn.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    b
}

/// Capabilities: IPv4 unicast, route refresh, 4-octet AS 65003.
const CAPS: [u8; 16] = [2, 14, 1, 4, 0, 1, 0, 1, 2, 0, 65, 4, 0, 0, 0xfd, 0xeb];

fn good_open(id: [u8; 4]) -> Vec<u8> {
    msg(1, &open_body(4, 65003, 30, id, &CAPS))
}

struct Raw {
    s: TcpStream,
}

#[derive(Debug, PartialEq)]
enum Got {
    Msg(u8, Vec<u8>),
    Closed,
    Timeout,
}

impl Raw {
    fn connect(to: &str) -> Raw {
        let local: SocketAddr = format!("{RAW}:0").parse().unwrap();
        let to: SocketAddr = to.parse().unwrap();
        // vipd may still be starting: retry a refused connection briefly.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let sock = loop {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&local.into()).unwrap();
            match sock.connect_timeout(&to.into(), Duration::from_secs(3)) {
                Ok(()) => break sock,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < end =>
                {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("connect to {to} from {local}: {e}"),
            }
        };
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Raw { s }
    }
    fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }
    fn read(&mut self) -> Got {
        let mut h = [0u8; 19];
        match self.s.read_exact(&mut h) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Got::Timeout
            }
            Err(_) => return Got::Closed,
        }
        let len = u16::from_be_bytes([h[16], h[17]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(19)];
        if self.s.read_exact(&mut body).is_err() {
            return Got::Closed;
        }
        Got::Msg(h[18], body)
    }
    /// Reads until a NOTIFICATION; returns (code, subcode, data).
    fn notification(&mut self) -> (u8, u8, Vec<u8>) {
        loop {
            match self.read() {
                Got::Msg(3, b) => return (b[0], b[1], b[2..].to_vec()),
                Got::Msg(_, _) => continue,
                other => panic!("expected a NOTIFICATION, got {other:?}"),
            }
        }
    }
    /// Reads vipd's OPEN, answers, and completes the handshake.
    fn establish(&mut self) {
        match self.read() {
            Got::Msg(1, _) => {}
            other => panic!("expected vipd's OPEN, got {other:?}"),
        }
        self.send(&good_open([192, 0, 2, 3]));
        match self.read() {
            Got::Msg(4, _) => {}
            other => panic!("expected KEEPALIVE, got {other:?}"),
        }
        self.send(&msg(4, &[]));
        self.drain_until_eor();
    }
    fn drain_until_eor(&mut self) {
        loop {
            match self.read() {
                Got::Msg(2, b) if b == [0, 0, 0, 0] => return,
                Got::Msg(2, _) | Got::Msg(4, _) => continue,
                other => panic!("expected the table and End-of-RIB, got {other:?}"),
            }
        }
    }
    /// The session is alive: a ROUTE-REFRESH is answered with the table.
    fn still_alive(&mut self) -> bool {
        self.send(&msg(5, &[0, 1, 0, 1]));
        loop {
            match self.read() {
                Got::Msg(2, b) if b.len() > 4 => return true,
                Got::Msg(2, _) | Got::Msg(4, _) => continue,
                _ => return false,
            }
        }
    }
}

fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    msg(2, &b)
}

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const ASPATH: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xeb];
const NH: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 3];
const NLRI: [u8; 5] = [32, 203, 0, 113, 99];

fn attrs(extra: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![];
    for e in extra {
        v.extend_from_slice(e);
    }
    v
}

enum Stage {
    /// Sent right after connecting, before any OPEN from us.
    BeforeOpen,
    /// Sent once the session is Established.
    Established,
}

enum Expect {
    Notify(u8, u8, Option<Vec<u8>>),
    /// RFC 7606 treat-as-withdraw: no NOTIFICATION, the session goes on.
    Survives,
}

fn cases() -> Vec<(&'static str, Stage, Vec<u8>, Expect)> {
    use Expect::*;
    use Stage::*;
    let mut bad_marker = msg(4, &[]);
    bad_marker[5] = 0;
    vec![
        ("bad marker", BeforeOpen, bad_marker, Notify(1, 1, None)),
        (
            "length below 19",
            BeforeOpen,
            {
                let mut m = msg(4, &[]);
                m[17] = 18;
                m
            },
            Notify(1, 2, Some(vec![0, 18])),
        ),
        (
            "length above 4096",
            BeforeOpen,
            {
                let mut m = msg(4, &[]);
                m[16] = 0x10;
                m[17] = 1;
                m
            },
            Notify(1, 2, Some(vec![0x10, 1])),
        ),
        (
            "unknown type",
            BeforeOpen,
            msg(9, &[]),
            Notify(1, 3, Some(vec![9])),
        ),
        (
            "KEEPALIVE with a body",
            BeforeOpen,
            msg(4, &[0]),
            Notify(1, 2, Some(vec![0, 20])),
        ),
        (
            "OPEN too short",
            BeforeOpen,
            msg(1, &[4, 0, 1]),
            Notify(1, 2, None),
        ),
        (
            "OPEN version 3",
            BeforeOpen,
            msg(1, &open_body(3, 65003, 30, [192, 0, 2, 3], &CAPS)),
            Notify(2, 1, Some(vec![0, 4])),
        ),
        (
            "OPEN wrong peer AS",
            BeforeOpen,
            msg(1, &open_body(4, 65099, 30, [192, 0, 2, 3], &[])),
            Notify(2, 2, None),
        ),
        (
            "OPEN 4-octet AS disagrees",
            BeforeOpen,
            msg(
                1,
                &open_body(4, 65003, 30, [192, 0, 2, 3], &[2, 6, 65, 4, 0, 1, 0, 0]),
            ),
            Notify(2, 2, None),
        ),
        (
            "OPEN BGP identifier 0",
            BeforeOpen,
            msg(1, &open_body(4, 65003, 30, [0, 0, 0, 0], &CAPS)),
            Notify(2, 3, Some(vec![0, 0, 0, 0])),
        ),
        (
            "OPEN hold time 2",
            BeforeOpen,
            msg(1, &open_body(4, 65003, 2, [192, 0, 2, 3], &CAPS)),
            Notify(2, 6, None),
        ),
        (
            "OPEN unsupported optional parameter",
            BeforeOpen,
            msg(1, &open_body(4, 65003, 30, [192, 0, 2, 3], &[1, 2, 0, 0])),
            Notify(2, 4, Some(vec![1])),
        ),
        (
            "OPEN capability overruns its parameter",
            BeforeOpen,
            msg(
                1,
                &open_body(4, 65003, 30, [192, 0, 2, 3], &[2, 3, 65, 4, 0]),
            ),
            Notify(2, 0, None),
        ),
        (
            "UPDATE before OPEN",
            BeforeOpen,
            update(&[], &[], &[]),
            Notify(5, 1, None),
        ),
        (
            "withdrawn length overruns",
            Established,
            {
                let mut m = update(&[], &[], &[]);
                m[20] = 50;
                m
            },
            Notify(3, 1, None),
        ),
        (
            "attribute length overruns",
            Established,
            {
                let mut m = update(&[], &[], &[]);
                m[22] = 50;
                m
            },
            Notify(3, 1, None),
        ),
        // RFC 7606 4: treat-as-withdraw, the NLRI located by the total
        // attribute length; a reset only where MP_REACH/MP_UNREACH itself
        // cannot be located.
        (
            "attribute runs past the list",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &NH, &[0x40, 1, 9, 0]]),
                &NLRI,
            ),
            Survives,
        ),
        (
            "stray attribute byte",
            Established,
            update(&[], &attrs(&[&ORIGIN, &ASPATH, &NH, &[0x40]]), &NLRI),
            Survives,
        ),
        (
            "MP_REACH runs past the list",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &[0x80, 14, 40, 0, 2, 1]]),
                &[],
            ),
            Notify(3, 1, None),
        ),
        (
            "MP_UNREACH flagged transitive (RFC 7606 3c)",
            Established,
            update(&[], &[0xc0, 15, 3, 0, 2, 1], &[]),
            Survives,
        ),
        (
            "LOCAL_PREF of length 2 from an external peer",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &NH, &[0x40, 5, 2, 0, 1]]),
                &NLRI,
            ),
            Survives,
        ),
        (
            "unrecognized well-known attribute",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &NH, &[0x40, 99, 1, 0]]),
                &NLRI,
            ),
            Notify(3, 2, Some(vec![0x40, 99, 1, 0])),
        ),
        (
            "NLRI prefix length 33",
            Established,
            update(&[], &attrs(&[&ORIGIN, &ASPATH, &NH]), &[33, 1, 2, 3, 4, 5]),
            Notify(3, 10, None),
        ),
        (
            "NLRI prefix length 255",
            Established,
            update(&[], &attrs(&[&ORIGIN, &ASPATH, &NH]), &[255]),
            Notify(3, 10, None),
        ),
        (
            "truncated MP_REACH",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &[0x80, 14, 3, 0, 2, 1]]),
                &[],
            ),
            Notify(3, 9, None),
        ),
        (
            "MP_REACH bad next-hop length",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &[0x80, 14, 8, 0, 2, 1, 3, 1, 2, 3, 0]]),
                &[],
            ),
            Notify(3, 9, None),
        ),
        (
            "duplicate MP_UNREACH",
            Established,
            update(
                &[],
                &attrs(&[&[0x80, 15, 3, 0, 2, 1], &[0x80, 15, 3, 0, 2, 1]]),
                &[],
            ),
            Notify(3, 1, None),
        ),
        (
            "OPEN while Established",
            Established,
            good_open([192, 0, 2, 3]),
            Notify(5, 3, None),
        ),
        (
            "ROUTE-REFRESH of the wrong length",
            Established,
            msg(5, &[0, 1, 0, 1, 0]),
            Notify(1, 2, None),
        ),
        (
            "bad ORIGIN value",
            Established,
            update(&[], &attrs(&[&[0x40, 1, 1, 9], &ASPATH, &NH]), &NLRI),
            Survives,
        ),
        (
            "bad NEXT_HOP length",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &[0x40, 3, 3, 1, 2, 3]]),
                &NLRI,
            ),
            Survives,
        ),
        (
            "NEXT_HOP 0.0.0.0",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &[0x40, 3, 4, 0, 0, 0, 0]]),
                &NLRI,
            ),
            Survives,
        ),
        (
            "ORIGIN flagged optional (attribute flags error)",
            Established,
            update(&[], &attrs(&[&[0xc0, 1, 1, 0], &ASPATH, &NH]), &NLRI),
            Survives,
        ),
        (
            "MED flagged transitive (attribute flags error)",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &NH, &[0x40, 4, 4, 0, 0, 0, 1]]),
                &NLRI,
            ),
            Survives,
        ),
        (
            "AS_PATH one byte too long (loops zettabgp)",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &[0x40, 2, 7, 2, 1, 0, 0, 0xfd, 0xeb, 0], &NH]),
                &NLRI,
            ),
            Survives,
        ),
        (
            "AS_PATH shorter than 4 bytes (panics zettabgp)",
            Established,
            update(&[], &attrs(&[&ORIGIN, &[0x40, 2, 2, 2, 1], &NH]), &NLRI),
            Survives,
        ),
        (
            "COMMUNITIES length 3 (panics zettabgp)",
            Established,
            update(
                &[],
                &attrs(&[&ORIGIN, &ASPATH, &NH, &[0xc0, 8, 3, 1, 2, 3]]),
                &NLRI,
            ),
            Survives,
        ),
        (
            "missing mandatory attributes",
            Established,
            update(&[], &[], &NLRI),
            Survives,
        ),
        (
            "a well-formed UPDATE is dropped quietly",
            Established,
            update(&[], &attrs(&[&ORIGIN, &ASPATH, &NH]), &NLRI),
            Survives,
        ),
    ]
}

#[test]
fn malformed_messages_get_rfc_notifications_and_other_sessions_keep_running() {
    let lab = Lab::new("mf");
    lab.add_router_address("192.0.2.3/24");
    let bird = Bird::start(
        &lab.router,
        &lab.dir,
        &bird_conf(&lab.dir, &[("v4", ROUTER4, NODE4, "ipv4", "")]),
    );
    let conf = format!(
        "{BGP}listen = \"192.0.2.1:179\"\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n\
         [[bgp.peers]]\naddress = \"{RAW}\"\nasn = 65003\npassive = true\n\
         [[announce]]\nprefixes = [{}]\n",
        v4_list(0, 20)
    );
    let mut vipd = Vipd::start(&lab.node, &lab.dir, &conf);
    assert!(wait_until(Duration::from_secs(20), || bird
        .count("master4")
        == 20));
    let failures = in_netns(&lab.router.name, || {
        let mut failures = vec![];
        for (name, stage, bytes, want) in cases() {
            let mut r = Raw::connect("192.0.2.1:179");
            match stage {
                Stage::BeforeOpen => match r.read() {
                    Got::Msg(1, _) => {}
                    other => panic!("{name}: expected vipd's OPEN, got {other:?}"),
                },
                Stage::Established => r.establish(),
            }
            r.send(&bytes);
            match want {
                Expect::Notify(code, sub, data) => {
                    let (c, s, d) = r.notification();
                    if (c, s) != (code, sub) || data.as_ref().is_some_and(|x| *x != d) {
                        failures.push(format!(
                            "{name}: got {c}/{s} {d:?}, want {code}/{sub} {data:?}"
                        ));
                    }
                    // vipd closes the connection after its NOTIFICATION.
                    if !matches!(r.read(), Got::Closed) {
                        failures.push(format!("{name}: connection not closed"));
                    }
                }
                Expect::Survives => {
                    if !r.still_alive() {
                        failures.push(format!("{name}: the session did not survive"));
                    }
                }
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(vipd.proc.alive(), "vipd died");
    assert!(bird.established("v4"));
    assert_eq!(bird.count("master4"), 20);
    let log = vipd.log();
    let bird_ups = log
        .lines()
        .filter(|l| l.contains("session established") && l.contains("peer=192.0.2.2"))
        .count();
    assert_eq!(bird_ups, 1, "the BIRD session was disturbed");
    assert!(!log.contains("panicked"), "a panic in vipd's log");
}

/// vipd dials the raw peer (A) while the raw peer also dials vipd (B) and
/// sends its OPEN there: RFC 4271 6.8 keeps the connection opened by the
/// side with the higher BGP identifier and closes the other with Cease 7.
fn collision(remote_id: [u8; 4]) -> (Vec<Got>, Vec<Got>, String) {
    let lab = Lab::new("co");
    lab.add_router_address("192.0.2.3/24");
    let ns = lab.router.name.clone();
    // The raw peer's listener must exist before vipd dials it.
    let listener = in_netns(&ns, || TcpListener::bind(format!("{RAW}:179")).unwrap());
    let conf = format!(
        "{BGP}listen = \"192.0.2.1:179\"\n\
         [[bgp.peers]]\naddress = \"{RAW}\"\nasn = 65003\n\
         [[announce]]\nprefix = \"203.0.113.1/32\"\n"
    );
    let vipd = Vipd::start(&lab.node, &lab.dir, &conf);
    let (a, b) = in_netns(&ns, move || {
        let (a, _) = listener.accept().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut a = Raw { s: a };
        assert!(
            matches!(a.read(), Got::Msg(1, _)),
            "vipd's OPEN on its own connection"
        );
        let mut b = Raw::connect("192.0.2.1:179");
        b.send(&good_open(remote_id));
        // What each connection gets next, up to the first silence or close.
        let mut on_a = vec![];
        let mut on_b = vec![];
        for (r, out) in [(&mut a, &mut on_a), (&mut b, &mut on_b)] {
            loop {
                let g = r.read();
                let end = !matches!(g, Got::Msg(_, _));
                out.push(match g {
                    Got::Msg(1, _) => Got::Msg(1, vec![]),
                    other => other,
                });
                if end || out.len() > 3 {
                    break;
                }
            }
        }
        (on_a, on_b)
    });
    (a, b, vipd.proc.log_tail(40))
}

#[test]
fn collision_keeps_the_connection_of_the_higher_identifier() {
    // Remote 192.0.2.200 > local 192.0.2.1: vipd's own connection (A) goes.
    // Both connections get vipd's OPEN first (OPEN bodies are blanked).
    let (a, b, log) = collision([192, 0, 2, 200]);
    assert_eq!(
        a,
        vec![Got::Msg(3, vec![6, 7]), Got::Closed],
        "A: Cease/Collision; vipd's log:\n{log}"
    );
    assert_eq!(
        b[..2],
        [Got::Msg(1, vec![]), Got::Msg(4, vec![])],
        "B: OPEN, KEEPALIVE; vipd's log:\n{log}"
    );
    // Remote 192.0.1.9 < local: the peer's connection (B) goes.
    let (a, b, log) = collision([192, 0, 1, 9]);
    assert_eq!(
        b,
        vec![Got::Msg(1, vec![]), Got::Msg(3, vec![6, 7]), Got::Closed],
        "B: Cease/Collision; vipd's log:\n{log}"
    );
    assert_eq!(
        a,
        vec![Got::Timeout],
        "A stays in OpenSent, waiting for the peer's OPEN; vipd's log:\n{log}"
    );
}

/// Capability codes in vipd's OPEN (body after the 19-byte header).
fn caps_of(open: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    let mut p = &open[10..10 + open[9] as usize];
    while p.len() >= 2 {
        let (t, l) = (p[0], p[1] as usize);
        if t == 2 {
            let mut c = &p[2..2 + l];
            while c.len() >= 2 {
                out.push(c[0]);
                c = &c[2 + c[1] as usize..];
            }
        }
        p = &p[2 + l..];
    }
    out
}

/// RFC 5492: a peer that answers vipd's OPEN with Unsupported Capability
/// gets an OPEN without those capabilities next time; one that refuses
/// optional parameters altogether gets an OPEN with none.
#[test]
fn refused_capabilities_are_left_out_of_the_next_open() {
    let lab = Lab::new("rc");
    lab.add_router_address("192.0.2.3/24");
    let conf = format!(
        "{BGP}listen = \"192.0.2.1:179\"\n\
         [[bgp.peers]]\naddress = \"{RAW}\"\nasn = 65003\npassive = true\n\
         [[announce]]\nprefix = \"203.0.113.1/32\"\n"
    );
    let _vipd = Vipd::start(&lab.node, &lab.dir, &conf);
    let (first, second, third) = in_netns(&lab.router.name, || {
        let open = |r: &mut Raw| match r.read() {
            Got::Msg(1, b) => b,
            other => panic!("expected vipd's OPEN, got {other:?}"),
        };
        let mut r = Raw::connect("192.0.2.1:179");
        let first = open(&mut r);
        // Unsupported Capability: graceful restart (64), route refresh (2).
        r.send(&msg(3, &[2, 7, 64, 0, 2, 0]));
        drop(r);
        std::thread::sleep(Duration::from_millis(300));
        let mut r = Raw::connect("192.0.2.1:179");
        let second = open(&mut r);
        r.send(&msg(3, &[2, 4, 2]));
        drop(r);
        std::thread::sleep(Duration::from_millis(300));
        let mut r = Raw::connect("192.0.2.1:179");
        let third = open(&mut r);
        // Without capabilities the session still comes up (IPv4 only).
        r.send(&msg(1, &open_body(4, 65003, 30, [192, 0, 2, 3], &[])));
        assert!(
            matches!(r.read(), Got::Msg(4, _)),
            "no KEEPALIVE after a plain OPEN"
        );
        (first, second, third)
    });
    let (c1, c2) = (caps_of(&first), caps_of(&second));
    assert!(
        c1.contains(&64) && c1.contains(&2) && c1.contains(&65),
        "{c1:?}"
    );
    assert!(
        !c2.contains(&64) && !c2.contains(&2),
        "refused capabilities sent again: {c2:?}"
    );
    assert!(c2.contains(&65) && c2.contains(&1), "{c2:?}");
    assert_eq!(third[9], 0, "optional parameters sent after 2/4");
}
