//! Capabilities: rights to a port that one node handed to another, beside the policy.
//!
//! A grant is for one port as long as its current owner holds it, and for one node (its
//! [`ProcessId`], never reused): it ends when either leaves, or when the owner or the granter
//! revokes it. Links made under a grant are remembered, so that revoking closes them.

use std::collections::HashMap;

use postbox_core::{LinkId, PortName, ProcessId, Rights};

/// The grants of one broker.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    by_port: HashMap<(PortName, ProcessId), Grant>,
    /// Links made (partly) under a grant: which grant.
    links: HashMap<LinkId, (PortName, ProcessId)>,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    rights: Rights,
    granter: ProcessId,
}

impl Grants {
    /// Records that `granter` gave `to` the `rights` on `name` (adding to earlier grants).
    pub(crate) fn grant(
        &mut self,
        name: PortName,
        to: ProcessId,
        rights: Rights,
        granter: ProcessId,
    ) {
        let entry = self.by_port.entry((name, to)).or_insert(Grant { rights, granter });
        entry.rights = entry.rights.union(rights);
        entry.granter = granter;
    }

    /// The rights granted to `node` on `name`.
    pub(crate) fn rights(&self, name: &PortName, node: ProcessId) -> Rights {
        self.by_port.get(&(name.clone(), node)).map_or(Rights::NONE, |g| g.rights)
    }

    /// Remembers that `link` from `node` to `name` needed the grant.
    pub(crate) fn link_made(&mut self, link: LinkId, name: PortName, node: ProcessId) {
        self.links.insert(link, (name, node));
    }

    /// Ends the grant to `from` on `name` when `by` may end it (the port's owner, said by the
    /// caller with `by_owner`, or the granter); returns the links made under it, or `None`
    /// when there was no such grant or `by` may not revoke it.
    pub(crate) fn revoke(
        &mut self,
        name: &PortName,
        from: ProcessId,
        by: ProcessId,
        by_owner: bool,
    ) -> Option<Vec<LinkId>> {
        let key = (name.clone(), from);
        let grant = self.by_port.get(&key)?;
        if !by_owner && grant.granter != by {
            return None;
        }
        self.by_port.remove(&key);
        let links: Vec<LinkId> =
            self.links.iter().filter(|(_, made)| **made == key).map(|(link, _)| *link).collect();
        for link in &links {
            self.links.remove(link);
        }
        Some(links)
    }

    /// Forgets a closed link.
    pub(crate) fn link_closed(&mut self, link: LinkId) {
        self.links.remove(&link);
    }

    /// Ends every grant on `name` (its port closed or its owner left).
    pub(crate) fn port_closed(&mut self, name: &PortName) {
        self.by_port.retain(|(port, _), _| port != name);
        self.links.retain(|_, (port, _)| port != name);
    }

    /// Ends every grant to `node` (it left).
    pub(crate) fn node_left(&mut self, node: ProcessId) {
        self.by_port.retain(|(_, to), _| *to != node);
        self.links.retain(|_, (_, to)| *to != node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> PortName {
        PortName::new(text).unwrap()
    }

    #[test]
    fn grants_add_up_and_only_the_owner_or_granter_revokes_them() {
        let (owner, friend, stranger) =
            (ProcessId::new(1, 1), ProcessId::new(2, 2), ProcessId::new(3, 3));
        let mut grants = Grants::default();
        grants.grant(name("calc"), friend, Rights::SEND, owner);
        grants.grant(name("calc"), friend, Rights::CALL, owner);
        assert_eq!(grants.rights(&name("calc"), friend), Rights::ALL);
        assert_eq!(grants.rights(&name("calc"), stranger), Rights::NONE);
        grants.link_made(LinkId(7), name("calc"), friend);
        assert_eq!(grants.revoke(&name("calc"), friend, stranger, false), None);
        assert_eq!(grants.revoke(&name("calc"), friend, stranger, true), Some(vec![LinkId(7)]));
        assert_eq!(grants.rights(&name("calc"), friend), Rights::NONE);
        assert_eq!(grants.revoke(&name("calc"), friend, owner, true), None, "already gone");
    }

    #[test]
    fn grants_end_with_their_port_or_their_holder() {
        let (owner, friend) = (ProcessId::new(1, 1), ProcessId::new(2, 2));
        let mut grants = Grants::default();
        grants.grant(name("a"), friend, Rights::SEND, owner);
        grants.grant(name("b"), friend, Rights::SEND, owner);
        grants.port_closed(&name("a"));
        assert!(grants.rights(&name("a"), friend).is_empty());
        assert!(!grants.rights(&name("b"), friend).is_empty());
        grants.node_left(friend);
        assert!(grants.rights(&name("b"), friend).is_empty());
    }
}
