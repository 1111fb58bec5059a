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

impl Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` in the years 0000 to 9999. Every response and stored event
    /// writes times: these skip chrono's general formatter and its allocation.
    fn rfc3339(self) -> Option<[u8; 24]> {
        utc_text(self.0, 1000)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.rfc3339() {
            return f.write_str(ascii(&text));
        }
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => write!(f, "{}ms", self.0),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `micros` microseconds after the Unix epoch (UTC), the
/// form of log lines' times, if it falls in the years 0000 to 9999.
pub fn utc_micros(micros: i64) -> Option<[u8; 27]> {
    utc_text(micros, 1_000_000)
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ` for `units` after the Unix epoch (UTC), `per_second` of them
/// to a second, the fraction in the `N - 21` digits that one second's units take.
fn utc_text<const N: usize>(units: i64, per_second: i64) -> Option<[u8; N]> {
    let second = utc_second(units.div_euclid(per_second))?;
    let mut text = [0; N];
    text[..19].copy_from_slice(&second);
    text[19] = b'.';
    write_digits(&mut text[20..N - 1], units.rem_euclid(per_second));
    text[N - 1] = b'Z';
    Some(text)
}

/// `YYYY-MM-DDTHH:MM:SS` for the second `secs` after the Unix epoch (UTC), if it falls in
/// the years 0000 to 9999.
fn utc_second(secs: i64) -> Option<[u8; 19]> {
    if !(FIRST_MILLIS / 1000..=LAST_MILLIS / 1000).contains(&secs) {
        return None;
    }
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_date(days);
    let mut text = *b"0000-00-00T00:00:00";
    write_digits(&mut text[0..4], year);
    write_digits(&mut text[5..7], month);
    write_digits(&mut text[8..10], day);
    write_digits(&mut text[11..13], in_day / 3600);
    write_digits(&mut text[14..16], in_day / 60 % 60);
    write_digits(&mut text[17..19], in_day % 60);
    Some(text)
}

/// Year, month and day of the proleptic Gregorian calendar, `days` after 1970-01-01.
/// Counts in 400-year eras from 0000-03-01, so that the leap day ends each year.
fn civil_date(days: i64) -> (i64, i64, i64) {
    let from_era_zero = days + 719_468;
    let era = from_era_zero.div_euclid(146_097);
    let day_of_era = from_era_zero.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 153 days in every five.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

/// `value` (not negative) in decimal, zero-padded to fill `out`.
fn write_digits(out: &mut [u8], mut value: i64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Text made only of ASCII digits and punctuation.
fn ascii(text: &[u8]) -> &str {
    std::str::from_utf8(text).unwrap_or_default()
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339() {
            Some(text) => serializer.serialize_str(ascii(&text)),
            None => serializer.collect_str(self),
        }
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
    fn formats_as_chrono_does_across_the_years() {
        let chrono = |millis: i64| {
            DateTime::<Utc>::from_timestamp_millis(millis)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        };
        // Both ends, the epoch, leap days and century years, then a walk in uneven steps.
        let mut samples = vec![
            FIRST_MILLIS,
            LAST_MILLIS,
            0,
            -1,
            951_782_400_000,
            -2_203_891_200_001,
        ];
        let mut millis = FIRST_MILLIS;
        while millis <= LAST_MILLIS {
            samples.push(millis);
            millis += 86_399_999_937;
        }
        for millis in samples {
            assert_eq!(Timestamp(millis).to_string(), chrono(millis), "{millis}");
        }
        for millis in [0, FIRST_MILLIS, LAST_MILLIS, LAST_MILLIS + 1, i64::MIN] {
            let serialized = serde_json::to_string(&Timestamp(millis)).unwrap();
            assert_eq!(serialized, format!("\"{}\"", Timestamp(millis)), "{millis}");
        }
        for micros in [
            0,
            -1,
            1_795_000_000_123_456,
            FIRST_MILLIS * 1000,
            LAST_MILLIS * 1000 + 999,
        ] {
            let expected = DateTime::<Utc>::from_timestamp_micros(micros)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            assert_eq!(
                utc_micros(micros).map(|t| ascii(&t).to_owned()),
                Some(expected)
            );
        }
        assert_eq!(utc_micros(LAST_MILLIS * 1000 + 1000), None);
        assert_eq!(
            Timestamp(LAST_MILLIS + 1).to_string(),
            "+10000-01-01T00:00:00.000Z"
        );
        assert_eq!(Timestamp(i64::MAX).to_string(), format!("{}ms", i64::MAX));
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
