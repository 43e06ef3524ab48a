//! The TOML schema, its defaults and its validation.
//!
//! Parsing goes through the `config` crate (file, then `VIPD_*` environment
//! overrides) into its untyped value tree, and is then read by hand rather
//! than with `#[derive(Deserialize)]`: serde stops at the first problem, and
//! `vipd check-config` must report every problem at once, each naming its key.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Map, Value, ValueKind};
use ipnet::IpNet;

// A path both vipd and the fuzz crate (which compiles this file on its
// own) resolve to the same file.
#[path = "config/advertise.rs"]
mod advertise;
#[path = "config/fleet.rs"]
mod fleet;
#[path = "config/ipam.rs"]
mod ipam;
#[path = "config/l2.rs"]
mod l2;
#[path = "config/peer.rs"]
mod peer;
#[path = "config/tenant.rs"]
mod tenant;
mod validate;
pub use advertise::{Advert, Advertisement, Adverts, Source};
pub use fleet::{parse_labels, DrainConfig, Labels, NodeAddresses};
pub use ipam::{parse_range, IpamConfig, Pool, Range};
pub use l2::{FastFailover, L2Config, Mode};
pub use peer::{PeerAddr, PeerAs};
pub use tenant::{
    community_bytes, CommunityPattern, LargePattern, ServiceAttrPolicy, Span, COMMUNITY_ROOM,
    DRAIN_RESERVE, MAX_ANNOTATION_COMMUNITIES, MAX_ANNOTATION_LARGE_COMMUNITIES,
};

pub use crate::bgp::attrs::{RouteAttrs, AS_TRANS};
/// RFC 2385 keys are limited by the kernel's `TCP_MD5SIG_MAXKEYLEN`.
pub const MD5_MAX_KEY: usize = 80;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub bgp: BgpConfig,
    pub announce: Vec<Announce>,
    /// Without a `[kubernetes]` table vipd announces `[[announce]]` alone.
    pub kubernetes: Option<KubeConfig>,
    pub dataplane: Dataplane,
    /// The API-server VIP: announced while a backend is healthy, and
    /// balanced over the healthy backends with IPVS.
    pub control_plane: Option<ControlPlane>,
    pub status: StatusConfig,
    /// Assign LoadBalancer addresses (needs `[kubernetes]`).
    pub ipam: Option<IpamConfig>,
    /// Drain this node's VIPs gracefully (RFC 8326).
    pub drain: Option<DrainConfig>,
    /// Answer ARP and neighbour solicitations for L2 VIPs.
    pub l2: Option<L2Config>,
    pub log: LogConfig,
}

/// `[log]`: how vipd logs (the `--log` flag and `RUST_LOG` win over `level`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// A filter such as `info` or `vipd=debug,kube=warn`.
    pub level: Option<String>,
}

fn read_log(mut t: Tbl, errs: &mut Errs) -> LogConfig {
    let json = t
        .opt("format", errs, |v| match parse_str(v)?.as_str() {
            "text" => Ok(false),
            "json" => Ok(true),
            other => Err(format!("{other:?}: expected \"text\" or \"json\"")),
        })
        .unwrap_or(false);
    let level = t.opt("level", errs, |v| {
        let s = parse_str(v)?;
        check_log_filter(&s)?;
        Ok(s)
    });
    t.finish(errs);
    LogConfig { json, level }
}

/// `LEVEL` or `TARGET=LEVEL`, comma-separated (tracing's `Targets`
/// syntax), checked here so that a typo is a configuration error.
fn check_log_filter(s: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for d in s.split(',').map(str::trim) {
        let level = d
            .rsplit_once('=')
            .map_or(d, |(t, l)| if t.is_empty() { "" } else { l });
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{d:?}: expected LEVEL or TARGET=LEVEL, LEVEL one of {}",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The status listener's address unless configured: loopback only.
pub const DEFAULT_STATUS: &str = "127.0.0.1:9179";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    pub vip: IpAddr,
    pub port: u16,
    /// The API servers, each with its port.
    pub backends: Vec<SocketAddr>,
    /// Also the API servers `default/kubernetes` lists (needs
    /// `[kubernetes]`), on `port`.
    pub discover: bool,
    /// Where the VIP goes as an address (IPVS takes only local addresses).
    pub interface: String,
    /// Program IPVS; without it vipd only announces and holds the address.
    pub ipvs: bool,
    pub scheduler: String,
    pub forwarding: Forwarding,
    pub health: HealthCheck,
    pub attrs: RouteAttrs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    Masquerade,
    Direct,
    Tunnel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// The path an HTTP(S) check asks for; a 200 answer is healthy.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make a failed backend healthy again.
    pub rise: u32,
    /// Consecutive failures that take a healthy backend out.
    pub fall: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// The TCP handshake completes.
    Tcp,
    /// `GET path` over plain HTTP answers 200.
    Http,
    /// `GET path` over TLS answers 200 (the certificate is not verified:
    /// the check asks whether the server serves, not who it is).
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// A kubeconfig file; without one, the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    /// Services of this `spec.loadBalancerClass`; none: Services without one.
    pub load_balancer_class: Option<String>,
    /// With a class set, also announce Services that have no class.
    pub include_unclassed: bool,
    /// Also announce `spec.externalIPs`.
    pub external_ips: bool,
    /// Announce Cluster-policy Services that have no ready endpoint.
    pub announce_without_endpoints: bool,
    /// When not empty, VIPs outside these prefixes (and outside `pools`)
    /// are refused.
    pub allowed_prefixes: Vec<IpNet>,
    /// With `[ipam]`, its pools' ranges (filled in by `Config::load`). An
    /// address inside one is allowed as one inside `allowed_prefixes` is;
    /// an address outside both is refused, even with `allowed_prefixes`
    /// empty.
    pub pools: Option<Vec<Range>>,
    /// Which addresses use L2 (filled in from `[l2]` and the pools' `mode`
    /// by `Config::load`); None without `[l2]`: BGP only.
    pub l2: Option<L2Select>,
    /// What Services' annotations may set.
    pub service_attrs: ServiceAttrPolicy,
    /// Bytes of community values a Service's route may carry (see
    /// `tenant::check_room`; filled in by `Config::load`).
    pub community_room: usize,
    /// The pools' and `[[bgp.advertisements]]`' (filled in by
    /// `Config::load`).
    pub adverts: Adverts,
    /// `bgp.max_announcing_nodes` (filled in by `Config::load`): with it,
    /// every Node is watched and each ETP Cluster VIP is announced by this
    /// many of the eligible ones.
    pub max_announcing_nodes: Option<u32>,
    /// `[drain]` (filled in by `Config::load`): which other nodes are
    /// draining, so not eligible to announce a capped VIP.
    pub drain: Option<DrainConfig>,
    /// Connecting to the API server takes at most this long.
    pub connect_timeout: Duration,
    /// An answer (a list page, or anything on a watch, where the server's
    /// bookmarks keep a quiet watch talking) is awaited at most this long:
    /// a server that accepts and then says nothing is an error, not a hang.
    pub read_timeout: Duration,
}

/// What decides whether an address uses L2, BGP or both, short of the
/// Service's own `vipd.io/announce`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2Select {
    /// `[l2] default`.
    pub default: bool,
    /// Pools with a `mode` other than `"bgp"`.
    pub pools: Vec<(Range, Mode)>,
}

impl L2Select {
    /// The mode of `ip` short of an annotation: its pool's, else the default.
    pub fn mode_of(&self, ip: IpAddr) -> Mode {
        let pooled = self.pools.iter().find(|(r, _)| r.contains(ip));
        match pooled {
            Some((_, m)) => *m,
            None if self.default => Mode::L2,
            None => Mode::Bgp,
        }
    }
}

/// What vipd does to the node itself, besides BGP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataplane {
    /// Put each VIP as an address on this interface.
    pub address_interface: Option<String>,
    /// Put a route per VIP into a routing table.
    pub routes: Option<RouteTable>,
    /// The file recording the IPVS services vipd created. Not part of the
    /// control plane's table: a vipd started without one must still find
    /// (and remove) the services an earlier run created.
    pub ipvs_state: PathBuf,
    /// How vipd knows its addresses: the kernel's mark or a record file.
    pub address_ownership: crate::dataplane::record::Setting,
    /// The record file, when the record is in use.
    pub address_record: PathBuf,
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            address_interface: None,
            routes: None,
            ipvs_state: PathBuf::from(DEFAULT_IPVS_STATE),
            address_ownership: Default::default(),
            address_record: PathBuf::from(DEFAULT_ADDRESS_RECORD),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    pub table: u32,
    /// The route protocol number that marks vipd's routes (and only them).
    pub protocol: u8,
    pub interface: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BgpConfig {
    /// With `asn_label`, 0 until [`BgpConfig::for_node`] resolves it.
    pub asn: u32,
    /// `asn = "label:KEY"`: this node's ASN is its Node's label KEY.
    pub asn_label: Option<String>,
    /// Unspecified until resolved when `from_node.router_id` (see
    /// [`BgpConfig::with_node_addresses`]).
    pub router_id: Ipv4Addr,
    pub listen: Option<SocketAddr>,
    pub graceful_restart: bool,
    pub restart_time: u16,
    pub withdraw_on_stop: bool,
    /// Written at a graceful stop, read at start: whether to set the
    /// Restart State bit (RFC 4724 section 3).
    pub restart_record: PathBuf,
    pub peers: Vec<PeerConfig>,
    /// `router_id` omitted: the Node's first IPv4 InternalIP.
    pub router_id_from_node: bool,
    /// `[[bgp.advertisements]]`: what goes with Service addresses vipd did
    /// not give out, by prefix.
    pub advertisements: Vec<Advertisement>,
    /// `max_announcing_nodes`: how many nodes announce one ETP Cluster VIP.
    pub max_announcing_nodes: Option<u32>,
}

