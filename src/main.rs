#![warn(clippy::too_many_lines)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::Targets;

use vipd::config::Config;

#[derive(Parser)]
#[command(name = "vipd", version, about = "Announces Service VIPs over BGP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon. SIGHUP reloads the file; SIGTERM stops.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log filter, e.g. "info" or "vipd=debug" (default: $VIPD_LOG or info).
        #[arg(long)]
        log: Option<String>,
    },
    /// Print a running vipd's status: exit 0 when ready, 1 when not, 2 when
    /// it cannot be reached.
    Status {
        /// The status listener ([status] listen).
        #[arg(long, default_value = vipd::config::DEFAULT_STATUS)]
        address: std::net::SocketAddr,
        /// Output: "text" or "json".
        #[arg(long, short, default_value = "text")]
        output: Output,
    },
    /// Why a Service is or is not announced from this node, and to which
    /// peers with which attributes (asks the running vipd). Exit 0, or 2
    /// when vipd cannot be reached.
    Explain {
        /// The Service, as NAMESPACE/NAME.
        service: String,
        /// The status listener ([status] listen).
        #[arg(long, default_value = vipd::config::DEFAULT_STATUS)]
        address: std::net::SocketAddr,
        /// Output: "text" or "json".
        #[arg(long, short, default_value = "text")]
        output: Output,
    },
    /// Ask the running vipd to read its configuration again (as SIGHUP, for
    /// an image without a shell: `kubectl exec ds/vipd -- vipd reload`).
    /// Exit 0 when applied, 1 when refused (the running one stays), 2 when
    /// vipd cannot be reached.
    Reload {
        /// The status listener ([status] listen).
        #[arg(long, default_value = vipd::config::DEFAULT_STATUS)]
        address: std::net::SocketAddr,
    },
    /// Check a configuration file: exit 0 when valid, 2 with one line per problem.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
        /// Also show which peers a node with these labels gets
        /// ("k=v,k2=v2"; "" for a node without labels).
        #[arg(long)]
        node_labels: Option<String>,
        /// Check as on this node: the NODE_NAME a DaemonSet's pod is given
        /// (addresses and the router ID taken from the Node are resolved
        /// only at run time).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Prints what vipd answered: exit 0 (or 1 where `not_ok` says the
/// answer means "not ready"), 2 when it cannot be reached.
fn print_answer(what: &str, got: Result<(bool, String), String>, not_ok: u8) -> ExitCode {
    match got {
        Ok((ok, text)) => {
            print!("{text}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(not_ok)
            }
        }
        Err(e) => {
            eprintln!("vipd {what}: {e}");
            ExitCode::from(2)
        }
    }
}

/// Text logs at `targets` until the configuration is read; then what
/// `[log]` asks for (its level only where neither `--log` nor the
/// environment gave one).
fn init_logging(targets: Targets, level_given: bool) -> impl Fn(&vipd::config::LogConfig) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{reload, Layer, Registry};
    type Boxed = Box<dyn Layer<Registry> + Send + Sync>;
    let text = || -> Boxed { tracing_subscriber::fmt::layer().with_ansi(false).boxed() };
    let (format, format_handle) = reload::Layer::new(text());
    let (filter, filter_handle) = reload::Layer::new(targets);
    tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .init();
    move |cfg: &vipd::config::LogConfig| {
        let layer: Boxed = if cfg.json {
            tracing_subscriber::fmt::layer().json().boxed()
        } else {
            text()
        };
        let _ = format_handle.reload(layer);
        if let (false, Some(level)) = (level_given, &cfg.level) {
            if let Ok(t) = Targets::from_str(level) {
                let _ = filter_handle.reload(t);
            }
        }
    }
}

/// Each peer, and whether a node with `labels` gets it.
fn peers_for(c: &Config, labels: &vipd::config::Labels) -> String {
    let chosen = c.bgp.for_node(Some(labels));
    let asn = c.bgp.asn_for(Some(labels));
    let mut out = match (&asn, &c.bgp.asn_label) {
        (Err(e), _) => format!("  {e}: only peers with their own local_asn\n"),
        (Ok(_), Some(k)) => format!("  AS{} (label {k})\n", chosen.asn),
        (Ok(_), None) => String::new(),
    };
    for p in &c.bgp.peers {
        let on = chosen.peers.iter().any(|q| q.address == p.address);
        let why = if asn.is_err() && p.local_asn.is_none() {
            "no ASN for this node".to_string()
        } else if p.node_selector.is_empty() {
            "every node".to_string()
        } else {
            let sel: Vec<String> = p
                .node_selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("node_selector {}", sel.join(","))
        };
        let verdict = if on { "peer" } else { "not a peer" };
        let local = p
            .local_asn
            .map(|a| format!(", local AS{a}"))
            .unwrap_or_default();
        out += &format!(
            "  {} {}: {verdict} ({why}{local})\n",
            p.address,
            p.asn.text()
        );
    }
    out
}

