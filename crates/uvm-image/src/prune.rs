//! Bounding the initramfs cache. Every new agent build makes a new 5–6 MB
//! archive (the key hashes the inputs), so without pruning the cache only
//! grows: 446 MB after a day of development here. Archives are kept by last
//! use (their mtime, refreshed on every cache hit).

use std::path::Path;
use std::time::{Duration, SystemTime};

/// Archives kept besides those used within [`GRACE`].
pub const KEEP: usize = 8;

/// An archive used this recently is never removed: another process may have
/// picked it and not started QEMU with it yet.
pub const GRACE: Duration = Duration::from_secs(3600);

/// Records that `path` was just used, so that pruning keeps it. Best effort:
/// an archive whose mtime cannot be set is only pruned earlier.
pub(crate) fn touch(path: &Path) {
    if let Err(e) = set_used(path, SystemTime::now()) {
        tracing::debug!(path = %path.display(), error = %e, "cannot mark a cached initramfs as used");
    }
}

/// Sets when `path` was last used (its mtime).
fn set_used(path: &Path, at: SystemTime) -> std::io::Result<()> {
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(at)
}

/// Removes the `*.cpio` files of `dir` beyond the `keep` most recently used,
/// except those used within `grace` before `now`. Returns how many it
/// removed; files it cannot inspect or remove are left alone.
pub(crate) fn prune(dir: &Path, keep: usize, grace: Duration, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut archives: Vec<(SystemTime, std::path::PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpio"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    archives.sort_by_key(|a| std::cmp::Reverse(a.0));
    let mut removed = 0;
    for (used, path) in archives.into_iter().skip(keep) {
        let recent = now.duration_since(used).map_or(true, |age| age < grace);
        if recent {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove an old initramfs")
            }
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed least recently used initramfs archives");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, name: &str, age_s: u64, now: SystemTime) {
        let p = dir.join(name);
        std::fs::write(&p, b"cpio").unwrap();
        set_used(&p, now - Duration::from_secs(age_s)).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keeps_the_most_recently_used_and_anything_within_the_grace() {
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let hour = 3600;
        for (name, age) in [
            ("a.cpio", 10 * hour),
            ("b.cpio", 9 * hour),
            ("c.cpio", 8 * hour),
            ("d.cpio", 7 * hour),
            ("e.cpio", 60),
            ("f.cpio", 30),
        ] {
            archive(d.path(), name, age, now);
        }
        archive(d.path(), "notes.txt", 100 * hour, now);
        // Keep 2: e and f are the newest; d, c, b, a are old and go.
        assert_eq!(prune(d.path(), 2, Duration::from_secs(hour), now), 4);
        assert_eq!(names(d.path()), ["e.cpio", "f.cpio", "notes.txt"]);
        // Keep 0: both are within the grace, so neither goes.
        assert_eq!(prune(d.path(), 0, Duration::from_secs(hour), now), 0);
        assert_eq!(names(d.path()), ["e.cpio", "f.cpio", "notes.txt"]);
    }

    #[test]
    fn touching_an_archive_moves_it_to_the_front() {
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        archive(d.path(), "old.cpio", 10 * 3600, now);
        archive(d.path(), "newer.cpio", 5 * 3600, now);
        touch(&d.path().join("old.cpio"));
        assert_eq!(
            prune(d.path(), 1, Duration::from_secs(60), SystemTime::now()),
            1
        );
        assert_eq!(names(d.path()), ["old.cpio"]);
    }

    #[test]
    fn a_missing_directory_prunes_nothing() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            prune(&d.path().join("absent"), 0, GRACE, SystemTime::now()),
            0
        );
    }
}
