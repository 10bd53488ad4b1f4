//! The example scripts: `examples/fleet/run.sh` says what it does, fails fast and cleans up
//! when something it starts does not come up (it hung forever with no output, issue #25).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn the_fleet_example_says_what_failed_and_leaves_nothing_behind() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = TempDir::new("fleet-example");
    // An "etcd" that cannot start, as a real one whose port is taken would not.
    let fake = dir.path().join("bin");
    std::fs::create_dir_all(&fake).unwrap();
    let etcd = fake.join("etcd");
    std::fs::write(
        &etcd,
        "#!/bin/sh\necho \"etcd: listen tcp: address already in use\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&etcd, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let bin = std::path::Path::new(CUTOVER).parent().unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("bash")
        .arg(root.join("examples/fleet/run.sh"))
        .env("PATH", path)
        .env("CUTOVER_BIN_DIR", bin)
        .env("TMPDIR", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the example still runs after 60 s: a wait without a bound");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("== starting 3 etcd members"), "progress: {stdout}");
    assert!(stderr.contains("exited while waiting for etcd member m0"), "{stderr}");
    assert!(
        stderr.contains("etcd: listen tcp: address already in use"),
        "the log's last lines: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "its work folder is removed: {left:?}");
}