fn check_config(file: &std::path::Path, node_labels: Option<&str>, node: Option<&str>) -> ExitCode {
    let mut env: std::collections::HashMap<String, String> = std::env::vars().collect();
    if let Some(n) = node {
        env.insert("NODE_NAME".into(), n.into());
    }
    match Config::load_with_env(file, Some(env)) {
        Ok(c) => {
            let n: usize = c.announce.iter().map(|a| a.prefixes.len()).sum();
            let cp = c
                .control_plane
                .as_ref()
                .map(|cp| {
                    format!(
                        ", control-plane VIP {} over {} backends",
                        cp.vip,
                        cp.backends.len()
                    )
                })
                .unwrap_or_default();
            let ipam = c
                .ipam
                .as_ref()
                .map(|i| format!(", {} address pools", i.pools.len()))
                .unwrap_or_default();
            println!(
                "{}: valid ({} peers, {} prefixes{cp}{ipam})",
                file.display(),
                c.bgp.peers.len(),
                n
            );
            match node_labels.map(vipd::config::parse_labels) {
                None => ExitCode::SUCCESS,
                Some(Ok(l)) => {
                    print!("{}", peers_for(&c, &l));
                    ExitCode::SUCCESS
                }
                Some(Err(e)) => {
                    eprintln!("--node-labels: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Err(p) => {
            for line in &p.0 {
                eprintln!("{line}");
            }
            ExitCode::from(2)
        }
    }
}

/// Why jemalloc, with one arena: src/heap.rs.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc before its first allocation (the prefixed build's
/// name for `malloc_conf`).
#[repr(transparent)]
struct Conf(*const std::ffi::c_char);

// SAFETY: a pointer to a static, never written.
unsafe impl Sync for Conf {}

#[used]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Conf = Conf(c"narenas:1,dirty_decay_ms:0".as_ptr());

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Status { address, output } => {
            let got = vipd::status::http::fetch(address, "/status", output == Output::Json);
            print_answer("status", got, 1)
        }
        Cmd::Explain {
            service,
            address,
            output,
        } => explain(&service, address, output),
        Cmd::Reload { address } => print_answer("reload", vipd::status::http::reload(address), 1),
        Cmd::CheckConfig {
            file,
            node_labels,
            node,
        } => check_config(&file, node_labels.as_deref(), node.as_deref()),
        Cmd::Run { config, log } => run(config, log),
    }
}

fn explain(service: &str, address: std::net::SocketAddr, output: Output) -> ExitCode {
    // Namespaces and Service names are DNS labels: anything else names no
    // Service (and would not fit in the request's path).
    let label = |p: &&str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    let parts: Vec<&str> = service.split('/').collect();
    if parts.len() != 2 || !parts.iter().all(label) {
        eprintln!("vipd explain: {service:?}: give the Service as NAMESPACE/NAME (lowercase letters, digits, '-' and '.')");
        return ExitCode::from(2);
    }
    let path = format!("/explain/{service}");
    let got = vipd::status::http::fetch(address, &path, output == Output::Json);
    print_answer("explain", got, 2)
}

fn run(config: PathBuf, log: Option<String>) -> ExitCode {
    // The flag, then RUST_LOG or VIPD_LOG, then [log] level.
    let given = log
        .or_else(|| std::env::var("RUST_LOG").ok())
        .or_else(|| std::env::var("VIPD_LOG").ok());
    let targets = match Targets::from_str(given.as_deref().unwrap_or("info")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("--log: {e}");
            return ExitCode::from(2);
        }
    };
    let logging = init_logging(targets, given.is_some());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(vipd::daemon::run(config, &logging)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(vipd::daemon::DaemonError::Config(p)) => {
            for line in &p.0 {
                eprintln!("{line}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("vipd: {e}");
            ExitCode::FAILURE
        }
    }
}
