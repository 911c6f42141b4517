//! Typed services from the shell: `postbox call NAME METHOD JSON` against a typed service in
//! another process, and `postbox ls` listing its methods. The service is `postbox worker
//! typed-calc` (crates/postbox-cli/src/services.rs).

use crate::util::{stderr_of, stdout_of, Daemon};

fn call(daemon: &Daemon, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["call", "calc"];
    all.extend_from_slice(args);
    let output = daemon.postbox(&all);
    (output.status.success(), stdout_of(&output), stderr_of(&output))
}

#[test]
fn cli_calls_a_typed_service_with_json_and_prints_json() {
    let daemon = Daemon::start();
    let _calc = daemon.worker(&["typed-calc", "calc"]);
    // Arguments in order, or by name; the result as JSON.
    assert_eq!(call(&daemon, &["add", "[40, 2]"]), (true, "42\n".into(), String::new()));
    assert_eq!(call(&daemon, &["add", r#"{"b": 2, "a": -44}"#]).1, "-42\n");
    let (ok, out, err) = call(&daemon, &["scale", r#"[{"x": 1.5, "y": -2}, 2]"#]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"x": 3.0, "y": -4.0})
    );
    // A one-way method returns at once; its effect shows in the next call.
    assert!(call(&daemon, &["note", r#"["from the shell"]"#]).0);
    let (_, stats, _) = call(&daemon, &["stats", "[]"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["notes"], serde_json::json!(["from the shell"]));
    assert_eq!(stats["calls"], serde_json::json!(3));
}

#[test]
fn cli_typed_call_errors_are_clear() {
    let daemon = Daemon::start();
    let _calc = daemon.worker(&["typed-calc", "calc"]);
    // The method's own error, as JSON, and a failing exit status.
    let (ok, _, err) = call(&daemon, &["div", "[1, 0]"]);
    assert!(!ok);
    assert!(err.contains(r#"calc.div failed: "DivByZero""#), "{err}");
    let (ok, _, err) = call(&daemon, &["div", "[-9223372036854775808, -1]"]);
    assert!(!ok);
    assert!(err.contains("Overflow"), "{err}");
    // Wrong arguments are refused before anything is sent, naming the argument.
    let (ok, _, err) = call(&daemon, &["add", r#"[1, "two"]"#]);
    assert!(!ok);
    assert!(err.contains("add(a: i64, b: i64) -> i64") && err.contains("b"), "{err}");
    let (ok, _, err) = call(&daemon, &["add", "[1]"]);
    assert!(!ok, "{err}");
    let (ok, _, err) = call(&daemon, &["add", "not json"]);
    assert!(!ok);
    assert!(err.contains("not JSON"), "{err}");
    // No such method: the ones there are.
    let (ok, _, err) = call(&daemon, &["mul", "[2, 3]"]);
    assert!(!ok);
    assert!(err.contains("no method mul") && err.contains("add, div, scale, stats, note"), "{err}");
    // Not a typed service at all.
    let _echo = daemon.worker(&["echo", "plain"]);
    let output = daemon.postbox(&["call", "plain", "add", "[1, 2]"]);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("describe plain"), "{}", stderr_of(&output));
}

#[test]
fn cli_ls_lists_a_typed_service_with_its_methods() {
    let daemon = Daemon::start();
    let _calc = daemon.worker(&["typed-calc", "calc"]);
    let _echo = daemon.worker(&["echo", "plain"]);
    let output = daemon.postbox(&["ls"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let listing = stdout_of(&output);
    let calc = listing.lines().find(|l| l.starts_with("calc ")).expect("calc listed");
    assert!(calc.contains(" service "), "{listing}");
    let plain = listing.lines().find(|l| l.starts_with("plain ")).expect("plain listed");
    assert!(plain.contains(" port "), "{listing}");
    for method in [
        "    add(a: i64, b: i64) -> i64",
        "    div(a: i64, b: i64) -> Result<i64, CalcError>",
        "    scale(p: Point, k: f64) -> Point",
        "    stats() -> Stats",
        "    #[oneway] note(line: String)",
    ] {
        assert!(listing.lines().any(|l| l == method), "{method} in\n{listing}");
    }
}
