//! Replacing a small file so that readers see the old or the new contents, never a mix:
//! write a temporary sibling, fsync it, rename it over the target, fsync the directory.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically, creating missing parent directories.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    // The rename itself is only durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_creates_parents() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("run/stagehand/boot.json");
        write_file(&p, b"{}\n").expect("first write");
        write_file(&p, b"{\"a\":1}\n").expect("second write");
        assert_eq!(std::fs::read(&p).expect("read"), b"{\"a\":1}\n");
        let names: Vec<_> = std::fs::read_dir(p.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["boot.json"], "no temporary file left behind");
    }
}
