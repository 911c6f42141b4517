//! Child `postbox` processes for the demo and the bench: workers attached to a given broker,
//! started and awaited through their `ready` line.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};

/// Starts `postbox` child processes attached to one broker.
pub(crate) struct Spawner {
    pub(crate) socket: std::path::PathBuf,
}

/// A worker child whose `ready` line was seen.
pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) stdout: Option<BufReader<ChildStdout>>,
    /// What followed `ready`: the worker's process id, for node workers.
    pub(crate) id: String,
}

impl Spawner {
    pub(crate) fn command(&self, args: &[&str]) -> Result<Command> {
        let exe = std::env::current_exe().context("find the postbox executable")?;
        let mut command = Command::new(exe);
        command.args(args).env("POSTBOX_SOCKET", &self.socket);
        Ok(command)
    }

    pub(crate) fn worker(&self, args: &[&str]) -> Result<Worker> {
        self.start(args, Stdio::null())
    }

    /// Starts a raw baseline worker whose stdin is `socket` (one end of a socketpair).
    pub(crate) fn worker_with_stdin(&self, args: &[&str], socket: UnixStream) -> Result<Worker> {
        self.start(args, Stdio::from(std::os::fd::OwnedFd::from(socket)))
    }

    /// Starts a raw baseline worker whose stdin is `fd` (a memory object, say).
    pub(crate) fn worker_with_fd(&self, args: &[&str], fd: std::os::fd::OwnedFd) -> Result<Worker> {
        self.start(args, Stdio::from(fd))
    }

    pub(crate) fn start(&self, args: &[&str], stdin: Stdio) -> Result<Worker> {
        let mut full = vec!["worker"];
        full.extend_from_slice(args);
        let mut child = self.command(&full)?.stdin(stdin).stdout(Stdio::piped()).spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(rest) = line.trim().strip_prefix("ready") else {
            let _ = child.kill();
            bail!("worker {args:?} did not start: {line:?}");
        };
        Ok(Worker { child, stdout: Some(stdout), id: rest.trim().to_owned() })
    }

    pub(crate) fn run_to_end(&self, args: &[&str]) -> Result<()> {
        let status = self.command(args)?.status()?;
        if !status.success() {
            bail!("postbox {args:?} failed: {status}");
        }
        Ok(())
    }
}

impl Worker {
    pub(crate) fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.as_mut().context("worker output taken")?.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    pub(crate) fn process_id(&self) -> Result<postbox::ProcessId> {
        self.id.parse().context("worker process id")
    }

    pub(crate) fn wait_for_exit(&mut self) -> Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("worker exited with {status}");
        }
        Ok(())
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}
