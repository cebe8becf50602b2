//! `schedule:` of a project: when a cron pattern fires, in a time zone.
//! Pure: the server passes the clock's time (so tests pass theirs) and
//! records what fired.

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A parsed `cron:` with its `timezone:`.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: chrono_tz::Tz,
}

/// Most occurrences looked at between two ticks (a schedule of every
/// second that was not looked at for a day takes the latest).
const MAX_STEPS: usize = 100_000;

impl CronSchedule {
    /// Five fields (minute granularity), six with seconds first, or an
    /// alias (`@daily`); `timezone` an IANA name (`Europe/Paris`, `UTC`).
    pub fn parse(pattern: &str, timezone: &str) -> Result<CronSchedule, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| format!("`{pattern}` is not a cron pattern: {e}"))?;
        let tz: chrono_tz::Tz = timezone.parse().map_err(|_| {
            format!("`{timezone}` is not a time zone (write one such as `UTC` or `Europe/Paris`)")
        })?;
        Ok(CronSchedule { cron, tz })
    }

    fn at(&self, ms: i64) -> Option<DateTime<chrono_tz::Tz>> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|t| t.with_timezone(&self.tz))
    }

    /// The first time it fires after `after_ms`, in milliseconds.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let t = self.at(after_ms)?;
        self.cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|n| n.timestamp_millis())
    }

    /// The latest time it fired in `(since_ms, now_ms]`, if it did: one
    /// build for however many firings were missed.
    pub fn due(&self, since_ms: i64, now_ms: i64) -> Option<i64> {
        let mut last = None;
        let mut at = since_ms;
        for _ in 0..MAX_STEPS {
            match self.next_after(at) {
                Some(n) if n <= now_ms => {
                    last = Some(n);
                    at = n;
                }
                _ => return last,
            }
        }
        // Fires more often than it was looked at: the newest whole second.
        last.map(|_| now_ms - now_ms.rem_euclid(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn a_nightly_schedule_fires_once_a_day_at_its_local_time() {
        let s = CronSchedule::parse("0 3 * * *", "Europe/Paris").unwrap();
        // 03:00 in Paris in winter is 02:00 UTC.
        assert_eq!(
            s.next_after(ms("2026-11-30T12:00:00Z")),
            Some(ms("2026-12-01T02:00:00Z"))
        );
        // Looked at just before, nothing; just after, that night's run.
        assert_eq!(
            s.due(ms("2026-11-30T12:00:00Z"), ms("2026-12-01T01:59:59Z")),
            None
        );
        assert_eq!(
            s.due(ms("2026-11-30T12:00:00Z"), ms("2026-12-01T02:00:00Z")),
            Some(ms("2026-12-01T02:00:00Z"))
        );
        // Three nights missed (the server was down): the latest, once.
        assert_eq!(
            s.due(ms("2026-11-30T12:00:00Z"), ms("2026-12-03T09:00:00Z")),
            Some(ms("2026-12-03T02:00:00Z"))
        );
        // Once it fired, it is not due again until the next night.
        assert_eq!(
            s.due(ms("2026-12-03T02:00:00Z"), ms("2026-12-03T09:00:00Z")),
            None
        );
    }

    #[test]
    fn seconds_aliases_and_errors() {
        let every2 = CronSchedule::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(
            every2.next_after(ms("2026-11-30T12:00:01Z")),
            Some(ms("2026-11-30T12:00:02Z"))
        );
        let daily = CronSchedule::parse("@daily", "UTC").unwrap();
        assert_eq!(
            daily.next_after(ms("2026-11-30T12:00:00Z")),
            Some(ms("2026-12-01T00:00:00Z"))
        );
        assert!(CronSchedule::parse("61 * * * *", "UTC")
            .unwrap_err()
            .contains("not a cron pattern"));
        assert!(CronSchedule::parse("* * * * *", "Mars/Olympus")
            .unwrap_err()
            .contains("not a time zone"));
    }
}
