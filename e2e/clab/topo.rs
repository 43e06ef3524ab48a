//! A containerlab topology read strictly: every key the suite does not know
//! how to build is an error naming it, and so is a bind whose source is
//! missing, a link to an unknown node or interface, or a node whose role
//! cannot be told from its image and binds. The keys accepted are a subset
//! of containerlab's own schema, so a file that passes here deploys with
//! real containerlab too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub name: String,
    pub topology: Body,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    pub nodes: BTreeMap<String, Node>,
    #[serde(default)]
    pub links: Vec<Link>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Node {
    pub kind: String,
    pub image: Option<String>,
    #[serde(default)]
    pub binds: Vec<String>,
    #[serde(default)]
    pub exec: Vec<String>,
    pub cmd: Option<String>,
    pub startup_config: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub endpoints: [String; 2],
}

/// kind's cluster file (`kind.x-k8s.io/v1alpha4`), as far as the suite uses it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindCluster {
    pub kind: String,
    pub api_version: String,
    pub nodes: Vec<KindNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindNode {
    pub role: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What a node is, told by its kind, image and binds.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// FRR with its bound `frr.conf` (and `daemons`).
    Frr { conf: PathBuf },
    /// BIRD with its bound `bird.conf`.
    Bird { conf: PathBuf },
    /// vipd with its bound TOML.
    Vipd { config: PathBuf },
    /// The kind cluster itself: its file names the Kubernetes nodes.
    Cluster { file: PathBuf },
    /// One Kubernetes node of the kind cluster (`NAME-control-plane`,
    /// `NAME-worker`…): vipd runs there as the DaemonSet would run it.
    KindNode { cluster: String, role: String },
}

/// A checked topology: the file, each node's role, and each link as
/// `((node, interface), (node, interface))`.
#[derive(Debug)]
pub struct Topology {
    pub path: PathBuf,
    pub file: File,
    pub roles: BTreeMap<String, Role>,
    pub links: Vec<((String, String), (String, String))>,
}

impl Topology {
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap()
    }
    /// The interfaces the links give `node`.
    pub fn interfaces(&self, node: &str) -> Vec<String> {
        let mut v = vec![];
        for (a, b) in &self.links {
            for (n, i) in [a, b] {
                if n == node {
                    v.push(i.clone());
                }
            }
        }
        v
    }
}

/// Reads and checks `path`; every problem found, each naming its key.
pub fn load(path: &Path) -> Result<Topology, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    let file: File = serde_norway::from_str(&text).map_err(|e| vec![e.to_string()])?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut errs = vec![];
    if file.name.is_empty()
        || !file
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        errs.push(format!("name: {:?} is not a valid lab name", file.name));
    }
    let links = check_links(&file, &mut errs);
    let mut roles = BTreeMap::new();
    for (name, node) in &file.topology.nodes {
        let key = format!("topology.nodes.{name}");
        check_binds(dir, &key, node, &mut errs);
        let mut ifaces: BTreeSet<&str> = links
            .iter()
            .flat_map(|(a, b)| [a, b])
            .filter(|(n, _)| n == name)
            .map(|(_, i)| i.as_str())
            .collect();
        for (i, line) in node.exec.iter().enumerate() {
            let words: Vec<&str> = line.split_whitespace().collect();
            // An interface the node makes itself (a bridge, say) counts
            // from the line that adds it.
            if let ["ip", "link", "add", made, ..] = words[..] {
                ifaces.insert(made);
            }
            for w in words.windows(2).filter(|w| w[0] == "dev") {
                if !ifaces.contains(w[1]) {
                    errs.push(format!(
                        "{key}.exec[{i}]: interface {} is not made by any link of {name}",
                        w[1]
                    ));
                }
            }
        }
        match role(dir, &file, name, node) {
            Ok(r) => {
                roles.insert(name.clone(), r);
            }
            Err(e) => errs.push(format!("{key}: {e}")),
        }
    }
    if errs.is_empty() {
        Ok(Topology {
            path: path.to_path_buf(),
            file,
            roles,
            links,
        })
    } else {
        Err(errs)
    }
}

fn check_links(file: &File, errs: &mut Vec<String>) -> Vec<((String, String), (String, String))> {
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for (i, l) in file.topology.links.iter().enumerate() {
        let mut ends = vec![];
        for (j, e) in l.endpoints.iter().enumerate() {
            let key = format!("topology.links[{i}].endpoints[{j}]");
            let Some((node, iface)) = e.split_once(':') else {
                errs.push(format!("{key}: {e:?} is not NODE:INTERFACE"));
                continue;
            };
            if !file.topology.nodes.contains_key(node) {
                errs.push(format!("{key}: no node named {node}"));
            }
            let valid = !iface.is_empty()
                && iface.len() <= 15
                && iface
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && iface != "eth0";
            if !valid {
                errs.push(format!(
                    "{key}: {iface:?} is not an interface name a container can have (eth0 is the management interface)"
                ));
            }
            if !seen.insert((node.to_string(), iface.to_string())) {
                errs.push(format!("{key}: {node}:{iface} is used by another link"));
            }
            ends.push((node.to_string(), iface.to_string()));
        }
        if let [a, b] = &ends[..] {
            out.push((a.clone(), b.clone()));
        }
    }
    out
}