/// A TCP MD5 key. Its `Debug` says only that it is there, so no log line,
/// status, explanation or error that prints a peer can show it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerConfig {
    pub address: PeerAddr,
    pub asn: PeerAs,
    pub port: u16,
    pub passive: bool,
    pub hold_time: u16,
    pub keepalive: u16,
    pub connect_retry: u16,
    /// From `password`, or read from `password_file` at each load.
    pub password: Option<Secret>,
    /// Where the password was read from (watched for changes).
    pub password_file: Option<PathBuf>,
    pub ttl: Option<u8>,
    pub ttl_security: bool,
    pub source_address: Option<IpAddr>,
    pub families: Families,
    pub next_hop_ipv4: Option<Ipv4Addr>,
    pub next_hop_ipv6: Option<Ipv6Addr>,
    /// Add the interface's link-local address to the IPv6 next hop when the
    /// peer shares the link (RFC 2545 section 3).
    pub link_local_next_hop: bool,
    pub description: Option<String>,
    /// `name`: what a pool's or an advertisement's `peers` may call it
    /// (besides its address). Peers on different nodes may share one.
    pub name: Option<String>,
    /// Added to every route sent to this peer (communities are merged,
    /// a route's own LOCAL_PREF wins).
    pub defaults: RouteAttrs,
    /// Only on nodes whose labels include all of these (empty: every node).
    pub node_selector: Labels,
    /// Addresses given as `"node"`: the Node's InternalIP of the family,
    /// filled in by [`BgpConfig::with_node_addresses`].
    pub from_node: FromNode,
    /// `bfd = true`: a BFD session with the peer (RFC 5880/5881/5883).
    pub bfd: Option<BfdSettings>,
    /// `local_asn`: the ASN vipd speaks with to this peer (in OPEN, and
    /// prepended), instead of `bgp.asn`.
    pub local_asn: Option<u32>,
    /// `extended_next_hop`: offer IPv4 routes with the IPv6 next hop
    /// (RFC 8950), used on a session without an IPv4 next hop.
    pub extended_next_hop: bool,
}

/// A peer's BFD timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BfdSettings {
    /// Desired minimum TX and required minimum RX interval.
    pub interval: Duration,
    pub multiplier: u8,
    /// The lowest TTL or hop limit accepted: 255 for single hop; for
    /// multihop `bfd_min_ttl`, 1 (any) unless set, since senders differ
    /// (BIRD sends 64, FRR 255).
    pub min_ttl: u8,
    /// `bfd_wait`: the BGP session starts only once BFD is Up.
    pub wait: bool,
}

/// Which of a peer's addresses are `"node"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FromNode {
    pub source_address: bool,
    pub next_hop_ipv4: bool,
    pub next_hop_ipv6: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl Families {
    pub const BOTH: Families = Families {
        ipv4: true,
        ipv6: true,
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct Announce {
    pub prefixes: Vec<IpNet>,
    pub attrs: RouteAttrs,
}

/// One problem in the configuration: the key it concerns and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads FILE, applies `VIPD_*` environment overrides
    /// (`VIPD_BGP__ASN=65011` sets `bgp.asn`) and validates the result.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        Self::load_with_env(path, Some(std::env::vars().collect()))
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, Problems> {
        let file = config::File::new(&path.to_string_lossy(), LeanToml);
        let node_env = env
            .as_ref()
            .and_then(|e| e.get("NODE_NAME").cloned())
            .filter(|n| !n.is_empty());
        // Every key lives in a table, so an override always has a `__`;
        // other VIPD_* variables (VIPD_LOG, ...) are not configuration.
        let env = env.map(|e| {
            e.into_iter()
                .filter(|(k, _)| k.starts_with("VIPD_") && k.contains("__"))
                .collect()
        });
        let env = config::Environment::with_prefix("VIPD")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(env);
        let builder = config::Config::builder().add_source(file).add_source(env);
        Self::from_table(value_tree(builder, &path.display().to_string())?, node_env)
    }

    /// Parses a TOML document given as a string (tests and tools).
    pub fn from_toml_str(text: &str) -> Result<Config, Problems> {
        Self::from_toml_str_on(text, None)
    }

    /// As [`Config::from_toml_str`], as on the node `node` (what
    /// `NODE_NAME` says in a pod).
    pub fn from_toml_str_on(text: &str, node: Option<&str>) -> Result<Config, Problems> {
        let builder = config::Config::builder().add_source(config::File::from_str(text, LeanToml));
        Self::from_table(value_tree(builder, "<input>")?, node.map(String::from))
    }

    fn from_table(root: Map<String, Value>, node_env: Option<String>) -> Result<Config, Problems> {
        let mut errs = Errs::default();
        let mut root = Tbl::new("", root);
        let kubernetes = root
            .table("kubernetes", &mut errs)
            .and_then(|t| read_kubernetes(t, node_env, &mut errs));
        let dataplane = root
            .table("dataplane", &mut errs)
            .map(|t| read_dataplane(t, &mut errs))
            .unwrap_or_default();
        let control_plane = root
            .table("control_plane", &mut errs)
            .and_then(|t| read_control_plane(t, &mut errs));
        let log = root
            .table("log", &mut errs)
            .map(|t| read_log(t, &mut errs))
            .unwrap_or_default();
        let drain = root
            .table("drain", &mut errs)
            .map(|t| fleet::read_drain(t, &mut errs));
        let l2 = root
            .table("l2", &mut errs)
            .and_then(|t| l2::read_l2(t, &mut errs));
        let ipam = root
            .table("ipam", &mut errs)
            .and_then(|t| ipam::read_ipam(t, &mut errs));
        let status = root
            .table("status", &mut errs)
            .map(|t| read_status(t, &mut errs))
            .unwrap_or_default();
        let bgp = match root.table("bgp", &mut errs) {
            Some(t) => read_bgp(t, &mut errs),
            None => {
                errs.push("bgp", "missing: the [bgp] table is required");
                None
            }
        };
        let announce = read_announces(&mut root, &mut errs);
        root.finish(&mut errs);
        let parsed = validate::Parsed {
            bgp,
            announce,
            kubernetes,
            dataplane,
            control_plane,
            status,
            ipam,
            drain,
            l2,
            log,
        };
        match (parsed.validate(&mut errs), errs.0.is_empty()) {
            (Some(c), true) => Ok(c),
            _ => Err(Problems(errs.0)),
        }
    }

    /// All announced prefixes with their attributes, in configuration order.
    pub fn announcements(&self) -> impl Iterator<Item = (&IpNet, &RouteAttrs)> {
        self.announce
            .iter()
            .flat_map(|a| a.prefixes.iter().map(move |p| (p, &a.attrs)))
    }
}

fn read_announces(root: &mut Tbl, errs: &mut Errs) -> Vec<Announce> {
    let mut announce = Vec::new();
    for (i, v) in root.array("announce", errs).into_iter().enumerate() {
        let key = format!("announce[{i}]");
        if let Some(t) = as_table(&key, v, errs) {
            if let Some(a) = read_announce(Tbl::new(&key, t), errs) {
                announce.push(a);
            }
        }
    }
    announce
}

fn parse_router_id(v: Value) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = parse_str(v)?
        .parse()
        .map_err(|_| "not an IPv4 address".to_string())?;
    if ip.is_unspecified() {
        return Err("0.0.0.0 is not a valid BGP identifier (RFC 4271 6.2)".into());
    }
    Ok(ip)
}

