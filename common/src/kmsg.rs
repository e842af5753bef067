//! A `log` backend for programs that run as PID 1 or early in boot: each record becomes one
//! `/dev/kmsg` line with a printk level prefix (`<3>stage1: ...`), so it carries a kernel
//! timestamp and lands in the journal later. When `/dev/kmsg` cannot be opened (no /dev yet,
//! or running as a normal command) records go to stderr with the same prefix.
//!
//! The kernel rate-limits writes per open file of `/dev/kmsg` (a burst of 10 per 5 s unless
//! `printk.devkmsg=on`) and silently drops the excess, so the file is reopened for every
//! record: boot code writes few records and an `open` costs microseconds.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

pub struct KmsgLogger {
    ident: &'static str,
    /// Also copy every record to stderr (the console for PID 1).
    mirror: AtomicBool,
    level: LevelFilter,
}

/// printk level for a `log` level.
pub fn printk_level(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Format one record the way the kernel expects it: `<N>ident: message\n`.
pub fn format_record(ident: &str, level: Level, msg: &std::fmt::Arguments<'_>) -> String {
    format!("<{}>{ident}: {msg}\n", printk_level(level))
}

impl KmsgLogger {
    /// Install the logger as the global `log` backend. Calling it twice keeps the first.
    pub fn install(ident: &'static str, level: LevelFilter) -> &'static KmsgLogger {
        let logger: &'static KmsgLogger = Box::leak(Box::new(KmsgLogger {
            ident,
            mirror: AtomicBool::new(false),
            level,
        }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(level);
        }
        logger
    }

    pub fn set_mirror_to_stderr(&self, on: bool) {
        self.mirror.store(on, Ordering::Relaxed);
    }
}

impl Log for KmsgLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_record(self.ident, record.level(), record.args());
        let to_kmsg = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if to_kmsg.is_err() || self.mirror.load(Ordering::Relaxed) {
            // Logging must never fail the caller: a broken stderr leaves nowhere to report to.
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_format_has_printk_prefix() {
        assert_eq!(
            format_record(
                "stage1",
                Level::Error,
                &format_args!("no root after {} s", 20)
            ),
            "<3>stage1: no root after 20 s\n"
        );
        assert_eq!(printk_level(Level::Info), 6);
        assert_eq!(printk_level(Level::Warn), 4);
    }
}
