//! The CLI as a person and a CI job use it: following a release (phase lines, heartbeats,
//! the approval commands, Ctrl-C and re-attaching), listing and showing releases, logs of
//! managed colors, messages for wrong input, a closed stdout, a manual switch under a
//! release, the history's actors, `--help`, completions and man pages.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::support::*;

// min_requests = 0: these releases see no traffic, and an inconclusive bake would make
// `--wait` exit 4 (live but not verified) instead of 0.
const MANUAL: &str = "promotion = \"manual\"\n[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n";

/// A static service with blue (v1) live and green (v2) idle, promotion manual.
async fn manual_router() -> (Router, Mock, Mock) {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n{MANUAL}\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    (r, blue, green)
}

/// A CLI process whose stdout lines are collected as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr; they end at the pipes' end.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(r: &Router, args: &[&str]) -> Running {
        let mut child = Command::new(CUTOVER)
            .args(args)
            .env("CUTOVER_ADMIN", r.admin_url(""))
            .env("CUTOVER_TOKEN", &r.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let l = lines.clone();
        let out = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let e = stderr.clone();
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            e.lock().unwrap().push_str(&s);
        });
        Running {
            child,
            lines,
            stderr,
            readers: vec![out, err],
        }
    }

    /// Waits for a line containing `pat`; returns it.
    async fn line(&self, pat: &str, timeout: Duration) -> String {
        let lines = self.lines.clone();
        let all = self.lines.clone();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(l) = lines.lock().unwrap().iter().find(|l| l.contains(pat)) {
                    return l.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no line with {pat:?} in {timeout:?}: {:#?}", all.lock().unwrap()))
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the exit; returns (code, stdout, stderr).
    async fn exit(mut self, timeout: Duration) -> (i32, String, String) {
        let code = wait_for("the CLI to exit", timeout, || {
            let st = self.child.try_wait().unwrap();
            async move { st.map(|s| s.code().unwrap_or(-1)) }
        })
        .await;
        // Everything the process wrote is read once its pipes end.
        for h in std::mem::take(&mut self.readers) {
            tokio::task::spawn_blocking(move || h.join().unwrap()).await.unwrap();
        }
        let err = self.stderr.lock().unwrap().clone();
        (code, self.text(), err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release in progress, from the API.
async fn active(r: &Router) -> Value {
    r.status().await["release"].clone()
}

#[tokio::test]
async fn release_wait_into_a_closed_pipe_ends_quietly_with_141() {
    let (r, _b, _g) = manual_router().await;
    // Off a terminal, a heartbeat line every second: the CLI writes after the reader left.
    let mut child = Command::new(CUTOVER)
        .args(["release", "chat", "v2", "--wait", "--heartbeat", "1s"])
        .env("CUTOVER_ADMIN", r.admin_url(""))
        .env("CUTOVER_TOKEN", &r.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        // `| head -1`: read one line, then close the pipe.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut first).unwrap();
    }
    assert!(first.starts_with("chat: release #"), "{first}");
    let id: i64 = first["chat: release #".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let status = wait_for("the CLI to notice the closed pipe", Duration::from_secs(20), || {
        let st = child.try_wait().unwrap();
        async move { st }
    })
    .await;
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(141), "stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert_eq!(err, "", "a closed pipe ends the CLI quietly");
    // Only the follower went away: the release goes on and waits for its approval.
    let d = r.wait_phase(id, "awaiting_approval", Duration::from_secs(20)).await;
    assert!(d["outcome"].is_null(), "{d}");
}

#[tokio::test]
async fn ctrl_c_then_release_follow_reattaches_with_heartbeats_and_the_commands_to_approve() {
    let (r, _b, _g) = manual_router().await;
    let wait = Running::start(&r, &["release", "chat", "v2", "--wait", "--heartbeat", "1s"]);
    wait.line("approve: cutover approve chat --release", Duration::from_secs(20))
        .await;
    wait.signal("INT");
    let (code, out, err) = wait.exit(Duration::from_secs(10)).await;
    assert_eq!(code, 130, "{out}\n{err}");
    assert!(err.contains("`cutover release follow chat"), "{err}");
    let id = active(&r).await["id"].as_i64().unwrap();

    // A second `release --wait` is refused, and says how to re-attach.
    let (code, _, err) = r.cli(&["release", "chat", "v3", "--wait"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("release_in_progress") || err.contains("in progress"),
        "{err}"
    );
    assert!(err.contains("cutover release follow chat"), "{err}");

    let follow = Running::start(&r, &["release", "follow", "chat", "--heartbeat", "1s"]);
    follow
        .line(
            &format!("chat: release #{id} of v2 into green"),
            Duration::from_secs(10),
        )
        .await;
    // The phases already done, each with its time and detail.
    follow.line("smoke_testing", Duration::from_secs(10)).await;
    let approve = follow
        .line("approve: cutover approve chat --release", Duration::from_secs(10))
        .await;
    follow
        .line("abort:   cutover abort chat --release", Duration::from_secs(10))
        .await;
    // Off a terminal: a heartbeat saying what is awaited, at least every --heartbeat.
    let beat = follow.line("awaiting_approval  … ", Duration::from_secs(10)).await;
    assert!(beat.contains("waiting for approval"), "{beat}");

    // The printed command works as printed (it names the router: not the default address).
    let cmd = approve.split("approve: ").nth(1).unwrap().trim().to_string();
    assert!(
        cmd.contains(&format!("--release {id}")) && cmd.contains("--admin http://127.0.0.1:"),
        "{cmd}"
    );
    let argv: Vec<&str> = cmd.split_whitespace().skip(1).collect();
    let (code, out, err) = r.cli(&argv);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("release #{id} approved; now ")), "{out}");

    let (code, out, err) = follow.exit(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "follow exits like --wait: {out}\n{err}");
    assert!(
        out.contains("verifying") && out.contains(&format!("release #{id} of v2 completed")),
        "{out}"
    );
    // Phase starts are announced on their own line off a terminal.
    assert!(out.contains("pre_switch_hooks   started"), "{out}");

    // Re-attaching to a release that has ended prints it and exits by its outcome.
    let (code, out, _) = r.cli(&["release", "follow", "chat", &id.to_string()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("completed"), "{out}");
    let (code, _, err) = r.cli(&["release", "follow", "chat"]);
    assert_eq!(code, 1);
    assert!(err.contains("no release is in progress in chat; the latest"), "{err}");
}

#[tokio::test]
async fn waiting_healthy_heartbeats_say_which_endpoints_are_awaited_and_the_deadline() {
    let ports = ManagedPorts::new();
    let release = "health_timeout = \"1m\"\n[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n";
    let r = Router::start(&managed_service(&ports, &["--startup-delay", "4s"], release)).await;
    let wait = Running::start(&r, &["release", "chat", "v1", "--wait", "--heartbeat", "1s"]);
    let beat = wait.line("not healthy yet", Duration::from_secs(20)).await;
    assert!(beat.contains("waiting_healthy") && beat.contains("of 1m"), "{beat}");
    // The probes' own words: what the last one saw (nothing listens yet).
    let beat = wait.line("last probe", Duration::from_secs(20)).await;
    assert!(beat.contains("ago: "), "{beat}");
    assert!(
        beat.contains(&format!("1 of 1 endpoints not healthy yet (127.0.0.1:{}", ports.blue)),
        "{beat}"
    );
    let (code, out, err) = wait.exit(Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("waiting_healthy    started"), "{out}");
}

#[tokio::test]
async fn approve_after_abort_and_a_second_abort_say_what_happened() {
    let (r, _b, _g) = manual_router().await;
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(20)).await;
    let path = format!("/v1/services/chat/releases/{id}");
    let abort = r.api(Method::POST, &format!("{path}/abort"), json!({})).await;
    assert_eq!(abort.status, 200, "{}", abort.text());
    // Right after the abort the phase may still read awaiting_approval: never "approved".
    let approve = r.api(Method::POST, &format!("{path}/approve"), json!({})).await;
    assert_eq!(approve.status, 409, "{}", approve.text());
    let again = r.api(Method::POST, &format!("{path}/abort"), json!({})).await;
    assert!(again.status == 409, "{}", again.text());
    let msg = again.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(!msg.contains("switched"), "nothing switched: {msg}");
    let d = r.wait_end(id, Duration::from_secs(20)).await;
    assert_eq!(d["outcome"], "aborted");

    // Through the CLI: nothing to approve or abort any more, and it says so (exit 1).
    let (code, _, err) = r.cli(&["approve", "chat"]);
    assert_eq!(code, 1);
    assert!(err.contains("no release is in progress in chat"), "{err}");
    assert!(err.contains(&format!("#{id} of v2, is aborted")), "{err}");
    let (code, _, err) = r.cli(&["abort", "chat"]);
    assert_eq!(code, 1);
    assert!(!err.contains("switched"), "{err}");
}

#[tokio::test]
async fn a_manual_switch_under_a_release_is_refused_unless_forced_which_ends_the_release() {
    let (r, _b, _g) = manual_router().await;
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(20)).await;
    let (code, _, err) = r.cli(&["switch", "chat"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("release #{id} of v2 is awaiting_approval")),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let refused = r.switch("green").await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.json()["error"]["code"], "release_in_progress");
    assert_eq!(r.status().await["live"], "blue", "nothing switched");
    assert_eq!(active(&r).await["phase"], "awaiting_approval");

    let (code, out, err) = r.cli(&["switch", "chat", "--force", "--reason", "hotfix"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("green is live") && out.contains(&format!("release #{id} ended (aborted)")),
        "{out}"
    );
    assert!(
        active(&r).await.is_null(),
        "the release is over when the switch answers"
    );
    let d = r.release_doc(id).await;
    assert_eq!(d["outcome"], "aborted");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("forced manual switch to green") && reason.contains("hotfix"),
        "{reason}"
    );
    let st = r.status().await;
    assert_eq!(st["live"], "green");
    assert_eq!(st["colors"]["green"]["state"], "live", "{st}");
}

#[tokio::test]
async fn approvals_and_aborts_are_in_the_history_with_their_actor_even_without_user() {
    let (r, _b, _g) = manual_router().await;
    let cli = |args: &[&str]| {
        let out = Command::new(CUTOVER)
            .args(args)
            .env("CUTOVER_ADMIN", r.admin_url(""))
            .env("CUTOVER_TOKEN", &r.token)
            .env_remove("USER")
            .env_remove("LOGNAME")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(20)).await;
    let (code, err) = cli(&["approve", "chat"]);
    assert_eq!(code, 0, "{err}");
    r.wait_end(id, Duration::from_secs(20)).await;
    let id = r.release("v3").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(20)).await;
    let (code, err) = cli(&["abort", "chat", "--release", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    r.wait_end(id, Duration::from_secs(20)).await;

    let h = r
        .api(Method::GET, "/v1/services/chat/history", Value::Null)
        .await
        .json();
    let by_kind = |k: &str| -> Value {
        h["history"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("no {k} in {h}"))
    };
    for kind in ["release_approved", "release_aborted"] {
        let actor = by_kind(kind)["actor"].as_str().unwrap().to_string();
        assert!(
            actor.starts_with("token:admin (cli:") && !actor.contains("cli:unknown"),
            "{kind} by {actor}"
        );
    }
    let (code, out, _) = r.cli(&["history", "chat"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("release_approved") && out.contains("release_aborted"),
        "{out}"
    );
}

#[tokio::test]
async fn wrong_input_gets_plain_messages() {
    let (r, _b, _g) = manual_router().await;
    let (code, _, err) = r.cli(&["switch", "chat", "purple"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown color \"purple\": expected blue or green"),
        "{err}"
    );
    assert!(!err.contains("column"), "{err}");
    let api = r.switch("purple").await;
    assert_eq!(api.status, 400);
    assert_eq!(
        api.json()["error"]["message"],
        "unknown color \"purple\": expected blue or green"
    );

    let bare = format!("127.0.0.1:{}", r.admin);
    let (code, _, err) = r.cli(&["status", "--admin", &bare]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("did you mean http://{bare}?")), "{err}");
    assert!(!err.contains("invalid format"), "{err}");
}

#[tokio::test]
async fn an_unhealthy_target_says_to_pass_dash_dash_force() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &["--fail-health"]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);
    let (code, _, err) = r.cli(&["switch", "chat", "green"]);
    assert_eq!(code, 1);
    assert!(err.contains("pass --force"), "{err}");
}

#[tokio::test]
async fn releases_lists_and_release_show_prints_one() {
    let (r, _b, _g) = manual_router().await;
    let (code, out, _) = r.cli(&["releases", "chat"]);
    assert_eq!((code, out.trim()), (0, "chat: no releases yet"));
    let (code, _, err) = r.cli(&["release", "show", "chat"]);
    assert_eq!(code, 1);
    assert!(err.contains("chat has no releases yet"), "{err}");
    let first = r.release("v2").await;
    r.wait_phase(first, "awaiting_approval", Duration::from_secs(20)).await;
    assert_eq!(r.cli(&["abort", "chat"]).0, 0);
    r.wait_end(first, Duration::from_secs(20)).await;
    let second = r.release("v3").await;
    r.wait_phase(second, "awaiting_approval", Duration::from_secs(20)).await;

    let (code, out, _) = r.cli(&["releases", "chat"]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 3, "header and two releases: {out}");
    assert!(
        rows[1].contains(&format!("#{second}")) && rows[1].contains("awaiting_approval"),
        "{out}"
    );
    assert!(
        rows[2].contains(&format!("#{first}")) && rows[2].contains("aborted"),
        "{out}"
    );

    let (code, out, _) = r.cli(&["release", "show", "chat"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("release #{second} of v3 into green")), "{out}");
    assert!(
        out.contains("smoke_testing") && out.contains("in progress: awaiting_approval"),
        "{out}"
    );
    let (code, out, _) = r.cli(&["release", "show", "chat", &first.to_string(), "--json"]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (doc["id"].as_i64(), doc["outcome"].as_str()),
        (Some(first), Some("aborted"))
    );
    let (code, out, _) = r.cli(&["releases", "chat", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["releases"][0]["phase_deadline_s"],
        Value::Null,
        "no deadline while awaiting approval"
    );
}

#[tokio::test]
async fn logs_show_and_follow_a_managed_color_across_a_new_log_file() {
    let ports = ManagedPorts::new();
    let release = "[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n";
    let r = Router::start(&managed_service(&ports, &[], release)).await;
    let id = r.release("v1").await;
    assert_eq!(r.wait_end(id, Duration::from_secs(60)).await["outcome"], "completed");
    // The supervisor's stable name for the current file of blue's replica 0 (a symlink).
    let log = r.dir.path().join("cutover-data").join("logs").join("chat-blue-0.log");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .map(|mut f| std::io::Write::write_all(&mut f, b"line from the test\n"))
        .unwrap()
        .unwrap();
    let (code, out, err) = r.cli(&["logs", "chat", "blue", "--tail", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "line from the test\n");
    // Both colors: lines say whose they are; green never started.
    let (code, out, err) = r.cli(&["logs", "chat", "--tail", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "[blue/0] line from the test\n");
    assert!(err.contains("[green/0] no log yet"), "{err}");

    let follow = Running::start(&r, &["logs", "chat", "blue", "-f", "--tail", "1"]);
    // Its first read is done once the tail is out: what is written next is new.
    follow.line("line from the test", Duration::from_secs(10)).await;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .map(|mut f| std::io::Write::write_all(&mut f, b"written while following\n"))
        .unwrap()
        .unwrap();
    follow.line("written while following", Duration::from_secs(10)).await;
    // The model server dies; the supervisor starts it again, into a new log file (one per
    // start, opened by a header line): the follower moves to it.
    kill_mock_on(ports.blue);
    let header = follow.line("=== cutover start", Duration::from_secs(30)).await;
    assert!(header.contains("color=blue replica=0 version=v1"), "{header}");
    let text = follow.text();
    assert_eq!(text.matches("line from the test").count(), 1, "each line once: {text}");

    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let s = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let (code, _, err) = s.cli(&["logs", "chat"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("static endpoints"), "{err}");
}

#[test]
fn every_command_has_help_with_examples_and_completions_and_man_pages_generate() {
    let run = |args: &[&str]| {
        let out = Command::new(CUTOVER).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = run(&["--help"]);
    assert!(top.contains("Exit codes:") && top.contains("141"), "{top}");
    // Issue #25: exit code 4 (live but not verified) was missing; 5 is --timeout's.
    for help in [top.clone(), run(&["release", "--help"])] {
        assert!(
            help.contains("4 the release is live but not verified") || help.contains("4 live but not verified"),
            "{help}"
        );
        assert!(help.contains("5 --timeout passed"), "{help}");
    }
    for cmd in [
        "serve",
        "demo",
        "check",
        "status",
        "history",
        "switch",
        "release",
        "releases",
        "approve",
        "abort",
        "rollback",
        "stop",
        "logs",
        "completions",
        "man",
    ] {
        let help = run(&[cmd, "--help"]);
        assert!(help.contains("Examples:") || help.contains("Example:"), "{cmd}: {help}");
        assert!(top.contains(&format!("  {cmd} ")), "{cmd} listed in the top help");
    }
    for sub in ["show", "follow"] {
        assert!(run(&["release", sub, "--help"]).contains("Examples:"), "release {sub}");
    }
    assert!(
        run(&["status", "--help"]).contains("http://127.0.0.1:9901"),
        "the default admin URL"
    );
    assert!(run(&["completions", "bash"]).contains("_cutover()"));
    assert!(run(&["completions", "zsh"]).contains("#compdef cutover"));
    assert!(run(&["completions", "fish"]).contains("complete -c cutover"));
    assert!(run(&["man"]).contains(".TH cutover 1"));
    let dir = TempDir::new("man");
    run(&["man", "--dir", &dir.path().to_string_lossy()]);
    let page = std::fs::read_to_string(dir.path().join("cutover-release.1")).unwrap();
    assert!(page.contains("cutover\\-release") && page.contains("follow"), "{page}");
}

/// A release that completes with an inconclusive verification (no traffic in the bake) is live
/// but unverified: `release --wait` exits 4, not 0, so a pipeline that reads "0 = live and
/// verified" is not misled.
#[tokio::test]
async fn an_unverified_release_exits_4_not_0() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n[services.chat.release.verify]\nbake = \"500ms\"\nmin_requests = 1000\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    let (code, out, err) = r.cli_async(&["release", "chat", "v2", "--wait"]).await;
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        err.contains("live but not verified") && err.contains("inconclusive"),
        "{err}"
    );
    assert_eq!(r.status().await["live"], "green", "it is live all the same");
}

/// Issue #25: `--admin` at the data port or a foreign server printed `error: "" (HTTP 404)`.
#[tokio::test]
async fn an_admin_url_that_is_not_cutover_says_so_with_exit_3() {
    let (r, blue, _g) = manual_router().await;
    for (what, url) in [
        ("the service's listener", format!("http://127.0.0.1:{}", r.listen)),
        ("a model server", format!("http://127.0.0.1:{}", blue.port)),
    ] {
        let (code, _, err) = r.cli(&["status", "--admin", &url]);
        assert_eq!(code, 3, "{what}: {err}");
        assert!(
            err.contains(&format!("{url} is not a cutover admin API")),
            "{what}: {err}"
        );
        assert!(err.contains("[admin] listen"), "{what}: {err}");
    }
    let https = format!("https://127.0.0.1:{}", r.admin);
    let (code, _, err) = r.cli(&["status", "--admin", &https]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("plain HTTP, not TLS") && err.contains(&format!("--admin http://127.0.0.1:{}", r.admin)),
        "{err}"
    );
}

/// Issue #25: a forgotten approval blocked a CI job; `--timeout` ends the wait with exit 5
/// and leaves the release as it is.
#[tokio::test]
async fn release_wait_and_follow_stop_at_their_timeout_with_exit_5() {
    let (r, _b, _g) = manual_router().await;
    let (code, out, err) = r
        .cli_async(&["release", "chat", "v2", "--wait", "--timeout", "1s"])
        .await;
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("--timeout 1s passed while release #1 is"), "{err}");
    assert!(err.contains("cutover release follow chat 1"), "{err}");
    let d = r.wait_phase(1, "awaiting_approval", Duration::from_secs(20)).await;
    assert!(d["outcome"].is_null(), "the release goes on: {d}");
    let (code, _, err) = r.cli_async(&["release", "follow", "chat", "--timeout", "500ms"]).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("is awaiting_approval"), "{err}");
    assert_eq!(r.release_doc(1).await["phase"], "awaiting_approval");
}

/// `-c FILE` takes the admin address and token from a config, on client commands too.
#[tokio::test]
async fn dash_c_works_on_client_commands() {
    let (r, _b, _g) = manual_router().await;
    for args in [
        &["status", "chat", "-c"][..],
        &["history", "-c"][..],
        &["releases", "chat", "-c"][..],
    ] {
        let out = Command::new(CUTOVER)
            .args(args)
            .arg(&r.config)
            .env_remove("CUTOVER_ADMIN")
            .env_remove("CUTOVER_TOKEN")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
