//! Who may do what with each name: the broker's access policy (DESIGN.md §4).
//!
//! A policy is a list of allow rules (per name pattern: which uids and gids may do which
//! [`Operation`]s) and the per-node [`Limits`]. Everything not allowed is denied, except that
//! the broker's own user may do everything. The subject of a check is what the kernel said of
//! the node's socket (`SO_PEERCRED`), never what the node claims; a node attached over TCP has
//! no such credentials and is judged by its principal instead (the key or certificate it
//! proved it holds), by rules that name it in `remote_nodes`. Policies come from TOML
//! ([`Policy::from_toml`], format in `docs/security.md`); [`Policy::own_user_only`] is the
//! default of an embedded broker and of `postbox daemon` without `--config`.

mod file;

use std::path::Path;

use postbox_core::{NamePattern, Operation, Quota, Rights};

pub use file::PolicyError;

/// The access policy and per-node limits of one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    owner_uid: u32,
    rules: Vec<Rule>,
    limits: Limits,
    socket_group: Option<u32>,
}

/// Who is asking: the kernel credentials of a node's control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    /// The node's user id.
    pub uid: u32,
    /// The node's (primary) group id.
    pub gid: u32,
}

/// Quotas per node (what one client may hold at once), and per peer host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Ports one node may hold.
    pub ports: usize,
    /// Links one node may have open (as client or server), to nodes, mailboxes and topics.
    pub connections: usize,
    /// Links one node may have open to one other node: so that one client cannot take all of
    /// a server's `connections`.
    pub links_per_peer: usize,
    /// Nodes one user may have attached at once (the broker's own user excepted), so that one
    /// user's flood of connections cannot take every node slot.
    pub nodes_per_user: usize,
    /// Calls one client may have waiting for answers on one link (told to both ends).
    pub calls_in_flight: u32,
    /// Bytes one client may have queued: at a server, per link; at the broker, in all its
    /// mailboxes together. Beyond it the sender is not read (it waits, or finds the link
    /// full).
    pub queued_bytes: u64,
    /// Channels one peer host may have open here at once, all its nodes together (links to
    /// ports, inboxes, mailboxes and topics, subscriptions): beyond it the peer's opens are
    /// refused (`LimitExceeded`). A policy file that does not set it takes `connections`: a
    /// peer host counts as one node.
    pub channels_per_host: usize,
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    names: Vec<NamePattern>,
    principals: Principals,
    operations: Vec<Operation>,
    /// Peer hosts whose nodes the rule covers (`*`: every peer). Local principals never
    /// cover a remote node.
    hosts: Vec<String>,
    /// Principals of nodes attached over TCP that the rule covers (`*`: every one).
    remote_nodes: Vec<String>,
}

/// Whom a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principals {
    Everyone,
    Some { uids: Vec<u32>, gids: Vec<u32> },
}

impl Policy {
    /// The default: only `owner_uid` (the broker's own user) may do anything.
    #[must_use]
    pub fn own_user_only(owner_uid: u32) -> Self {
        Self { owner_uid, rules: Vec::new(), limits: Limits::default(), socket_group: None }
    }

