//! `uvmctl run --image/--rootfs` and `uvmctl image oci-busybox` end to end
//! (issue 15): a container from the project's own busybox image, its
//! defaults from the image config, the command-line overrides, limits, and
//! the container-CLI exit codes.

mod common;

use std::path::{Path, PathBuf};

use common::{code, stderr, stdout, Sandbox};

/// Writes the busybox OCI archive with `uvmctl image oci-busybox`.
fn busybox_archive(sb: &Sandbox, dir: &Path) -> String {
    let out_path = dir.join("busybox.tar");
    let p = out_path.to_string_lossy().into_owned();
    let out = sb.run(&["image", "oci-busybox", &p], None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("uvm/busybox:latest"),
        "{}",
        stdout(&out)
    );
    p
}

/// Layer dirs of the test's own cache (`UVM_OCI_CACHE`).
fn cached_layers(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache.join("layers"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_busybox_image_runs_as_a_container_with_its_defaults_and_overrides() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().unwrap();
    let archive = busybox_archive(&sb, tmp.path());
    let cache = tmp.path().join("oci-cache");
    let run = |args: &[&str], stdin: Option<&[u8]>| {
        let mut a = vec!["run", "--image", &archive];
        a.extend_from_slice(args);
        let mut c = sb.cmd();
        c.env("UVM_OCI_CACHE", &cache);
        common::run_cmd(c, &a, stdin)
    };
    let out = run(
        &[
            "--",
            "sh",
            "-c",
            "echo $$; cat /etc/uvm-image-marker; ps -o pid | wc -l; exit 3",
        ],
        None,
    );
    assert_eq!(code(&out), 3, "stderr: {}", stderr(&out));
    // ps sees its header, sh, ps and wc: the container's processes only.
    assert_eq!(
        stdout(&out),
        "1\nuvm busybox image\n4\n",
        "stderr: {}",
        stderr(&out)
    );
    let layers = cached_layers(&cache);
    assert_eq!(layers.len(), 1, "{layers:?}");
    let stamp = std::fs::metadata(&layers[0]).unwrap().modified().unwrap();

    // No CMD: the image's Cmd (sh) reading stdin; the layer comes from the cache.
    let out = run(&["-i"], Some(b"echo from-stdin $PATH; exit 4\n"));
    assert_eq!(code(&out), 4, "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("from-stdin /usr/local/sbin:"),
        "{}",
        stdout(&out)
    );
    assert_eq!(cached_layers(&cache), layers);
    assert_eq!(
        std::fs::metadata(&layers[0]).unwrap().modified().unwrap(),
        stamp,
        "not unpacked again"
    );

    let out = run(
        &[
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "-u",
            "1000:1001",
            "--",
            "sh",
            "-c",
            "echo $A $(pwd) $(id -u):$(id -g)",
        ],
        None,
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "1 /tmp 1000:1001\n");

    let out = run(&["--", "no-such-command"], None);
    assert_eq!(code(&out), 127, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-command: command not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_container_over_its_memory_limit_is_reported_as_oom_killed() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().unwrap();
    let archive = busybox_archive(&sb, tmp.path());
    let mut c = sb.cmd();
    c.env("UVM_OCI_CACHE", tmp.path().join("cache"));
    let out = common::run_cmd(
        c,
        &[
            "run",
            "--image",
            &archive,
            "--memory-limit",
            "32m",
            "--pids-limit",
            "16",
            "--cpus-limit",
            "0.5",
            "--",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
        None,
    );
    assert_eq!(code(&out), 137, "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("out of memory"), "{}", stderr(&out));
}

#[test]
fn a_bad_archive_or_rootfs_is_a_sentence_and_no_vm_is_left() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().unwrap();
    let bogus = tmp.path().join("bogus.tar");
    std::fs::write(&bogus, b"not a tar archive at all").unwrap();
    let mut c = sb.cmd();
    c.env("UVM_OCI_CACHE", tmp.path().join("cache"));
    let out = common::run_cmd(
        c,
        &["run", "--image", &bogus.to_string_lossy(), "--", "true"],
        None,
    );
    assert_eq!(code(&out), 125, "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("bogus.tar"), "{}", stderr(&out));

    let out = sb.run(&["run", "--rootfs", "/no/such/root", "--", "true"], None);
    assert_eq!(code(&out), 125, "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("/no/such/root"), "{}", stderr(&out));
    sb.assert_clean();
}

#[test]
fn a_host_directory_can_be_the_containers_root() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let out = sb.run(
        &[
            "run",
            "--rootfs",
            &root.to_string_lossy(),
            "--",
            "/bin/sh",
            "-c",
            "echo $$ > /tmp/out; /bin/busybox cat /tmp/out",
        ],
        None,
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "1\n");
    assert_eq!(
        std::fs::read_to_string(root.join("tmp/out")).unwrap(),
        "1\n",
        "the write reached the host directory"
    );
}
