use super::*;
use std::io::Write;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for f in ["vmlinux", "initrd.img", "disk.raw"] {
            std::fs::File::create(dir.path().join(f))
                .unwrap()
                .write_all(b"x")
                .unwrap();
        }
        std::fs::create_dir(dir.path().join("share")).unwrap();
        Files { dir }
    }
    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
    fn builder(&self) -> LcowDocumentBuilder {
        LcowDocumentBuilder::new(self.p("vmlinux"), self.p("initrd.img"))
    }
}

fn err_of(json: &str) -> String {
    ComputeSystem::from_json(json).unwrap_err().to_string()
}

/// Sets a JSON value at a `.`-separated path, creating objects on the way.
fn set(v: &mut serde_json::Value, path: &str, x: serde_json::Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        cur = cur
            .as_object_mut()
            .unwrap()
            .entry(p.to_string())
            .or_insert(serde_json::json!({}));
    }
    cur.as_object_mut()
        .unwrap()
        .insert(parts[parts.len() - 1].to_string(), x);
}

#[test]
fn builder_document_validates_and_round_trips() {
    let f = Files::new();
    let doc = f
        .builder()
        .memory_mb(256)
        .processors(1)
        .cmdline("console=ttyS0 quiet")
        .owner("test")
        .allow_overcommit(false)
        .scsi_disk(f.p("disk.raw"), true)
        .plan9_share("share", f.p("share"), false)
        .com_port(f.p("com0.log"))
        .build();
    assert_eq!(doc.validate().unwrap(), vec![]);
    let json = doc.to_json_pretty();
    let back = ComputeSystem::from_json(&json).unwrap();
    assert_eq!(back, doc);
    assert_eq!(back.memory_mb(), 256);
    assert_eq!(back.processor_count(), 1);
    assert!(!back.allow_overcommit());
    assert_eq!(back.kernel_cmdline(), "console=ttyS0 quiet");
    assert_eq!(back.platform(), Platform::Lcow);
    assert_eq!(
        back.kernel().unwrap(),
        std::path::Path::new(&f.p("vmlinux"))
    );
    let disks = back.scsi_disks();
    assert_eq!(disks.len(), 1);
    assert!(disks[0].read_only);
    assert!(json.contains("\"SizeInMB\": 256"), "{json}");
}

#[test]
fn platform_without_kernel_direct_is_wcow() {
    assert_eq!(ComputeSystem::default().platform(), Platform::Wcow);
}

/// What hcsshim's `makeLCOWDoc` writes (zero values omitted, as Go's omitempty does).
fn hcsshim_doc(f: &Files) -> String {
    format!(
        r#"{{
  "Owner": "containerd-shim-runhcs-v1.exe",
  "SchemaVersion": {{ "Major": 2, "Minor": 1 }},
  "ShouldTerminateOnLastHandleClosed": true,
  "VirtualMachine": {{
    "StopOnReset": true,
    "Chipset": {{
      "LinuxKernelDirect": {{
        "KernelFilePath": "{k}",
        "InitRdPath": "{i}",
        "KernelCmdLine": " 8250_core.nr_uarts=0 panic=-1 quiet pci=off nr_cpus=2 brd.rd_nr=0 pmtmr=0 -- -e 1 /bin/vsockexec -e 109 /bin/gcs -v4 -log-format json -loglevel debug"
      }}
    }},
    "ComputeTopology": {{
      "Memory": {{
        "SizeInMB": 1024,
        "AllowOvercommit": true,
        "EnableDeferredCommit": false,
        "EnableColdDiscardHint": false,
        "LowMMIOGapInMB": 0,
        "HighMMIOBaseInMB": 0,
        "HighMMIOGapInMB": 0
      }},
      "Processor": {{ "Count": 2, "Limit": 100000, "Weight": 0 }}
    }},
    "Devices": {{
      "Scsi": {{
        "0": {{ "Attachments": {{ "0": {{ "Type": "VirtualDisk", "Path": "{d}", "ReadOnly": true }} }} }},
        "1": {{ "Attachments": {{}} }},
        "2": {{ "Attachments": {{}} }},
        "3": {{ "Attachments": {{}} }}
      }},
      "HvSocket": {{
        "HvSocketConfig": {{
          "DefaultBindSecurityDescriptor": "D:P(A;;FA;;;SY)(A;;FA;;;BA)",
          "ServiceTable": {{
            "0000006d-facb-11e6-bd58-64006a7986d3": {{ "BindSecurityDescriptor": "D:P(A;;FA;;;SY)", "AllowWildcardBinds": true }}
          }}
        }}
      }},
      "Plan9": {{}},
      "VirtualPMem": {{ "MaximumCount": 0, "MaximumSizeBytes": 0 }},
      "ComPorts": {{ "0": {{ "NamedPipe": "{c}" }} }}
    }}
  }}
}}"#,
        k = f.p("vmlinux"),
        i = f.p("initrd.img"),
        d = f.p("disk.raw"),
        c = f.p("console.log"),
    )
}

