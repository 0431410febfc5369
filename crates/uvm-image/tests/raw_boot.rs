//! Boots the raw baseline image in QEMU (TCG) and waits for rawinit's `!`
//! byte on a virtio-serial port backed by a unix socket, then for the guest's
//! power-off. Tuned kernel on `-M microvm`, stock kernel on `-M q35`.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uvm_image::{raw_baseline_image, Image, KernelKind, MachineHint};

const BOOT_DEADLINE: Duration = Duration::from_secs(180);

/// Kills and reaps QEMU when dropped, so no VM outlives a failed test.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_command(image: &Image, sock: &Path, log: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let (machine, serial_dev) = match image.machine {
        MachineHint::Microvm => ("microvm", "virtio-serial-device"),
        MachineHint::Q35 => ("q35", "virtio-serial-pci"),
    };
    c.args(["-M", machine, "-accel", "tcg", "-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .arg("-append")
        // As the uvm-vmm backend does: microvm under TCG needs the host TSC rate.
        .arg(uvm_vmm::with_tsc_hint(
            &image.cmdline,
            image.machine == MachineHint::Microvm,
        ))
        .args(["-device", serial_dev])
        .arg("-chardev")
        .arg(format!("socket,id=raw,path={}", sock.display()))
        .args(["-device", "virtserialport,chardev=raw,name=uvm.raw"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn console(log: &Path) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(3000)..]).into_owned()
}

fn boot_and_expect_byte(kind: KernelKind) {
    let progress = |line: &str| eprintln!("[image] {line}");
    let image = raw_baseline_image(&kind, &progress).expect("raw baseline image");
    eprintln!("booting {image:?}");
    let dir = tempfile::tempdir().unwrap();
    let (sock, log) = (dir.path().join("raw.sock"), dir.path().join("console.log"));
    let listener = UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();

    let start = Instant::now();
    let mut qemu = Qemu(
        qemu_command(&image, &sock, &log)
            .spawn()
            .expect("spawn qemu-system-x86_64"),
    );
    let (mut stream, _) = loop {
        match listener.accept() {
            Ok(conn) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            let mut err = String::new();
            let _ = qemu.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("QEMU exited before connecting ({status}): {err}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "QEMU did not connect to {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(BOOT_DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    let got = stream.read(&mut byte);
    let first_byte = start.elapsed();
    assert!(
        matches!(got, Ok(1)) && byte[0] == b'!',
        "no '!' from the guest within {BOOT_DEADLINE:?} ({got:?}, {byte:?}); console:\n{}",
        console(&log)
    );
    eprintln!("{kind:?}: first guest byte after {first_byte:?}");

    // rawinit powers off: QEMU must exit cleanly on its own.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = qemu.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "guest did not power off; console:\n{}",
            console(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "QEMU exit {status}; console:\n{}",
        console(&log)
    );
    eprintln!("{kind:?}: powered off after {:?}", start.elapsed());
}

#[test]
fn tuned_kernel_microvm_first_byte() {
    boot_and_expect_byte(KernelKind::Tuned);
}

#[test]
fn stock_kernel_q35_first_byte() {
    boot_and_expect_byte(KernelKind::Stock);
}
