//! The policy file: TOML, read strictly (an unknown key or operation is an error, not a rule
//! silently ignored), with user and group names resolved once, at load.

use std::io;
use std::path::PathBuf;

use postbox_core::{NamePattern, Operation};
use serde::Deserialize;

use super::{Limits, Policy, Principals, Rule};

/// Why a policy file was not accepted. The broker keeps its previous policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {kind}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        kind: io::ErrorKind,
    },
    /// The text is not a valid policy (TOML syntax, unknown keys, wrong types).
    #[error("invalid policy: {0}")]
    Invalid(String),
    /// A rule names an operation that does not exist.
    #[error("unknown operation {0:?} (known: register, send, call, receive, subscribe, manage)")]
    UnknownOperation(String),
    /// A rule names a user or group this host does not have.
    #[error("unknown {kind} {name:?}")]
    UnknownPrincipal {
        /// "user" or "group".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A name pattern is malformed.
    #[error("invalid name pattern {0:?}")]
    BadPattern(String),
    /// A rule would apply to nobody: it needs `uids`, `gids`, `everyone = true`, `hosts` or
    /// `remote_nodes`.
    #[error("a rule for {0} needs uids, gids, everyone = true, hosts or remote_nodes")]
    NoPrincipals(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    socket: SocketSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    allow: Vec<RuleSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketSection {
    group: Option<Principal>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    ports: Option<usize>,
    connections: Option<usize>,
    links_per_peer: Option<usize>,
    nodes_per_user: Option<usize>,
    calls_in_flight: Option<u32>,
    queued_bytes: Option<u64>,
    channels_per_host: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    names: Vec<String>,
    #[serde(default)]
    uids: Vec<Principal>,
    #[serde(default)]
    gids: Vec<Principal>,
    #[serde(default)]
    everyone: bool,
    /// Peer hosts (by name, or `*` for every peer) whose nodes the rule covers.
    #[serde(default)]
    hosts: Vec<String>,
    /// Principals of nodes attached over TCP (key or certificate names, or `*`) the rule
    /// covers.
    #[serde(default)]
    remote_nodes: Vec<String>,
    operations: Vec<String>,
}

/// A user or group, by number or by name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Principal {
    Id(u32),
    Name(String),
}

pub(super) fn parse(text: &str, owner_uid: u32) -> Result<Policy, PolicyError> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Invalid(e.to_string()))?;
    let defaults = Limits::default();
    let connections = file.limits.connections.unwrap_or(defaults.connections);
    let limits = Limits {
        ports: file.limits.ports.unwrap_or(defaults.ports),
        connections,
        links_per_peer: file.limits.links_per_peer.unwrap_or(defaults.links_per_peer),
        nodes_per_user: file.limits.nodes_per_user.unwrap_or(defaults.nodes_per_user),
        calls_in_flight: file.limits.calls_in_flight.unwrap_or(defaults.calls_in_flight),
        queued_bytes: file.limits.queued_bytes.unwrap_or(defaults.queued_bytes),
        channels_per_host: file.limits.channels_per_host.unwrap_or(connections),
    };
    let socket_group = file.socket.group.map(|g| resolve(&g, "group")).transpose()?;
    let rules = file.allow.into_iter().map(rule).collect::<Result<_, _>>()?;
    Ok(Policy { owner_uid, rules, limits, socket_group })
}

fn rule(section: RuleSection) -> Result<Rule, PolicyError> {
    let names = section
        .names
        .iter()
        .map(|n| NamePattern::parse(n).map_err(|_| PolicyError::BadPattern(n.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let operations = section
        .operations
        .iter()
        .map(|o| Operation::from_name(o).ok_or_else(|| PolicyError::UnknownOperation(o.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let principals = if section.everyone {
        Principals::Everyone
    } else {
        let uids = section.uids.iter().map(|u| resolve(u, "user")).collect::<Result<_, _>>()?;
        let gids = section.gids.iter().map(|g| resolve(g, "group")).collect::<Result<_, _>>()?;
        let principals = Principals::Some { uids, gids };
        let nobody = Principals::Some { uids: Vec::new(), gids: Vec::new() };
        if principals == nobody && section.hosts.is_empty() && section.remote_nodes.is_empty() {
            return Err(PolicyError::NoPrincipals(section.names.join(", ")));
        }
        principals
    };
    for host in &section.hosts {
        if host != "*" && crate::hosts::HostName::new(host).is_err() {
            return Err(PolicyError::Invalid(format!("invalid host name {host:?}")));
        }
    }
    for principal in &section.remote_nodes {
        if principal != "*" && postbox_transport::tunnel::check_principal(principal).is_err() {
            return Err(PolicyError::Invalid(format!("invalid remote node {principal:?}")));
        }
    }
    Ok(Rule {
        names,
        principals,
        operations,
        hosts: section.hosts,
        remote_nodes: section.remote_nodes,
    })
}

/// A numeric id as given, or a name looked up in `/etc/passwd` (users) or `/etc/group`.
fn resolve(principal: &Principal, kind: &'static str) -> Result<u32, PolicyError> {
    match principal {
        Principal::Id(id) => Ok(*id),
        Principal::Name(name) => {
            let database = if kind == "user" { "/etc/passwd" } else { "/etc/group" };
            let unknown = || PolicyError::UnknownPrincipal { kind, name: name.clone() };
            let text = std::fs::read_to_string(database).map_err(|_| unknown())?;
            lookup(&text, name).ok_or_else(unknown)
        }
    }
}

/// The id of `name` in a passwd- or group-format database (`name:x:id:…` per line).
fn lookup(database: &str, name: &str) -> Option<u32> {
    database.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_looked_up_in_passwd_format() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(lookup(passwd, "alice"), Some(1000));
        assert_eq!(lookup(passwd, "root"), Some(0));
        assert_eq!(lookup(passwd, "bob"), None);
        assert_eq!(lookup("broken", "broken"), None);
    }

    #[test]
    fn root_resolves_by_name_on_this_host() {
        let policy =
            parse("[[allow]]\nnames=['x']\nuids=['root']\ngids=['root']\noperations=['send']", 1)
                .unwrap();
        assert_eq!(policy.rules[0].principals, Principals::Some { uids: vec![0], gids: vec![0] });
    }
}