#[test]
fn hcsshim_lcow_document_parses_with_warnings() {
    let f = Files::new();
    let doc = ComputeSystem::from_json(&hcsshim_doc(&f)).unwrap();
    assert_eq!(doc.owner, "containerd-shim-runhcs-v1.exe");
    assert_eq!(doc.memory_mb(), 1024);
    assert_eq!(doc.processor_count(), 2);
    let warnings = doc.validate().unwrap();
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert!(
        paths.contains(&"VirtualMachine.Devices.HvSocket.HvSocketConfig"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"VirtualMachine.ComputeTopology.Processor.Limit"),
        "{paths:?}"
    );
    // the round trip keeps meaning
    assert_eq!(
        ComputeSystem::from_json(&doc.to_json_pretty()).unwrap(),
        doc
    );
}

#[test]
fn unknown_field_names_its_path() {
    let f = Files::new();
    let mut v: serde_json::Value =
        serde_json::from_str(&f.builder().build().to_json_pretty()).unwrap();
    set(
        &mut v,
        "VirtualMachine.ComputeTopology.Memory.SizeInMBB",
        serde_json::json!(1),
    );
    let e = err_of(&v.to_string());
    assert_eq!(
        e,
        "VirtualMachine.ComputeTopology.Memory.SizeInMBB: unknown field"
    );
    let e = err_of(r#"{"Bogus": 1}"#);
    assert_eq!(e, "Bogus: unknown field");
    let e = err_of(
        r#"{"VirtualMachine": {"Devices": {"Scsi": {"0": {"Attachments": {"0": {"Kind": 1}}}}}}}"#,
    );
    assert_eq!(
        e,
        "VirtualMachine.Devices.Scsi.0.Attachments.0.Kind: unknown field"
    );
}

#[test]
fn type_errors_name_their_path() {
    let e = err_of(r#"{"VirtualMachine": {"ComputeTopology": {"Processor": {"Count": "two"}}}}"#);
    assert!(
        e.starts_with("VirtualMachine.ComputeTopology.Processor.Count: invalid type"),
        "{e}"
    );
    let e = err_of("{");
    assert!(e.starts_with("<document>: EOF"), "{e}");
}

#[test]
fn duplicate_json_keys_are_rejected() {
    let e = err_of(
        r#"{"VirtualMachine": {"Devices": {"ComPorts": {"0": {"NamedPipe": "/a"}, "0": {"NamedPipe": "/b"}}}}}"#,
    );
    assert!(e.starts_with("VirtualMachine.Devices.ComPorts"), "{e}");
    assert!(e.contains("duplicate key `0`"), "{e}");
}

/// Each case: a mutation of a valid document and the path its error must name.
#[test]
fn every_rejection_names_its_path() {
    let f = Files::new();
    let base: serde_json::Value = serde_json::from_str(
        &f.builder()
            .scsi_disk(f.p("disk.raw"), false)
            .plan9_share("s", f.p("share"), true)
            .com_port(f.p("com.log"))
            .build()
            .to_json_pretty(),
    )
    .unwrap();
    use serde_json::json as j;
    let cases: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        (
            "SchemaVersion.Major",
            j!(1),
            "SchemaVersion.Major",
            "must be 2",
        ),
        (
            "HostingSystemId",
            j!("abc"),
            "HostingSystemId",
            "not supported",
        ),
        (
            "VirtualMachine.Chipset.Uefi",
            j!({}),
            "VirtualMachine.Chipset.Uefi",
            "not supported",
        ),
        (
            "VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath",
            j!(f.p("nope")),
            "VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath",
            "kernel",
        ),
        (
            "VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath",
            j!(f.p("share")),
            "VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath",
            "not a regular file",
        ),
        (
            "VirtualMachine.Chipset.LinuxKernelDirect.InitRdPath",
            j!(""),
            "VirtualMachine.Chipset.LinuxKernelDirect.InitRdPath",
            "required",
        ),
        (
            "VirtualMachine.Chipset.LinuxKernelDirect.KernelCmdLine",
            j!("x".repeat(3000)),
            "VirtualMachine.Chipset.LinuxKernelDirect.KernelCmdLine",
            "longer",
        ),
        (
            "VirtualMachine.ComputeTopology.Memory.SizeInMB",
            j!(32),
            "VirtualMachine.ComputeTopology.Memory.SizeInMB",
            "must be >= 64",
        ),
        (
            "VirtualMachine.ComputeTopology.Memory.SizeInMB",
            j!(1u64 << 30),
            "VirtualMachine.ComputeTopology.Memory.SizeInMB",
            "must be <=",
        ),
        (
            "VirtualMachine.ComputeTopology.Processor.Count",
            j!(0),
            "VirtualMachine.ComputeTopology.Processor.Count",
            "must be >= 1",
        ),
        (
            "VirtualMachine.ComputeTopology.Processor.Count",
            j!(256),
            "VirtualMachine.ComputeTopology.Processor.Count",
            "must be <= 255",
        ),
        (
            "VirtualMachine.Devices.Scsi.0.Attachments.00",
            j!({"Type": "VirtualDisk", "Path": f.p("disk.raw")}),
            "VirtualMachine.Devices.Scsi.0.Attachments.00",
            "duplicate LUN 0",
        ),
        (
            "VirtualMachine.Devices.Scsi.0.Attachments.64",
            j!({"Type": "VirtualDisk", "Path": f.p("disk.raw")}),
            "VirtualMachine.Devices.Scsi.0.Attachments.64",
            "LUN must be",
        ),
        (
            "VirtualMachine.Devices.Scsi.0.Attachments.1",
            j!({"Type": "VirtualDisk", "Path": f.p("missing.vhdx")}),
            "VirtualMachine.Devices.Scsi.0.Attachments.1.Path",
            "disk",
        ),
        (
            "VirtualMachine.Devices.Scsi.0.Attachments.1",
            j!({"Type": "ExtensibleVirtualDisk", "Path": f.p("disk.raw")}),
            "VirtualMachine.Devices.Scsi.0.Attachments.1.Type",
            "not supported",
        ),
        (
            "VirtualMachine.Devices.Plan9.Shares",
            j!([{"Name": "s", "Path": f.p("vmlinux")}]),
            "VirtualMachine.Devices.Plan9.Shares.0.Path",
            "not a directory",
        ),
        (
            "VirtualMachine.Devices.Plan9.Shares",
            j!([{"Name": "s", "Path": f.p("share")}, {"Name": "s", "Path": f.p("share")}]),
            "VirtualMachine.Devices.Plan9.Shares.1.Name",
            "duplicate",
        ),
        (
            "VirtualMachine.Devices.Plan9.Shares",
            j!([{"Name": "s", "Path": f.p("share"), "AllowedFiles": ["a"]}]),
            "VirtualMachine.Devices.Plan9.Shares.0.AllowedFiles",
            "not supported",
        ),
        (
            "VirtualMachine.Devices.ComPorts.0.NamedPipe",
            j!(f.p("nodir/com.log")),
            "VirtualMachine.Devices.ComPorts.0.NamedPipe",
            "parent directory",
        ),
        (
            "VirtualMachine.Devices.ComPorts.7",
            j!({"NamedPipe": f.p("c.log")}),
            "VirtualMachine.Devices.ComPorts.7",
            "COM port index",
        ),
        (
            "VirtualMachine.Devices.VirtualPci",
            j!({}),
            "VirtualMachine.Devices.VirtualPci",
            "not supported",
        ),
        (
            "VirtualMachine.Devices.NetworkAdapters",
            j!({}),
            "VirtualMachine.Devices.NetworkAdapters",
            "not supported",
        ),
        (
            "VirtualMachine.Devices.VirtualPMem.Devices",
            j!({"0": {"HostPath": f.p("disk.raw")}}),
            "VirtualMachine.Devices.VirtualPMem.Devices.0",
            "not supported",
        ),
        (
            "VirtualMachine.SecuritySettings.Isolation.IsolationType",
            j!("SecureNestedPaging"),
            "VirtualMachine.SecuritySettings.Isolation.IsolationType",
            "not supported",
        ),
        (
            "VirtualMachine.SecuritySettings.EnableTpm",
            j!(true),
            "VirtualMachine.SecuritySettings.EnableTpm",
            "not supported",
        ),
        (
            "VirtualMachine.RegistryChanges",
            j!({}),
            "VirtualMachine.RegistryChanges",
            "not supported",
        ),
    ];
    for (at, value, want_path, want_msg) in cases {
        let mut v = base.clone();
        set(&mut v, at, value);
        let e = ComputeSystem::from_json(&v.to_string()).unwrap_err();
        assert_eq!(e.path, want_path, "setting {at}: {e}");
        let s = e.to_string();
        assert!(s.starts_with(&format!("{want_path}: ")), "{s}");
        assert!(s.contains(want_msg), "setting {at}: {s}");
    }
    // missing VirtualMachine
    let e = err_of("{}");
    assert_eq!(e, "VirtualMachine: required");
}

#[test]
fn accepted_fields_warn_once_each() {
    let f = Files::new();
    let mut doc = f.builder().build();
    let vm = doc.virtual_machine.as_mut().unwrap();
    vm.compute_topology.memory.enable_hot_hint = true;
    vm.compute_topology.processor.weight = 5;
    vm.chipset.use_utc = true;
    let w = doc.validate().unwrap();
    let paths: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "VirtualMachine.Chipset.UseUtc",
            "VirtualMachine.ComputeTopology.Memory.EnableHotHint",
            "VirtualMachine.ComputeTopology.Processor.Weight",
        ]
    );
}

