//! The textbook RPC example, server side: serves `Add` on `examples/add` of the broker at
//! `$POSTBOX_SOCKET` (or the default socket) until killed. `add_client` starts it; see there.

#[path = "add/service.rs"]
#[allow(dead_code)] // each program uses its half of what the macro generates
mod service;

use service::{Add, AddError, AddServer, NAME};

struct Adder;

impl Add for Adder {
    fn add(&self, a: i64, b: i64) -> Result<i64, AddError> {
        a.checked_add(b).ok_or(AddError::Overflow)
    }

    fn sum(&self, numbers: Vec<i64>, delay_ms: u64) -> i64 {
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        numbers.iter().sum()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = postbox::Node::attach()?;
    let serving = AddServer::new(Adder).threads(2).start(&node, NAME)?;
    // The client waits for this line before binding.
    println!("ready {}", node.process_id());
    // Serve until killed (the client ends this process).
    std::thread::park();
    drop(serving);
    Ok(())
}
