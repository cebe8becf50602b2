//! Rate limits per client address: sign-ins and enrollments. Guessing a
//! 256-bit token is hopeless anyway; these keep a password from being
//! guessed and one client from flooding the server with registrations.

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            login_failures: RateLimit::per_minute(10),
            enrollments: RateLimit::per_minute(20),
        }
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
}
