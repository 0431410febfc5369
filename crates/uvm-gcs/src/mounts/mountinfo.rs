//! The guest's mount table (`/proc/self/mountinfo`).

use std::path::Path;

/// One line of `mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The mount's id.
    pub id: u32,
    /// The id of the mount it sits on.
    pub parent: u32,
    /// `major:minor` of the mounted device.
    pub dev: String,
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: String,
    /// The mount source (`/dev/sda`, `uvm-shares`).
    pub source: String,
}

/// Parses `mountinfo` text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let id = fields.first()?.parse().ok()?;
            let parent = fields.get(1)?.parse().ok()?;
            let dev = fields.get(2)?;
            let mount_point = fields.get(4)?;
            let source = right.split(' ').nth(1).unwrap_or_default();
            Some(Entry {
                id,
                parent,
                dev: (*dev).to_string(),
                mount_point: unescape(mount_point),
                source: unescape(source),
            })
        })
        .collect()
}

/// Reads and parses the table at `path` (empty when unreadable).
pub fn read(path: &Path) -> Vec<Entry> {
    std::fs::read_to_string(path)
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Decodes the `\040`-style escapes the kernel writes for space, tab,
/// newline and backslash.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_escapes() {
        let t = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                 40 22 8:0 / /mnt/my\\040disk rw,relatime shared:1 - ext4 /dev/sda rw\n\
                 garbage\n";
        let e = parse(t);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].dev, "8:0");
        assert_eq!(e[1].mount_point, "/mnt/my disk");
        assert_eq!(e[1].source, "/dev/sda");
        assert_eq!((e[1].id, e[1].parent), (40, 22));
        assert_eq!(unescape("a\\040"), "a ");
    }
}
