//! Servers that could not be connected to a moment ago, held back from being dialled again.
//!
//! A destination that refuses or drops connections is tried once, not once per message: the
//! rest of its mail is deferred at once with the same reason until the hold is over (as
//! Postfix marks a destination dead). Without it, a backlog of mail for one unreachable host
//! made a connection attempt per message on every retry round, and a host whose connections
//! time out held the destination's connection slots for `connect_timeout_secs` per message.
//! Only connection failures count: a server that answers, even badly, is not held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Past this many held servers, expired holds are dropped when another is added.
const PRUNE_ABOVE: usize = 1024;

pub struct Unreachable {
    /// How long a server is held after a failed connection; zero turns holds off.
    hold: Duration,
    /// By server address: when the hold ends, and why the connection failed.
    held: Mutex<HashMap<String, (Instant, String)>>,
    /// By destination domain: when its waiting mail was last deferred in bulk.
    deferred: Mutex<HashMap<String, Instant>>,
}

impl Unreachable {
    pub fn new(hold: Duration) -> Self {
        Unreachable {
            hold,
            held: Mutex::default(),
            deferred: Mutex::default(),
        }
    }

    /// How far ahead a destination whose servers are all held has its waiting mail deferred
    /// in bulk, and how often at most: half a hold.
    pub fn bulk_window(&self) -> Duration {
        self.hold / 2
    }

    /// Whether `domain`, every server of which is held, should have its waiting mail deferred
    /// in bulk at `now`: not with holds off, nor within `bulk_window` of the last time (what
    /// came due since is little). Saying yes counts as doing it.
    pub fn defer_in_bulk(&self, domain: &str, now: Instant) -> bool {
        if self.hold.is_zero() {
            return false;
        }
        let mut deferred = self.deferred.lock().expect("unreachable lock");
        if deferred.len() >= PRUNE_ABOVE {
            deferred.retain(|_, at| now < *at + self.bulk_window());
        }
        match deferred.get(domain) {
            Some(at) if now < *at + self.bulk_window() => false,
            _ => {
                deferred.insert(domain.to_owned(), now);
                true
            }
        }
    }

    /// Why `address` is held back at `now`, if it is: the failure that put it on hold.
    pub fn held(&self, address: &str, now: Instant) -> Option<String> {
        let held = self.held.lock().expect("unreachable lock");
        let (until, why) = held.get(address)?;
        (now < *until).then(|| {
            format!(
                "{why}; not tried again for {} s after that",
                self.hold.as_secs_f64()
            )
        })
    }

    /// A connection to `address` failed at `now` (`why`): hold it back.
    pub fn failed(&self, address: &str, why: &str, now: Instant) {
        if self.hold.is_zero() {
            return;
        }
        let mut held = self.held.lock().expect("unreachable lock");
        if held.len() >= PRUNE_ABOVE {
            held.retain(|_, (until, _)| now < *until);
        }
        held.insert(address.to_owned(), (now + self.hold, why.to_owned()));
    }

    /// A connection to `address` was made: it is reachable again.
    pub fn reached(&self, address: &str) {
        let mut held = self.held.lock().expect("unreachable lock");
        held.remove(address);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().expect("unreachable lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHY: &str = "connecting to mx.example (192.0.2.1:25): Connection refused";

    #[test]
    fn a_failed_server_is_held_until_the_hold_ends_or_it_is_reached() {
        let u = Unreachable::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(u.held("192.0.2.1:25", t0), None);
        u.failed("192.0.2.1:25", WHY, t0);
        let why = u
            .held("192.0.2.1:25", t0 + Duration::from_secs(59))
            .unwrap();
        assert!(why.starts_with(WHY), "{why}");
        assert!(
            why.ends_with("not tried again for 60 s after that"),
            "{why}"
        );
        assert_eq!(u.held("192.0.2.2:25", t0), None, "only that server");
        assert_eq!(u.held("192.0.2.1:25", t0 + Duration::from_secs(60)), None);
        u.failed("192.0.2.1:25", WHY, t0);
        u.reached("192.0.2.1:25");
        assert_eq!(u.held("192.0.2.1:25", t0), None, "reached again");
    }

    #[test]
    fn a_destination_is_deferred_in_bulk_at_most_every_half_hold() {
        let u = Unreachable::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(u.bulk_window(), Duration::from_secs(30));
        assert!(u.defer_in_bulk("example.net", t0));
        assert!(!u.defer_in_bulk("example.net", t0 + Duration::from_secs(29)));
        assert!(u.defer_in_bulk("example.com", t0), "each domain its own");
        assert!(u.defer_in_bulk("example.net", t0 + Duration::from_secs(30)));
        let off = Unreachable::new(Duration::ZERO);
        assert!(!off.defer_in_bulk("example.net", t0), "holds off: never");
    }

    #[test]
    fn a_zero_hold_holds_nothing() {
        let u = Unreachable::new(Duration::ZERO);
        let t0 = Instant::now();
        u.failed("192.0.2.1:25", WHY, t0);
        assert_eq!(u.held("192.0.2.1:25", t0), None);
        assert_eq!(u.len(), 0);
    }

    #[test]
    fn expired_holds_are_dropped_as_others_come() {
        let u = Unreachable::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..PRUNE_ABOVE {
            u.failed(&format!("192.0.2.{i}:25"), WHY, t0);
        }
        let later = t0 + Duration::from_secs(2);
        u.failed("198.51.100.1:25", WHY, later);
        assert_eq!(u.len(), 1, "only the live hold is kept");
        assert!(u.held("198.51.100.1:25", later).is_some());
    }
}
