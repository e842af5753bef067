//! Calendar dates from Unix seconds, in UTC.
//!
//! NixOS's builders print local time. We have no time-zone database at boot and do not want
//! one, so every date we print is UTC; the difference only shows in a menu label.

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

/// Convert seconds since the epoch to a UTC calendar time (proleptic Gregorian).
pub fn civil(epoch: i64) -> Civil {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    // Days-to-civil after H. Hinnant: shift the epoch to 0000-03-01 so that leap days fall at
    // the end of each 400-year era and every month length follows from a linear formula.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Every value below is bounded by the arithmetic above (day ≤ 31, month ≤ 12, secs < 86400).
    Civil {
        year,
        month: u32::try_from(month).unwrap_or(1),
        day: u32::try_from(day).unwrap_or(1),
        hour: u32::try_from(secs / 3600).unwrap_or(0),
        minute: u32::try_from(secs % 3600 / 60).unwrap_or(0),
        second: u32::try_from(secs % 60).unwrap_or(0),
    }
}

/// `YYYY-MM-DD`, as `strftime('%F')` prints it.
pub fn date(epoch: i64) -> String {
    let c = civil(epoch);
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}

/// `YYYY-MM-DD HH:MM`, as the extlinux builder's `date "+%Y-%m-%d %H:%M"` prints it.
pub fn date_minutes(epoch: i64) -> String {
    let c = civil(epoch);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        c.year, c.month, c.day, c.hour, c.minute
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_709_164_800), "2024-02-29");
        assert_eq!(date_minutes(1_767_225_599), "2025-12-31 23:59");
        assert_eq!(date_minutes(1_767_225_600), "2026-01-01 00:00");
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
    }
}
