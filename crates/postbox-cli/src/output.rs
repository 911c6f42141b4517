//! Standard output that ends a command quietly when its reader goes away (`postbox ls |
//! head`), as ripgrep does, where `println!` would panic and a plain write would end in
//! "Broken pipe".

use std::fmt;
use std::io::{self, Write};

/// Writes a line to standard output, like `println!`, but returns the error instead of
/// panicking (see [`stdout`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!($crate::output::stdout(), $($arg)*)
    }};
}
pub(crate) use outln;

/// Standard output, locked. A write to a reader that went away fails with an
/// [`io::ErrorKind::BrokenPipe`] error holding [`ClosedOutput`], which `main` ends the process
/// on quietly ([`is_closed_output`]); other errors are as they come.
pub(crate) fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

/// See [`stdout`].
#[derive(Debug)]
pub(crate) struct Stdout(io::StdoutLock<'static>);

impl Write for Stdout {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Standard output's reader went away (a closed pipe): the rest of the output is not wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClosedOutput;

impl fmt::Display for ClosedOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for ClosedOutput {}

/// True when `error` says standard output was closed ([`ClosedOutput`]), and nothing else.
pub(crate) fn is_closed_output(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<ClosedOutput>()
            || cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<ClosedOutput>())
    })
}

fn mark(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, ClosedOutput)
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_standard_output_is_taken_for_one() {
        let closed = anyhow::Error::new(mark(io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(is_closed_output(&closed));
        assert!(is_closed_output(&closed.context("print the table")));
        // A broken pipe elsewhere (a socket to a dead broker) is a real error.
        let socket = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_closed_output(&socket));
        let other = anyhow::Error::new(mark(io::Error::from(io::ErrorKind::WriteZero)));
        assert!(!is_closed_output(&other));
    }
}