#[test]
fn relative_paths_resolve_against_cwd() {
    // The test binary's cwd is the crate dir, which has Cargo.toml.
    let f = Files::new();
    let mut doc = f.builder().build();
    doc.virtual_machine
        .as_mut()
        .unwrap()
        .chipset
        .linux_kernel_direct
        .as_mut()
        .unwrap()
        .kernel_file_path = "Cargo.toml".into();
    doc.validate().unwrap();
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[A-Za-z0-9 ]{0,8}".prop_map(serde_json::Value::from),
            prop_oneof![
                Just("SizeInMB"),
                Just("Count"),
                Just("VirtualMachine"),
                Just("Devices"),
                Just("Scsi"),
                Just("0")
            ]
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            let key = prop_oneof![
                Just("VirtualMachine".to_string()),
                Just("ComputeTopology".to_string()),
                Just("Memory".to_string()),
                Just("SizeInMB".to_string()),
                Just("Processor".to_string()),
                Just("Count".to_string()),
                Just("Chipset".to_string()),
                Just("LinuxKernelDirect".to_string()),
                Just("Devices".to_string()),
                Just("Scsi".to_string()),
                Just("Attachments".to_string()),
                Just("ComPorts".to_string()),
                Just("Plan9".to_string()),
                Just("Shares".to_string()),
                Just("0".to_string()),
                "[A-Za-z]{1,6}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(key, inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,256}") {
            let _ = ComputeSystem::from_json(&s);
        }

        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let _ = ComputeSystem::from_json(&v.to_string());
        }
    }
}

#[test]
fn file_errors_chain_the_io_error() {
    let f = Files::new();
    let doc = LcowDocumentBuilder::new(f.p("missing"), f.p("initrd.img")).build();
    let e = doc.validate().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath: kernel {} cannot be used",
            f.p("missing")
        )
    );
    let src = std::error::Error::source(&e).expect("io error as source");
    assert!(src.to_string().contains("No such file"), "{src}");
}
