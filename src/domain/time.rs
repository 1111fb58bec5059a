use std::fmt;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, Timelike, Utc};
use serde::{Serialize, Serializer};

use super::ValidationError;

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z, in milliseconds since the epoch.
const FIRST_MILLIS: i64 = -62_167_219_200_000;
const LAST_MILLIS: i64 = 253_402_300_799_999;

/// An instant with millisecond precision, the resolution MongoDB stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, utoipa::ToSchema)]
#[schema(value_type = String, format = DateTime, example = "2026-11-26T08:31:38.123Z")]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Self(Utc::now().timestamp_millis())
    }

    /// Wraps milliseconds since the Unix epoch, as stored.
    pub fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// `d` later, saturating at the ends of the range.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(whole_millis(d)))
    }

    /// `d` earlier, saturating at the ends of the range.
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(whole_millis(d)))
    }

    /// Parses RFC 3339; anything finer than a millisecond is truncated. The instant must fall
    /// in the years 0000 to 9999 in UTC, the years RFC 3339 can write: an offset can carry
    /// a time written in year 9999 into year 10000, which could not be given back.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ValidationError> {
        parse_rfc3339(raw)
            .map(|t| Self(t.timestamp_millis()))
            .ok_or_else(|| invalid_time(field))
    }

    /// Parses the bounds of a time range, `lower <= t < upper`, each given as its field's
    /// name and text. The upper must be later than the lower, as sent. A bound finer than a
    /// millisecond is then rounded up: stored times are whole milliseconds, and for those,
    /// `t >= 03.0005` and `t < 03.0005` hold exactly where they hold for `03.001` (so an
    /// upper bound in the last millisecond of 9999 can fall one millisecond past it).
    pub fn parse_range(
        lower: Option<(&str, &str)>,
        upper: Option<(&str, &str)>,
    ) -> Result<(Option<Self>, Option<Self>), ValidationError> {
        let parse = |bound: Option<(&str, &str)>| {
            bound
                .map(|(field, raw)| parse_rfc3339(raw).ok_or_else(|| invalid_time(field)))
                .transpose()
        };
        let (from, to) = (parse(lower)?, parse(upper)?);
        if let (Some((lower_field, _)), Some((upper_field, _)), Some(from), Some(to)) =
            (lower, upper, from, to)
        {
            if instant(from) >= instant(to) {
                return Err(ValidationError::new(
                    upper_field,
                    format!("must be later than {lower_field}"),
                ));
            }
        }
        let round_up = |t: DateTime<FixedOffset>| {
            let finer = !t.nanosecond().is_multiple_of(1_000_000);
            Self(t.timestamp_millis() + i64::from(finer))
        };
        Ok((from.map(round_up), to.map(round_up)))
    }
}

/// Nanoseconds since the epoch, a leap second read as the next day's first second (chrono
/// keeps it as 23:59:59 with more than a second of nanoseconds, which compares before
/// midnight).
fn instant(t: DateTime<FixedOffset>) -> i128 {
    i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.nanosecond())
}

/// An RFC 3339 time in the years 0000 to 9999 UTC. A leap second is taken only where one
/// can fall, at 23:59:60 UTC.
fn parse_rfc3339(raw: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .filter(|t| (FIRST_MILLIS..=LAST_MILLIS).contains(&t.timestamp_millis()))
        .filter(|t| {
            let utc = t.naive_utc();
            t.nanosecond() < 1_000_000_000 || (utc.hour(), utc.minute()) == (23, 59)
        })
}

fn invalid_time(field: &str) -> ValidationError {
    ValidationError::new(
        field,
        "must be an RFC 3339 time in the years 0000 to 9999 UTC, for example \
         2026-11-26T08:31:38.123Z",
    )
}

