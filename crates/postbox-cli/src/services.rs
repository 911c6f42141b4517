//! The typed services `postbox worker` serves for the tests, the benches and the demo.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Why a calculation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CalcError {
    /// Division by zero.
    DivByZero,
    /// The result does not fit.
    Overflow { a: i64, b: i64 },
}

/// A point, to pass a struct from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Point {
    pub(crate) x: f64,
    pub(crate) y: f64,
}

/// What the calculator has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stats {
    pub(crate) calls: u64,
    pub(crate) notes: Vec<String>,
}

/// A calculator: plain, fallible, struct-taking and one-way methods.
#[postbox::service]
pub(crate) trait Calc {
    /// `a + b` (wrapping).
    fn add(&self, a: i64, b: i64) -> i64;
    /// `a / b`, or why not.
    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError>;
    /// `p` scaled by `k`.
    fn scale(&self, p: Point, k: f64) -> Point;
    /// Calls so far and the notes taken.
    fn stats(&self) -> Stats;
    /// Takes a note; nobody waits.
    #[oneway]
    fn note(&self, line: String);
}

/// The calculator behind `postbox worker typed-calc`.
#[derive(Debug, Default)]
pub(crate) struct Calculator {
    calls: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Calc for Calculator {
    fn add(&self, a: i64, b: i64) -> i64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        a.wrapping_add(b)
    }

    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        a.checked_div(b).ok_or(if b == 0 {
            CalcError::DivByZero
        } else {
            CalcError::Overflow { a, b }
        })
    }

    fn scale(&self, p: Point, k: f64) -> Point {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Point { x: p.x * k, y: p.y * k }
    }

    fn stats(&self) -> Stats {
        let notes = self.notes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Stats { calls: self.calls.load(Ordering::Relaxed), notes }
    }

    fn note(&self, line: String) {
        self.notes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
    }
}

/// Echoes bytes: the typed counterpart of `postbox worker echo`, for the typed-call bench.
/// `ByteBuf` (serde_bytes) goes through serde as one byte string; a `Vec<u8>` would go byte
/// by byte.
#[postbox::service]
pub(crate) trait Echo {
    /// `body`, back.
    fn echo(&self, body: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
}

/// The echo behind `postbox worker typed-echo`.
#[derive(Debug, Default)]
pub(crate) struct Echoer;

impl Echo for Echoer {
    fn echo(&self, body: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
        body
    }
}
