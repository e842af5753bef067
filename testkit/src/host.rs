//! What the tests need from the host, and a failure that says how to get it. CI (Debian 12,
//! as root, after `vm-tests/setup-host`) has all of it; a test that found a tool missing and
//! returned early would pass without having checked anything.

use std::path::PathBuf;

/// The Debian package of each tool the tests run. `vm-tests/setup-host` installs all of
/// them; keep the two lists together.
const PACKAGES: &[(&str, &str)] = &[
    ("blkid", "util-linux"),
    ("partx", "util-linux"),
    ("mkswap", "util-linux"),
    ("swapoff", "util-linux"),
    ("unshare", "util-linux"),
    ("mount", "mount"),
    ("sfdisk", "fdisk"),
    ("mkfs.ext2", "e2fsprogs"),
    ("mkfs.ext3", "e2fsprogs"),
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("dumpe2fs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mkfs.btrfs", "btrfs-progs"),
    ("btrfs", "btrfs-progs"),
    ("mdadm", "mdadm"),
    ("sgdisk", "gdisk"),
    ("mkfs.xfs", "xfsprogs"),
    ("mksquashfs", "squashfs-tools"),
    ("mkfs.erofs", "erofs-utils"),
    ("mcopy", "mtools"),
    ("mdir", "mtools"),
    ("mtype", "mtools"),
    ("cpio", "cpio"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("xz", "xz-utils"),
    ("strace", "strace"),
    ("ldd", "libc-bin"),
    ("cc", "gcc"),
    ("dpkg", "dpkg"),
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("python3", "python3"),
    ("bash", "bash"),
    ("sha256sum", "coreutils"),
    ("nix-instantiate", "nix-bin"),
    ("cryptsetup", "cryptsetup-bin"),
    ("losetup", "mount"),
    ("lvm", "lvm2"),
];

/// `name` on `PATH` or in the sbin directories (which a non-login root shell may lack).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The path of `name`; a test failure naming the package to install when it is missing.
pub fn require_tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        let package = PACKAGES
            .iter()
            .find(|(tool, _)| *tool == name)
            .map_or("the package that provides it", |(_, p)| p);
        panic!(
            "{name} is not installed: apt-get install {package} \
             (vm-tests/setup-host installs every tool the tests use)"
        )
    })
}

/// A test failure unless the tests run as root, saying what needs it.
pub fn require_root(what: &str) {
    if !rustix::process::geteuid().is_root() {
        panic!(
            "{what} needs root: run the tests as root, as CI does \
             (or leave this test out with `cargo test -- --skip NAME`)"
        );
    }
}

/// Copy the host's `/bin/bash` and the libraries `ldd` names into `root` (at the same
/// paths), so that snippets can run chrooted into it.
pub fn install_bash(root: &std::path::Path) {
    let out = std::process::Command::new(require_tool("ldd"))
        .arg("/bin/bash")
        .output()
        .expect("run ldd /bin/bash");
    assert!(out.status.success(), "ldd /bin/bash: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let libraries = text
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')));
    for file in std::iter::once("/bin/bash").chain(libraries) {
        let dest = root.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir in the root");
        std::fs::copy(file, &dest)
            .unwrap_or_else(|e| panic!("copying {file} into {}: {e}", root.display()));
    }
}
