use super::*;

fn config(json: serde_json::Value) -> ImageConfiguration {
    serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": json,
    }))
    .unwrap()
}

fn args<'a>(cmd: &'a [String]) -> ProcessArgs<'a> {
    ProcessArgs {
        cmd,
        hostname: "h",
        ..Default::default()
    }
}

fn process(s: &Spec) -> &oci_spec::runtime::Process {
    s.process().as_ref().unwrap()
}

#[test]
fn the_image_gives_command_env_and_workdir_unless_the_command_line_does() {
    let c = config(serde_json::json!({
        "Entrypoint": ["/bin/ep"], "Cmd": ["x"], "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/srv"
    }));
    let s = container_spec(Some(&c), &[], &args(&[])).unwrap();
    assert_eq!(process(&s).args().as_deref().unwrap(), ["/bin/ep", "x"]);
    assert_eq!(process(&s).cwd(), Path::new("/srv"));
    let cmd = vec!["y".to_string()];
    let env = vec!["A=2".to_string(), "B=3".to_string()];
    let a = ProcessArgs {
        env: &env,
        workdir: Some("/w"),
        ..args(&cmd)
    };
    let s = container_spec(Some(&c), &[], &a).unwrap();
    assert_eq!(process(&s).args().as_deref().unwrap(), ["/bin/ep", "y"]);
    assert_eq!(
        process(&s).env().as_deref().unwrap(),
        ["PATH=/bin", "A=2", "B=3"]
    );
    assert_eq!(process(&s).cwd(), Path::new("/w"));
    assert_eq!(s.hostname().as_deref(), Some("h"));
}

#[test]
fn no_command_anywhere_and_a_relative_workdir_are_refused() {
    let e = container_spec(Some(&config(serde_json::json!({}))), &[], &args(&[])).unwrap_err();
    assert!(e.to_string().contains("neither Entrypoint nor Cmd"), "{e}");
    let cmd = vec!["sh".to_string()];
    let e = container_spec(
        None,
        &[],
        &ProcessArgs {
            workdir: Some("rel"),
            ..args(&cmd)
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
}

#[test]
fn users_resolve_by_number_or_by_the_images_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper) = (dir.path().join("l0"), dir.path().join("l1"));
    std::fs::create_dir_all(lower.join("etc")).unwrap();
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(lower.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    std::fs::write(
        upper.join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(upper.join("etc/group"), "staff:x:50:\n").unwrap();
    let layers = [lower, upper];
    let cmd = vec!["sh".to_string()];
    for (u, want) in [
        ("app", (1000, 1001)),
        ("1000", (1000, 1001)),
        ("7:8", (7, 8)),
        ("app:staff", (1000, 50)),
    ] {
        let s = container_spec(
            None,
            &layers,
            &ProcessArgs {
                user: Some(u),
                ..args(&cmd)
            },
        )
        .unwrap();
        let user = process(&s).user();
        assert_eq!((user.uid(), user.gid()), want, "{u}");
    }
    let e = container_spec(
        None,
        &layers,
        &ProcessArgs {
            user: Some("ghost"),
            ..args(&cmd)
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("ghost"), "{e}");
}

#[test]
fn limits_become_cgroup_resources() {
    let cmd = vec!["sh".to_string()];
    let a = ProcessArgs {
        memory_limit: Some(32 << 20),
        cpus_limit: Some(0.5),
        pids_limit: Some(10),
        tty: true,
        ..args(&cmd)
    };
    let s = container_spec(None, &[], &a).unwrap();
    let r = s.linux().as_ref().unwrap().resources().clone().unwrap();
    assert_eq!(r.memory().as_ref().unwrap().limit(), Some(32 << 20));
    assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(r.cpu().as_ref().unwrap().period(), Some(100_000));
    assert_eq!(r.pids().as_ref().unwrap().limit(), 10);
    assert_eq!(process(&s).terminal(), Some(true));
    assert!(process(&s)
        .env()
        .as_ref()
        .unwrap()
        .contains(&"TERM=xterm".to_string()));
    assert!(s
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .all(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network));
}

#[test]
fn sizes_and_cpu_counts_parse() {
    use crate::cli::{parse_cpus, parse_size};
    assert_eq!(parse_size("32m"), Ok(32 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("2097152"), Ok(2 << 20));
    assert!(parse_size("12").is_err());
    assert!(parse_size("lots").is_err());
    assert_eq!(parse_cpus("0.5"), Ok(0.5));
    assert!(parse_cpus("0").is_err() && parse_cpus("nan").is_err());
}
