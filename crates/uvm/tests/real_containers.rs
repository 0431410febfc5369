//! Containers in a real VM (issue 15): namespaces, rootfs, mounts, limits,
//! exec, delete, bad inputs. Every test boots its own VM and checks that
//! nothing is left behind.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::real::{chain, collect, sh, Finished, VmGuard};
use oci_spec::runtime::{
    LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, Process as OciProcess, Spec,
};
use uvm::{ContainerRootfs, Controller, Error, Manager};
use uvm_guest::{ExitOutcome, ProcessExit};

const BUSYBOX: &str = "/bin/busybox";
const MARKER: &str = "uvm-test-layer\n";

/// A one-layer busybox root: `/bin/busybox`, applet links, a marker file
/// and the mount points the default spec needs.
fn busybox_layer(dir: &Path) -> Option<PathBuf> {
    if !Path::new(BUSYBOX).exists() {
        return common::real::skip(format!(
            "{BUSYBOX} is missing (apt-get install busybox-static)"
        ));
    }
    let root = dir.join("layer");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "mnt", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "ps", "hostname", "mount", "ls", "id", "sleep", "dd", "true", "grep",
        "head", "wc", "touch", "mkdir", "rm", "env", "umount",
    ] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/marker"), MARKER).unwrap();
    Some(root)
}

/// The default spec running `sh -c script` with `hostname`.
fn spec(script: &str, hostname: &str) -> Spec {
    let mut s = uvm::default_spec();
    s.set_hostname(Some(hostname.to_string()));
    let p = s.process_mut().as_mut().unwrap();
    p.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    s
}

fn layers(layer: &Path) -> ContainerRootfs {
    ContainerRootfs::Layers {
        layers: vec![layer.to_path_buf()],
        scratch_bytes: 16 << 20,
    }
}

/// Creates, starts and runs container `id` to its end; deletes it.
async fn run(
    mgr: &Manager,
    id: &str,
    spec: &Spec,
    rootfs: ContainerRootfs,
) -> (Finished, ProcessExit) {
    mgr.create_container(id, spec, rootfs)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {}", full(&e)));
    let p = mgr
        .start_container(id)
        .await
        .unwrap_or_else(|e| panic!("start {id}: {}", full(&e)));
    let done = collect(p).await;
    mgr.delete_container(id)
        .await
        .unwrap_or_else(|e| panic!("delete {id}: {}", full(&e)));
    done
}

async fn exec(mgr: &Manager, id: &str, script: &str) -> (Finished, ProcessExit) {
    let mut p = OciProcess::default();
    p.set_terminal(Some(false));
    p.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    let proc = mgr
        .exec_in_container(id, &p)
        .await
        .unwrap_or_else(|e| panic!("exec in {id}: {}", full(&e)));
    collect(proc).await
}

/// An error and its sources, `a: b: c`.
fn full(e: &dyn std::error::Error) -> String {
    format!("{e}: {}", chain(e))
}

