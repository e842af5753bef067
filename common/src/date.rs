//! Proleptic Gregorian calendar dates, in UTC, both ways: Unix seconds or days to a civil
//! date (boot-menu labels) and a civil date to days since 1970-01-01 (`/etc/shadow` expiry).
//!
//! The algorithms are Howard Hinnant's `civil_from_days` and `days_from_civil`: shift the
//! epoch to 0000-03-01 so that leap days fall at the end of each 400-year era and every month
//! length follows from a linear formula. The arithmetic is done in `i128`, where no `i64`
//! input can overflow, so no input panics: every `i64` day count has a date, and a date whose
//! day count does not fit an `i64` is `None`.
//!
//! We have no time-zone database at boot and do not want one, so every date is UTC.

/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: i128 = 719_468;
/// Days in a 400-year era.
const ERA_DAYS: i128 = 146_097;
const SECONDS_PER_DAY: i64 = 86_400;

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
}

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub fn days_in_month(year: i64, month: u32) -> Option<u32> {
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => return None,
    })
}

/// The date `days` days after 1970-01-01 (negative: before). Total: the year of `i64::MAX`
/// days is about 2.5e16, well inside `i64`.
pub fn date_from_days(days: i64) -> Date {
    let z = i128::from(days) + EPOCH_SHIFT;
    let era = z.div_euclid(ERA_DAYS);
    let doe = z.rem_euclid(ERA_DAYS); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i128::from(month <= 2);
    // |year| ≤ |days| / 365 + 2 for every i64 `days`, so it fits; the fallbacks are unreachable.
    Date {
        year: i64::try_from(year).unwrap_or(if year < 0 { i64::MIN } else { i64::MAX }),
        month: u32::try_from(month).unwrap_or(1),
        day: u32::try_from(day).unwrap_or(1),
    }
}

/// Days since 1970-01-01 of `year-month-day`; `None` when that is no date (month 13,
/// February 30th) or when its day count does not fit an `i64`.
pub fn days_from_date(year: i64, month: u32, day: u32) -> Option<i64> {
    if day < 1 || day > days_in_month(year, month)? {
        return None;
    }
    let (m, d) = (i128::from(month), i128::from(day));
    let y = i128::from(year) - i128::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    i64::try_from(era * ERA_DAYS + doe - EPOCH_SHIFT).ok()
}

/// Seconds since the epoch as a UTC calendar time. Total, like [`date_from_days`].
pub fn civil(epoch: i64) -> Civil {
    let date = date_from_days(epoch.div_euclid(SECONDS_PER_DAY));
    let secs = epoch.rem_euclid(SECONDS_PER_DAY); // [0, 86399]
    Civil {
        year: date.year,
        month: date.month,
        day: date.day,
        hour: u32::try_from(secs / 3600).unwrap_or(0),
        minute: u32::try_from(secs % 3600 / 60).unwrap_or(0),
        second: u32::try_from(secs % 60).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(year: i64, month: u32, day: u32) -> Date {
        Date { year, month, day }
    }

    #[test]
    fn known_days_both_ways() {
        for (days, d) in [
            (0, date(1970, 1, 1)),
            (-1, date(1969, 12, 31)),
            (11_016, date(2000, 2, 29)),
            (11_017, date(2000, 3, 1)),
            (19_782, date(2024, 2, 29)),
            (47_540, date(2100, 2, 28)),
            (47_541, date(2100, 3, 1)),
            (2_932_896, date(9999, 12, 31)),
            (-719_528, date(0, 1, 1)),
            (-719_469, date(0, 2, 29)),
        ] {
            assert_eq!(date_from_days(days), d, "{days}");
            assert_eq!(days_from_date(d.year, d.month, d.day), Some(days), "{d:?}");
        }
    }

    #[test]
    fn leap_days_only_in_leap_years() {
        assert!(days_from_date(2024, 2, 29).is_some());
        assert!(days_from_date(2000, 2, 29).is_some());
        assert_eq!(days_from_date(2023, 2, 29), None);
        assert_eq!(days_from_date(1900, 2, 29), None);
        assert_eq!(days_from_date(2100, 2, 29), None);
        assert_eq!(days_from_date(2023, 13, 1), None);
        assert_eq!(days_from_date(2023, 0, 1), None);
        assert_eq!(days_from_date(2023, 4, 31), None);
        assert_eq!(days_from_date(2023, 4, 0), None);
    }

    #[test]
    fn extremes_do_not_panic_and_round_trip() {
        for days in [i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1] {
            let d = date_from_days(days);
            assert_eq!(days_from_date(d.year, d.month, d.day), Some(days), "{d:?}");
        }
        // Years whose day count overflows an i64: no date, no panic.
        assert_eq!(days_from_date(i64::MAX, 12, 31), None);
        assert_eq!(days_from_date(i64::MIN, 1, 1), None);
        assert_eq!(days_from_date(i64::MAX, 2, 29), None); // odd year: not a leap year
        for epoch in [i64::MAX, i64::MIN] {
            let c = civil(epoch);
            assert!(
                (1..=12).contains(&c.month) && (1..=31).contains(&c.day),
                "{c:?}"
            );
        }
        let c = civil(i64::MAX);
        // 2^63 - 1 seconds is 292 277 026 596-12-04 15:30:07 UTC.
        assert_eq!(
            c,
            Civil {
                year: 292_277_026_596,
                month: 12,
                day: 4,
                hour: 15,
                minute: 30,
                second: 7
            }
        );
    }

    #[test]
    fn every_day_of_many_years_round_trips() {
        let start = days_from_date(1599, 1, 1).expect("date");
        let end = days_from_date(2401, 1, 1).expect("date");
        let mut previous = date_from_days(start - 1);
        for days in start..end {
            let d = date_from_days(days);
            assert_eq!(days_from_date(d.year, d.month, d.day), Some(days));
            let next_day = d.day == previous.day + 1 && d.month == previous.month;
            let next_month = d.day == 1 && d.month == previous.month % 12 + 1;
            assert!(next_day || next_month, "{previous:?} -> {d:?}");
            previous = d;
        }
    }

    #[test]
    fn civil_splits_the_time_of_day() {
        assert_eq!(
            civil(4_102_444_800 + 3_661),
            Civil {
                year: 2100,
                month: 1,
                day: 1,
                hour: 1,
                minute: 1,
                second: 1
            }
        );
        assert_eq!(civil(-1).second, 59);
        assert_eq!(civil(-1).year, 1969);
    }
}
