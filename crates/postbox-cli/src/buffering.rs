//! A port's buffering, from the command line (`--capacity`, `--unbounded`, `--overflow`,
//! `--message-size`, `--datagrams`).

use anyhow::Result;

/// A port's buffering, from the command line.
#[derive(Debug, clap::Args)]
pub(crate) struct Buffering {
    /// One-way messages per link (0: rendezvous).
    #[arg(long)]
    capacity: Option<u32>,
    /// Unbounded links with this byte cap.
    #[arg(long)]
    unbounded: Option<u64>,
    /// What a full link does: block, fail or drop-oldest.
    #[arg(long, default_value = "block")]
    overflow: String,
    /// Largest message body.
    #[arg(long)]
    message_size: Option<u32>,
    /// Senders on other hosts reach the port with best-effort datagrams (one-way only).
    #[arg(long)]
    datagrams: bool,
}

impl Buffering {
    pub(crate) fn apply(&self, mut builder: postbox::PortBuilder) -> Result<postbox::PortBuilder> {
        if let Some(n) = self.capacity {
            builder = builder.capacity(n);
        }
        if let Some(bytes) = self.unbounded {
            builder = builder.unbounded(bytes);
        }
        if let Some(bytes) = self.message_size {
            builder = builder.message_size(bytes);
        }
        if self.datagrams {
            builder = builder.datagrams();
        }
        let overflow = match self.overflow.as_str() {
            "block" => postbox::Overflow::Block,
            "fail" => postbox::Overflow::Fail,
            "drop-oldest" => postbox::Overflow::DropOldest,
            other => anyhow::bail!("--overflow: block, fail or drop-oldest, not {other:?}"),
        };
        Ok(builder.overflow(overflow))
    }
}
