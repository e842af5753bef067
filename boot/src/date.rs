//! Dates as the NixOS builders print them in menu labels, in UTC.
//!
//! NixOS's builders print local time. We have no time-zone database at boot and do not want
//! one, so every date we print is UTC; the difference only shows in a menu label. The
//! calendar arithmetic is [`stagehand_common::date`].

use stagehand_common::date::civil;

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
        assert_eq!(date_minutes(i64::MAX), "292277026596-12-04 15:30");
        assert_eq!(date(i64::MIN), "-292277022657-01-27");
    }
}
