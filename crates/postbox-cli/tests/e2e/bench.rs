//! `postbox bench --json`: every carrier of a measure is in the results, each ratio is the
//! carrier's p50 over the baseline's p50 of the same run, and the targets are reported. No
//! figure is asserted (speed is judged from benchmark runs, not tests).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::{exe, stderr_of, stdout_of};

#[test]
fn a_quick_call_run_reports_every_carrier_with_its_ratio_to_the_raw_socketpair() {
    let report = quick_run("call", "same-core");
    let results = report["results"].as_array().unwrap();
    let sizes: BTreeSet<u64> = results.iter().map(|r| r["size"].as_u64().unwrap()).collect();
    assert!(sizes.contains(&64), "{sizes:?}");
    for size in sizes {
        let rows: Vec<&Value> = results.iter().filter(|r| r["size"] == size).collect();
        let carriers: BTreeSet<&str> =
            rows.iter().map(|r| r["carrier"].as_str().unwrap()).collect();
        let expected = ["postbox_shm", "postbox_unix", "raw_futex", "raw_socketpair", "raw_yield"];
        assert_eq!(carriers, expected.into_iter().collect(), "size {size}");
        let p50 = |carrier: &str| {
            let row = rows.iter().find(|r| r["carrier"] == carrier).unwrap();
            row["p50_ns"].as_f64().unwrap()
        };
        let baseline = p50("raw_socketpair");
        for row in &rows {
            assert_eq!(row["measure"], "call_rtt");
            assert_eq!(row["placement"], "same-core");
            assert_eq!(row["vs"], "raw_socketpair");
            let (p50, p99, p999) =
                (row["p50_ns"].as_f64(), row["p99_ns"].as_f64(), row["p999_ns"].as_f64());
            let (p50, p99, p999) = (p50.unwrap(), p99.unwrap(), p999.unwrap());
            assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{row}");
            let ratio = row["ratio"].as_f64().unwrap();
            assert!((ratio - p50 / baseline).abs() < 1e-3, "{row} against {baseline} ns");
        }
    }
    let targets = report["targets"].as_array().unwrap();
    let call_target = targets
        .iter()
        .find(|t| t["what"].as_str().is_some_and(|w| w.contains("call RTT 64 B")))
        .unwrap_or_else(|| panic!("no call target in {targets:?}"));
    assert_eq!(call_target["issue"], 4);
    assert!(call_target["met"].is_boolean(), "{call_target}");
}

/// The busy-wait measure across cores: the feed's two rows at 64 B only (a feed carries at
/// most 248 bytes), beside the other carriers, and a target for each.
#[test]
fn a_quick_busy_run_reports_the_feed_at_64_bytes_beside_the_other_carriers() {
    let report = quick_run("busy", "cross-core");
    let results = report["results"].as_array().unwrap();
    let carriers = |size: u64| -> BTreeSet<&str> {
        results
            .iter()
            .filter(|r| r["size"] == size)
            .map(|r| r["carrier"].as_str().unwrap())
            .collect()
    };
    let feeds = ["postbox_shm_feed", "postbox_shm_feed_ping_pong"];
    let others = ["postbox_shm", "postbox_shm_zero_copy", "postbox_unix", "raw_spin"];
    let at_64: BTreeSet<&str> = feeds.into_iter().chain(others).collect();
    assert_eq!(carriers(64), at_64);
    assert_eq!(carriers(4096), others.into_iter().collect());
    for feed in feeds {
        let row = results.iter().find(|r| r["carrier"] == feed).unwrap();
        assert_eq!(row["measure"], "one_way_busy");
        assert_eq!(row["vs"], "raw_spin");
        assert!(row["p50_ns"].as_f64().unwrap() > 0.0, "{row}");
    }
    let targets = report["targets"].as_array().unwrap();
    for what in ["busy-wait, shm feed / raw spin", "busy-wait, feed ping-pong / raw spin"] {
        let target = targets
            .iter()
            .find(|t| t["what"].as_str().is_some_and(|w| w.contains(what)))
            .unwrap_or_else(|| panic!("no {what:?} target in {targets:?}"));
        assert!(target["met"].is_boolean(), "{target}");
    }
}

/// The throughput measure: every carrier, the feed's among them, with a rate, and a target
/// for the feed.
#[test]
fn a_quick_throughput_run_reports_a_rate_for_every_carrier_and_the_feed() {
    let report = quick_run("throughput", "cross-core");
    let results = report["results"].as_array().unwrap();
    let carriers: BTreeSet<&str> = results.iter().map(|r| r["carrier"].as_str().unwrap()).collect();
    let expected =
        ["postbox_shm", "postbox_shm_batch", "postbox_shm_feed", "postbox_unix", "raw_socketpair"];
    assert_eq!(carriers, expected.into_iter().collect());
    for row in results {
        assert_eq!(row["measure"], "throughput");
        assert!(row["msgs_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{row}");
    }
    let targets = report["targets"].as_array().unwrap();
    assert!(
        targets.iter().any(|t| t["what"].as_str().is_some_and(|w| w.ends_with("shm, feed"))),
        "no feed throughput target in {targets:?}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // `postbox bench --json | head -c 10`: the reader is gone before the report is written.
    let mut child = Command::new(exe())
        .args(["bench", "--quick", "--json", "--measure", "call", "--placement", "same-core"])
        .env_remove("POSTBOX_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{:?}\n{stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("postbox:"), "no error is reported: {stderr}");
}

/// `postbox bench --quick --json` of one measure at one placement, which must succeed: its
/// report.
fn quick_run(measure: &str, placement: &str) -> Value {
    let output = Command::new(exe())
        .args(["bench", "--quick", "--json", "--measure", measure, "--placement", placement])
        .env_remove("POSTBOX_SOCKET")
        .output()
        .unwrap();
    let stdout = stdout_of(&output);
    assert!(output.status.success(), "{stdout}\n{}", stderr_of(&output));
    serde_json::from_str(&stdout).unwrap()
}