fn read_bgp(mut t: Tbl, errs: &mut Errs) -> Option<BgpConfig> {
    let (asn, asn_label) = match t.req("asn", errs, fleet::parse_asn_source) {
        Some(fleet::AsnSource::Number(n)) => (Some(n), None),
        Some(fleet::AsnSource::Label(k)) => (Some(0), Some(k)),
        None => (None, None),
    };
    // Omitted: the Node's address (checked against [kubernetes] later).
    let router_id = t.opt("router_id", errs, parse_router_id);
    let router_id_from_node = router_id.is_none() && !errs.has("bgp.router_id");
    let listen = t.opt("listen", errs, |v| {
        parse_str(v)?
            .parse::<SocketAddr>()
            .map_err(|_| "expected ADDRESS:PORT, e.g. \"[::]:179\" or \"192.0.2.1:179\"".into())
    });
    let graceful_restart = t.opt("graceful_restart", errs, parse_bool).unwrap_or(true);
    let restart_time = t
        .opt("restart_time", errs, |v| {
            let n = parse_int(v, 1, 4095)?;
            Ok(n as u16)
        })
        .unwrap_or(120);
    let withdraw_on_stop = t.opt("withdraw_on_stop", errs, parse_bool).unwrap_or(false);
    let restart_record = t
        .opt("restart_record", errs, parse_abs_path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RESTART_RECORD));
    // Unknown until the Node's labels are: no iBGP rules to check.
    let local_asn = asn.filter(|n| *n != 0);
    let advertisements = advertise::read_all(&mut t, errs);
    let max_announcing_nodes = t.opt("max_announcing_nodes", errs, |v| {
        parse_int(v, 1, 4096).map(|n| n as u32)
    });
    let mut peers = Vec::new();
    for (i, v) in t.array("peers", errs).into_iter().enumerate() {
        let key = format!("bgp.peers[{i}]");
        if let Some(pt) = as_table(&key, v, errs) {
            if let Some(p) = read_peer(Tbl::new(&key, pt), local_asn, errs) {
                peers.push((key, p));
            }
        }
    }
    t.finish(errs);
    validate::peers(&peers, listen.is_some(), router_id, errs);
    Some(BgpConfig {
        asn: asn?,
        asn_label,
        router_id: router_id.unwrap_or(Ipv4Addr::UNSPECIFIED),
        router_id_from_node,
        listen,
        graceful_restart,
        restart_time,
        withdraw_on_stop,
        restart_record,
        peers: peers.into_iter().map(|(_, p)| p).collect(),
        advertisements,
        max_announcing_nodes,
    })
}

/// The `config` crate's untyped tree; its errors (unreadable file, TOML
/// syntax) are reported under `what`, the file's name.
/// TOML read as the `config` crate reads it, except that values do not
/// each carry the file's name: with 200,000 prefixes that copy of the name
/// alone costs about 13 MB while loading. vipd's own messages name the
/// file and the key.
#[derive(Debug, Clone, Copy)]
struct LeanToml;

type FormatError = Box<dyn std::error::Error + Send + Sync>;

impl config::Format for LeanToml {
    fn parse(&self, _uri: Option<&String>, text: &str) -> Result<Map<String, Value>, FormatError> {
        toml_table(toml::de::DeTable::parse(text)?.into_inner())
    }
}

impl config::FileStoredFormat for LeanToml {
    fn file_extensions(&self) -> &'static [&'static str] {
        &["toml"]
    }
}

fn toml_table(t: toml::de::DeTable<'_>) -> Result<Map<String, Value>, FormatError> {
    t.into_iter()
        .map(|(k, v)| Ok((k.into_inner().into_owned(), toml_value(v.into_inner())?)))
        .collect()
}

fn toml_value(v: toml::de::DeValue<'_>) -> Result<Value, FormatError> {
    use toml::de::DeValue as D;
    Ok(match v {
        D::String(s) => Value::new(None, s.into_owned()),
        D::Integer(i) => Value::new(None, i64::from_str_radix(i.as_str(), i.radix())?),
        D::Float(f) => Value::new(None, f.as_str().parse::<f64>()?),
        D::Boolean(b) => Value::new(None, b),
        D::Datetime(d) => Value::new(None, d.to_string()),
        D::Table(t) => Value::new(None, toml_table(t)?),
        D::Array(a) => {
            let items: Result<Vec<Value>, FormatError> =
                a.into_iter().map(|v| toml_value(v.into_inner())).collect();
            Value::new(None, items?)
        }
    })
}

fn value_tree(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    what: &str,
) -> Result<Map<String, Value>, Problems> {
    let fail = |e: config::ConfigError| {
        Problems(vec![Problem {
            key: what.to_string(),
            reason: e.to_string(),
        }])
    };
    builder
        .build()
        .map_err(fail)?
        .try_deserialize()
        .map_err(fail)
}

fn read_kubernetes(mut t: Tbl, node_env: Option<String>, errs: &mut Errs) -> Option<KubeConfig> {
    let key = t.path.clone();
    let kubeconfig = t.opt("kubeconfig", errs, |v| parse_str(v).map(PathBuf::from));
    let node_name = t.opt("node_name", errs, parse_str).or(node_env);
    let load_balancer_class = t.opt("load_balancer_class", errs, parse_str);
    let include_unclassed = t
        .opt("include_unclassed", errs, parse_bool)
        .unwrap_or(false);
    let external_ips = t.opt("external_ips", errs, parse_bool).unwrap_or(false);
    let announce_without_endpoints = t
        .opt("announce_without_endpoints", errs, parse_bool)
        .unwrap_or(false);
    let allowed_prefixes: Vec<IpNet> = t
        .opt("allowed_prefixes", errs, parse_prefixes)
        .unwrap_or_default();
    let service_attrs = tenant::read_policy(&mut t, errs);
    let secs = |v| parse_int(v, 1, 3600).map(|n| Duration::from_secs(n as u64));
    let connect_timeout = t
        .opt("connect_timeout_secs", errs, secs)
        .unwrap_or(Duration::from_secs(10));
    let read_timeout = t
        .opt("read_timeout_secs", errs, secs)
        .unwrap_or(Duration::from_secs(90));
    t.finish(errs);
    tenant::check_external_ips(&key, external_ips, &allowed_prefixes, errs);
    if include_unclassed && load_balancer_class.is_none() {
        errs.push(
            format!("{key}.include_unclassed"),
            "only means something with load_balancer_class set",
        );
    }
    let Some(node_name) = node_name else {
        errs.push(
            format!("{key}.node_name"),
            "missing: set it, or the NODE_NAME environment variable (the downward API's spec.nodeName; `vipd check-config --node NAME` checks a file meant for the DaemonSet)",
        );
        return None;
    };
    Some(KubeConfig {
        kubeconfig,
        node_name,
        load_balancer_class,
        include_unclassed,
        external_ips,
        announce_without_endpoints,
        allowed_prefixes,
        pools: None,
        l2: None,
        service_attrs,
        community_room: COMMUNITY_ROOM - DRAIN_RESERVE,
        adverts: Default::default(),
        max_announcing_nodes: None,
        drain: None,
        connect_timeout,
        read_timeout,
    })
}

/// An array of prefixes, each error naming its index.
fn parse_prefixes(v: Value) -> Result<Vec<IpNet>, String> {
    match v.kind {
        ValueKind::Array(a) => a
            .into_iter()
            .enumerate()
            .map(|(i, x)| parse_prefix(x).map_err(|e| format!("[{i}]: {e}")))
            .collect(),
        _ => Err("expected an array of prefixes".into()),
    }
}

fn read_dataplane(mut t: Tbl, errs: &mut Errs) -> Dataplane {
    let address_interface = t.opt("address_interface", errs, |v| {
        let s = parse_str(v)?;
        check_ifname(&s)?;
        Ok(s)
    });
    let routes = t.table("routes", errs).and_then(|mut r| {
        let table = r.req("table", errs, |v| {
            let n = parse_int(v, 1, u32::MAX as i64)?;
            // 253-255 are the kernel's default, main and local tables.
            if (253..=255).contains(&n) {
                return Err(format!(
                    "{n} is one of the kernel's own tables (default, main, local)"
                ));
            }
            Ok(n as u32)
        });
        let protocol = r
            .opt("protocol", errs, |v| {
                let n = parse_int(v, 5, 255)?;
                Ok(n as u8)
            })
            .unwrap_or(DEFAULT_ROUTE_PROTOCOL);
        let interface = r.req("interface", errs, |v| {
            let s = parse_str(v)?;
            check_ifname(&s)?;
            Ok(s)
        });
        r.finish(errs);
        Some(RouteTable {
            table: table?,
            protocol,
            interface: interface?,
        })
    });
    let ipvs_state = t
        .opt("ipvs_state", errs, parse_abs_path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IPVS_STATE));
    let address_ownership = t
        .opt("address_ownership", errs, |v| {
            use crate::dataplane::record::Setting;
            match parse_str(v)?.as_str() {
                "auto" => Ok(Setting::Auto),
                "mark" => Ok(Setting::Mark),
                "record" => Ok(Setting::Record),
                o => Err(format!(
                    "{o:?} is not one of \"auto\", \"mark\", \"record\""
                )),
            }
        })
        .unwrap_or_default();
    let address_record = t
        .opt("address_record", errs, parse_abs_path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADDRESS_RECORD));
    t.finish(errs);
    Dataplane {
        address_interface,
        routes,
        ipvs_state,
        address_ownership,
        address_record,
    }
}

fn parse_abs_path(v: Value) -> Result<PathBuf, String> {
    let s = parse_str(v)?;
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path"));
    }
    Ok(PathBuf::from(s))
}