fn files_under(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_has_its_own_pid_1_hostname_root_and_scratch() {
    let Some(vm) = VmGuard::boot(512).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path()).unwrap();
    let before = files_under(&layer);
    let script = "echo pid=$$; echo host=$(hostname); ps -o pid,comm | grep -v PID | wc -l; \
                  cat /etc/marker; echo hi > /written; cat /written; mount";
    let (f, exit) = run(&vm.mgr, "c1", &spec(script, "box1"), layers(&layer)).await;
    assert_eq!(exit.outcome, ExitOutcome::Code(0), "{f:?}", f = f.stderr);
    assert!(!exit.oom_killed);
    let lines: Vec<&str> = f.stdout.lines().collect();
    assert_eq!(lines[0], "pid=1", "{}", f.stdout);
    assert_eq!(lines[1], "host=box1");
    // sh, ps, grep and wc: the agent and the VM's own processes are not seen.
    assert_eq!(lines[2].trim(), "4", "processes seen: {}", f.stdout);
    assert_eq!(lines[3], MARKER.trim_end());
    assert_eq!(lines[4], "hi");
    let mounts = &f.stdout;
    assert!(mounts.contains("proc on /proc type proc"), "{mounts}");
    assert!(mounts.contains("sysfs on /sys type sysfs (ro"), "{mounts}");
    assert!(mounts.contains("tmpfs on /dev type tmpfs"), "{mounts}");
    assert!(
        mounts.contains("devpts on /dev/pts type devpts"),
        "{mounts}"
    );
    assert!(mounts.contains("on /dev/shm type tmpfs"), "{mounts}");
    // The write went to the scratch, not to the host's layer.
    assert_eq!(files_under(&layer), before);
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_joins_a_running_container_and_delete_removes_everything() {
    let Some(vm) = VmGuard::boot(512).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path()).unwrap();
    let mgr = &vm.mgr;
    for (id, host) in [("a", "host-a"), ("b", "host-b")] {
        let s = spec(
            &format!("echo only-{id} > /only-{id}; exec sleep 600"),
            host,
        );
        mgr.create_container(id, &s, layers(&layer)).await.unwrap();
        let p = mgr.start_container(id).await.unwrap();
        std::mem::forget(p.stdin); // keep stdin open; the container runs on
        tokio::spawn(async move { collect_later(p.stdout).await });
    }
    let (f, exit) = exec(
        mgr,
        "a",
        "hostname; cat /proc/self/cgroup; grep -qx $$ /sys/fs/cgroup/cgroup.procs && echo in-cgroup; \
         ls /; ps -o comm | grep -c sleep",
    )
    .await;
    assert_eq!(exit.outcome, ExitOutcome::Code(0), "{:?}", f.stderr);
    let lines: Vec<&str> = f.stdout.lines().collect();
    assert_eq!(lines[0], "host-a");
    // The root of its cgroup namespace, which is the container's cgroup.
    assert_eq!(lines[1], "0::/");
    assert_eq!(lines[2], "in-cgroup");
    assert!(
        f.stdout.contains("only-a") && !f.stdout.contains("only-b"),
        "{}",
        f.stdout
    );
    // a's own sleep, not b's.
    assert_eq!(lines.last().unwrap().trim(), "1", "{}", f.stdout);
    let listed = mgr.list_containers().await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let stats = mgr.container_stats("a").await.unwrap();
    assert!(
        stats.memory_current_bytes > 0 && stats.pids_current >= 1,
        "{stats:?}"
    );
    mgr.delete_container("a").await.unwrap();
    let guest = mgr.guest().unwrap();
    let view = sh(
        &guest,
        "grep -c /run/uvm/containers/a/ /proc/mounts; \
                           ls -d /sys/fs/cgroup/uvm/a /run/uvm/containers/a 2>&1; \
                           ls -d /sys/fs/cgroup/uvm/*/",
    )
    .await;
    assert!(
        view.stdout.starts_with("0\n"),
        "mounts left: {}",
        view.stdout
    );
    assert_eq!(
        view.stdout.matches("No such file").count(),
        2,
        "{}",
        view.stdout
    );
    assert!(
        view.stdout.trim_end().ends_with("/uvm/b/"),
        "{}",
        view.stdout
    );
    mgr.delete_container("b").await.unwrap();
    assert!(mgr.list_containers().await.unwrap().is_empty());
    assert!(matches!(
        mgr.exec_in_container("a", &OciProcess::default()).await,
        Err(Error::NoSuchContainer { .. })
    ));
    vm.finish().await;
}

