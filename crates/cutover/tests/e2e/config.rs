//! `cutover check` (and `serve`) reject bad configs with file, line and key, exit code 2.

use std::process::Command;

use crate::support::*;

fn check(text: &str) -> (i32, String) {
    let dir = TempDir::new("check");
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(CUTOVER).arg("check").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap(),
        err.replace(&*path.to_string_lossy(), "cutover.toml"),
    )
}

const BASE: &str = "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n[services.chat.green]\nendpoints = [\"127.0.0.1:9002\"]\n";

#[test]
fn good_config_passes() {
    let (code, out) = check(BASE);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 service)"), "{out}");
}

#[test]
fn syntax_error_gives_line_and_exit_2() {
    let (code, out) = check(&format!("{BASE}[services.chat.release\n"));
    assert_eq!(code, 2);
    assert!(out.contains("cutover.toml:7:"), "{out}");
}

#[test]
fn unknown_key_gives_line_key_and_exit_2() {
    let (code, out) = check(&BASE.replace("listen =", "lisen ="));
    assert_eq!(code, 2);
    assert!(out.contains("cutover.toml:2:"), "{out}");
    assert!(out.contains("lisen"), "{out}");
}

#[test]
fn bad_duration_gives_line_key_and_exit_2() {
    let (code, out) = check(&format!("{BASE}[services.chat.release]\nscale_down_delay = \"soon\"\n"));
    assert_eq!(code, 2);
    assert!(
        out.contains("cutover.toml:8: key `services.chat.release.scale_down_delay`"),
        "{out}"
    );
    assert!(out.contains("invalid duration \"soon\""), "{out}");
}

#[test]
fn duplicate_ports_give_line_and_exit_2() {
    let text = "[services.chat]\nlisten = \"127.0.0.1:8080\"\npreview_listen = \"127.0.0.1:8080\"\n[services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n[services.chat.green]\nendpoints = [\"127.0.0.1:9002\"]\n";
    let (code, out) = check(text);
    assert_eq!(code, 2);
    assert!(
        out.contains("cutover.toml:3: key `services.chat.preview_listen`"),
        "{out}"
    );
    assert!(out.contains("already used"), "{out}");
}

#[test]
fn serve_with_a_bad_config_exits_2_before_binding_anything() {
    let dir = TempDir::new("serve-bad");
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, BASE.replace("9002", "nine")).unwrap();
    let out = Command::new(CUTOVER)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":6: key `services.chat.green.endpoints`"));
    assert!(!dir.path().join("cutover.db").exists(), "nothing was created");
}
