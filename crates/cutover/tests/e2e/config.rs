//! `cutover check` (and `serve`) reject bad configs with file, line and key, exit code 2;
//! `check` warns (exit 0) about what this machine lacks.

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

fn managed(command: &str, ports: &str) -> String {
    format!("[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.run]\ncommand = {command}\nports = {ports}\n")
}

#[test]
fn unknown_placeholders_name_the_line_key_and_the_known_ones() {
    let (code, out) = check(&managed(
        r#"["mock-model", "--port", "{prot}"]"#,
        "{ blue = [9001], green = [9002] }",
    ));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("cutover.toml:4: key `services.chat.run.command[2]`"),
        "{out}"
    );
    assert!(
        out.contains("unknown placeholder {prot}") && out.contains("did you mean {port}?"),
        "{out}"
    );
    assert!(out.contains("{version}, {port}, {color}, {replica}"), "{out}");
    let text = managed(
        r#"["mock-model", "--port", "{port}"]"#,
        "{ blue = [9001], green = [9002] }",
    ) + "env = { CUDA_VISIBLE_DEVICES = \"{gpu}\" }\n";
    let (code, out) = check(&text);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("cutover.toml:6: key `services.chat.run.env.CUDA_VISIBLE_DEVICES`"),
        "{out}"
    );
}

#[test]
fn a_managed_command_without_port_and_blue_green_on_one_endpoint_are_errors() {
    let (code, out) = check(&managed(
        r#"["mock-model", "--model-version", "{version}"]"#,
        "{ blue = [9001], green = [9002] }",
    ));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("cutover.toml:4: key `services.chat.run.command`: no {port}"),
        "{out}"
    );
    assert!(out.contains("health_timeout"), "{out}");
    let (code, out) = check(&BASE.replace("9002", "9001"));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("cutover.toml:6: key `services.chat.green.endpoints`"),
        "{out}"
    );
    assert!(out.contains("in both blue and green"), "{out}");
}

#[test]
fn a_missing_program_and_a_taken_port_are_warnings_with_line_and_key_exit_0() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let free = free_port();
    let text = managed(
        r#"["no-such-model-server-xyz", "--port", "{port}"]"#,
        &format!("{{ blue = [{busy}], green = [{free}] }}"),
    ) + "[services.chat.release.hooks]\npre_switch = [[\"./no-such-hook.sh\"]]\n";
    let dir = TempDir::new("check-warn");
    let path = dir.path().join("cutover.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(CUTOVER).arg("check").arg(&path).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).replace(&*path.to_string_lossy(), "cutover.toml"),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("ok (1 service, 3 warnings)"), "{stdout}");
    assert!(
        stderr.contains(
            "warning: cutover.toml:4: key `services.chat.run.command[0]`: program \"no-such-model-server-xyz\""
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "warning: cutover.toml:5: key `services.chat.run.ports.blue`: port {busy}"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(&format!("port {free}")), "{stderr}");
    assert!(
        stderr.contains("key `services.chat.release.hooks.pre_switch[0]`"),
        "{stderr}"
    );
    drop(taken);
}

#[test]
fn the_managed_example_config_checks() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/managed.toml");
    let out = Command::new(CUTOVER).arg("check").arg(path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok (1 service"), "{stdout}");
    // Only "vllm is not installed here" may be warned about.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for w in stderr.lines() {
        assert!(w.contains("program \"vllm\""), "unexpected warning: {w}");
    }
}

/// Issue #25: `check` stopped at the first error; every one is named, in file order.
#[test]
fn check_names_every_error_in_one_run() {
    // Three parts of the file, each wrong; embed's typo also leaves it without `listen`.
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:99999\"\n{BASE}[services.chat.release]\nscale_down_delay = \"soon\"\n[services.embed]\nlisen = \"x\"\n"
    );
    let (code, out) = check(&text);
    assert_eq!(code, 2, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 5, "{out}");
    assert!(
        errors[0].starts_with("error: cutover.toml:2: key `admin.listen`"),
        "{out}"
    );
    assert!(
        errors[1].starts_with("error: cutover.toml:10: key `services.chat.release.scale_down_delay`"),
        "{out}"
    );
    // `listen` is optional to serde (a service may have `listener` instead): its absence is
    // said by validation, which then also sees that embed has no environments.
    assert!(
        errors[2].starts_with("error: cutover.toml:11: key `services.embed.listen`: missing `listen`"),
        "{out}"
    );
    assert!(
        errors[3].starts_with("error: cutover.toml:11: key `services.embed`: needs either static endpoints"),
        "{out}"
    );
    assert!(
        errors[4].starts_with("error: cutover.toml:12: key `services.embed.lisen`"),
        "{out}"
    );
    assert!(out.contains("5 errors"), "{out}");
}

#[test]
fn a_config_without_services_is_refused() {
    let (code, out) = check("[admin]\nlisten = \"127.0.0.1:9901\"\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no service is configured"), "{out}");
    assert!(!out.contains("ok (0 services)"), "{out}");
}

#[test]
fn check_says_it_cannot_follow_a_shell_script() {
    let text = "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.run]\n\
        command = [\"sh\", \"-c\", 'exec some-server --port \"$1\"', \"sh\", \"{port}\"]\nports = { blue = [9001], green = [9002] }\n";
    let (code, out) = check(text);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: cutover.toml:4: key `services.chat.run.command`: `sh -c` runs a script: the programs it starts were not checked"),
        "{out}"
    );
}
