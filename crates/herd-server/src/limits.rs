//! Limits per client address: sign-ins and enrollments per minute,
//! downloads at once, try builds per token and hour. Guessing a 256-bit
//! token is hopeless anyway; these keep a password from being guessed and
//! one client from flooding the server with registrations, downloads or
//! builds.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; beyond, the quiet ones are forgotten.
const MAX_ADDRESSES: usize = 10_000;

/// At most `per_minute` counted events per address in any minute.
pub struct RateLimit {
    per_minute: usize,
    seen: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimit {
    pub fn per_minute(per_minute: usize) -> Self {
        RateLimit {
            per_minute,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// When `ip` may try again, if it has used up its minute.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let times = seen.get_mut(&ip)?;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.len() < self.per_minute {
            return None;
        }
        let oldest = *times.front()?;
        Some(WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    /// Counts one event of `ip`.
    pub fn note(&self, ip: IpAddr, now: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_ADDRESSES && !seen.contains_key(&ip) {
            seen.retain(|_, t| t.back().is_some_and(|b| now.duration_since(*b) < WINDOW));
            if seen.len() >= MAX_ADDRESSES {
                // Flooded from very many addresses: start over rather than grow.
                seen.clear();
            }
        }
        let times = seen.entry(ip).or_default();
        times.push_back(now);
        while times.len() > self.per_minute {
            times.pop_front();
        }
    }
}

/// The rate limits of one server.
pub struct Limits {
    /// Failed sign-ins (password or token) per address.
    pub login_failures: RateLimit,
    /// Enrollment attempts (and install scripts fetched) per address.
    pub enrollments: RateLimit,
    /// Executables being downloaded, per address.
    pub downloads: InFlight,
    /// Try builds per try token (its id) in the last hour.
    pub try_builds: Hourly,
    /// Workers' fetches of sources being served (`source`), over all.
    pub source_fetches: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            login_failures: RateLimit::per_minute(10),
            enrollments: RateLimit::per_minute(20),
            downloads: InFlight::new(2),
            try_builds: Hourly::default(),
            source_fetches: std::sync::Arc::new(tokio::sync::Semaphore::new(
                crate::source::MAX_FETCHES,
            )),
        }
    }
}

/// At most `max` things at once per address; a [`Slot`] holds one.
pub struct InFlight {
    max: usize,
    now: std::sync::Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One of an address's things in flight, until it drops.
pub struct Slot {
    ip: IpAddr,
    now: std::sync::Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        InFlight {
            max,
            now: Default::default(),
        }
    }

    /// A slot for `ip`, unless it has `max` already.
    pub fn start(&self, ip: IpAddr) -> Option<Slot> {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        let n = now.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            ip,
            now: std::sync::Arc::clone(&self.now),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = now.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                now.remove(&self.ip);
            }
        }
    }
}

/// Counts per key (a token's id) within the last hour.
#[derive(Default)]
pub struct Hourly {
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Hourly {
    /// Counts one for `key` unless it had `max` in the last hour; then
    /// Err(how long until the next may come).
    pub fn take(&self, key: &str, max: usize, now: Instant) -> Result<(), Duration> {
        const HOUR: Duration = Duration::from_secs(3600);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_ADDRESSES && !seen.contains_key(key) {
            seen.retain(|_, t| t.back().is_some_and(|b| now.duration_since(*b) < HOUR));
        }
        let times = seen.entry(key.to_string()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            times.pop_front();
        }
        if times.len() >= max {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(HOUR.saturating_sub(now.duration_since(oldest)));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_back_for_the_rest_of_its_minute_only() {
        let limit = RateLimit::per_minute(3);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(limit.blocked(a, t0), None, "attempt {i}");
            limit.note(a, t0 + Duration::from_secs(i));
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(limit.blocked(a, now), Some(Duration::from_secs(50)));
        assert_eq!(limit.blocked(b, now), None, "another address is not held");
        assert_eq!(limit.blocked(a, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn an_address_holds_at_most_its_slots_until_they_drop() {
        let d = InFlight::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let s1 = d.start(a).unwrap();
        let _s2 = d.start(a).unwrap();
        assert!(d.start(a).is_none());
        assert!(d.start([127, 0, 0, 2].into()).is_some());
        drop(s1);
        assert!(d.start(a).is_some());
    }

    #[test]
    fn a_key_gets_its_hourly_count_and_no_more() {
        let h = Hourly::default();
        let t0 = Instant::now();
        assert!(h.take("t", 2, t0).is_ok());
        assert!(h.take("t", 2, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(
            h.take("t", 2, t0 + Duration::from_secs(60)),
            Err(Duration::from_secs(3540))
        );
        assert!(h.take("u", 2, t0).is_ok());
        assert!(h.take("t", 2, t0 + Duration::from_secs(3600)).is_ok());
    }
}
