//! Which of the peer's UDP datagram numbers a link has taken (`udp.rs`): a copy is dropped
//! before the session sees it, and only the peer's latest datagram may move the address
//! datagrams go to.
//!
//! The anti-replay window of IPsec (RFC 4303 §3.4.3), wider than the session's per-stream one
//! since the counter numbers every datagram of the link (all streams and the probes): the
//! highest number taken, and which of the `WINDOW` numbers below it were. A number above the
//! highest is the latest; one inside the window not taken yet is a late one (reordered); one
//! taken before, or older than the window, is refused (it cannot be told from a copy).

/// The numbers taken since the window was last reset (a new connection: a new key).
#[derive(Debug, Clone)]
pub(super) struct CounterWindow {
    highest: u64,
    /// Bit `n % WINDOW` set: number `n` (within `WINDOW` of `highest`) was taken.
    taken: [u64; WORDS],
}

/// Where a number not taken yet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Above every number taken: the peer's latest datagram.
    Latest,
    /// Below the highest, inside the window: reordered on the way.
    Late,
}

impl Default for CounterWindow {
    fn default() -> Self {
        Self { highest: 0, taken: [0; WORDS] }
    }
}

impl CounterWindow {
    /// Where `number` stands, or `None` when it was taken already, is older than the window,
    /// or is 0 (never sent: senders count from 1). Changes nothing; see
    /// [`take`](Self::take).
    pub(super) fn check(&self, number: u64) -> Option<Arrival> {
        if number == 0 {
            return None;
        }
        if number > self.highest {
            return Some(Arrival::Latest);
        }
        if self.highest - number >= WINDOW || self.is_taken(number) {
            return None;
        }
        Some(Arrival::Late)
    }

    /// Records `number` as taken; the caller checked it with [`check`](Self::check).
    pub(super) fn take(&mut self, number: u64) {
        if number > self.highest {
            let shift = number - self.highest;
            if shift >= WINDOW {
                self.taken = [0; WORDS];
            } else {
                // Forget what the window slides past: the numbers highest + 1 ..= number share
                // their bits with those WINDOW below them.
                for cleared in self.highest + 1..=number {
                    self.set(cleared, false);
                }
            }
            self.highest = number;
        }
        self.set(number, true);
    }

    fn is_taken(&self, number: u64) -> bool {
        let bit = number % WINDOW;
        self.taken[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    fn set(&mut self, number: u64, taken: bool) {
        let bit = number % WINDOW;
        let word = &mut self.taken[(bit / 64) as usize];
        if taken {
            *word |= 1 << (bit % 64);
        } else {
            *word &= !(1 << (bit % 64));
        }
    }
}

/// How many numbers below the highest are remembered.
const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[cfg(test)]
mod tests {
    use super::*;

    fn take(window: &mut CounterWindow, number: u64) -> Option<Arrival> {
        let arrival = window.check(number);
        if arrival.is_some() {
            window.take(number);
        }
        arrival
    }

    #[test]
    fn each_number_is_taken_once_in_any_order_within_the_window() {
        let mut window = CounterWindow::default();
        assert_eq!(take(&mut window, 0), None);
        assert_eq!(take(&mut window, 1), Some(Arrival::Latest));
        assert_eq!(take(&mut window, 1), None);
        assert_eq!(take(&mut window, 5), Some(Arrival::Latest));
        assert_eq!(take(&mut window, 3), Some(Arrival::Late));
        assert_eq!(take(&mut window, 3), None);
        assert_eq!(take(&mut window, 4), Some(Arrival::Late));
        assert_eq!(take(&mut window, 5), None);
        // Checking alone takes nothing.
        assert_eq!(window.check(2), Some(Arrival::Late));
        assert_eq!(window.check(2), Some(Arrival::Late));

        // Sliding by less than the window keeps what is still inside it, and forgets the rest.
        assert_eq!(take(&mut window, WINDOW + 3), Some(Arrival::Latest));
        assert_eq!(take(&mut window, 2), None, "older than the window");
        assert_eq!(take(&mut window, 4), None, "taken, and still inside");
        assert_eq!(take(&mut window, 6), Some(Arrival::Late), "inside, not taken");
        // Numbers whose bits the slide reused were not taken.
        assert_eq!(take(&mut window, WINDOW + 1), Some(Arrival::Late));
        assert_eq!(take(&mut window, WINDOW + 2), Some(Arrival::Late));
        // Sliding by more forgets everything below.
        assert_eq!(take(&mut window, 10 * WINDOW), Some(Arrival::Latest));
        assert_eq!(take(&mut window, 9 * WINDOW + 1), Some(Arrival::Late));
        assert_eq!(take(&mut window, WINDOW + 3), None);
        assert_eq!(take(&mut window, u64::MAX), Some(Arrival::Latest));
        assert_eq!(take(&mut window, u64::MAX), None);
    }
}
