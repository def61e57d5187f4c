//! `vpn-filter registry keygen` and `registry publish`, run as the operator runs them (the
//! built binary, target/debug/vpn-filter): what they write, and how they refuse bad input.
//! No privileges needed.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn controller() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/..")
        .join("vpn-filter");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p vpn-filter`",
        bin.display()
    );
    bin
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(vpn_filter_tests::netns::unique(&format!("pub{tag}")));
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn s(&self, name: &str) -> String {
        self.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vpnf(args: &[&str]) -> Output {
    Command::new(controller())
        .args(args)
        .output()
        .expect("run vpn-filter")
}

fn ok(args: &[&str]) -> String {
    let out = vpnf(args);
    assert!(
        out.status.success(),
        "vpn-filter {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = vpnf(args);
    assert!(
        !out.status.success(),
        "vpn-filter {args:?} must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const HEADER: &str = "id,holder,category,prefix,status,approved_at,expires_at\n";

fn csv(rows: &[(&str, &str, &str)]) -> String {
    let mut s = HEADER.to_string();
    for (id, prefix, status) in rows {
        s.push_str(&format!(
            "{id},holder of {id},company,{prefix},{status},2026-01-01T00:00:00Z,\n"
        ));
    }
    s
}

fn feed_serial(path: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read feed")).expect("JSON");
    v["serial"].as_u64().expect("serial")
}

/// A key pair and an output directory.
fn setup(tag: &str) -> Dir {
    let d = Dir::new(tag);
    ok(&["registry", "keygen", &d.s("signing.pem")]);
    d
}

fn publish(d: &Dir, input: &str, extra: &[&str]) -> Output {
    std::fs::write(d.join("input.csv"), input).expect("write input");
    let mut args = vec![
        "registry".to_string(),
        "publish".into(),
        d.s("input.csv"),
        "--out".into(),
        d.s("out"),
        "--key".into(),
        d.s("signing.pem"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    vpnf(&args)
}

fn published(d: &Dir, input: &str) -> String {
    let out = publish(d, input, &[]);
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_a_public_key_validate_accepts() {
    let d = setup("kg");
    let private = std::fs::metadata(d.join("signing.pem")).expect("private key");
    assert_eq!(private.permissions().mode() & 0o777, 0o600);
    let public = std::fs::read_to_string(d.join("signing.pem.pub")).expect("public key");
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    published(&d, &csv(&[("REG-1", "10.1.0.0/24", "approved")]));
    let out = ok(&[
        "registry",
        "validate",
        "--registry-pubkey",
        &d.s("signing.pem.pub"),
        &d.s("out/current/feed.json"),
    ]);
    assert!(out.contains("signature valid"), "{out}");
}

#[test]
fn keygen_refuses_to_overwrite_a_key_or_to_write_into_a_missing_directory() {
    let d = setup("kgbad");
    let before = std::fs::read(d.join("signing.pem")).unwrap();
    let err = fails(&["registry", "keygen", &d.s("signing.pem")]);
    assert!(
        err.contains(&d.s("signing.pem")) && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("signing.pem")).unwrap(), before);
    // Only the public key's path is taken: nothing is written at all.
    std::fs::write(d.join("taken.pub"), "x").unwrap();
    let err = fails(&[
        "registry",
        "keygen",
        &d.s("new.pem"),
        "--public-key",
        &d.s("taken.pub"),
    ]);
    assert!(
        err.contains("taken.pub") && err.contains("already exists"),
        "{err}"
    );
    assert!(!d.join("new.pem").exists(), "no private key left behind");
    let err = fails(&["registry", "keygen", &d.s("no/such/dir/k.pem")]);
    assert!(
        err.contains("does not exist") && err.contains("no/such/dir"),
        "{err}"
    );
}

#[test]
fn publish_refuses_a_feed_validate_refuses_naming_line_and_column_and_writes_nothing() {
    let d = setup("bad");
    let input =
        format!("{HEADER}REG-1,Acme,company,10.0.0.300/24,approved,2026-01-01T00:00:00Z,\n");
    let out = publish(&d, &input, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2, column 4 (prefix)")
            && err.contains("REG-1")
            && err.contains("10.0.0.300"),
        "{err}"
    );
    assert!(err.contains("nothing was published"), "{err}");
    assert!(!d.join("out/current").exists(), "nothing published");
    let validate = fails(&["registry", "validate", &d.s("input.csv")]);
    assert!(validate.contains("line 2, column 4 (prefix)"), "{validate}");
}

#[test]
fn publish_refuses_a_key_that_is_not_an_ed25519_private_key_naming_the_file() {
    let d = setup("key");
    std::fs::write(
        d.join("input.csv"),
        csv(&[("REG-1", "10.1.0.0/24", "approved")]),
    )
    .unwrap();
    let err = fails(&[
        "registry",
        "publish",
        &d.s("input.csv"),
        "--out",
        &d.s("out"),
        "--key",
        &d.s("signing.pem.pub"),
    ]);
    assert!(
        err.contains(&d.s("signing.pem.pub")) && err.contains("not an Ed25519 private key"),
        "{err}"
    );
    let err = fails(&[
        "registry",
        "publish",
        &d.s("input.csv"),
        "--out",
        &d.s("out"),
        "--key",
        &d.s("missing.pem"),
    ]);
    assert!(err.contains("missing.pem"), "{err}");
    assert!(!d.join("out/current").exists());
}

#[test]
fn each_publication_raises_the_serial_prints_the_diff_and_switches_current_to_a_complete_release() {
    let d = setup("diff");
    let first = published(
        &d,
        &csv(&[
            ("REG-1", "10.1.0.0/24", "approved"),
            ("REG-2", "10.2.0.0/24", "approved"),
        ]),
    );
    assert!(first.contains("-> serial 1: 2 added"), "{first}");
    let second = published(
        &d,
        &csv(&[
            ("REG-1", "10.1.0.0/24", "revoked"),
            ("REG-3", "10.3.0.0/24", "approved"),
        ]),
    );
    assert!(
        second.contains("serial 1 -> serial 2: 1 added, 1 removed, 1 changed, 0 unchanged"),
        "{second}"
    );
    assert!(second.contains("+ REG-3"), "{second}");
    assert!(second.contains("- REG-2"), "{second}");
    assert!(
        second.contains("~ REG-1: status approved -> revoked"),
        "{second}"
    );
    assert_eq!(
        std::fs::read_link(d.join("out/current")).unwrap(),
        Path::new("releases/2")
    );
    assert_eq!(feed_serial(&d.join("out/current/feed.json")), 2);
    assert!(d.join("out/current/feed.json.sig").exists());
    assert_eq!(feed_serial(&d.join("out/releases/1/feed.json")), 1);
    // Static servers make the ETag from the modification time in seconds and the size: each
    // release's feed is at least a second younger than the previous one.
    let mtime = |p: &str| std::fs::metadata(d.join(p)).unwrap().modified().unwrap();
    assert!(
        mtime("out/releases/2/feed.json")
            >= mtime("out/releases/1/feed.json") + std::time::Duration::from_secs(1)
    );

    // `current` rolled back by hand to release 1: the next publication still rises above 2.
    std::os::unix::fs::symlink("releases/1", d.join("out/tmp-link")).unwrap();
    std::fs::rename(d.join("out/tmp-link"), d.join("out/current")).unwrap();
    let third = published(&d, &csv(&[("REG-1", "10.1.0.0/24", "approved")]));
    assert!(third.contains("serial 1 -> serial 3"), "{third}");
    assert_eq!(feed_serial(&d.join("out/current/feed.json")), 3);
}

#[test]
fn publish_refuses_a_feed_that_empties_the_allowlist_unless_forced() {
    let d = setup("shrink");
    published(&d, &csv(&[("REG-1", "10.1.0.0/24", "approved")]));
    let out = publish(&d, &csv(&[("REG-1", "10.1.0.0/24", "revoked")]), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateways with default settings would refuse this feed")
            && err.contains("--force-shrink"),
        "{err}"
    );
    assert_eq!(feed_serial(&d.join("out/current/feed.json")), 1);
    let out = publish(
        &d,
        &csv(&[("REG-1", "10.1.0.0/24", "revoked")]),
        &["--force-shrink"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(feed_serial(&d.join("out/current/feed.json")), 2);
}

#[test]
fn publish_refuses_an_output_directory_it_did_not_make() {
    let d = setup("out");
    std::fs::create_dir_all(d.join("out/current")).unwrap();
    let out = publish(&d, &csv(&[("REG-1", "10.1.0.0/24", "approved")]), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("current") && err.contains("is not a symlink"),
        "{err}"
    );
}

#[test]
fn a_second_publisher_on_the_same_directory_is_refused() {
    let d = setup("lock");
    published(&d, &csv(&[("REG-1", "10.1.0.0/24", "approved")]));
    let lock = d.join("out/.publish.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    // Held once a non-blocking attempt fails (a hang guard bounded by attempts).
    let mut attempts = 0;
    while Command::new("flock")
        .arg("-n")
        .arg(&lock)
        .arg("true")
        .status()
        .expect("flock -n")
        .success()
    {
        attempts += 1;
        assert!(attempts < 500, "flock never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = publish(&d, &csv(&[("REG-2", "10.2.0.0/24", "approved")]), &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another `registry publish`"), "{err}");
    assert_eq!(feed_serial(&d.join("out/current/feed.json")), 1);
}

#[test]
fn the_published_files_are_world_readable_for_the_web_server_whatever_the_umask() {
    use std::os::unix::process::CommandExt as _;
    let d = setup("umask");
    std::fs::write(
        d.join("input.csv"),
        csv(&[("REG-1", "10.1.0.0/24", "approved")]),
    )
    .unwrap();
    let mut cmd = Command::new(controller());
    cmd.args(["registry", "publish"])
        .arg(d.join("input.csv"))
        .arg("--out")
        .arg(d.join("out"))
        .arg("--key")
        .arg(d.join("signing.pem"));
    // SAFETY: umask(2) only, in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let out = cmd.output().expect("publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("out/releases"), 0o755);
    assert_eq!(mode("out/releases/1"), 0o755);
    assert_eq!(mode("out/releases/1/feed.json"), 0o644);
    assert_eq!(mode("out/releases/1/feed.json.sig"), 0o644);
}