fn whole_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(f, "{}ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_by_whole_milliseconds_and_saturates() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!(t.plus(Duration::from_micros(2_500)).millis(), 1_002);
        assert_eq!(t.minus(Duration::from_secs(3)).millis(), -2_000);
        assert_eq!(t.plus(Duration::MAX).millis(), i64::MAX);
        assert_eq!(t.minus(Duration::MAX).millis(), 1_000 - i64::MAX);
        assert_eq!(
            Timestamp::from_millis(i64::MIN)
                .minus(Duration::MAX)
                .millis(),
            i64::MIN
        );
    }

    #[test]
    fn formats_utc_with_milliseconds_and_truncates_finer_input() {
        let t = Timestamp::parse("t", "2026-11-26T09:31:38.123999+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-26T08:31:38.123Z");
    }

    #[test]
    fn range_bounds_are_ordered_as_sent_then_rounded_up() {
        let range = |from: &str, to: &str| {
            Timestamp::parse_range(Some(("from", from)), Some(("to", to)))
                .map(|(f, t)| (f.unwrap().millis(), t.unwrap().millis()))
        };
        let whole = Timestamp::parse("t", "2026-01-01T00:00:03Z")
            .unwrap()
            .millis();
        assert_eq!(
            range("2026-01-01T00:00:03Z", "2026-01-01T00:00:03.000001Z").unwrap(),
            (whole, whole + 1)
        );
        assert_eq!(
            range("2026-01-01T00:00:03.0005Z", "2026-01-01T00:00:03.001Z").unwrap(),
            (whole + 1, whole + 1)
        );
        assert_eq!(
            range("2026-01-01T00:00:02.999000001Z", "2026-01-01T00:00:04Z").unwrap(),
            (whole, whole + 1000)
        );
        assert_eq!(
            range("1969-12-31T23:59:59.9995Z", "1970-01-01T00:00:00Z").unwrap(),
            (0, 0)
        );
        for (from, to) in [
            ("2026-01-01T00:00:03.0005Z", "2026-01-01T00:00:03.0005Z"),
            ("2026-01-01T00:00:03.0006Z", "2026-01-01T00:00:03.0005Z"),
            ("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z"),
            // A leap second is the next day's first second: these are reversed, and equal.
            ("2016-12-31T23:59:60.5Z", "2017-01-01T00:00:00.2Z"),
            ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"),
        ] {
            assert_eq!(range(from, to).unwrap_err().field, "to", "{from} {to}");
        }
        let lower_only = Timestamp::parse_range(Some(("from", "2026-01-01T00:00:03.1Z")), None);
        assert_eq!(lower_only.unwrap().0.unwrap().millis(), whole + 100);
        let bad = Timestamp::parse_range(None, Some(("to", "later")));
        assert_eq!(bad.unwrap_err().field, "to");
    }

    #[test]
    fn a_leap_second_is_taken_only_at_the_end_of_a_utc_day() {
        for (leap, after) in [
            ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00.000Z"),
            ("2017-01-01T01:59:60.5+02:00", "2017-01-01T00:00:00.500Z"),
        ] {
            assert_eq!(Timestamp::parse("t", leap).unwrap().to_string(), after);
        }
        for bad in ["2026-06-30T12:00:60Z", "2016-12-31T23:59:60+01:00"] {
            assert!(Timestamp::parse("t", bad).is_err(), "{bad}");
            assert!(
                Timestamp::parse_range(Some(("t", bad)), None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn takes_the_first_and_last_instants_rfc_3339_can_write() {
        for edge in ["0000-01-01T00:00:00.000Z", "9999-12-31T23:59:59.999Z"] {
            assert_eq!(Timestamp::parse("t", edge).unwrap().to_string(), edge);
        }
    }

    #[test]
    fn rejects_non_rfc3339_input() {
        for bad in [
            "",
            "yesterday",
            "2026-11-26",
            "2026-11-26 08:31:38",
            "1700000000",
            "9999-12-31T23:59:59.999-00:01",
            "0000-01-01T00:00:00+00:01",
        ] {
            assert!(Timestamp::parse("timestamp", bad).is_err(), "{bad:?}");
        }
    }
}
