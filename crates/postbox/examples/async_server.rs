//! An async server (tokio) answering blocking clients, in one program: the blocking and the
//! async API share a node and a broker. Run: `cargo run -p postbox --example async_server`.

use std::time::Duration;

use postbox::{Broker, Message};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Broker::embedded()?;
    let server = broker.node()?;
    let port = server.port("clock").open()?;

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // The server: one task, no thread per waiting receive or per call in progress.
    let serving = runtime.spawn(async move {
        let mut replies = Vec::new();
        while replies.len() < 8 {
            let Ok(mut call) = port.recv_async().await else { break };
            let Some(token) = call.take_reply_token() else { continue };
            replies.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await; // some async work
                let answer = format!("{} asked the time", call.sender());
                token.reply(Message::new(answer)).is_ok()
            }));
        }
        // The port stays open until every reply is out.
        let mut answered = 0;
        for reply in replies {
            answered += usize::from(reply.await.unwrap_or(false));
        }
        answered
    });

    // Blocking clients, each on a thread of its own, each with its own node.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let path = broker.socket_path().to_owned();
            std::thread::spawn(move || -> Result<String, String> {
                let node = postbox::Node::attach_to(path).map_err(|e| e.to_string())?;
                let clock = node.connect("clock").map_err(|e| e.to_string())?;
                let reply = clock.call_timeout("what time is it?", Duration::from_secs(10));
                let reply = reply.map_err(|e| e.to_string())?;
                Ok(String::from_utf8_lossy(reply.body()).into_owned())
            })
        })
        .collect();
    for client in clients {
        let answer = client.join().map_err(|_| "client thread panicked")??;
        println!("{answer}");
    }
    let answered = runtime.block_on(serving)?;
    println!("the async server answered {answered} blocking calls");
    Ok(())
}
