//! The `_async` forms on tokio, in the same program as the blocking ones: an async server for
//! blocking clients in other processes, many async calls in flight on one connection, async
//! receives from an inbox, a mailbox and a topic, and an async rendezvous send.

use std::process::Stdio;
use std::time::Duration;

use crate::util::{stderr_of, stdout_of, Daemon, WATCHDOG};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn an_async_server_serves_blocking_clients_in_other_processes() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("async/upper").open().unwrap();
    let rt = runtime();
    let server = rt.spawn(async move {
        // One task per call: the receive itself spends no thread while it waits.
        loop {
            let Ok(mut call) = port.recv_async().await else { return };
            let token = call.take_reply_token().unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = token.reply(call.body().to_ascii_uppercase());
            });
        }
    });
    let clients: Vec<_> = (0..4)
        .map(|i| {
            daemon
                .command(&["call", "async/upper", &format!("client {i}"), "--timeout", "20s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let output = client.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
        assert_eq!(stdout_of(&output), format!("CLIENT {i}\n"));
    }
    server.abort();
}

#[test]
fn many_async_calls_share_one_connection_with_a_blocking_caller() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "async/echo", "--threads", "2"]);
    let node = daemon.node();
    let connection = node.connect("async/echo").unwrap();
    let rt = runtime();
    std::thread::scope(|s| {
        // A blocking caller on the same connection at the same time.
        let blocking = s.spawn(|| {
            for i in 0..200 {
                let body = format!("blocking {i}");
                assert_eq!(
                    connection.call_timeout(body.as_str(), WATCHDOG).unwrap().body(),
                    body.as_bytes()
                );
            }
        });
        rt.block_on(async {
            let calls = (0..500).map(|i| {
                let connection = connection.clone();
                tokio::spawn(async move {
                    let body = format!("async {i}");
                    let reply =
                        tokio::time::timeout(WATCHDOG, connection.call_async(body.as_str()))
                            .await
                            .expect("no hang")
                            .unwrap();
                    assert_eq!(reply.body(), body.as_bytes());
                })
            });
            for call in calls.collect::<Vec<_>>() {
                call.await.unwrap();
            }
        });
        blocking.join().unwrap();
    });
}

#[test]
fn thousands_of_async_calls_in_a_row_keep_being_woken() {
    // Every reply rings the caller's wake-up socket, which its epoll set never reads itself:
    // if nothing emptied it, it would fill after a few hundred rings and the caller would
    // never be woken again.
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "async/many"]);
    let node = daemon.node();
    let connection = node.connect("async/many").unwrap();
    let rt = runtime();
    rt.block_on(async {
        for i in 0..3000 {
            let body = format!("call {i}");
            let reply = tokio::time::timeout(WATCHDOG, connection.call_async(body.as_str()))
                .await
                .expect("no hang")
                .unwrap();
            assert_eq!(reply.body(), body.as_bytes());
        }
    });
}

#[test]
fn async_receives_from_an_inbox_a_mailbox_and_a_topic() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let me = node.process_id().to_string();
    let jobs = node.mailbox("/async/jobs").create().unwrap();
    let news = node.subscribe("/async/news").unwrap();
    let rt = runtime();
    rt.block_on(async {
        let inbox = async {
            tokio::time::timeout(WATCHDOG, node.inbox().recv_async()).await.unwrap().unwrap()
        };
        let job =
            async { tokio::time::timeout(WATCHDOG, jobs.recv_async()).await.unwrap().unwrap() };
        let headline =
            async { tokio::time::timeout(WATCHDOG, news.recv_async()).await.unwrap().unwrap() };
        let senders = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut direct = daemon.worker(&["send-to", &me, "direct"]);
            direct.wait_success();
            let mut queued = daemon.worker(&["send-many", "/async/jobs", "1"]);
            queued.wait_success();
            let mut published = daemon.worker(&["publish-many", "/async/news", "1"]);
            published.wait_success();
        };
        let (inbox, job, headline, ()) = tokio::join!(inbox, job, headline, senders);
        assert_eq!(inbox.body(), b"direct");
        assert_eq!(job.body(), b"0");
        assert_eq!((headline.topic(), headline.body()), (Some("/async/news"), &b"0"[..]));
    });
}

#[test]
fn an_async_rendezvous_send_completes_when_the_receiver_takes_the_message() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("async/meet").capacity(0).open().unwrap();
    let sender_node = daemon.node();
    let connection = sender_node.connect("async/meet").unwrap();
    let rt = runtime();
    rt.block_on(async {
        let send = tokio::spawn(async move { connection.send_async("hello").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!send.is_finished(), "not taken yet, so not sent yet");
        let envelope = tokio::task::spawn_blocking(move || port.recv_timeout(WATCHDOG).unwrap())
            .await
            .unwrap();
        assert_eq!(envelope.body(), b"hello");
        tokio::time::timeout(WATCHDOG, send).await.unwrap().unwrap().unwrap();
    });
}

#[test]
fn replies_direct_sends_and_publications_have_async_forms_too() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("async/reply").open().unwrap();
    let news = node.subscribe("/async/wire").unwrap();
    let sender = daemon.node();
    let me = node.process_id();
    let rt = runtime();
    rt.block_on(async {
        let server = async {
            let mut call = port.recv_async().await.unwrap();
            let token = call.take_reply_token().unwrap();
            token.reply_async(call.body().to_ascii_uppercase()).await.unwrap();
        };
        let client = async {
            let output = tokio::task::spawn_blocking({
                let socket = daemon.socket().to_owned();
                move || {
                    std::process::Command::new(crate::util::exe())
                        .args(["call", "async/reply", "quiet please"])
                        .env("POSTBOX_SOCKET", socket)
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            assert_eq!(stdout_of(&output), "QUIET PLEASE\n");
        };
        let direct = async {
            sender.send_to_async(me, "to the inbox").await.unwrap();
            sender.publish_async("/async/wire", "on the wire").await.unwrap();
            let inbox = tokio::time::timeout(WATCHDOG, node.inbox().recv_async()).await.unwrap();
            assert_eq!(inbox.unwrap().body(), b"to the inbox");
            let wire = tokio::time::timeout(WATCHDOG, news.recv_async()).await.unwrap();
            assert_eq!(wire.unwrap().body(), b"on the wire");
        };
        tokio::join!(server, client, direct);
    });
}