async fn collect_later(out: Option<uvm_guest::ProcessOutput>) {
    use tokio::io::AsyncReadExt;
    if let Some(mut o) = out {
        let mut s = String::new();
        let _ = o.read_to_string(&mut s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_oom_pids_and_capabilities_are_enforced() {
    let Some(vm) = VmGuard::boot(512).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path()).unwrap();
    let mgr = &vm.mgr;
    let mut s = spec("dd if=/dev/zero of=/dev/null bs=64M count=1", "oom");
    let res = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(32i64 << 20)
                .swap(32i64 << 20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    s.linux_mut().as_mut().unwrap().set_resources(Some(res));
    let (f, exit) = run(mgr, "oom", &s, layers(&layer)).await;
    assert_eq!(exit.outcome, ExitOutcome::Signal(9), "{:?}", f.stderr);
    assert_eq!(exit.outcome.code(), 137);
    assert!(exit.oom_killed, "the kill is reported as an OOM kill");

    let mut s = spec("for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait", "pids");
    let res = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(4).build().unwrap())
        .build()
        .unwrap();
    s.linux_mut().as_mut().unwrap().set_resources(Some(res));
    let mgr2 = mgr.clone();
    mgr.create_container("pids", &s, layers(&layer))
        .await
        .unwrap();
    let p = mgr.start_container("pids").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stats = mgr.container_stats("pids").await.unwrap();
    let (f, _) = collect(p).await;
    mgr2.delete_container("pids").await.unwrap();
    assert_eq!(stats.pids_limit, 4, "{stats:?}");
    assert!(stats.pids_current <= 4, "{stats:?}");
    let err = f.stderr.clone().unwrap_or_default();
    assert!(
        err.contains("fork"),
        "forks beyond pids.max fail: {err:?} {:?}",
        f.stdout
    );

    // uid 0 without CAP_SYS_ADMIN (the default set) cannot mount.
    let s = spec("id -u; mount -t tmpfs t /mnt", "caps");
    let (f, exit) = run(mgr, "caps", &s, layers(&layer)).await;
    assert_eq!(f.stdout.trim(), "0");
    assert_ne!(exit.outcome, ExitOutcome::Code(0));
    let err = f.stderr.as_deref().unwrap_or("").to_lowercase();
    assert!(
        err.contains("permission denied") || err.contains("not permitted"),
        "{err}"
    );
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_container_inputs_are_clear_errors_and_the_vm_stays_usable() {
    let Some(vm) = VmGuard::boot(512).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path()).unwrap();
    let mgr = &vm.mgr;
    let mut no_args = spec("true", "x");
    no_args.process_mut().as_mut().unwrap().set_args(None);
    let e = mgr
        .create_container("bad", &no_args, layers(&layer))
        .await
        .unwrap_err();
    assert!(full(&e).contains("process.args"), "{}", full(&e));

    let rel = ContainerRootfs::Directory {
        path: "rel/root".into(),
        read_only: true,
    };
    let e = mgr
        .create_container("bad", &spec("true", "x"), rel)
        .await
        .unwrap_err();
    assert!(
        full(&e).contains("must be an absolute path"),
        "{}",
        full(&e)
    );

    let missing = ContainerRootfs::Layers {
        layers: vec![dir.path().join("nope")],
        scratch_bytes: 0,
    };
    let e = mgr
        .create_container("bad", &spec("true", "x"), missing)
        .await
        .unwrap_err();
    assert!(
        full(&e).contains("image layer 0") && full(&e).contains("nope"),
        "{}",
        full(&e)
    );

    let mut net = spec("true", "x");
    let mut ns = net.linux().as_ref().unwrap().namespaces().clone().unwrap();
    ns.push(
        oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(oci_spec::runtime::LinuxNamespaceType::Network)
            .build()
            .unwrap(),
    );
    net.linux_mut().as_mut().unwrap().set_namespaces(Some(ns));
    let e = mgr
        .create_container("bad", &net, layers(&layer))
        .await
        .unwrap_err();
    assert!(
        full(&e).contains("network namespaces are not supported"),
        "{}",
        full(&e)
    );

    // An unknown namespace type, as raw JSON the typed spec cannot hold.
    let mut json: serde_json::Value = serde_json::to_value(spec("true", "x")).unwrap();
    json["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "bogus"}));
    let guest = mgr.guest().unwrap();
    let req = uvm_guest::CreateContainerRequest {
        id: "bad".into(),
        oci_spec_json: json.to_string(),
        rootfs: Some(uvm_guest::ContainerRootfs {
            source: Some(uvm_guest::container_rootfs::Source::Directory("/".into())),
        }),
    };
    let e = guest
        .create_container(req, std::time::Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("linux.namespaces[") || full(&e).contains("linux.namespaces["),
        "{}",
        full(&e)
    );

    let mut missing_exe = spec("true", "x");
    missing_exe
        .process_mut()
        .as_mut()
        .unwrap()
        .set_args(Some(vec!["/no/such".into()]));
    mgr.create_container("noexe", &missing_exe, layers(&layer))
        .await
        .unwrap();
    let e = mgr.start_container("noexe").await.unwrap_err();
    assert_eq!(e.cli_exit_code(), 127, "{}", full(&e));
    mgr.delete_container("noexe").await.unwrap();

    assert!(mgr.list_containers().await.unwrap().is_empty());
    let (f, exit) = run(mgr, "ok", &spec("echo fine", "ok"), layers(&layer)).await;
    assert_eq!(
        (f.stdout.as_str(), exit.outcome),
        ("fine\n", ExitOutcome::Code(0))
    );
    assert!(vm.mgr.shares().await.is_empty(), "every share released");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stdio_takes_host_paths_a_terminal_and_resizes() {
    let Some(vm) = VmGuard::boot(512).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path()).unwrap();
    let mgr = &vm.mgr;

    // Host files as stdio, through exec_into_host, for the init and an exec.
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&input, "from the host\n").unwrap();
    mgr.create_container("p", &spec("cat; echo done", "p"), layers(&layer))
        .await
        .unwrap();
    let init = uvm::ExecRequest {
        stdin: Some(input.clone()),
        stdout: Some(output.clone()),
        container: Some(uvm_guest::ContainerTarget {
            id: "p".into(),
            init: true,
            oci_process_json: String::new(),
        }),
        ..Default::default()
    };
    assert_eq!(mgr.exec_into_host(init).await.unwrap(), 0);
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "from the host\ndone\n"
    );
    mgr.delete_container("p").await.unwrap();

    // A terminal: the init's is /dev/console at the spec's size, and resizes.
    let mut s = spec("tty; stty size; read line; stty size", "t");
    let p = s.process_mut().as_mut().unwrap();
    p.set_terminal(Some(true));
    p.set_console_size(Some(
        oci_spec::runtime::BoxBuilder::default()
            .height(30u64)
            .width(100u64)
            .build()
            .unwrap(),
    ));
    mgr.create_container("t", &s, layers(&layer)).await.unwrap();
    let mut proc = mgr.start_container("t").await.unwrap();
    assert!(
        proc.stderr.is_none(),
        "a terminal merges stderr into stdout"
    );
    let mut out = proc.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "30 100").await;
    assert!(seen.contains("/dev/console"), "{seen:?}");
    proc.resize(40, 120).await.unwrap();
    let mut stdin = proc.stdin.take().unwrap();
    stdin
        .send(bytes::Bytes::from_static(b"go\n"))
        .await
        .unwrap();
    read_until(&mut out, &mut seen, "40 120").await;
    stdin.close().await.unwrap();
    assert_eq!(proc.wait().await.unwrap(), ExitOutcome::Code(0));
    mgr.delete_container("t").await.unwrap();
    vm.finish().await;
}

