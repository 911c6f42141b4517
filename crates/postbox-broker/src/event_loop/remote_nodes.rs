//! Nodes attached over TCP (docs/network.md §14): what the node listener reports, taken into
//! the event loop. An attached node's control socket joins the poll set like an accepted local
//! one; from then on only its identity differs (no kernel credentials: a principal) and the
//! links it gets (Unix links, never shared memory, which cannot cross its tunnel).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use postbox_core::ControlErrorCode;
use postbox_transport::tunnel::{AttachEvent, AttachListener, AttachedNode};
use postbox_transport::{Credentials, Wait};

use super::{refused, EventLoop, NodeConnection};
use crate::registry::NodeKey;

/// Who a node attached over TCP is: the principal it proved, and where it connected from.
#[derive(Debug, Clone)]
pub(super) struct RemoteNode {
    pub(super) principal: Arc<str>,
    pub(super) address: SocketAddr,
}

impl EventLoop {
    /// Takes every event the node listener has: nodes attached join, refusals and ended
    /// tunnels are logged.
    pub(super) fn serve_remote_nodes(&mut self, listener: &AttachListener) {
        while let Some(event) = listener.try_next() {
            match event {
                AttachEvent::Attached(node) => self.admit_remote(node),
                AttachEvent::Refused { address, error }
                    if self.refusal_log.admit(Instant::now()) =>
                {
                    tracing::warn!(%address, %error, "remote node refused");
                }
                AttachEvent::Ended { principal, address, result: Err(error) } => {
                    tracing::info!(remote_node = principal, %address, %error, "remote node lost");
                }
                AttachEvent::Ended { principal, address, result: Ok(()) } => {
                    tracing::debug!(remote_node = principal, %address, "remote node left");
                }
                _ => {}
            }
        }
    }

    /// True when node `key` is attached over TCP.
    pub(super) fn is_tcp_node(&self, key: NodeKey) -> bool {
        self.nodes.get(key.0).and_then(Option::as_ref).is_some_and(|n| n.remote.is_some())
    }

    /// Serves `node` from now on, within the node limits (the per-user limit counts the nodes
    /// of one principal).
    fn admit_remote(&mut self, node: AttachedNode) {
        let AttachedNode { control, principal, address } = node;
        let active = self.nodes.iter().flatten().count();
        let refusal = if active >= self.config.max_nodes {
            Some("broker is full".to_owned())
        } else {
            let per_user = self.config.policy.limits().nodes_per_user;
            let same = self
                .nodes
                .iter()
                .flatten()
                .filter(|n| n.remote.as_ref().is_some_and(|r| *r.principal == *principal));
            (same.count() >= per_user)
                .then(|| format!("remote node {principal} has {per_user} nodes attached"))
        };
        if let Some(detail) = refusal {
            // The node reads why before its tunnel closes.
            let refusal = refused(0, ControlErrorCode::LimitExceeded, &detail);
            let _ = control.send(&refusal, &[], Wait::NonBlocking);
            tracing::warn!(remote_node = principal, %address, detail, "remote node refused");
            return;
        }
        tracing::info!(remote_node = principal, %address, "remote node attached");
        self.insert_node(NodeConnection {
            socket: control,
            // No process of this host: pid 0, and a user and group no local account has.
            credentials: Credentials { pid: 0, uid: u32::MAX, gid: u32::MAX },
            outbox: VecDeque::new(),
            closing: false,
            accepted_at: Instant::now(),
            remote: Some(RemoteNode { principal: Arc::from(principal), address }),
        });
    }
}

/// Refused attach attempts logged one by one each second; beyond, they are counted.
pub(super) const REFUSALS_LOGGED_PER_SECOND: u32 = 20;