fn check_binds(dir: &Path, key: &str, node: &Node, errs: &mut Vec<String>) {
    for (i, b) in node.binds.iter().enumerate() {
        let parts: Vec<&str> = b.split(':').collect();
        let ok_mode = parts.len() == 2 || (parts.len() == 3 && matches!(parts[2], "ro" | "rw"));
        if !ok_mode || parts[1].is_empty() || !parts[1].starts_with('/') {
            errs.push(format!(
                "{key}.binds[{i}]: {b:?} is not SOURCE:/TARGET[:ro|rw]"
            ));
            continue;
        }
        if !dir.join(parts[0]).exists() {
            errs.push(format!(
                "{key}.binds[{i}]: source {} does not exist",
                parts[0]
            ));
        }
    }
    if let Some(sc) = &node.startup_config {
        if !dir.join(sc).exists() {
            errs.push(format!("{key}.startup-config: {sc} does not exist"));
        }
    }
}

/// The bind whose target is `target`, as a path on this machine.
fn bound(dir: &Path, node: &Node, target: &str) -> Option<PathBuf> {
    node.binds.iter().find_map(|b| {
        let mut p = b.split(':');
        let (src, dst) = (p.next()?, p.next()?);
        (dst == target).then(|| dir.join(src))
    })
}

fn role(dir: &Path, file: &File, name: &str, node: &Node) -> Result<Role, String> {
    let image = node.image.as_deref().unwrap_or("");
    match node.kind.as_str() {
        "linux" if image.contains("frrouting/frr") => bound(dir, node, "/etc/frr/frr.conf")
            .map(|conf| Role::Frr { conf })
            .ok_or("an FRR image without a bind to /etc/frr/frr.conf".into()),
        // The image containerlab's own labs use reads /etc/bird.conf;
        // Debian's layout is /etc/bird/bird.conf.
        "linux" if image.contains("bird") => bound(dir, node, "/etc/bird.conf")
            .or_else(|| bound(dir, node, "/etc/bird/bird.conf"))
            .map(|conf| Role::Bird { conf })
            .ok_or("a BIRD image without a bind to /etc/bird.conf".into()),
        "linux" => {
            if bound(dir, node, "/usr/local/bin/vipd").is_none() {
                return Err(format!(
                    "image {image:?}: not FRR, not BIRD, and no vipd bound at /usr/local/bin/vipd"
                ));
            }
            node.binds
                .iter()
                .filter_map(|b| b.split(':').nth(1))
                .find(|t| t.ends_with(".toml"))
                .and_then(|t| bound(dir, node, t))
                .map(|config| Role::Vipd { config })
                .ok_or("vipd bound without a TOML configuration".into())
        }
        "k8s-kind" => {
            let sc = node
                .startup_config
                .as_ref()
                .ok_or("k8s-kind needs startup-config (the kind cluster file)")?;
            kind_cluster(&dir.join(sc))?;
            Ok(Role::Cluster { file: dir.join(sc) })
        }
        "ext-container" => {
            let (cluster, rest) = kind_member(file, dir, name)?;
            Ok(Role::KindNode {
                cluster,
                role: rest,
            })
        }
        k => Err(format!(
            "kind {k:?} is not one the suite builds (linux, k8s-kind, ext-container)"
        )),
    }
}

/// Reads a kind cluster file strictly.
pub fn kind_cluster(path: &Path) -> Result<KindCluster, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c: KindCluster =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if c.kind != "Cluster" || c.api_version != "kind.x-k8s.io/v1alpha4" {
        return Err(format!(
            "{}: not a kind.x-k8s.io/v1alpha4 Cluster",
            path.display()
        ));
    }
    for (i, n) in c.nodes.iter().enumerate() {
        if !matches!(n.role.as_str(), "control-plane" | "worker") {
            return Err(format!("{}: nodes[{i}].role: {:?}", path.display(), n.role));
        }
    }
    Ok(c)
}

/// The container names kind gives a cluster's nodes, in file order:
/// `NAME-control-plane`, `NAME-control-plane2`, `NAME-worker`, `NAME-worker2`…
pub fn kind_node_names(cluster: &str, c: &KindCluster) -> Vec<(String, String)> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    c.nodes
        .iter()
        .map(|n| {
            let k = count.entry(n.role.as_str()).or_default();
            *k += 1;
            let suffix = if *k == 1 {
                String::new()
            } else {
                k.to_string()
            };
            (format!("{cluster}-{}{suffix}", n.role), n.role.clone())
        })
        .collect()
}

/// The kind cluster an ext-container node belongs to, and its role there.
fn kind_member(file: &File, dir: &Path, name: &str) -> Result<(String, String), String> {
    for (cname, cnode) in &file.topology.nodes {
        if cnode.kind != "k8s-kind" {
            continue;
        }
        let Some(sc) = &cnode.startup_config else {
            continue;
        };
        let c = kind_cluster(&dir.join(sc))?;
        if let Some((_, role)) = kind_node_names(cname, &c)
            .into_iter()
            .find(|(n, _)| n == name)
        {
            return Ok((cname.clone(), role));
        }
    }
    Err("ext-container is not a node of any k8s-kind cluster in this topology".into())
}
