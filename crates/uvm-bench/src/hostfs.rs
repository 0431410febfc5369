//! Which host file system a benchmark's output files land on.

use std::path::Path;

/// `"DIR (FSTYPE on DEVICE)"` for `dir`, from `/proc/self/mounts`; just
/// `DIR` when that cannot be read.
pub fn describe(dir: &Path) -> String {
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    match mount_of(&mounts, &canon) {
        Some((fstype, device)) => format!("{} ({fstype} on {device})", dir.display()),
        None => dir.display().to_string(),
    }
}

/// (file system type, device) of the longest mount point containing `path`
/// in a `/proc/mounts`-format `table` (the last one wins among equals, as
/// later mounts hide earlier ones).
fn mount_of<'a>(table: &'a str, path: &Path) -> Option<(&'a str, &'a str)> {
    let mut best: Option<(usize, &str, &str)> = None;
    for line in table.lines() {
        let mut f = line.split_whitespace();
        let (Some(device), Some(point), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if path.starts_with(&point) && best.is_none_or(|(len, _, _)| point.len() >= len) {
            best = Some((point.len(), fstype, device));
        }
    }
    best.map(|(_, t, d)| (t, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "/dev/vda / ext4 rw 0 0\n\
        tmpfs /dev/shm tmpfs rw 0 0\n\
        tmpfs /run tmpfs rw 0 0\n\
        tmpfs /tmp tmpfs rw 0 0\n\
        none /tmp tmpfs rw 0 0\n";

    #[test]
    fn longest_and_latest_mount_point_wins() {
        assert_eq!(
            mount_of(TABLE, Path::new("/tmp/x/y")),
            Some(("tmpfs", "none"))
        );
        assert_eq!(
            mount_of(TABLE, Path::new("/root/t")),
            Some(("ext4", "/dev/vda"))
        );
        assert_eq!(
            mount_of(TABLE, Path::new("/runner")),
            Some(("ext4", "/dev/vda"))
        );
        assert_eq!(mount_of("", Path::new("/x")), None);
    }
}
