//! Capabilities: rights to a port that one node handed to another, beside the policy.
//!
//! A grant is for one port as long as its current owner holds it, and for one node (its
//! [`ProcessId`], never reused). Each is kept with the node that granted it, so that it can
//! be taken back by that node or by the port's owner, and so that what a node passed on ends
//! with the grant it passed on: revoking a grant, or the departure of its holder or its
//! granter, ends the grants derived from it too. Links made under a grant are remembered, so
//! that ending it closes them.

use std::collections::HashMap;

use postbox_core::{LinkId, PortName, ProcessId, Rights};

/// The grants of one broker.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    /// Per (port, holder): the rights each granter gave.
    by_port: HashMap<(PortName, ProcessId), HashMap<ProcessId, Rights>>,
    /// Links made (partly) under a grant: on which port, by which holder.
    links: HashMap<LinkId, (PortName, ProcessId)>,
}

impl Grants {
    /// Records that `granter` gave `to` the `rights` on `name` (adding to what it gave before).
    pub(crate) fn grant(
        &mut self,
        name: PortName,
        to: ProcessId,
        rights: Rights,
        granter: ProcessId,
    ) {
        let given = self.by_port.entry((name, to)).or_default().entry(granter).or_default();
        *given = given.union(rights);
    }

    /// The rights granted to `node` on `name`, by anyone.
    pub(crate) fn rights(&self, name: &PortName, node: ProcessId) -> Rights {
        self.by_port
            .get(&(name.clone(), node))
            .map_or(Rights::NONE, |given| given.values().fold(Rights::NONE, |a, r| a.union(*r)))
    }

    /// Remembers that `link` from `node` to `name` needed a grant.
    pub(crate) fn link_made(&mut self, link: LinkId, name: PortName, node: ProcessId) {
        self.links.insert(link, (name, node));
    }

    /// Ends what was granted to `from` on `name`: everything when `by_owner` (the port's
    /// owner asks), else what `by` granted. Returns the links to close (those of nodes left
    /// with no grant on the port, `from` and whoever it passed rights on to), or `None` when
    /// there was nothing `by` may revoke.
    pub(crate) fn revoke(
        &mut self,
        name: &PortName,
        from: ProcessId,
        by: ProcessId,
        by_owner: bool,
    ) -> Option<Vec<LinkId>> {
        let key = (name.clone(), from);
        let given = self.by_port.get_mut(&key)?;
        if by_owner {
            given.clear();
        } else {
            given.remove(&by)?;
        }
        Some(self.settle(name))
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

    /// Ends every grant to `node` and every grant it made (it left); returns the links of the
    /// nodes that are left with no grant because of it.
    pub(crate) fn node_left(&mut self, node: ProcessId) -> Vec<LinkId> {
        let mut names: Vec<PortName> = Vec::new();
        for ((name, holder), given) in &mut self.by_port {
            if *holder == node {
                given.clear();
            }
            if given.remove(&node).is_some() || *holder == node {
                names.push(name.clone());
            }
        }
        names.sort();
        names.dedup();
        names.iter().flat_map(|name| self.settle(name)).collect()
    }

    /// Removes, on `name`, the holders left with no grant, then the grants they had made, until
    /// nothing changes; returns the links those holders made under grants.
    fn settle(&mut self, name: &PortName) -> Vec<LinkId> {
        let mut closed = Vec::new();
        loop {
            let empty: Vec<ProcessId> = self
                .by_port
                .iter()
                .filter(|((port, _), given)| port == name && given.is_empty())
                .map(|((_, holder), _)| *holder)
                .collect();
            if empty.is_empty() {
                return closed;
            }
            for holder in empty {
                self.by_port.remove(&(name.clone(), holder));
                // What it passed on ends with it.
                for ((port, _), given) in &mut self.by_port {
                    if port == name {
                        given.remove(&holder);
                    }
                }
                let made: Vec<LinkId> = self
                    .links
                    .iter()
                    .filter(|(_, (port, by))| port == name && *by == holder)
                    .map(|(link, _)| *link)
                    .collect();
                for link in made {
                    self.links.remove(&link);
                    closed.push(link);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> PortName {
        PortName::new(text).unwrap()
    }

    const OWNER: ProcessId = ProcessId { pid: 1, generation: 1 };
    const FRIEND: ProcessId = ProcessId { pid: 2, generation: 2 };
    const STRANGER: ProcessId = ProcessId { pid: 3, generation: 3 };

    #[test]
    fn grants_add_up_and_only_the_owner_or_granter_revokes_them() {
        let mut grants = Grants::default();
        grants.grant(name("calc"), FRIEND, Rights::SEND, OWNER);
        grants.grant(name("calc"), FRIEND, Rights::CALL, OWNER);
        assert_eq!(grants.rights(&name("calc"), FRIEND), Rights::ALL);
        assert_eq!(grants.rights(&name("calc"), STRANGER), Rights::NONE);
        grants.link_made(LinkId(7), name("calc"), FRIEND);
        assert_eq!(grants.revoke(&name("calc"), FRIEND, STRANGER, false), None);
        assert_eq!(grants.revoke(&name("calc"), FRIEND, STRANGER, true), Some(vec![LinkId(7)]));
        assert_eq!(grants.rights(&name("calc"), FRIEND), Rights::NONE);
        assert_eq!(grants.revoke(&name("calc"), FRIEND, OWNER, true), None, "already gone");
    }

    #[test]
    fn grants_end_with_their_port_or_their_holder() {
        let mut grants = Grants::default();
        grants.grant(name("a"), FRIEND, Rights::SEND, OWNER);
        grants.grant(name("b"), FRIEND, Rights::SEND, OWNER);
        grants.port_closed(&name("a"));
        assert!(grants.rights(&name("a"), FRIEND).is_empty());
        assert!(!grants.rights(&name("b"), FRIEND).is_empty());
        grants.node_left(FRIEND);
        assert!(grants.rights(&name("b"), FRIEND).is_empty());
    }

    #[test]
    fn what_was_passed_on_ends_with_the_grant_it_came_from_or_with_its_granter() {
        let mut grants = Grants::default();
        grants.grant(name("calc"), FRIEND, Rights::ALL, OWNER);
        grants.grant(name("calc"), STRANGER, Rights::SEND, FRIEND);
        grants.link_made(LinkId(9), name("calc"), STRANGER);
        let closed = grants.revoke(&name("calc"), FRIEND, OWNER, true).unwrap();
        assert_eq!(closed, vec![LinkId(9)], "the stranger's link came from the friend's grant");
        assert!(grants.rights(&name("calc"), STRANGER).is_empty());

        grants.grant(name("calc"), FRIEND, Rights::ALL, OWNER);
        grants.grant(name("calc"), STRANGER, Rights::SEND, FRIEND);
        assert!(grants.node_left(FRIEND).is_empty(), "no links were made");
        assert!(grants.rights(&name("calc"), STRANGER).is_empty(), "its granter left");
    }

    #[test]
    fn a_third_party_adding_to_a_grant_revokes_only_its_own_part() {
        let mut grants = Grants::default();
        grants.grant(name("calc"), FRIEND, Rights::ALL, OWNER);
        grants.grant(name("calc"), STRANGER, Rights::ALL, OWNER);
        grants.grant(name("calc"), FRIEND, Rights::SEND, STRANGER);
        assert!(grants.revoke(&name("calc"), FRIEND, STRANGER, false).is_some());
        assert_eq!(grants.rights(&name("calc"), FRIEND), Rights::ALL, "the owner's grant stays");
    }
}
