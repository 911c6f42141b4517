//! `postbox demo`, the README's main command, runs to the end on a fresh machine: every section
//! across real processes, and the cross-host section through two brokers.

use std::process::Command;

use crate::util::{exe, stderr_of, stdout_of};

#[test]
fn the_demo_runs_every_section_to_the_end() {
    let output = Command::new(exe())
        .args(["demo", "--rounds", "200", "--placement", "cross-core"])
        .env_remove("POSTBOX_SOCKET")
        .output()
        .unwrap();
    let stdout = stdout_of(&output);
    assert!(output.status.success(), "{stdout}\n{}", stderr_of(&output));
    let sections = stdout.lines().filter(|l| l.starts_with("== ")).count();
    assert_eq!(sections, 13, "{stdout}");
    for expected in [
        "call(\"make me loud\") -> \"MAKE ME LOUD\"",
        "failed with PeerDied",
        "-> \"HELLO FROM HOST A\"",
        "demo finished",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}
