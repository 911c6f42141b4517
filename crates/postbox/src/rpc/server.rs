//! Serving a typed service: a pool of threads (or tokio's blocking pool) receiving on the
//! service's port, each request handled by the [`Handler`]; and a control lane that looks
//! every 5 ms (without blocking, so it never becomes the port's reader while a worker waits)
//! for cancel and describe requests, so that they are answered while every worker is busy with
//! a long call. Idle workers take those first anyway (they come at priority 31).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use postbox_core::Selector;
use postbox_rpc::{SchemaError, RPC_CONTROL_MSG_TYPE};

use crate::error::{OpenError, TryRecvError};
use crate::rpc::dispatch::Dispatch;
use crate::rpc::handler::Handler;
use crate::{Node, Port};

/// Why a service could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The port could not be opened (its name is taken, for example).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The service's types could not be traced into a schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Serves `service` on port `name` with `threads` threads until the port closes (the node
/// detached); the blocking form of `<Trait>Server::serve`.
///
/// # Errors
/// [`ServeError::Open`] when the port cannot be opened.
pub fn serve(
    node: &Node,
    name: &str,
    service: Arc<dyn Dispatch>,
    threads: usize,
) -> Result<(), ServeError> {
    let mut serving = start(node, name, service, threads)?;
    for thread in std::mem::take(&mut serving.threads) {
        let _ = thread.join();
    }
    Ok(())
}

/// Serves `service` on port `name` with `threads` background threads (and a control thread)
/// until the returned handle is stopped or dropped.
///
/// # Errors
/// [`ServeError::Open`] when the port cannot be opened.
pub fn start(
    node: &Node,
    name: &str,
    service: Arc<dyn Dispatch>,
    threads: usize,
) -> Result<Serving, ServeError> {
    let port = Arc::new(node.port(name).service().open()?);
    let stop = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(Handler::new(service));
    let mut threads: Vec<JoinHandle<()>> = (0..threads.max(1))
        .map(|_| {
            let (port, stop, handler) =
                (Arc::clone(&port), Arc::clone(&stop), Arc::clone(&handler));
            std::thread::spawn(move || serve_lane(&port, &handler, &stop))
        })
        .collect();
    let (control, control_port) = (Arc::clone(&stop), Arc::clone(&port));
    threads.push(std::thread::spawn(move || control_lane(&control_port, &handler, &control)));
    Ok(Serving { stop, port, threads, name: name.to_owned() })
}

/// Serves `service` on port `name` from tokio: each request is handled on tokio's blocking
/// pool (the methods are ordinary functions), at most `concurrency` at once, while the port is
/// received from without a thread of its own; cancels and describes are answered without
/// waiting for room. Runs until the port closes; dropping the future stops serving (the calls
/// running finish first, in the background).
///
/// # Errors
/// [`ServeError::Open`] when the port cannot be opened.
pub async fn serve_async(
    node: &Node,
    name: &str,
    service: Arc<dyn Dispatch>,
    concurrency: usize,
) -> Result<(), ServeError> {
    let port = Arc::new(node.port(name).service().open()?);
    let handler = Arc::new(Handler::new(service));
    // The control lane: a task of its own, ended with this future.
    let control = {
        let (port, handler) = (Arc::clone(&port), Arc::clone(&handler));
        AbortOnDrop(tokio::spawn(async move {
            loop {
                match port.try_recv_matching(CONTROL) {
                    Ok(envelope) => handler.handle(envelope),
                    Err(TryRecvError::Empty) => tokio::time::sleep(CONTROL_INTERVAL).await,
                    Err(_) => return,
                }
            }
        }))
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    // A free permit first, so that what is received runs at once.
    while let Ok(permit) = Arc::clone(&permits).acquire_owned().await {
        let Ok(envelope) = port.recv_async().await else { break };
        let handler = Arc::clone(&handler);
        tokio::task::spawn_blocking(move || {
            handler.handle(envelope);
            drop(permit);
        });
    }
    drop(control);
    Ok(())
}

/// Aborts a task when dropped (the control lane ends with its service).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A service being served by background threads; stops them (and closes the port) when
/// stopped or dropped.
#[derive(Debug)]
pub struct Serving {
    stop: Arc<AtomicBool>,
    /// Closed to stop the workers, which wait on it without a timeout.
    port: Arc<Port>,
    threads: Vec<JoinHandle<()>>,
    name: String,
}

impl Serving {
    /// The port's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops serving: the threads finish the calls they run and the port closes.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.port.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// One serving thread: receives requests and handles them until the port closes (stopping
/// closes it). It waits without a timeout: no clock is read per request.
fn serve_lane(port: &Port, handler: &Handler, stop: &AtomicBool) {
    while let Ok(envelope) = port.recv() {
        handler.handle(envelope);
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// The control lane: looks for cancel and describe requests every [`CONTROL_INTERVAL`]. It
/// never waits on the port: a thread waiting there would take turns reading the links with the
/// workers, and hand them calls through a wake-up each time.
fn control_lane(port: &Port, handler: &Handler, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match port.try_recv_matching(CONTROL) {
            Ok(envelope) => handler.handle(envelope),
            Err(TryRecvError::Empty) => std::thread::sleep(CONTROL_INTERVAL),
            Err(_) => return,
        }
    }
}

/// The control lane: cancel and describe requests only.
const CONTROL: Selector = Selector::ANY.of_type(RPC_CONTROL_MSG_TYPE);

/// How often the control lane looks for cancel and describe requests.
const CONTROL_INTERVAL: Duration = Duration::from_millis(5);