/// `[status]`: the local listener for people and probes, the metrics
/// listener for Prometheus, and what ready means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusConfig {
    /// Where `/readyz`, `/livez`, `/status`, `/metrics`, `/explain` and
    /// `/reload` are served; `None`: not at all.
    pub listen: Option<SocketAddr>,
    /// Where `/metrics` alone is served for Prometheus; off by default.
    pub metrics_listen: Option<SocketAddr>,
    /// Ready only while a session is Established.
    pub ready_needs_peer: bool,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: Some(DEFAULT_STATUS.parse().expect("a valid address")),
            metrics_listen: None,
            ready_needs_peer: true,
        }
    }
}

fn parse_socket(v: Value) -> Result<SocketAddr, String> {
    let s = parse_str(v)?;
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address:port"))
}

fn read_status(mut t: Tbl, errs: &mut Errs) -> StatusConfig {
    let d = StatusConfig::default();
    let enabled = t.opt("enabled", errs, parse_bool).unwrap_or(true);
    let listen = t.opt("listen", errs, parse_socket).or(d.listen);
    let metrics_listen = t.opt("metrics_listen", errs, parse_socket);
    let ready_needs_peer = t
        .opt("ready_needs_peer", errs, parse_bool)
        .unwrap_or(d.ready_needs_peer);
    t.finish(errs);
    StatusConfig {
        listen: listen.filter(|_| enabled),
        metrics_listen,
        ready_needs_peer,
    }
}

/// Where vipd records the IPVS services it created, unless configured.
pub const DEFAULT_IPVS_STATE: &str = "/run/vipd/ipvs-services";

/// Where vipd records its addresses on a kernel without `IFA_PROTO`.
pub const DEFAULT_ADDRESS_RECORD: &str = "/run/vipd/addresses";

/// Where vipd records a graceful stop, unless configured.
pub const DEFAULT_RESTART_RECORD: &str = "/run/vipd/bgp-stopped";

/// API servers as `address` (on `port`) or `address:port`; none only
/// where they are discovered.
fn parse_backends(v: Value, port: u16, discover: bool) -> Result<Vec<SocketAddr>, String> {
    match v.kind {
        ValueKind::Array(a) if !a.is_empty() || discover => a
            .into_iter()
            .enumerate()
            .map(|(i, x)| {
                let s = parse_str(x).map_err(|e| format!("[{i}]: {e}"))?;
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, port)))
                    .map_err(|_| format!("[{i}]: {s:?} is not an address or address:port"))
            })
            .collect(),
        ValueKind::Array(_) => {
            Err("is empty: name at least one API server, or set discover = true".into())
        }
        _ => Err("expected an array of \"address\" or \"address:port\"".into()),
    }
}

fn parse_scheduler(v: Value) -> Result<String, String> {
    let s = parse_str(v)?;
    // The kernel loads ip_vs_<name>; anything else is a typo.
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "{s:?} is not an IPVS scheduler name (mh, sh, rr, wrr, lc, ...)"
        ));
    }
    Ok(s)
}

fn parse_forwarding(v: Value) -> Result<Forwarding, String> {
    match parse_str(v)?.as_str() {
        "masquerade" => Ok(Forwarding::Masquerade),
        "direct" => Ok(Forwarding::Direct),
        "tunnel" => Ok(Forwarding::Tunnel),
        other => Err(format!("{other:?}: expected masquerade, direct or tunnel")),
    }
}

fn read_control_plane(mut t: Tbl, errs: &mut Errs) -> Option<ControlPlane> {
    let key = t.path.clone();
    let vip = t.req("vip", errs, parse_ip);
    let port = t
        .opt("port", errs, |v| parse_int(v, 1, 65535).map(|n| n as u16))
        .unwrap_or(6443);
    let discover = t.flag("discover", errs, false);
    let given = t.map.contains_key("backends");
    let backends = t.opt("backends", errs, |v| parse_backends(v, port, discover));
    let interface = t
        .opt("interface", errs, |v| {
            let s = parse_str(v)?;
            check_ifname(&s)?;
            Ok(s)
        })
        .unwrap_or_else(|| "lo".into());
    let ipvs = t.flag("ipvs", errs, true);
    let scheduler = t
        .opt("scheduler", errs, parse_scheduler)
        .unwrap_or_else(|| "mh".into());
    let forwarding = t
        .opt("forwarding", errs, parse_forwarding)
        .unwrap_or(Forwarding::Masquerade);
    let health = match t.table("health_check", errs) {
        Some(h) => read_health(h, errs),
        None => Some(HealthCheck::default()),
    };
    let attrs = read_attrs(&mut t, errs);
    t.finish(errs);
    let backends = match backends {
        Some(b) => b,
        None if !given && discover => vec![],
        None => {
            if !given {
                errs.push(
                    format!("{key}.backends"),
                    "missing: list the API servers, or set discover = true",
                );
            }
            return None;
        }
    };
    let vip = vip?;
    if !validate::backends(&key, vip, &backends, errs) {
        return None;
    }
    Some(ControlPlane {
        vip,
        port,
        backends,
        discover,
        interface,
        ipvs,
        scheduler,
        forwarding,
        health: health?,
        attrs,
    })
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::Https,
            path: "/readyz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

fn read_health(mut t: Tbl, errs: &mut Errs) -> Option<HealthCheck> {
    let d = HealthCheck::default();
    let kind = t
        .opt("kind", errs, |v| match parse_str(v)?.as_str() {
            "tcp" => Ok(CheckKind::Tcp),
            "http" => Ok(CheckKind::Http),
            "https" => Ok(CheckKind::Https),
            other => Err(format!("{other:?}: expected tcp, http or https")),
        })
        .unwrap_or(d.kind);
    let path = t
        .opt("path", errs, |v| {
            let s = parse_str(v)?;
            if !s.starts_with('/') || s.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!(
                    "{s:?} is not a request path (starts with '/', no spaces)"
                ));
            }
            Ok(s)
        })
        .unwrap_or(d.path);
    let ms = |v| parse_int(v, 10, 3_600_000).map(|n| Duration::from_millis(n as u64));
    let interval = t.opt("interval_ms", errs, ms).unwrap_or(d.interval);
    let timeout = t.opt("timeout_ms", errs, ms).unwrap_or(d.timeout);
    let count = |v| parse_int(v, 1, 100).map(|n| n as u32);
    let rise = t.opt("rise", errs, count).unwrap_or(d.rise);
    let fall = t.opt("fall", errs, count).unwrap_or(d.fall);
    let key = t.path.clone();
    t.finish(errs);
    if timeout > interval {
        errs.push(
            format!("{key}.timeout_ms"),
            format!(
                "{} ms is longer than interval_ms ({} ms): checks would overlap",
                timeout.as_millis(),
                interval.as_millis()
            ),
        );
        return None;
    }
    Some(HealthCheck {
        kind,
        path,
        interval,
        timeout,
        rise,
        fall,
    })
}

/// The route protocol number vipd marks its routes with unless configured:
/// one that no routing daemon in /etc/iproute2/rt_protos uses.
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 249;

fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ']) {
        return Err(format!(
            "{s:?} is not an interface name (1-15 characters, no '/' or space)"
        ));
    }
    Ok(())
}

fn read_peer(mut t: Tbl, local_asn: Option<u32>, errs: &mut Errs) -> Option<PeerConfig> {
    let key = t.path.clone();
    let address = peer::read_addr(&mut t, errs);
    let asn = t.req("asn", errs, peer::parse_peer_as);
    let own_asn = t.opt("local_asn", errs, parse_asn);
    let port = t
        .opt("port", errs, |v| parse_int(v, 1, 65535).map(|n| n as u16))
        .unwrap_or(179);
    let passive = t.flag("passive", errs, false);
    let hold_time = t.opt("hold_time", errs, parse_hold_time).unwrap_or(90);
    let u16_in = |lo, hi| move |v| parse_int(v, lo, hi).map(|n| n as u16);
    let keepalive = t.opt("keepalive", errs, u16_in(0, 21845));
    let connect_retry = t.opt("connect_retry", errs, u16_in(1, 3600)).unwrap_or(2);
    let password = read_password(&mut t, errs);
    let ttl = read_ttl(&mut t, errs);
    let ttl_security = t.flag("ttl_security", errs, false);
    let mut from_node = FromNode::default();
    let source_address = t.opt("source_address", errs, |v| node_or(v, parse_ip));
    from_node.source_address = matches!(source_address, Some(None));
    let families = t
        .opt("families", errs, parse_families)
        .unwrap_or(Families::BOTH);
    let (next_hop_ipv4, next_hop_ipv6) = read_next_hops(&mut t, &mut from_node, errs);
    let v6 = address.as_ref().is_some_and(|a| !a.is_ipv4());
    let (link_local_next_hop, extended_next_hop) = read_next_hop_flags(&mut t, v6, errs);
    let bfd = read_bfd(&mut t, &key, ttl.is_some_and(|t| t > 1), errs);
    let (description, name) = read_names(&mut t, errs);
    let node_selector = t
        .opt("node_selector", errs, fleet::parse_selector)
        .unwrap_or_default();
    let defaults = read_attrs(&mut t, errs);
    t.finish(errs);
    // Before the required keys' `?`: a file with problems gets them all.
    let keepalive = validate::keepalive(&key, hold_time, keepalive, errs);
    let peer = PeerConfig {
        address: address?,
        asn: asn?,
        port,
        passive,
        hold_time,
        keepalive,
        connect_retry,
        password: password.0,
        password_file: password.1,
        ttl,
        ttl_security,
        source_address: source_address.flatten(),
        families,
        next_hop_ipv4,
        next_hop_ipv6,
        link_local_next_hop,
        description,
        name,
        defaults,
        node_selector,
        from_node,
        bfd,
        local_asn: own_asn,
        extended_next_hop,
    };
    validate::peer(&key, &peer, own_asn.or(local_asn), errs);
    Some(peer)
}

