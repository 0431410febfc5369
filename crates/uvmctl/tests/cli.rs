//! `uvmctl` end to end: real binary, real VMs (QEMU/TCG here).

mod common;

use common::{code, stderr, stdout, Sandbox};

#[test]
fn exit_codes_follow_container_clis() {
    let sb = Sandbox::new();
    let out = sb.run(&["run", "--", "uname", "-r"], None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).trim().starts_with("6."),
        "uname -r said {:?}",
        stdout(&out)
    );

    let out = sb.run(
        &["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
        None,
    );
    assert_eq!(code(&out), 7, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err\n"), "stderr: {}", stderr(&out));

    let out = sb.run(&["run", "--", "no-such-binary"], None);
    assert_eq!(code(&out), 127, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-binary"),
        "stderr: {}",
        stderr(&out)
    );

    let out = sb.run(&["run", "--", "/proc/version"], None);
    assert_eq!(code(&out), 126, "stderr: {}", stderr(&out));

    let out = sb.run(&["run", "--", "sh", "-c", "kill -9 $$"], None);
    assert_eq!(code(&out), 128 + 9, "stderr: {}", stderr(&out));
    sb.assert_clean();
}

#[test]
fn bad_input_is_refused_with_125_before_anything_starts() {
    let sb = Sandbox::new();
    for args in [
        &["run", "--doc", "/nonexistent/doc.json", "--", "true"][..],
        &["run", "--memory", "0", "--", "true"],
        &["run", "--memory", "lots", "--", "true"],
        &["run", "--cpus", "0", "--", "true"],
        &["run", "--kernel", "/nonexistent/vmlinux", "--", "true"],
        &["run", "--bogus-flag", "--", "true"],
    ] {
        let out = sb.run(args, None);
        assert_eq!(code(&out), 125, "{args:?}: stderr: {}", stderr(&out));
        assert!(
            !stderr(&out).trim().is_empty(),
            "{args:?}: no error message"
        );
        assert!(sb.leftover_dirs().is_empty(), "{args:?} created a VM dir");
    }
    sb.assert_clean();
}

#[test]
fn bad_document_names_the_field() {
    let sb = Sandbox::new();
    let doc = sb.path().join("doc.json");
    let out = sb.cmd().args(["doc"]).output().unwrap();
    assert!(out.status.success(), "uvmctl doc: {}", stderr(&out));
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["VirtualMachine"]["ComputeTopology"]["Memory"]["SizeInMBB"] = 128.into();
    std::fs::write(&doc, json.to_string()).unwrap();
    let out = sb.run(&["run", "--doc", doc.to_str().unwrap(), "--", "true"], None);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("VirtualMachine.ComputeTopology.Memory.SizeInMBB: unknown field"),
        "stderr: {}",
        stderr(&out)
    );
    std::fs::remove_file(&doc).unwrap();
    sb.assert_clean();
}

#[test]
fn document_from_uvmctl_doc_runs() {
    let sb = Sandbox::new();
    let out = sb.cmd().args(["doc", "--memory", "192"]).output().unwrap();
    assert!(out.status.success());
    let doc = sb.path().join("doc.json");
    std::fs::write(&doc, &out.stdout).unwrap();
    let out = sb.run(
        &[
            "run",
            "--doc",
            doc.to_str().unwrap(),
            "--",
            "grep",
            "MemTotal",
            "/proc/meminfo",
        ],
        None,
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let kib: u64 = stdout(&out)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (150_000..=200_000).contains(&kib),
        "MemTotal {kib} kB for a 192 MiB guest"
    );
    std::fs::remove_file(&doc).unwrap();
    sb.assert_clean();
}

#[test]
fn tty_gives_the_command_a_terminal() {
    let sb = Sandbox::new();
    let out = sb.run(&["run", "-t", "--", "tty"], None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).contains("/dev/pts/"),
        "tty said {:?}",
        stdout(&out)
    );
    let out = sb.run(&["run", "--", "tty"], None);
    assert_ne!(code(&out), 0, "without -t, tty must say 'not a tty'");
    sb.assert_clean();
}

