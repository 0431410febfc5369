//! Spec validation: each refusal names its field.

use super::*;
use serde_json::{json, Value};

fn base() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
            "args": ["sh", "-c", "echo $$"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL", "CAP_CHOWN"],
                "inheritable": [],
                "ambient": []
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755"]},
            {"destination": "/data", "type": "bind", "source": "/run/data", "options": ["rbind", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}],
            "resources": {"memory": {"limit": 33554432}, "pids": {"limit": 10}},
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    })
}

fn err_of(v: Value) -> SpecError {
    parse(&v.to_string()).unwrap_err()
}

#[test]
fn a_full_spec_becomes_a_plan() {
    let s = parse(&base().to_string()).unwrap();
    assert_eq!(
        s.init.namespaces,
        vec![
            Namespace::Pid,
            Namespace::Mount,
            Namespace::Uts,
            Namespace::Ipc
        ]
    );
    assert_eq!(s.init.hostname.as_deref(), Some("box"));
    assert!(s.init.root_readonly);
    assert_eq!(s.init.masked_paths, vec!["/proc/kcore"]);
    assert_eq!(s.process.args, vec!["sh", "-c", "echo $$"]);
    assert_eq!(s.process.additional_gids, vec![10]);
    assert!(s.process.no_new_privileges);
    let caps = s.process.capabilities.as_ref().unwrap();
    assert_eq!(caps.bounding, vec!["CAP_CHOWN", "CAP_KILL"]);
    assert_eq!(caps.effective, vec!["CAP_KILL"]);
    assert_eq!(s.process.rlimits[0].resource, libc::RLIMIT_NOFILE);
    assert_eq!(
        (s.process.rlimits[0].soft, s.process.rlimits[0].hard),
        (512, 1024)
    );
    let dev = &s.init.mounts[1];
    assert_eq!(
        (dev.fstype.as_str(), dev.data.as_str()),
        ("tmpfs", "mode=755")
    );
    let bind = &s.init.mounts[2];
    assert!(bind.bind && bind.recursive && bind.fstype.is_empty());
    assert_eq!(bind.flags, nix::mount::MsFlags::MS_RDONLY.bits());
    assert_eq!(s.init.mounts[3].fstype, "cgroup2");
    assert_eq!(s.resources.memory_max, Some(32 << 20));
    assert_eq!(s.resources.pids_max, Some(10));
}

#[test]
fn missing_or_empty_args_are_refused() {
    let mut v = base();
    v["process"]["args"] = json!([]);
    assert_eq!(err_of(v.clone()).field, "process.args");
    v["process"].as_object_mut().unwrap().remove("args");
    assert_eq!(err_of(v).field, "process.args");
    let mut v = base();
    v.as_object_mut().unwrap().remove("process");
    assert_eq!(err_of(v).field, "process");
}

#[test]
fn network_user_and_unknown_namespaces_are_refused() {
    for (ns, words) in [
        ("network", "network of its VM"),
        ("user", "user namespaces"),
        ("time", "time"),
    ] {
        let mut v = base();
        v["linux"]["namespaces"][1] = json!({"type": ns});
        let e = err_of(v);
        assert_eq!(e.field, "linux.namespaces[1].type", "{ns}");
        assert!(e.reason.contains(words), "{ns}: {e}");
    }
    let mut v = base();
    v["linux"]["namespaces"][0] = json!({"type": "nonsense"});
    let e = err_of(v);
    assert_eq!(e.field, "linux.namespaces[0].type");
    assert!(e.reason.contains("nonsense"), "{e}");
    let mut v = base();
    v["linux"]["namespaces"] = json!([{"type": "pid"}]);
    assert!(err_of(v).reason.contains("mount namespace"));
    let mut v = base();
    v["linux"]["namespaces"][0] = json!({"type": "pid", "path": "/proc/1/ns/pid"});
    assert_eq!(err_of(v).field, "linux.namespaces[0].path");
}

#[test]
fn other_fields_are_named() {
    type Edit = fn(&mut Value);
    let cases: Vec<(Edit, &str)> = vec![
        (|v| v["process"]["cwd"] = json!("relative"), "process.cwd"),
        (|v| v["process"]["env"] = json!(["NOEQ"]), "process.env[0]"),
        (
            |v| v["process"]["capabilities"]["effective"] = json!(["CAP_SYS_ADMIN"]),
            "process.capabilities.effective",
        ),
        (
            |v| v["process"]["rlimits"][0]["soft"] = json!(4096),
            "process.rlimits[0]",
        ),
        (
            |v| v["mounts"][0]["destination"] = json!("proc"),
            "mounts[0].destination",
        ),
        (
            |v| v["mounts"][2]["source"] = json!("data"),
            "mounts[2].source",
        ),
        (
            |v| v["mounts"][0]["options"] = json!(["rshared"]),
            "mounts[0].options",
        ),
        (
            |v| v["linux"]["maskedPaths"] = json!(["x"]),
            "linux.maskedPaths[0]",
        ),
        (
            |v| v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}]),
            "linux.uidMappings",
        ),
        (
            |v| v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"}),
            "linux.sysctl",
        ),
        (
            |v| v["linux"]["resources"]["memory"]["limit"] = json!(-5),
            "linux.resources.memory.limit",
        ),
        (
            |v| {
                v["linux"]["devices"] =
                    json!([{"path": "/etc/x", "type": "c", "major": 1, "minor": 3}])
            },
            "linux.devices[0].path",
        ),
        (
            |v| v["hooks"] = json!({"prestart": [{"path": "/bin/true"}]}),
            "hooks",
        ),
        (
            |v| v["process"]["user"]["uid"] = json!("root"),
            "process.user.uid",
        ),
    ];
    for (edit, field) in cases {
        let mut v = base();
        edit(&mut v);
        let e = err_of(v);
        assert_eq!(e.field, field, "{e}");
    }
    let mut v = base();
    v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}]);
    assert_eq!(
        err_of(v).field,
        "hostname",
        "a hostname without a uts namespace"
    );
    assert_eq!(parse("{not json").unwrap_err().field, "(the document)");
}

#[test]
fn exec_processes_and_ids() {
    let (p, _) = parse_process(
        r#"{"user":{"uid":1000,"gid":1000},"args":["ps"],"cwd":"/tmp","terminal":true}"#,
    )
    .unwrap();
    assert_eq!((p.uid, p.gid, p.terminal), (1000, 1000, true));
    assert!(p.capabilities.is_none());
    let e = parse_process(r#"{"user":{"uid":0,"gid":0},"cwd":"/"}"#).unwrap_err();
    assert_eq!(e.field, "process.args");
    let e = parse_process(r#"{"user":{"uid":0,"gid":0},"args":["x"],"cwd":7}"#).unwrap_err();
    assert_eq!(e.field, "process.cwd");
    let e = parse_process(r#"{"args":["x"],"cwd":"/"}"#).unwrap_err();
    assert!(e.field.starts_with("process"), "{e}");
    assert!(check_id("c1").is_ok());
    assert!(check_id("a.b_c-9").is_ok());
    for bad in ["", "-x", "a/b", "..", &"x".repeat(129)] {
        assert!(check_id(bad).is_err(), "{bad:?}");
    }
}
