//! `uvmctl snapshot create` and `uvmctl run --from-snapshot` end to end.

mod common;

use common::{code, stderr, stdout, Sandbox};

#[test]
fn a_snapshot_starts_vms_that_run_commands_and_bad_dirs_are_125() {
    let sb = Sandbox::new();
    let snaps = tempfile::tempdir().unwrap();
    let dir = snaps.path().join("snap");
    let d = dir.to_str().unwrap();
    let out = sb.run(&["snapshot", "create", "--memory", "256", d], None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("copy-on-write"), "{}", stdout(&out));

    let out = sb.run(
        &[
            "run",
            "--id",
            "warm-1",
            "--from-snapshot",
            d,
            "--",
            "sh",
            "-c",
            "hostname; exit 4",
        ],
        None,
    );
    assert_eq!(code(&out), 4, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "warm-1\n");

    let out = sb.run(&["snapshot", "info", d], None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("kernel and initrd unchanged"),
        "{}",
        stdout(&out)
    );

    // Taking a snapshot into a dir that is not empty, restoring from one
    // others may read, or from nothing: 125 and a sentence, no VM left.
    let out = sb.run(&["snapshot", "create", "--memory", "256", d], None);
    assert_eq!(code(&out), 125, "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = sb.run(&["run", "--from-snapshot", d, "--", "true"], None);
    assert_eq!(code(&out), 125, "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("mode 0750"), "{}", stderr(&out));
    let out = sb.run(
        &["run", "--from-snapshot", "/nonexistent", "--", "true"],
        None,
    );
    assert_eq!(code(&out), 125, "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent"), "{}", stderr(&out));
    sb.assert_clean();
}
