//! Durations as the SDK protocol writes them: Go-style (`1h30m`, `500ms`, `10s`) plus
//! `d` (days) and `w` (weeks).

use chrono::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a duration (examples: 10s, 5m, 1h30m, 2d, 500ms)")]
pub struct DurationError(pub String);

pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_owned());
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::zero();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per_unit: f64 = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            "w" => 604_800_000.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let millis = number * millis_per_unit;
        if !millis.is_finite() || millis > 1e15 {
            return Err(err());
        }
        total += Duration::milliseconds(millis.round() as i64);
    }
    Ok(total)
}

/// The shortest exact form, e.g. `90m`, `1500ms`.
pub fn format(duration: Duration) -> String {
    let ms = duration.num_milliseconds();
    for (unit, size) in [
        ("w", 604_800_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_sdks_send() {
        assert_eq!(parse("10s").unwrap(), Duration::seconds(10));
        assert_eq!(parse("1h30m").unwrap(), Duration::minutes(90));
        assert_eq!(parse("500ms").unwrap(), Duration::milliseconds(500));
        assert_eq!(parse("2d").unwrap(), Duration::days(2));
        assert_eq!(parse("1w").unwrap(), Duration::days(7));
        assert_eq!(parse("1.5s").unwrap(), Duration::milliseconds(1500));
        for bad in ["", "10", "s", "10x", "-5s", "1h-5m"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::minutes(90)), "90m");
        assert_eq!(format(Duration::hours(24)), "1d");
        assert_eq!(format(Duration::milliseconds(1500)), "1500ms");
        assert_eq!(
            parse(&format(Duration::seconds(3601))).unwrap(),
            Duration::seconds(3601)
        );
    }
}