/// `link_local_next_hop` (on by default) and `extended_next_hop`:
/// offered on IPv6 sessions by default, since IPv4 needs it only where
/// there is no IPv4 next hop to give.
fn read_next_hop_flags(t: &mut Tbl, v6: bool, errs: &mut Errs) -> (bool, bool) {
    let link_local = t.flag("link_local_next_hop", errs, true);
    (link_local, t.flag("extended_next_hop", errs, v6))
}

/// A peer's `description` (free text) and `name` (what a pool's `peers`
/// may call it).
fn read_names(t: &mut Tbl, errs: &mut Errs) -> (Option<String>, Option<String>) {
    let description = t.opt("description", errs, parse_str);
    let name = t.opt("name", errs, |v| {
        let s = parse_str(v)?;
        ipam::check_dns_name(&s)?;
        Ok(s)
    });
    (description, name)
}

fn parse_hold_time(v: Value) -> Result<u16, String> {
    let n = parse_int(v, 0, 65535)?;
    if n == 1 || n == 2 {
        return Err(format!(
            "{n} is not allowed: 0 or at least 3 (RFC 4271 4.2)"
        ));
    }
    Ok(n as u16)
}

fn parse_password(v: Value) -> Result<String, String> {
    check_password(parse_str(v)?)
}

fn check_password(s: String) -> Result<String, String> {
    if s.is_empty() || s.len() > MD5_MAX_KEY {
        return Err(format!("must be 1 to {MD5_MAX_KEY} bytes (TCP MD5 key)"));
    }
    Ok(s)
}

/// `password`, or `password_file` (a mounted Secret) read now; one final
/// newline in the file is not part of the key. No message here says
/// anything of the key but its length bounds.
fn read_password(t: &mut Tbl, errs: &mut Errs) -> (Option<Secret>, Option<PathBuf>) {
    let inline = t.opt("password", errs, parse_password);
    let file = t.opt("password_file", errs, parse_abs_path);
    let key = format!("{}.password_file", t.path);
    match (inline, file) {
        (Some(_), Some(_)) => {
            errs.push(key, "set either password or password_file, not both");
            (None, None)
        }
        (Some(p), None) => (Some(Secret(p)), None),
        (None, Some(f)) => {
            let read = std::fs::read(&f)
                .map_err(|e| format!("cannot read {}: {}", f.display(), e.kind()))
                .and_then(|b| String::from_utf8(b).map_err(|_| "is not UTF-8 text".to_string()))
                .map(|s| {
                    let s = s.strip_suffix('\n').unwrap_or(&s);
                    s.strip_suffix('\r').unwrap_or(s).to_string()
                })
                .and_then(check_password);
            match read {
                Ok(p) => (Some(Secret(p)), Some(f)),
                Err(why) => {
                    errs.push(key, why);
                    (None, Some(f))
                }
            }
        }
        (None, None) => (None, None),
    }
}

/// `ttl`, or its other name `multihop` (one of them).
fn read_ttl(t: &mut Tbl, errs: &mut Errs) -> Option<u8> {
    let ttl = t.opt("ttl", errs, |v| parse_int(v, 1, 255).map(|n| n as u8));
    let multihop = t.opt("multihop", errs, |v| parse_int(v, 1, 255).map(|n| n as u8));
    if ttl.is_some() && multihop.is_some() {
        errs.push(
            format!("{}.multihop", t.path),
            "set either ttl or multihop (they are the same setting), not both",
        );
    }
    ttl.or(multihop)
}

fn parse_families(v: Value) -> Result<Families, String> {
    let arr = match v.kind {
        ValueKind::Array(a) => a,
        _ => return Err("expected an array such as [\"ipv4\", \"ipv6\"]".into()),
    };
    let mut f = Families {
        ipv4: false,
        ipv6: false,
    };
    for item in arr {
        match parse_str(item)?.as_str() {
            "ipv4" => f.ipv4 = true,
            "ipv6" => f.ipv6 = true,
            other => {
                return Err(format!(
                    "unknown family {other:?}: expected \"ipv4\" or \"ipv6\""
                ))
            }
        }
    }
    if !f.ipv4 && !f.ipv6 {
        return Err("at least one family is needed".into());
    }
    Ok(f)
}

/// `next_hop_ipv4` and `next_hop_ipv6`: an address, or `"node"` (noted in
/// `from_node`, resolved from the Node later).
fn read_next_hops(
    t: &mut Tbl,
    from_node: &mut FromNode,
    errs: &mut Errs,
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let v4 = t.opt("next_hop_ipv4", errs, |v| {
        node_or_addr::<Ipv4Addr>(v, "IPv4")
    });
    from_node.next_hop_ipv4 = matches!(v4, Some(None));
    let v6 = t.opt("next_hop_ipv6", errs, |v| {
        node_or_addr::<Ipv6Addr>(v, "IPv6")
    });
    from_node.next_hop_ipv6 = matches!(v6, Some(None));
    (v4.flatten(), v6.flatten())
}

fn read_announce(mut t: Tbl, errs: &mut Errs) -> Option<Announce> {
    let key = t.path.clone();
    let given = t.map.contains_key("prefix") || t.map.contains_key("prefixes");
    let one = t.opt("prefix", errs, |v| {
        parse_prefix(v).and_then(validate::announceable)
    });
    let many = t.opt("prefixes", errs, |v| match v.kind {
        ValueKind::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, item) in a.into_iter().enumerate() {
                let p = parse_prefix(item).and_then(validate::announceable);
                out.push(p.map_err(|e| format!("[{i}]: {e}"))?);
            }
            Ok(out)
        }
        _ => Err("expected an array of prefixes".into()),
    });
    let attrs = read_attrs(&mut t, errs);
    t.finish(errs);
    let prefixes = match (one, many) {
        (Some(p), None) => vec![p],
        (None, Some(ps)) => {
            if ps.is_empty() {
                errs.push(format!("{key}.prefixes"), "is empty");
            }
            ps
        }
        (Some(_), Some(_)) => {
            errs.push(&key, "set either prefix or prefixes, not both");
            return None;
        }
        (None, None) => {
            // Where one was given but did not parse, that error says enough.
            if !given {
                errs.push(&key, "needs prefix = \"...\" or prefixes = [...]");
            }
            return None;
        }
    };
    Some(Announce { prefixes, attrs })
}

/// communities, large_communities, med, local_pref: shared by
/// `[[announce]]` entries and peers.
fn read_attrs(t: &mut Tbl, errs: &mut Errs) -> RouteAttrs {
    let communities = t
        .opt("communities", errs, |v| parse_list(v, parse_community))
        .unwrap_or_default();
    let large_communities = t
        .opt("large_communities", errs, |v| {
            parse_list(v, parse_large_community)
        })
        .unwrap_or_default();
    let med = t.opt("med", errs, |v| {
        parse_int(v, 0, u32::MAX as i64).map(|n| n as u32)
    });
    let local_pref = t.opt("local_pref", errs, |v| {
        parse_int(v, 0, u32::MAX as i64).map(|n| n as u32)
    });
    let mut a = RouteAttrs {
        communities,
        large_communities,
        med,
        local_pref,
        peers: Vec::new(),
    };
    a.normalize();
    a
}

/// "ASN:VALUE", each half 0 to 65535.
pub fn parse_community(s: &str) -> Result<u32, String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not ASN:VALUE"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {a:?} is not a number from 0 to 65535"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {b:?} is not a number from 0 to 65535"))?;
    Ok(((a as u32) << 16) | b as u32)
}

/// "GLOBAL:LOCAL1:LOCAL2", 32 bits each.
pub fn parse_large_community(s: &str) -> Result<[u32; 3], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 {
        return Err(format!("{s:?} is not GLOBAL:LOCAL1:LOCAL2"));
    }
    let mut out = [0u32; 3];
    for (o, p) in out.iter_mut().zip(&parts) {
        *o = p
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {p:?} is not a 32-bit number"))?;
    }
    Ok(out)
}

