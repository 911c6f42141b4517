//! The textbook RPC example, client side, in two processes: this program starts a broker and
//! the server process (`add_server`, built beside it), binds to the `Add` service, and calls
//! it: the register, bind, call, marshal, send, receive, unmarshal, run, return steps, typed
//! end to end. Then it kills the server in the middle of a call.
//!
//! Run: `cargo build -p postbox --example add_server && cargo run -p postbox --example add_client`

#[path = "add/service.rs"]
#[allow(dead_code)] // each program uses its half of what the macro generates
mod service;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postbox::rpc::RpcError;
use postbox::Broker;
use service::{AddClient, AddError, NAME};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Broker::embedded()?;
    let server_path = std::env::current_exe()?.with_file_name("add_server");
    let mut server = Command::new(&server_path)
        .env("POSTBOX_SOCKET", broker.socket_path())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "start {}: {e} (build it: cargo build -p postbox --example add_server)",
                server_path.display()
            )
        })?;
    let mut ready = String::new();
    BufReader::new(server.stdout.take().ok_or("no stdout")?).read_line(&mut ready)?;
    println!("server process {} is {}", server.id(), ready.trim());

    let node = broker.node()?;
    // Bind: connect, and check that the server's definition of Add is this one.
    let add = AddClient::bind(&node, NAME)?;
    let started = Instant::now();
    let sum = add.add(2, 3)?;
    println!("add(2, 3) = {sum}  ({:?}, first call)", started.elapsed());
    assert_eq!(sum, 5);
    let started = Instant::now();
    for i in 0..1000 {
        assert_eq!(add.add(i, i)?, 2 * i);
    }
    println!("1000 more calls: {:?} each", started.elapsed() / 1000);
    // The server's own error comes back typed.
    let overflow = add.add(i64::MAX, 1);
    println!("add(i64::MAX, 1) = {overflow:?}");
    assert_eq!(overflow, Err(RpcError::Remote(AddError::Overflow)));

    // Kill the server while a call is in progress: the caller gets PeerDied, not a hang.
    let slow = {
        let add = add.clone();
        std::thread::spawn(move || add.sum(vec![1, 2, 3], 5_000))
    };
    std::thread::sleep(Duration::from_millis(200));
    let killed = Instant::now();
    server.kill()?;
    let outcome = slow.join().map_err(|_| "the calling thread panicked")?;
    println!("sum(..) with the server killed mid-call: {outcome:?} after {:?}", killed.elapsed());
    assert_eq!(outcome, Err(RpcError::PeerDied));
    server.wait()?;
    Ok(())
}
