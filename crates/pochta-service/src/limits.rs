//! Limits on clients: concurrent connections (overall and per address), places per key
//! (IMAP sessions per account) and events (failed logins, ETRN) per address in a sliding
//! window. Shared by the SMTP, POP3 and IMAP servers.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What per-address limits count a client as: an IPv4 address, or the IPv6 network of the
/// first `v6_prefix` bits (one subscriber typically has a whole /64, so counting single IPv6
/// addresses would give it 2^64 allowances). IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_network(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(v6_prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

/// Counts open connections; `try_acquire` hands out a guard that gives the slot back on drop.
#[derive(Debug, Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Mutex<Connections>>,
    max_total: usize,
    max_per_ip: usize,
    v6_prefix: u8,
}

#[derive(Debug, Default)]
struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromAddress,
}

#[derive(Debug)]
pub struct ConnectionGuard {
    inner: Arc<Mutex<Connections>>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    /// At most `max_total` connections, and `max_per_ip` per client network (`client_network`).
    pub fn new(max_total: usize, max_per_ip: usize, v6_prefix: u8) -> Self {
        ConnectionLimiter {
            inner: Arc::default(),
            max_total,
            max_per_ip,
            v6_prefix,
        }
    }

    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionGuard, Refusal> {
        let ip = client_network(ip, self.v6_prefix);
        let mut c = self.inner.lock().expect("limiter lock");
        if c.total >= self.max_total {
            return Err(Refusal::TooManyConnections);
        }
        let from_ip = c.per_ip.entry(ip).or_default();
        if *from_ip >= self.max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *from_ip += 1;
        c.total += 1;
        Ok(ConnectionGuard {
            inner: self.inner.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.inner.lock().expect("limiter lock").total
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut c = self.inner.lock().expect("limiter lock");
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Counts what is open per key (sessions per account) against a limit; `try_acquire` hands
/// out a guard that gives the place back on drop.
#[derive(Debug, Clone)]
pub struct PerKeyLimiter<K> {
    inner: Arc<Mutex<HashMap<K, usize>>>,
    max: usize,
}

#[derive(Debug)]
pub struct PerKeyGuard<K: Eq + Hash> {
    inner: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> PerKeyLimiter<K> {
    /// At most `max` at once per key.
    pub fn new(max: usize) -> Self {
        PerKeyLimiter {
            inner: Arc::default(),
            max,
        }
    }

    /// A place for one more under `key`, unless it has `max` already.
    pub fn try_acquire(&self, key: K) -> Option<PerKeyGuard<K>> {
        let mut open = self.inner.lock().expect("limiter lock");
        let count = open.entry(key.clone()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PerKeyGuard {
            inner: self.inner.clone(),
            key,
        })
    }
}

impl<K: Eq + Hash> Drop for PerKeyGuard<K> {
    fn drop(&mut self) {
        let mut open = self.inner.lock().expect("limiter lock");
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Events (failed logins, ETRN requests) per client network (`client_network`) within a
/// sliding window: once `max` of them fall in the window, the client is blocked until some
/// age out.
#[derive(Debug, Clone)]
pub struct WindowLimiter {
    inner: Arc<Mutex<HashMap<IpAddr, Vec<Instant>>>>,
    max_failures: usize,
    window: Duration,
    v6_prefix: u8,
}

impl WindowLimiter {
    pub fn new(max_failures: usize, window: Duration, v6_prefix: u8) -> Self {
        WindowLimiter {
            inner: Arc::default(),
            max_failures,
            window,
            v6_prefix,
        }
    }

    /// True when `ip` has used up its failures in the window.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = client_network(ip, self.v6_prefix);
        let mut map = self.inner.lock().expect("limiter lock");
        let Some(times) = map.get_mut(&ip) else {
            return false;
        };
        times.retain(|t| now.duration_since(*t) < self.window);
        if times.is_empty() {
            map.remove(&ip);
            return false;
        }
        times.len() >= self.max_failures
    }

    /// Records an event; returns true when `ip` is now blocked.
    pub fn record(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = client_network(ip, self.v6_prefix);
        let mut map = self.inner.lock().expect("limiter lock");
        // Bound memory under a flood of addresses: forget everything that has aged out.
        if map.len() > 100_000 {
            map.retain(|_, times| {
                times
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        let times = map.entry(ip).or_default();
        times.retain(|t| now.duration_since(*t) < self.window);
        times.push(now);
        times.len() >= self.max_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_places_are_counted_and_given_back() {
        let limiter = PerKeyLimiter::new(2);
        let a1 = limiter.try_acquire(1).unwrap();
        let _a2 = limiter.try_acquire(1).unwrap();
        assert!(limiter.try_acquire(1).is_none(), "a third for key 1");
        let _b = limiter.try_acquire(2).expect("another key has its own");
        drop(a1);
        assert!(limiter.try_acquire(1).is_some(), "given back on drop");
    }

    #[test]
    fn connection_limits() {
        let limiter = ConnectionLimiter::new(3, 2, 64);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limiter.try_acquire(a).unwrap();
        let _a2 = limiter.try_acquire(a).unwrap();
        assert_eq!(
            limiter.try_acquire(a).unwrap_err(),
            Refusal::TooManyFromAddress
        );
        let _b1 = limiter.try_acquire(b).unwrap();
        assert_eq!(
            limiter.try_acquire(b).unwrap_err(),
            Refusal::TooManyConnections
        );
        drop(a1);
        assert_eq!(limiter.open(), 2);
        assert!(limiter.try_acquire(b).is_ok());
    }

    #[test]
    fn failures_block_within_the_window_only() {
        let limiter = WindowLimiter::new(3, Duration::from_secs(60), 64);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(!limiter.record(ip, t0));
        assert!(!limiter.record(ip, t0 + Duration::from_secs(1)));
        assert!(!limiter.is_blocked(ip, t0 + Duration::from_secs(2)));
        assert!(limiter.record(ip, t0 + Duration::from_secs(2)));
        assert!(limiter.is_blocked(ip, t0 + Duration::from_secs(3)));
        assert!(!limiter.is_blocked("192.0.2.9".parse().unwrap(), t0));
        assert!(
            !limiter.is_blocked(ip, t0 + Duration::from_secs(62)),
            "aged out"
        );
    }

    #[test]
    fn ipv6_clients_count_per_network() {
        let limiter = ConnectionLimiter::new(100, 2, 64);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = limiter.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = limiter.try_acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("2001:db8:1:2:abcd::1")).unwrap_err(),
            Refusal::TooManyFromAddress,
            "the same /64"
        );
        assert!(
            limiter.try_acquire(ip("2001:db8:1:3::1")).is_ok(),
            "another /64"
        );
        assert_eq!(
            client_network(ip("::ffff:192.0.2.7"), 64),
            ip("192.0.2.7"),
            "IPv4-mapped counts as IPv4"
        );
        assert_eq!(client_network(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_network(ip("2001:db8::1"), 32), ip("2001:db8::"));

        let failures = WindowLimiter::new(2, Duration::from_secs(60), 64);
        let t0 = Instant::now();
        failures.record(ip("2001:db8:5::1"), t0);
        assert!(failures.record(ip("2001:db8:5::2"), t0));
        assert!(
            failures.is_blocked(ip("2001:db8:5::3"), t0),
            "blocked as a network"
        );
    }
}