    /// Reads a policy file for a broker running as `owner_uid`.
    ///
    /// # Errors
    /// [`PolicyError`] when the file cannot be read, is not valid TOML, or names an unknown
    /// operation, user, group or pattern.
    pub fn load(path: &Path, owner_uid: u32) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Read { path: path.to_owned(), kind: e.kind() })?;
        Self::from_toml(&text, owner_uid)
    }

    /// Parses a policy from TOML text for a broker running as `owner_uid`.
    ///
    /// # Errors
    /// As [`load`](Self::load), except reading.
    pub fn from_toml(text: &str, owner_uid: u32) -> Result<Self, PolicyError> {
        file::parse(text, owner_uid)
    }

    /// True when `subject` may do `operation` on the name (or `inbox/<uid>` pseudo-name)
    /// `name`.
    #[must_use]
    pub fn allows(&self, subject: Subject, operation: Operation, name: &str) -> bool {
        subject.uid == self.owner_uid
            || self.rules.iter().any(|rule| {
                rule.operations.contains(&operation)
                    && rule.applies_to(subject)
                    && rule.names.iter().any(|pattern| pattern.matches_text(name))
            })
    }

    /// True when `subject` may subscribe to every topic `pattern` matches.
    #[must_use]
    pub fn allows_subscription(&self, subject: Subject, pattern: &NamePattern) -> bool {
        subject.uid == self.owner_uid
            || self.rules.iter().any(|rule| {
                rule.operations.contains(&Operation::Subscribe)
                    && rule.applies_to(subject)
                    && rule.names.iter().any(|allowed| allowed.covers(pattern))
            })
    }

    /// True when nodes of peer host `host` may do `operation` on this host's name `name`.
    /// Nothing is allowed to a remote host unless a rule names it (or `*`): not even the
    /// broker's own user's rights carry over (docs/network.md §5).
    #[must_use]
    pub fn allows_host(&self, host: &str, operation: Operation, name: &str) -> bool {
        self.rules.iter().any(|rule| {
            rule.operations.contains(&operation)
                && rule.hosts.iter().any(|h| h == "*" || h == host)
                && rule.names.iter().any(|pattern| pattern.matches_text(name))
        })
    }

    /// True when the node attached over TCP as `principal` may do `operation` on `name`.
    /// Nothing is allowed to it unless a rule names it in `remote_nodes` (or `*`): local
    /// principals, `everyone` and the broker's own user's rights never cover it.
    #[must_use]
    pub fn allows_remote(&self, principal: &str, operation: Operation, name: &str) -> bool {
        self.rules.iter().any(|rule| {
            rule.operations.contains(&operation)
                && rule.covers_remote(principal)
                && rule.names.iter().any(|pattern| pattern.matches_text(name))
        })
    }

    /// True when the node attached over TCP as `principal` may subscribe to every topic
    /// `pattern` matches.
    #[must_use]
    pub fn allows_remote_subscription(&self, principal: &str, pattern: &NamePattern) -> bool {
        self.rules.iter().any(|rule| {
            rule.operations.contains(&Operation::Subscribe)
                && rule.covers_remote(principal)
                && rule.names.iter().any(|allowed| allowed.covers(pattern))
        })
    }

    /// The link rights the node attached over TCP as `principal` holds on port `name`.
    #[must_use]
    pub fn remote_link_rights(&self, principal: &str, name: &str) -> Rights {
        [Operation::Send, Operation::Call]
            .into_iter()
            .filter(|op| self.allows_remote(principal, *op, name))
            .fold(Rights::NONE, |rights, op| rights.union(Rights::for_operation(op)))
    }

    /// True when nodes of peer host `host` may subscribe to every topic `pattern` matches
    /// (a rule naming the host must cover the whole pattern, as for local subscribers).
    #[must_use]
    pub fn allows_host_subscription(&self, host: &str, pattern: &NamePattern) -> bool {
        self.rules.iter().any(|rule| {
            rule.operations.contains(&Operation::Subscribe)
                && rule.hosts.iter().any(|h| h == "*" || h == host)
                && rule.names.iter().any(|allowed| allowed.covers(pattern))
        })
    }

    /// The link rights nodes of peer host `host` hold on port `name`.
    #[must_use]
    pub fn host_link_rights(&self, host: &str, name: &str) -> Rights {
        [Operation::Send, Operation::Call]
            .into_iter()
            .filter(|op| self.allows_host(host, *op, name))
            .fold(Rights::NONE, |rights, op| rights.union(Rights::for_operation(op)))
    }

    /// The link rights `subject` holds on port `name`.
    #[must_use]
    pub fn link_rights(&self, subject: Subject, name: &str) -> Rights {
        [Operation::Send, Operation::Call]
            .into_iter()
            .filter(|op| self.allows(subject, *op, name))
            .fold(Rights::NONE, |rights, op| rights.union(Rights::for_operation(op)))
    }

    /// The per-node limits.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The per-link quota told to both ends of every link.
    #[must_use]
    pub fn quota(&self) -> Quota {
        Quota {
            calls_in_flight: self.limits.calls_in_flight,
            queued_bytes: self.limits.queued_bytes,
        }
    }

    /// Sets the per-node limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The group the control socket is shared with (mode 0660, directory 0710), if any;
    /// otherwise only the broker's user can reach it (0600 in a 0700 directory).
    #[must_use]
    pub fn socket_group(&self) -> Option<u32> {
        self.socket_group
    }

    /// The broker's own user, who may do everything.
    #[must_use]
    pub fn owner_uid(&self) -> u32 {
        self.owner_uid
    }
}