fn check_duplicate_prefixes(announce: &[Announce], errs: &mut Errs) {
    let total: usize = announce.iter().map(|a| a.prefixes.len()).sum();
    let mut seen: HashMap<IpNet, usize> = HashMap::with_capacity(total);
    for (i, a) in announce.iter().enumerate() {
        for p in &a.prefixes {
            if let Some(&j) = seen.get(p) {
                if j != i {
                    errs.push(
                        format!("announce[{i}]"),
                        format!("{p} is also announced by announce[{j}]: one prefix, one set of attributes"),
                    );
                }
            } else {
                seen.insert(*p, i);
            }
        }
    }
}

pub(crate) fn parse_asn(v: Value) -> Result<u32, String> {
    let n = parse_int(v, 0, u32::MAX as i64)?;
    if n == 0 {
        return Err("ASN 0 is reserved (RFC 7607)".into());
    }
    if n == AS_TRANS as i64 {
        return Err("ASN 23456 is AS_TRANS, reserved (RFC 6793)".into());
    }
    Ok(n as u32)
}

/// `bfd`, `bfd_interval_ms`, `bfd_multiplier`, `bfd_min_ttl` of one peer;
/// `multihop`: its `ttl` is above 1.
fn read_bfd(t: &mut Tbl, key: &str, multihop: bool, errs: &mut Errs) -> Option<BfdSettings> {
    let on = t.opt("bfd", errs, parse_bool).unwrap_or(false);
    let interval = t.opt("bfd_interval_ms", errs, |v| parse_int(v, 10, 60_000));
    let multiplier = t.opt("bfd_multiplier", errs, |v| parse_int(v, 1, 255));
    let min_ttl = t.opt("bfd_min_ttl", errs, |v| parse_int(v, 1, 255));
    let wait = t.opt("bfd_wait", errs, parse_bool);
    if min_ttl.is_some() && !multihop {
        errs.push(
            format!("{key}.bfd_min_ttl"),
            "applies to a multihop BFD session (ttl above 1); single hop always requires 255 (RFC 5881)",
        );
    }
    if !on {
        for (given, name) in [
            (interval.is_some(), "bfd_interval_ms"),
            (multiplier.is_some(), "bfd_multiplier"),
            (min_ttl.is_some() && multihop, "bfd_min_ttl"),
            (wait.is_some(), "bfd_wait"),
        ] {
            if given {
                errs.push(
                    format!("{key}.{name}"),
                    "applies to a BFD session: set bfd = true",
                );
            }
        }
        return None;
    }
    Some(BfdSettings {
        interval: Duration::from_millis(interval.unwrap_or(300) as u64),
        multiplier: multiplier.unwrap_or(3) as u8,
        min_ttl: if multihop {
            min_ttl.unwrap_or(1) as u8
        } else {
            255
        },
        wait: wait.unwrap_or(true),
    })
}

/// `"node"` (`None`: the Node's address, resolved at start) or what `f`
/// reads.
fn node_or<T>(v: Value, f: impl Fn(Value) -> Result<T, String>) -> Result<Option<T>, String> {
    if matches!(&v.kind, ValueKind::String(s) if s == "node") {
        return Ok(None);
    }
    f(v).map(Some)
}

/// An address of one family, or `"node"` (`None`).
fn node_or_addr<A: std::str::FromStr>(v: Value, family: &str) -> Result<Option<A>, String> {
    node_or(v, |v| {
        parse_str(v)?
            .parse::<A>()
            .map_err(|_| format!("not an {family} address or \"node\""))
    })
}

fn parse_ip(v: Value) -> Result<IpAddr, String> {
    let s = parse_str(v)?;
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

fn parse_prefix(v: Value) -> Result<IpNet, String> {
    let s = parse_str(v)?;
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        // A bare address is the common case for a VIP: a host route.
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("{s:?} is not a prefix such as 203.0.113.10/32")),
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{s} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn parse_list<T>(v: Value, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    match v.kind {
        ValueKind::Array(a) => a
            .into_iter()
            .map(|x| parse_str(x).and_then(|s| item(&s)))
            .collect(),
        _ => Err("expected an array of strings".into()),
    }
}

fn parse_str(v: Value) -> Result<String, String> {
    match v.kind {
        ValueKind::String(s) => Ok(s),
        // Environment overrides parse "65010" as a number even where a string is meant.
        ValueKind::I64(n) => Ok(n.to_string()),
        ValueKind::U64(n) => Ok(n.to_string()),
        other => Err(format!("expected a string, got {}", kind_name(&other))),
    }
}

fn parse_bool(v: Value) -> Result<bool, String> {
    match v.kind {
        ValueKind::Boolean(b) => Ok(b),
        ValueKind::String(s) if s == "true" || s == "false" => Ok(s == "true"),
        other => Err(format!("expected true or false, got {}", kind_name(&other))),
    }
}

fn parse_int(v: Value, min: i64, max: i64) -> Result<i64, String> {
    let n: i128 = match v.kind {
        ValueKind::I64(n) => n as i128,
        ValueKind::U64(n) => n as i128,
        ValueKind::I128(n) => n,
        ValueKind::U128(n) => n.min(i128::MAX as u128) as i128,
        ValueKind::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("expected a whole number, got {s:?}"))?,
        other => {
            return Err(format!(
                "expected a whole number, got {}",
                kind_name(&other)
            ))
        }
    };
    if n < min as i128 || n > max as i128 {
        return Err(format!("{n} is out of range {min} to {max}"));
    }
    Ok(n as i64)
}

fn kind_name(k: &ValueKind) -> &'static str {
    match k {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::I128(_) | ValueKind::U128(_) => {
            "a number"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

fn as_table(key: &str, v: Value, errs: &mut Errs) -> Option<Map<String, Value>> {
    match v.kind {
        ValueKind::Table(t) => Some(t),
        other => {
            errs.push(key, format!("expected a table, got {}", kind_name(&other)));
            None
        }
    }
}

#[derive(Default)]
struct Errs(Vec<Problem>);

impl Errs {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }
    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key == key)
    }
}

/// A table being read: each key taken is removed, so what is left at the
/// end is exactly the set of unknown keys.
/// The known key most like `k`, if one is close: the same but for case,
/// `_` and `-`, or a typo or two away.
fn nearest<'a>(k: &str, known: &'a [String]) -> Option<&'a str> {
    let bare = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    known
        .iter()
        .map(|c| {
            let score = if bare(c) == bare(k) {
                1.0
            } else {
                strsim::normalized_damerau_levenshtein(&bare(k), &bare(c))
            };
            (score, c.as_str())
        })
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

struct Tbl {
    path: String,
    map: Map<String, Value>,
    /// Every key asked for: the known ones, for "did you mean".
    asked: Vec<String>,
}

impl Tbl {
    fn new(path: &str, map: Map<String, Value>) -> Self {
        Tbl {
            path: path.to_string(),
            map,
            asked: vec![],
        }
    }

    fn take(&mut self, k: &str) -> Option<Value> {
        self.asked.push(k.to_string());
        self.map.remove(k)
    }

    /// The key is there (and not read yet).
    fn has(&self, k: &str) -> bool {
        self.map.contains_key(k)
    }

    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    /// A boolean key, `default` when absent.
    fn flag(&mut self, k: &str, errs: &mut Errs, default: bool) -> bool {
        self.opt(k, errs, parse_bool).unwrap_or(default)
    }

