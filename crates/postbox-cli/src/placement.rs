//! CPU placement for latency measurements: both sides of a comparison run with the same
//! placement (same core, or one core each), because on small virtual machines a wake-up that
//! crosses cores can cost several times the whole round trip.

use std::io;

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// Where a measurement's client thread and its server process run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Client and server share one core: every wake-up is a context switch on that core.
    SameCore,
    /// Client on one core, server on another: every wake-up crosses cores.
    CrossCore,
}

impl Placement {
    /// The placements this machine can offer (cross-core needs two allowed CPUs).
    pub(crate) fn available() -> Vec<Self> {
        match allowed_cpus().len() {
            0 | 1 => vec![Self::SameCore],
            _ => vec![Self::SameCore, Self::CrossCore],
        }
    }

    /// Parses `same-core` or `cross-core`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "same-core" => Some(Self::SameCore),
            "cross-core" => Some(Self::CrossCore),
            _ => None,
        }
    }

    /// The placement `POSTBOX_BENCH_PLACEMENT` names (the criterion benches), same core if
    /// unset or unknown; says on stderr which it is.
    #[allow(dead_code)] // only the benches, which include this file, call it
    pub(crate) fn from_bench_env() -> Self {
        let placement = std::env::var("POSTBOX_BENCH_PLACEMENT")
            .ok()
            .and_then(|p| Self::parse(&p))
            .unwrap_or(Self::SameCore);
        eprintln!(
            "placement: {} (POSTBOX_BENCH_PLACEMENT=same-core|cross-core)",
            placement.label()
        );
        placement
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::SameCore => "same core",
            Self::CrossCore => "cross core",
        }
    }

    /// (client CPU, server CPU).
    pub(crate) fn cpus(self) -> Option<(usize, usize)> {
        let cpus = allowed_cpus();
        match self {
            Self::SameCore => cpus.first().map(|&c| (c, c)),
            Self::CrossCore => (cpus.len() >= 2).then(|| (cpus[0], cpus[1])),
        }
    }

    /// Runs `spawn_servers` while this thread is pinned to the server CPU (children inherit
    /// the mask at spawn), then pins this thread to the client CPU.
    pub(crate) fn apply<T>(self, spawn_servers: impl FnOnce() -> T) -> io::Result<T> {
        let (client, server) = self
            .cpus()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "not enough CPUs"))?;
        pin_current_thread(server)?;
        let servers = spawn_servers();
        pin_current_thread(client)?;
        Ok(servers)
    }
}

/// The CPUs this thread may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Restricts this thread to `cpu`.
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// Lets this thread run on every CPU in `cpus` again.
pub(crate) fn unpin_current_thread(cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    sched_setaffinity(None, &set).map_err(io::Error::from)
}