impl Rule {
    fn covers_remote(&self, principal: &str) -> bool {
        self.remote_nodes.iter().any(|p| p == "*" || p == principal)
    }

    fn applies_to(&self, subject: Subject) -> bool {
        match &self.principals {
            Principals::Everyone => true,
            Principals::Some { uids, gids } => {
                uids.contains(&subject.uid) || gids.contains(&subject.gid)
            }
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let quota = Quota::default();
        Self {
            ports: 1024,
            connections: 4096,
            links_per_peer: 256,
            nodes_per_user: 1024,
            calls_in_flight: quota.calls_in_flight,
            queued_bytes: quota.queued_bytes,
            channels_per_host: 4096,
        }
    }
}

/// The pseudo-name policy rules use for the inboxes of `uid`'s nodes: `#inbox/<uid>` (no
/// port, mailbox or topic can have it: names do not start with `#`).
#[must_use]
pub fn inbox_name(uid: u32) -> String {
    format!("{}/{uid}", postbox_core::pattern::INBOXES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: u32 = 500;

    fn policy(text: &str) -> Policy {
        Policy::from_toml(text, OWNER).unwrap()
    }

    fn subject(uid: u32, gid: u32) -> Subject {
        Subject { uid, gid }
    }

    #[test]
    fn the_default_admits_only_the_brokers_own_user() {
        let policy = Policy::own_user_only(OWNER);
        assert!(policy.allows(subject(OWNER, 1), Operation::Manage, "anything"));
        assert!(!policy.allows(subject(1000, 1000), Operation::Send, "calc"));
        assert!(!policy.allows(subject(0, 0), Operation::Send, "calc"), "root is not special");
    }

    #[test]
    fn rules_grant_operations_on_matching_names_to_listed_uids_and_gids() {
        let policy = policy(
            r#"
            [[allow]]
            names = ["sensors/**", "calc"]
            uids = [1000]
            gids = [2000]
            operations = ["send", "subscribe"]

            [[allow]]
            names = ["public/*"]
            everyone = true
            operations = ["call"]
            "#,
        );
        let alice = subject(1000, 1000);
        let robot = subject(3000, 2000);
        let stranger = subject(4000, 4000);
        assert!(policy.allows(alice, Operation::Send, "sensors/a/b"));
        assert!(policy.allows(robot, Operation::Send, "calc"));
        assert!(!policy.allows(alice, Operation::Call, "calc"));
        assert!(!policy.allows(stranger, Operation::Send, "calc"));
        assert!(policy.allows(stranger, Operation::Call, "public/echo"));
        assert!(!policy.allows(stranger, Operation::Call, "public/a/b"));
        assert_eq!(policy.link_rights(alice, "calc"), Rights::SEND);
        assert_eq!(policy.link_rights(stranger, "public/x"), Rights::CALL);
        assert_eq!(policy.link_rights(stranger, "calc"), Rights::NONE);
        let sensors = NamePattern::parse("sensors/*/temp").unwrap();
        assert!(policy.allows_subscription(alice, &sensors));
        assert!(!policy.allows_subscription(alice, &NamePattern::parse("**").unwrap()));
    }

    #[test]
    fn remote_hosts_get_only_what_a_rule_names_them_for() {
        let policy = policy(
            r#"
            [[allow]]
            names = ["echo"]
            hosts = ["b"]
            operations = ["call"]

            [[allow]]
            names = ["public/*"]
            hosts = ["*"]
            everyone = true
            operations = ["send"]
            "#,
        );
        assert_eq!(policy.host_link_rights("b", "echo"), Rights::CALL);
        assert_eq!(policy.host_link_rights("c", "echo"), Rights::NONE);
        assert_eq!(policy.host_link_rights("c", "public/x"), Rights::SEND);
        assert!(!policy.allows(subject(4000, 4000), Operation::Call, "echo"));
        assert_eq!(Policy::own_user_only(OWNER).host_link_rights("b", "echo"), Rights::NONE);
        let subscriber = Policy::from_toml(
            "[[allow]]\nnames = ['/news/**']\nhosts = ['a']\noperations = ['subscribe', 'receive']",
            OWNER,
        )
        .unwrap();
        let news = NamePattern::parse("/news/*").unwrap();
        assert!(subscriber.allows_host_subscription("a", &news));
        assert!(!subscriber.allows_host_subscription("b", &news));
        assert!(!subscriber.allows_host_subscription("a", &NamePattern::parse("/**").unwrap()));
        assert!(!policy.allows_host_subscription("b", &news), "send and call only");
        assert!(subscriber.allows_host("a", Operation::Receive, "/news/jobs"));
        assert!(!subscriber.allows_host("a", Operation::Send, "/news/jobs"));
        let bad = "[[allow]]\nnames=['a']\nhosts=['a b']\noperations=['send']";
        assert!(Policy::from_toml(bad, OWNER).is_err());
    }

    #[test]
    fn nodes_attached_over_tcp_get_only_what_a_rule_names_their_principal_for() {
        let policy = policy(
            r#"
            [[allow]]
            names = ["echo", "jobs/*"]
            remote_nodes = ["app"]
            operations = ["call", "register", "subscribe"]

            [[allow]]
            names = ["public/*"]
            remote_nodes = ["*"]
            everyone = true
            operations = ["send"]
            "#,
        );
        assert_eq!(policy.remote_link_rights("app", "echo"), Rights::CALL);
        assert!(policy.allows_remote("app", Operation::Register, "jobs/a"));
        assert!(!policy.allows_remote("other", Operation::Register, "jobs/a"));
        assert_eq!(policy.remote_link_rights("other", "public/x"), Rights::SEND);
        assert!(policy.allows_remote_subscription("app", &NamePattern::parse("jobs/*").unwrap()));
        assert!(!policy.allows_remote_subscription("app", &NamePattern::parse("**").unwrap()));
        assert!(!policy.allows(subject(4000, 4000), Operation::Call, "echo"));
        // The broker's own user's rights are not a remote node's.
        let own = Policy::own_user_only(OWNER);
        assert!(!own.allows_remote("app", Operation::Send, "anything"));
        let bad = "[[allow]]\nnames=['a']\nremote_nodes=['a b']\noperations=['send']";
        assert!(Policy::from_toml(bad, OWNER).is_err());
    }

    #[test]
    fn limits_and_the_socket_group_are_read() {
        let policy = policy(
            r#"
            [socket]
            group = 0
            [limits]
            ports = 3
            connections = 5
            links_per_peer = 2
            nodes_per_user = 6
            calls_in_flight = 7
            queued_bytes = 4096
            channels_per_host = 8
            "#,
        );
        assert_eq!(
            policy.limits(),
            Limits {
                ports: 3,
                connections: 5,
                links_per_peer: 2,
                nodes_per_user: 6,
                calls_in_flight: 7,
                queued_bytes: 4096,
                channels_per_host: 8,
            }
        );
        assert_eq!(policy.socket_group(), Some(0));
        let unset = Policy::from_toml("[limits]\nconnections = 5\n", OWNER).unwrap();
        assert_eq!(unset.limits().channels_per_host, 5, "a peer host counts as one node");
    }

    #[test]
    fn mistakes_in_a_policy_file_are_reported_not_ignored() {
        let cases = [
            ("[[allow]]\nnames=['a']\nuids=[1]\noperations=['delete']", "delete"),
            ("[[allow]]\nnames=['a b']\nuids=[1]\noperations=['send']", "a b"),
            ("[[allow]]\nnames=['a']\noperations=['send']", "uids"),
            ("[[allow]]\nnames=['a']\nuids=['no-such-user-here']\noperations=['send']", "no-such"),
            ("[[allow]]\nnames=['a']\nuids=[1]\noperations=['send']\nextra=1", "extra"),
            ("[limits]\nports=-1", "ports"),
            ("not toml at all [", "TOML"),
        ];
        for (text, needle) in cases {
            let error = Policy::from_toml(text, OWNER).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?} gave {error:?}");
        }
    }
}
