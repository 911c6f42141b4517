//! Duplicate suppression for best-effort datagrams: a sliding window of recently seen ids.

/// The ids seen on one datagram stream: the highest, and a bitmap of the 128 below it.
///
/// The anti-replay window of IPsec (RFC 4303 §3.4.3): an id above the highest slides the
/// window; an id inside it is accepted once; an id older than the window is dropped, since it
/// can no longer be told from a duplicate. Datagrams may arrive out of order and are delivered
/// as they come.
#[derive(Debug, Default)]
pub(crate) struct ReplayWindow {
    highest: u64,
    /// Bit `i` set: id `highest - i` was seen.
    seen: u128,
}

/// Why a datagram was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Seen before.
    Duplicate,
    /// Older than the window (or the reserved id 0).
    TooOld,
}

impl ReplayWindow {
    /// Records `id` if it is new.
    pub(crate) fn check_and_record(&mut self, id: u64) -> Result<(), Rejection> {
        if id == 0 {
            return Err(Rejection::TooOld);
        }
        if id > self.highest {
            let shift = id - self.highest;
            self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = id;
            return Ok(());
        }
        let age = self.highest - id;
        if age >= WINDOW {
            return Err(Rejection::TooOld);
        }
        let bit = 1u128 << age;
        if self.seen & bit != 0 {
            return Err(Rejection::Duplicate);
        }
        self.seen |= bit;
        Ok(())
    }
}

/// How many ids below the highest are remembered.
const WINDOW: u64 = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_accepted_once_in_any_order() {
        let mut w = ReplayWindow::default();
        for id in [5, 3, 4, 1, 2] {
            assert_eq!(w.check_and_record(id), Ok(()), "{id}");
        }
        assert_eq!(w.check_and_record(4), Err(Rejection::Duplicate));
        for id in [200, 150] {
            assert_eq!(w.check_and_record(id), Ok(()), "{id}");
        }
        assert_eq!(w.check_and_record(5), Err(Rejection::TooOld));
        for id in [200, 150] {
            assert_eq!(w.check_and_record(id), Err(Rejection::Duplicate), "{id}");
        }
        assert_eq!(w.check_and_record(72), Err(Rejection::TooOld));
        assert_eq!(w.check_and_record(73), Ok(()));
        assert_eq!(w.check_and_record(0), Err(Rejection::TooOld));
        assert_eq!(w.check_and_record(u64::MAX), Ok(()));
        assert_eq!(w.check_and_record(u64::MAX), Err(Rejection::Duplicate));
    }
}