    fn opt<T>(
        &mut self,
        k: &str,
        errs: &mut Errs,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<T> {
        let v = self.take(k)?;
        match parse(v) {
            Ok(t) => Some(t),
            Err(e) => {
                errs.push(self.key(k), e);
                None
            }
        }
    }

    fn req<T>(
        &mut self,
        k: &str,
        errs: &mut Errs,
        parse: impl FnOnce(Value) -> Result<T, String>,
    ) -> Option<T> {
        if !self.map.contains_key(k) {
            errs.push(self.key(k), "missing: this key is required");
            return None;
        }
        self.opt(k, errs, parse)
    }

    fn table(&mut self, k: &str, errs: &mut Errs) -> Option<Tbl> {
        let v = self.take(k)?;
        let key = self.key(k);
        as_table(&key, v, errs).map(|m| Tbl::new(&key, m))
    }

    fn array(&mut self, k: &str, errs: &mut Errs) -> Vec<Value> {
        let key = self.key(k);
        match self.take(k).map(|v| v.kind) {
            None => Vec::new(),
            Some(ValueKind::Array(a)) => a,
            Some(ValueKind::Table(_)) => {
                errs.push(
                    &key,
                    format!(
                        "written as the table [{key}]: each entry is a [[{key}]] (double brackets)"
                    ),
                );
                Vec::new()
            }
            Some(other) => {
                errs.push(
                    &key,
                    format!(
                        "expected an array of tables ([[{key}]]), got {}",
                        kind_name(&other)
                    ),
                );
                Vec::new()
            }
        }
    }

    fn finish(self, errs: &mut Errs) {
        let mut left: Vec<_> = self.map.keys().cloned().collect();
        left.sort();
        for k in left {
            let why = match nearest(&k, &self.asked) {
                Some(m) => format!("unknown key; did you mean {m}?"),
                None => "unknown key".to_string(),
            };
            errs.push(self.key(&k), why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[bgp]
asn = 65010
router_id = "192.0.2.1"
listen = "[::]:179"

[[bgp.peers]]
address = "192.0.2.2"
asn = 65002

[[bgp.peers]]
address = "2001:db8::2"
asn = 65010
hold_time = 9
password = "s3cret"
families = ["ipv6"]

[[announce]]
prefix = "203.0.113.10/32"
communities = ["65010:100"]
large_communities = ["65010:1:2"]
med = 10

[[announce]]
prefixes = ["198.51.100.1/32", "2001:db8:ff::1/128"]
"#;

    #[test]
    fn good_file_parses_with_defaults() {
        let c = Config::from_toml_str(GOOD).unwrap();
        assert_eq!(c.bgp.asn, 65010);
        assert!(c.bgp.graceful_restart);
        assert_eq!(c.bgp.peers.len(), 2);
        let p0 = &c.bgp.peers[0];
        assert_eq!((p0.hold_time, p0.keepalive, p0.port), (90, 30, 179));
        assert!(p0.families.ipv4 && p0.families.ipv6);
        let p1 = &c.bgp.peers[1];
        assert_eq!((p1.hold_time, p1.keepalive), (9, 3));
        assert!(!p1.families.ipv4 && p1.families.ipv6);
        assert_eq!(c.announcements().count(), 3);
        assert_eq!(c.announce[0].attrs.communities, vec![(65010 << 16) | 100]);
        assert_eq!(c.announce[0].attrs.large_communities, vec![[65010, 1, 2]]);
    }

    /// Exactly these problems, each given by the start of its line.
    fn assert_problems(p: &[String], want: &[&str]) {
        for w in want {
            assert!(
                p.iter().any(|l| l.starts_with(w)),
                "missing {w:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
    }

    fn problems(text: &str) -> Vec<String> {
        Config::from_toml_str(text)
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn advertisements_name_real_peers_and_aggregate_inside_their_addresses() {
        let base = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n\
            [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\nname = \"tor-a\"\n";
        let kube = "[kubernetes]\nnode_name = \"n1\"\n";
        let p = problems(&format!(
            "{base}[[bgp.advertisements]]\nprefix = \"198.51.100.0/24\"\npeers = [\"tor-b\"]\n\
             aggregate_length = 23\n\
             [[bgp.advertisements]]\nprefix = \"198.51.100.0/24\"\n{kube}\
             [ipam]\n[[ipam.pools]]\nname = \"blue\"\naddresses = [\"203.0.113.0/28\"]\n\
             aggregate_length = 27\ncommunities = [\"65000:x\"]\n"
        ));
        assert_eq!(
            p,
            [
                "ipam.pools[0].communities: \"65000:x\": \"x\" is not a number from 0 to 65535",
                "ipam.pools[0].aggregate_length: 203.0.113.0/27 would cover addresses outside the pool's (it holds 203.0.113.0 to 203.0.113.15): announced, it would draw their traffic here",
                "bgp.advertisements[0].peers: \"tor-b\" names no peer in [[bgp.peers]] (by its name or address)",
                "bgp.advertisements[0].aggregate_length: /23 is shorter than the prefix 198.51.100.0/24: it would cover addresses outside it",
                "bgp.advertisements[1].prefix: 198.51.100.0/24 is also bgp.advertisements[0]",
            ]
        );
        let c = Config::from_toml_str(&format!(
            "{base}[[bgp.advertisements]]\nprefix = \"198.51.100.0/24\"\npeers = [\"tor-a\", \"192.0.2.2\"]\n\
             local_pref = 300\naggregate_length = 26\n{kube}"
        ))
        .unwrap();
        let src = c
            .kubernetes
            .unwrap()
            .adverts
            .of("198.51.100.70".parse().unwrap())
            .cloned()
            .unwrap();
        assert_eq!(src.origin, "bgp.advertisements[0]");
        assert_eq!(src.attrs.local_pref, Some(300));
        assert_eq!(src.attrs.peers, ["192.0.2.2", "tor-a"]);
        assert_eq!(
            src.advert.aggregate("198.51.100.70".parse().unwrap()),
            Some("198.51.100.64/26".parse().unwrap())
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let p = problems(
            r#"
[bgp]
asn = 0
router_id = "0.0.0.0"
colour = "blue"

[[bgp.peers]]
address = "192.0.2.300"
asn = 65002
hold_time = 10
keepalive = 10

[[bgp.peers]]
address = "192.0.2.2"
asn = 65002
passive = true

[[bgp.peers]]
address = "192.0.2.2"
asn = 65003
hold_time = 2

[[announce]]
prefix = "203.0.113.10/24"
communities = ["65010:x"]
"#,
        );
        let want = [
            "bgp.asn: ASN 0 is reserved",
            "bgp.router_id: 0.0.0.0 is not a valid BGP identifier",
            "bgp.colour: unknown key",
            "bgp.peers[0].address: \"192.0.2.300\" is not an IP address",
            "bgp.peers[0].keepalive: must be at least 1 and less than hold_time (10)",
            "bgp.peers[1].passive: a passive peer needs bgp.listen",
            "bgp.peers[2].hold_time: 2 is not allowed",
            "bgp.peers[2].address: duplicate peer 192.0.2.2 (also bgp.peers[1])",
            "announce[0].prefix: 203.0.113.10/24 has host bits set; did you mean 203.0.113.0/24?",
            "announce[0].communities: \"65010:x\": \"x\" is not a number",
        ];
        assert_problems(&p, &want);
    }

    #[test]
    fn missing_tables_and_types() {
        let p = problems("[[announce]]\nprefix = 5\n");
        assert!(p
            .iter()
            .any(|l| l == "bgp: missing: the [bgp] table is required"));
        assert!(p
            .iter()
            .any(|l| l.starts_with("announce[0].prefix: \"5\" is not a prefix")));
        let p = problems("[bgp]\nasn = \"x\"\nrouter_id = [1]\n");
        assert_eq!(
            p,
            vec![
                "bgp.asn: expected an AS number, or \"label:KEY\" for the Node's label KEY, got \"x\"",
                "bgp.router_id: expected a string, got an array"
            ]
        );
        let p = problems("[bgp]\nasn = 65000\nrouter_id = \"192.0.2.1\"\n[[announce]]\nmed = 1\n");
        assert_eq!(
            p,
            vec!["announce[0]: needs prefix = \"...\" or prefixes = [...]"]
        );
    }

    #[test]
    fn duplicate_prefixes_across_groups_are_refused() {
        let p = problems(
            "[bgp]\nasn = 65000\nrouter_id = \"192.0.2.1\"\n[[announce]]\nprefix = \"203.0.113.1/32\"\n[[announce]]\nprefixes = [\"203.0.113.1\"]\n",
        );
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("announce[1]: 203.0.113.1/32 is also announced by announce[0]"));
    }

    #[test]
    fn kubernetes_and_dataplane_tables() {
        let base = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n";
        let c = Config::from_toml_str(&format!(
            "{base}[kubernetes]\nnode_name = \"n1\"\nkubeconfig = \"/k\"\nallowed_prefixes = [\"203.0.113.0/24\"]\n\
             [dataplane]\naddress_interface = \"lo\"\n[dataplane.routes]\ntable = 100\ninterface = \"lo\"\n"
        ))
        .unwrap();
        let k = c.kubernetes.unwrap();
        assert_eq!(k.node_name, "n1");
        assert_eq!(
            k.allowed_prefixes,
            vec!["203.0.113.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(!k.external_ips && !k.announce_without_endpoints);
        assert_eq!(c.dataplane.address_interface.as_deref(), Some("lo"));
        let r = c.dataplane.routes.unwrap();
        assert_eq!((r.table, r.protocol), (100, DEFAULT_ROUTE_PROTOCOL));
        // Without [kubernetes]: static announcements only.
        assert!(Config::from_toml_str(base).unwrap().kubernetes.is_none());
        let p = problems(&format!(
            "{base}[kubernetes]\ninclude_unclassed = true\n[dataplane]\naddress_interface = \"a/b\"\n[dataplane.routes]\ntable = 254\n"
        ));
        let want = [
            "kubernetes.include_unclassed: only means something with load_balancer_class set",
            "kubernetes.node_name: missing: set it, or the NODE_NAME environment variable",
            "dataplane.address_interface: \"a/b\" is not an interface name",
            "dataplane.routes.table: 254 is one of the kernel's own tables",
            "dataplane.routes.interface: missing: this key is required",
        ];
        assert_problems(&p, &want);
    }

    /// The key from a mounted Secret: read at each load, one final newline
    /// dropped, never in a message or a printed configuration.
    #[test]
    fn password_file_is_read_and_never_shown() {
        const KEY: &str = "Kx7-unit-md5-key";
        let d = std::env::temp_dir().join(format!("vipd-pwfile-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("key");
        std::fs::write(&f, format!("{KEY}\n")).unwrap();
        let peer = |extra: &str| {
            format!(
                "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\n{extra}"
            )
        };
        let file = format!("password_file = \"{}\"\n", f.display());
        let c = Config::from_toml_str(&peer(&file)).unwrap();
        let p = &c.bgp.peers[0];
        assert_eq!(p.password.as_ref().map(Secret::expose), Some(KEY));
        assert_eq!(p.password_file.as_deref(), Some(f.as_path()));
        assert!(!format!("{c:?}").contains(KEY), "the key in Debug");
        let both = problems(&peer(&format!("password = \"{KEY}\"\n{file}")));
        assert_eq!(
            both,
            ["bgp.peers[0].password_file: set either password or password_file, not both"]
        );
        std::fs::write(&f, KEY.repeat(6)).unwrap();
        let long = problems(&peer(&file));
        assert_eq!(
            long,
            ["bgp.peers[0].password_file: must be 1 to 80 bytes (TCP MD5 key)"]
        );
        std::fs::remove_file(&f).unwrap();
        let gone = problems(&peer(&file));
        assert_eq!(
            gone,
            [format!(
                "bgp.peers[0].password_file: cannot read {}: entity not found",
                f.display()
            )]
        );
        assert!(!format!("{both:?}{long:?}").contains(KEY));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn status_listener() {
        let base = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n";
        let c = Config::from_toml_str(base).unwrap();
        assert_eq!(c.status.listen, Some(DEFAULT_STATUS.parse().unwrap()));
        assert_eq!(c.status.metrics_listen, None, "off unless asked for");
        assert!(c.status.ready_needs_peer);
        let c = Config::from_toml_str(&format!(
            "{base}[status]\nlisten = \"[::1]:9000\"\nmetrics_listen = \"0.0.0.0:9180\"\nready_needs_peer = false\n"
        ))
        .unwrap();
        assert_eq!(c.status.listen, Some("[::1]:9000".parse().unwrap()));
        assert_eq!(
            c.status.metrics_listen,
            Some("0.0.0.0:9180".parse().unwrap())
        );
        assert!(!c.status.ready_needs_peer);
        let c = Config::from_toml_str(&format!("{base}[status]\nenabled = false\n")).unwrap();
        assert_eq!(c.status.listen, None);
        assert_eq!(
            problems(&format!("{base}[status]\nlisten = \"9000\"\nport = 1\n")),
            [
                "status.listen: \"9000\" is not an address:port",
                "status.port: unknown key"
            ]
        );
    }

    #[test]
    fn control_plane_table() {
        let base = "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n";
        let c = Config::from_toml_str(&format!(
            "{base}[control_plane]\nvip = \"192.0.2.100\"\nbackends = [\"192.0.2.11\", \"[2001:db8::12]:7443\"]\n\
             communities = [\"65010:1\"]\n"
        ))
        .unwrap();
        let cp = c.control_plane.unwrap();
        assert_eq!(cp.port, 6443);
        assert_eq!(
            cp.backends,
            vec![
                "192.0.2.11:6443".parse::<SocketAddr>().unwrap(),
                "[2001:db8::12]:7443".parse().unwrap()
            ]
        );
        assert_eq!((cp.interface.as_str(), cp.ipvs), ("lo", true));
        assert_eq!(
            (cp.scheduler.as_str(), cp.forwarding),
            ("mh", Forwarding::Masquerade)
        );
        assert_eq!(cp.health, HealthCheck::default());
        assert_eq!(cp.attrs.communities, vec![(65010 << 16) | 1]);
        assert_eq!(c.dataplane.ipvs_state, PathBuf::from(DEFAULT_IPVS_STATE));
        let p = problems(&format!(
            "{base}[[announce]]\nprefix = \"192.0.2.100/32\"\n\
             [dataplane]\nipvs_state = \"relative\"\n\
             [control_plane]\nvip = \"192.0.2.100\"\nbackends = [\"192.0.2.100\", \"x\"]\n\
             scheduler = \"Maglev!\"\nforwarding = \"nat\"\nport = 0\nhealth = 1\n\
             [control_plane.health_check]\nkind = \"icmp\"\npath = \"readyz\"\ninterval_ms = 100\ntimeout_ms = 500\nrise = 0\n"
        ));
        let want = [
            "dataplane.ipvs_state: \"relative\" is not an absolute path",
            "control_plane.port: ",
            "control_plane.backends: [1]: \"x\" is not an address or address:port",
            "control_plane.scheduler: \"Maglev!\" is not an IPVS scheduler name",
            "control_plane.forwarding: \"nat\": expected masquerade, direct or tunnel",
            "control_plane.health: unknown key",
            "control_plane.health_check.kind: \"icmp\": expected tcp, http or https",
            "control_plane.health_check.path: \"readyz\" is not a request path",
            "control_plane.health_check.rise: ",
            "control_plane.health_check.timeout_ms: 500 ms is longer than interval_ms (100 ms)",
        ];
        assert_problems(&p, &want);
        // The VIP as its own backend, a backend twice, the VIP in [[announce]].
        let p = problems(&format!(
            "{base}[[announce]]\nprefix = \"192.0.2.100/32\"\n\
             [control_plane]\nvip = \"192.0.2.100\"\nbackends = [\"192.0.2.100\", \"192.0.2.11\", \"192.0.2.11:6443\"]\n"
        ));
        let want = [
            "control_plane.backends[0]: 192.0.2.100 is the VIP itself",
            "control_plane.backends[2]: 192.0.2.11:6443 is listed twice",
        ];
        assert_problems(&p, &want);
        let p = problems(&format!(
            "{base}[[announce]]\nprefix = \"192.0.2.100/32\"\n\
             [control_plane]\nvip = \"192.0.2.100\"\nbackends = [\"192.0.2.11\"]\n"
        ));
        assert_eq!(
            p,
            ["control_plane.vip: 192.0.2.100/32 is also in [[announce]]: the control plane announces it only while a backend is healthy"]
        );
        // Discovery: backends may be left out, but it needs [kubernetes].
        let kube = "[kubernetes]\nnode_name = \"n\"\n";
        let c = Config::from_toml_str(&format!(
            "{base}{kube}[control_plane]\nvip = \"192.0.2.100\"\ndiscover = true\n"
        ))
        .unwrap();
        let cp = c.control_plane.unwrap();
        assert!(cp.discover && cp.backends.is_empty());
        let p = problems(&format!(
            "{base}[control_plane]\nvip = \"192.0.2.100\"\ndiscover = true\nbackends = []\n"
        ));
        assert_eq!(
            p,
            ["control_plane.discover: reads default/kubernetes: it needs a [kubernetes] table"]
        );
        let p = problems(&format!("{base}[control_plane]\nvip = \"192.0.2.100\"\n"));
        assert_eq!(
            p,
            ["control_plane.backends: missing: list the API servers, or set discover = true"]
        );
        let p = problems(&format!(
            "{base}[control_plane]\nvip = \"192.0.2.100\"\nbackends = []\n"
        ));
        assert_eq!(
            p,
            ["control_plane.backends: is empty: name at least one API server, or set discover = true"]
        );
    }

    #[test]
    fn peer_default_attributes() {
        let c = Config::from_toml_str(
            "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65002\ncommunities = [\"65010:7\", \"65010:7\"]\nlocal_pref = 50\n",
        )
        .unwrap();
        let d = &c.bgp.peers[0].defaults;
        assert_eq!(d.communities, vec![(65010 << 16) | 7]);
        assert_eq!(d.local_pref, Some(50));
    }

    #[test]
    fn environment_overrides_keys() {
        let dir = std::env::temp_dir().join(format!("vipd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("v.toml");
        std::fs::write(&f, GOOD).unwrap();
        let env = HashMap::from([
            ("VIPD_BGP__ASN".to_string(), "4200000001".to_string()),
            (
                "VIPD_BGP__GRACEFUL_RESTART".to_string(),
                "false".to_string(),
            ),
        ]);
        let c = Config::load_with_env(&f, Some(env)).unwrap();
        assert_eq!(c.bgp.asn, 4_200_000_001);
        assert!(!c.bgp.graceful_restart);
        assert!(
            c.kubernetes.is_none(),
            "NODE_NAME alone does not enable Kubernetes"
        );
        let env = HashMap::from([("VIPD_BGP__ASN".to_string(), "23456".to_string())]);
        let e = Config::load_with_env(&f, Some(env)).unwrap_err();
        assert!(
            e.to_string().starts_with("bgp.asn: ASN 23456 is AS_TRANS"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn next_hops_are_an_address_of_their_family_or_node() {
        let e = Config::from_toml_str(
            "[bgp]\nasn = 65010\nrouter_id = \"192.0.2.1\"\n[[bgp.peers]]\naddress = \"192.0.2.2\"\n\
             asn = 65000\nnext_hop_ipv4 = \"2001:db8::1\"\nnext_hop_ipv6 = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("next_hop_ipv4: not an IPv4 address or \"node\""),
            "{e}"
        );
        assert!(
            e.contains("next_hop_ipv6: not an IPv6 address or \"node\""),
            "{e}"
        );
    }
}
