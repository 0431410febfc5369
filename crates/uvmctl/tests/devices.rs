//! `uvmctl run --disk/--share` end to end (issue 14): the runtime device
//! path after Running, and 125 with a sentence for what cannot be attached.

mod common;

use std::path::Path;
use std::process::Command;

use common::{code, stderr, stdout, Sandbox};

fn ext4_image(dir: &Path, files: &[(&str, &str)]) -> String {
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    for (f, text) in files {
        std::fs::write(content.join(f), text).unwrap();
    }
    let img = dir.join("disk.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&img)
        .arg("8M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    img.to_string_lossy().into_owned()
}

#[test]
fn disks_and_shares_reach_the_command_and_writes_reach_the_host() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().unwrap();
    let img = ext4_image(tmp.path(), &[("file", "on the disk\n")]);
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("s"), "in the share\n").unwrap();
    let disk_arg = format!("{img}:/mnt/x");
    let share_arg = format!("{}:/mnt/s", share.display());
    let out = sb.run(
        &[
            "run",
            "--disk",
            &disk_arg,
            "--share",
            &share_arg,
            "--",
            "sh",
            "-c",
            "cat /mnt/x/file /mnt/s/s; echo guest > /mnt/x/w; echo guest > /mnt/s/w",
        ],
        None,
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "on the disk\nin the share\n");
    assert_eq!(std::fs::read_to_string(share.join("w")).unwrap(), "guest\n");
    let cat = Command::new("debugfs")
        .args(["-R", "cat /w", &img])
        .output()
        .expect("debugfs runs");
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "guest\n",
        "write landed in the image"
    );

    // Defaults: /mnt/disk0; `:ro` is read-only in the guest.
    let ro_arg = format!("{img}:ro");
    let out = sb.run(
        &[
            "run",
            "--disk",
            &ro_arg,
            "--",
            "sh",
            "-c",
            "cat /mnt/disk0/file; (echo x > /mnt/disk0/y) 2>&1",
        ],
        None,
    );
    assert_ne!(code(&out), 0);
    assert!(
        stdout(&out).starts_with("on the disk\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("Read-only file system"),
        "{}",
        stdout(&out)
    );
    sb.assert_clean();
}

#[test]
fn what_cannot_be_attached_is_125_with_a_sentence() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.img");
    std::fs::write(&garbage, vec![0x42u8; 1 << 20]).unwrap();
    let missing = tmp.path().join("missing.img");
    let dir = tmp.path().to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 5] = [
        (&["--disk", missing.to_str().unwrap()], "missing.img"),
        (&["--disk", &dir], "is a directory"),
        (
            &["--disk", garbage.to_str().unwrap()],
            "cannot tell the file system",
        ),
        (
            &["--share", &format!("{}:/mnt/s", missing.display())],
            "missing.img",
        ),
        (&["--share", &format!("{dir}:/etc/x")], "not allowed"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "true"]);
        let out = sb.run(&args, None);
        assert_eq!(code(&out), 125, "{flags:?}: stderr: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(says), "{flags:?}: stderr: {err}");
        assert!(
            !err.contains("status:") && !err.contains("MetadataMap"),
            "{err}"
        );
    }
    sb.assert_clean();
}

/// Copies an image keeping its holes: 65 dense 8 MiB copies once filled a
/// nearly full CI disk.
fn sparse_copy(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("--sparse=always")
        .args([from, to])
        .output()
        .expect("cp runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_controller_is_125_and_leaves_nothing() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().unwrap();
    let first = ext4_image(tmp.path(), &[("f", "x")]);
    // The default document has one SCSI controller: 64 LUNs.
    let mut args = vec!["run".to_string()];
    for i in 0..65 {
        let img = tmp.path().join(format!("d{i}.img"));
        sparse_copy(Path::new(&first), &img);
        args.push("--disk".into());
        args.push(format!("{}:ro", img.display()));
    }
    args.extend(["--".into(), "true".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sb.run(&args, None);
    assert_eq!(code(&out), 125, "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("d64.img") && err.contains("is in use"),
        "{err}"
    );
    sb.assert_clean();
}
