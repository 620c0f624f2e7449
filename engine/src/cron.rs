//! Cron schedules: 5 fields (minute precision) or 6 (with seconds), `@hourly`-style
//! nicknames, and an optional `TZ=Area/City ` (or `CRON_TZ=`) prefix; UTC otherwise.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron schedule `{schedule}`: {message}")]
pub struct CronError {
    pub schedule: String,
    pub message: String,
}

pub struct Schedule {
    cron: croner::Cron,
    tz: Tz,
}

impl Schedule {
    pub fn parse(schedule: &str) -> Result<Self, CronError> {
        let error = |message: String| CronError {
            schedule: schedule.to_owned(),
            message,
        };
        let trimmed = schedule.trim();
        let (tz, pattern) = match trimmed
            .strip_prefix("TZ=")
            .or_else(|| trimmed.strip_prefix("CRON_TZ="))
        {
            Some(rest) => {
                let (zone, pattern) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| error("a time zone prefix needs a schedule after it".into()))?;
                let tz =
                    Tz::from_str(zone).map_err(|_| error(format!("unknown time zone `{zone}`")))?;
                (tz, pattern.trim())
            }
            None => (Tz::UTC, trimmed),
        };
        let cron = croner::Cron::from_str(pattern).map_err(|e| error(e.to_string()))?;
        Ok(Self { cron, tz })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_fire_times_in_utc_and_in_a_time_zone() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every5.next_after(at("2026-11-25T10:02:30Z")),
            Some(at("2026-11-25T10:05:00Z"))
        );
        assert_eq!(
            every5.next_after(at("2026-11-25T10:05:00Z")),
            Some(at("2026-11-25T10:10:00Z"))
        );
        // 09:00 in Paris is 08:00 UTC in winter.
        let paris = Schedule::parse("TZ=Europe/Paris 0 9 * * *").unwrap();
        assert_eq!(
            paris.next_after(at("2026-11-25T07:00:00Z")),
            Some(at("2026-11-25T08:00:00Z"))
        );
        let seconds = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            seconds.next_after(at("2026-11-25T10:00:01Z")),
            Some(at("2026-11-25T10:00:10Z"))
        );
        assert!(Schedule::parse("TZ=Mars/Olympus 0 9 * * *").is_err());
        assert!(Schedule::parse("not a cron").is_err());
        assert!(Schedule::parse("@hourly").is_ok());
    }
}