#[test]
fn piped_script_runs_with_dash_i() {
    let sb = Sandbox::new();
    let script = b"echo hello from the guest\nx=$((6*7))\necho $x\nexit 3\n";
    let out = sb.run(&["run", "-i", "--", "sh"], Some(script));
    assert_eq!(code(&out), 3, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello from the guest\n42\n");
    sb.assert_clean();
}

#[test]
fn stats_report_is_json_with_timings() {
    let sb = Sandbox::new();
    let out = sb.run(&["run", "--stats", "--json", "--", "true"], None);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let line = stderr(&out)
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(str::to_owned)
        .expect("json line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    for k in ["create", "start", "exec", "terminate"] {
        assert!(
            v["timings_ms"][k].as_f64().unwrap() > 0.0,
            "{k} missing in {v}"
        );
    }
    assert!(v["stats"]["memory"]["working_set_bytes"].as_u64().unwrap() > 0);
    assert!(
        v["stats"]["processor"]["total_runtime_ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    sb.assert_clean();
}

#[test]
fn timeout_terminates_the_vm() {
    let sb = Sandbox::new();
    let out = sb.run(&["run", "--timeout", "3s", "--", "sleep", "600"], None);
    assert_eq!(code(&out), 125, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out"),
        "stderr: {}",
        stderr(&out)
    );
    sb.assert_clean();
}

#[test]
fn no_command_on_a_terminal_gives_an_interactive_shell() {
    // `script` (util-linux) gives uvmctl a pseudo-terminal as its stdin/stdout.
    let sb = Sandbox::new();
    let mut child = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} run", common::uvmctl_bin()),
            "/dev/null",
        ])
        .env("UVM_RUNTIME_DIR", sb.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo hello-$((40+2))\nexit 5\n")
        .unwrap();
    let out = common::wait_output(child, std::time::Duration::from_secs(120));
    let text = stdout(&out).replace('\r', "");
    assert!(text.contains("hello-42"), "shell output: {text:?}");
    assert_eq!(code(&out), 5, "stderr: {}", stderr(&out));
    sb.assert_clean();
}

/// A document shaped like hcsshim's `makeLCOWDoc` output (SCSI controllers,
/// HvSocket descriptors, Go zero values) runs, with our kernel and initrd.
#[test]
fn hcsshim_shaped_document_runs() {
    let sb = Sandbox::new();
    let out = sb.cmd().args(["doc"]).output().unwrap();
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lkd = &ours["VirtualMachine"]["Chipset"]["LinuxKernelDirect"];
    let files = tempfile::tempdir().unwrap();
    let disk = files.path().join("scratch.raw");
    std::fs::write(&disk, vec![0x5au8; 1 << 20]).unwrap();
    let com = files.path().join("com0.log");
    let doc = serde_json::json!({
        "Owner": "containerd-shim-runhcs-v1.exe",
        "SchemaVersion": { "Major": 2, "Minor": 1 },
        "ShouldTerminateOnLastHandleClosed": true,
        "VirtualMachine": {
            "StopOnReset": true,
            "Chipset": { "LinuxKernelDirect": lkd },
            "ComputeTopology": {
                "Memory": { "SizeInMB": 256, "AllowOvercommit": true, "EnableDeferredCommit": false,
                            "EnableColdDiscardHint": false, "LowMMIOGapInMB": 0, "HighMMIOBaseInMB": 0, "HighMMIOGapInMB": 0 },
                "Processor": { "Count": 2, "Limit": 100000, "Weight": 0 }
            },
            "Devices": {
                "Scsi": {
                    "0": { "Attachments": { "0": { "Type": "VirtualDisk", "Path": disk, "ReadOnly": true } } },
                    "1": { "Attachments": {} }, "2": { "Attachments": {} }, "3": { "Attachments": {} }
                },
                "HvSocket": { "HvSocketConfig": {
                    "DefaultBindSecurityDescriptor": "D:P(A;;FA;;;SY)(A;;FA;;;BA)",
                    "ServiceTable": { "0000006d-facb-11e6-bd58-64006a7986d3": {
                        "BindSecurityDescriptor": "D:P(A;;FA;;;SY)", "AllowWildcardBinds": true } }
                } },
                "Plan9": {},
                "VirtualPMem": { "MaximumCount": 0, "MaximumSizeBytes": 0 },
                "ComPorts": { "0": { "NamedPipe": com } }
            }
        }
    });
    let path = files.path().join("hcsshim.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    // Two vCPUs, and the read-only SCSI disk (controller 0, LUN 0: SCSI
    // address H:0:0:0) is a 1 MiB block device full of 0x5a.
    let script = "nproc; for i in $(seq 50); do b=$(ls /sys/bus/scsi/devices/*:0:0:0/block 2>/dev/null) && [ -b /dev/$b ] && break; sleep 0.1; done; \
        head -c 4 /dev/$b; echo; echo x > /dev/$b 2>/dev/null && echo writable || echo read-only";
    let out = sb.run(
        &[
            "run",
            "--doc",
            path.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ],
        None,
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "2\nZZZZ\nread-only\n");
    sb.assert_clean();
}
