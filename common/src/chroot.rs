//! Running a command inside another root: stage 2's post-boot commands and activation's
//! snippets for `--root`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Make `cmd` run with `root` as its `/` and `/` as its working directory: `chroot(2)` and
/// `chdir(2)` in the child, between fork and exec. Its program path is looked up in the
/// parent, as `Command` does, so give one that names the same file in both roots (a store
/// path). A failure of either call fails the spawn with that error.
pub fn chroot_command(cmd: &mut Command, root: &Path) {
    // Made before the fork: the child must not allocate (another thread of the parent may
    // have held the allocator's lock at the fork). A path with a NUL byte cannot be a root;
    // the spawn then fails with InvalidInput.
    let root = CString::new(root.as_os_str().as_bytes()).ok();
    // SAFETY: the closure runs in the forked child before exec. It only makes the chroot and
    // chdir system calls, which are async-signal-safe, on C strings made before the fork,
    // so it allocates nothing.
    #[allow(unsafe_code)] // pre_exec has no safe wrapper
    unsafe {
        cmd.pre_exec(move || {
            let root = root
                .as_deref()
                .ok_or(std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            rustix::process::chroot(root)?;
            rustix::process::chdir(c"/")?;
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_runs_in_the_root_at_its_top_or_not_at_all() {
        // An empty root has no /bin/sh: exec fails inside the root, or chroot itself fails
        // (EPERM without CAP_SYS_CHROOT). Either way the host's /bin/sh must not run.
        let empty = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("true");
        chroot_command(&mut cmd, empty.path());
        let status = cmd.status();
        assert!(status.is_err(), "ran outside the root: {status:?}");

        // With `/` as the root the command runs, in `/` although we are elsewhere.
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let mut pwd = Command::new("/bin/sh");
        pwd.arg("-c").arg("pwd").current_dir(elsewhere.path());
        chroot_command(&mut pwd, Path::new("/"));
        match pwd.output() {
            Ok(out) => assert_eq!(String::from_utf8_lossy(&out.stdout), "/\n"),
            // Only a process without CAP_SYS_CHROOT may fail, and only with EPERM.
            Err(e) => {
                assert!(!rustix::process::geteuid().is_root(), "{e}");
                assert_eq!(
                    e.raw_os_error(),
                    Some(rustix::io::Errno::PERM.raw_os_error())
                );
            }
        }
    }
}
