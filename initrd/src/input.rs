//! Reading the files a spec names. Every input must be a regular file of a bounded size:
//! `"stage1": "/dev/zero"` would otherwise be read until memory runs out, and a FIFO
//! would block the build forever on `open`.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// The largest file the builder reads (256 MiB). A kernel module, firmware blob or
/// program is a few MiB; anything near this is a wrong path, not an input.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

fn refuse(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn check(meta: &Metadata) -> io::Result<()> {
    if !meta.is_file() {
        return Err(refuse(format!(
            "is {}, not a regular file; point it at a file",
            kind(meta)
        )));
    }
    if meta.len() > MAX_INPUT_BYTES {
        return Err(too_large(meta.len()));
    }
    Ok(())
}

fn too_large(size: u64) -> io::Error {
    refuse(format!(
        "is {size} bytes, more than the {} MiB limit for an initrd input; is this the \
         right file?",
        MAX_INPUT_BYTES >> 20
    ))
}

/// Open `path` (following symlinks) if it is a regular file within [`MAX_INPUT_BYTES`].
/// The type is checked before opening, so a device's or FIFO's `open` never runs, and
/// again on the open file, in case the path was swapped in between (then the
/// non-blocking open has not hung on a FIFO either).
pub fn open_regular(path: &Path) -> io::Result<File> {
    check(&std::fs::metadata(path)?)?;
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let file = File::from(fd);
    check(&file.metadata()?)?;
    Ok(file)
}

/// The contents of `path`, a regular file within [`MAX_INPUT_BYTES`] (see
/// [`open_regular`]). A file that grows past the limit while read is refused too.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let expected = file.metadata()?.len();
    let mut data = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut data)?;
    let read = u64::try_from(data.len()).unwrap_or(u64::MAX);
    if read > MAX_INPUT_BYTES {
        return Err(too_large(read));
    }
    Ok(data)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}