/// Reads `out` into `seen` until it holds `want` (bounded: 60 s).
async fn read_until(out: &mut uvm_guest::ProcessOutput, seen: &mut String, want: &str) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            let n = out.read(&mut buf).await.unwrap();
            assert!(n > 0, "output ended before {want:?}: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("output bounded");
}

/// Pids of the guest's container zygotes (`uvm-gcs container-zygote`).
const ZYGOTES: &str = "for p in /proc/[0-9]*; do \
    tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^uvm-gcs container-zygote' && echo ${p#/proc/}; \
    done; true";

/// Zombies in the guest: helpers the reaper has not collected.
const ZOMBIES: &str = "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_zygote_is_replaced_and_launches_leave_no_zombies() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path()).unwrap();
    let mgr = &vm.mgr;
    let guest = mgr.guest().unwrap();
    assert_eq!(
        sh(&guest, ZYGOTES).await.stdout,
        "",
        "no zygote before a container"
    );
    let (f, exit) = run(mgr, "z1", &spec("echo one", "z1"), layers(&layer)).await;
    assert_eq!(
        (exit.outcome, f.stdout.as_str()),
        (ExitOutcome::Code(0), "one\n")
    );
    let first = sh(&guest, ZYGOTES).await.stdout;
    assert_eq!(first.lines().count(), 1, "one zygote: {first:?}");
    let killed = sh(&guest, &format!("kill -9 {}", first.trim())).await;
    assert_eq!(killed.status, ExitOutcome::Code(0), "{:?}", killed.stderr);
    let (f, exit) = run(mgr, "z2", &spec("echo two", "z2"), layers(&layer)).await;
    assert_eq!(
        (exit.outcome, f.stdout.as_str()),
        (ExitOutcome::Code(0), "two\n")
    );
    let second = sh(&guest, ZYGOTES).await.stdout;
    assert_eq!(second.lines().count(), 1, "one zygote: {second:?}");
    assert_ne!(first, second, "a new zygote replaced the killed one");
    let mut zombies = String::new();
    for _ in 0..50 {
        zombies = sh(&guest, ZOMBIES).await.stdout;
        if zombies.trim() == "0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(zombies.trim(), "0", "zombies left in the guest");
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zygote_dying_with_a_request_is_replaced_and_the_start_succeeds() {
    let Some(vm) = VmGuard::boot(256).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path()).unwrap();
    let mgr = vm.mgr.clone();
    let guest = mgr.guest().unwrap();
    mgr.create_container("s1", &spec("echo started", "s1"), layers(&layer))
        .await
        .unwrap();
    let zygote = sh(&guest, ZYGOTES).await.stdout.trim().to_string();
    assert!(!zygote.is_empty(), "create starts the zygote");
    // Stopped, it holds the start's request unread; killed, it takes it along.
    sh(&guest, &format!("kill -STOP {zygote}")).await;
    let starting = tokio::spawn({
        let mgr = mgr.clone();
        async move { mgr.start_container("s1").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sh(&guest, &format!("kill -9 {zygote}")).await;
    let p = starting
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("start after the zygote died: {}", full(&e)));
    let (f, exit) = collect(p).await;
    assert_eq!(
        (exit.outcome, f.stdout.as_str()),
        (ExitOutcome::Code(0), "started\n")
    );
    let now = sh(&guest, ZYGOTES).await.stdout;
    assert_eq!(now.lines().count(), 1, "one zygote: {now:?}");
    assert_ne!(now.trim(), zygote, "a new zygote took the request");
    mgr.delete_container("s1").await.unwrap();
    vm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_detaching_its_root_uncovers_nothing_of_the_guest() {
    use oci_spec::runtime::Capability;
    let Some(vm) = VmGuard::boot(512).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layer = busybox_layer(dir.path()).unwrap();
    // With CAP_SYS_ADMIN the init detaches its own root. Whatever lay
    // below it is what a later exec into the container finds at `/`: the
    // guest's initramfs once (containers were only moved onto it and
    // chrooted), only the agent's executable now (they pivot_root off a
    // tmpfs root).
    let mut s = spec("umount -l / && echo detached && sleep 600", "bare");
    let p = s.process_mut().as_mut().unwrap();
    let mut caps = p.capabilities().clone().unwrap_or_default();
    let with_admin = |set: &Option<oci_spec::runtime::Capabilities>| {
        let mut v = set.clone().unwrap_or_default();
        v.insert(Capability::SysAdmin);
        Some(v)
    };
    caps.set_bounding(with_admin(caps.bounding()));
    caps.set_effective(with_admin(caps.effective()));
    caps.set_permitted(with_admin(caps.permitted()));
    p.set_capabilities(Some(caps));
    let mgr = &vm.mgr;
    mgr.create_container("bare", &s, layers(&layer))
        .await
        .unwrap_or_else(|e| panic!("create: {}", full(&e)));
    let mut init = mgr
        .start_container("bare")
        .await
        .unwrap_or_else(|e| panic!("start: {}", full(&e)));
    let mut out = init.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "detached").await;
    let mut ls = OciProcess::default();
    ls.set_terminal(Some(false));
    ls.set_args(Some(vec!["/bin/ls".into(), "-a".into(), "/".into()]));
    match mgr.exec_in_container("bare", &ls).await {
        // Nothing to run: no busybox below.
        Err(e) => assert!(full(&e).contains("/bin/ls"), "{}", full(&e)),
        Ok(p) => {
            let (f, _) = collect(p).await;
            panic!("the guest's root showed through: {}", f.stdout);
        }
    }
    mgr.delete_container("bare")
        .await
        .unwrap_or_else(|e| panic!("delete: {}", full(&e)));
    vm.finish().await;
}
