//! Waiting for a block device node to appear in devtmpfs.
//!
//! The kernel creates `/dev/<name>` itself as soon as a driver registers the disk, so no
//! udev is needed: we watch the directory with inotify and wake up on the creation, with a
//! deadline, instead of sleeping in a loop.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify;

/// Wait until `path` exists or `timeout` has passed. Returns how long it took.
pub fn wait_for_path(path: &Path, timeout: Duration) -> std::io::Result<Option<Duration>> {
    let start = Instant::now();
    if path.exists() {
        return Ok(Some(Duration::ZERO));
    }
    // Watch the nearest existing ancestor: for /dev/disk/by-label/x that may be /dev.
    let watch_dir = path
        .ancestors()
        .skip(1)
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/dev"));
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
    inotify::add_watch(
        &fd,
        watch_dir,
        inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
    )?;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    loop {
        // Check after arming the watch so a node created in between is not missed.
        if path.exists() {
            return Ok(Some(start.elapsed()));
        }
        let left = match timeout.checked_sub(start.elapsed()) {
            Some(left) if !left.is_zero() => left,
            _ => return Ok(None),
        };
        let ts = Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        // Drain the events; which file appeared does not matter, the path check above does.
        let mut reader = inotify::Reader::new(fd.as_fd(), &mut buf);
        while let Ok(_event) = reader.next() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_at_once_for_existing_path() {
        let t = tempfile::tempdir().expect("tempdir");
        let took = wait_for_path(t.path(), Duration::from_secs(5)).expect("wait");
        assert_eq!(took, Some(Duration::ZERO));
    }

    #[test]
    fn wakes_up_when_the_node_appears() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("vda");
        let p2 = p.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(p2, b"").expect("create");
        });
        let took = wait_for_path(&p, Duration::from_secs(10))
            .expect("wait")
            .expect("appeared");
        writer.join().expect("join");
        // Woken by the event, far earlier than the deadline.
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn times_out() {
        let t = tempfile::tempdir().expect("tempdir");
        let start = Instant::now();
        let took =
            wait_for_path(&t.path().join("never"), Duration::from_millis(100)).expect("wait");
        assert_eq!(took, None);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}
