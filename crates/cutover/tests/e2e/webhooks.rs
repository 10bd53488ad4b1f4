//! Release webhooks: a Python receiver checks every `x-cutover-signature` against its own
//! HMAC-SHA256 of the body and records the events; they arrive in order, as asked. A receiver
//! that accepts and never answers does not hold up a rollback. An approval webhook's 2xx
//! approves a release waiting for manual promotion.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const RECEIVER: &str = r#"
import hashlib, hmac, http.server, json, sys
secret = open(sys.argv[1], 'rb').read().strip()
out = open(sys.argv[2], 'a')
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        want = 'sha256=' + hmac.new(secret, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, self.headers.get('x-cutover-signature', ''))
        out.write(json.dumps({'path': self.path, 'sig_ok': ok, 'body': json.loads(body)}) + '\n')
        out.flush()
        self.send_response(200 if ok else 401)
        self.send_header('content-length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// The Python receiver: its port and the file of what it received, one JSON line each.
struct Receiver {
    port: u16,
    log: std::path::PathBuf,
    _proc: Proc,
}

impl Receiver {
    fn start(dir: &TempDir, secret: &str) -> Receiver {
        let secret_file = dir.path().join("hook.secret");
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        let log = dir.path().join("received.jsonl");
        let mut child = Command::new("python3")
            .args(["-c", RECEIVER])
            .arg(&secret_file)
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Receiver {
            port: line.trim().parse().expect("the receiver prints its port"),
            log,
            _proc: Proc(Some(child)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What arrived at `path`, in order of arrival.
    fn received(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["path"] == path)
            .collect()
    }
}

/// A release of v2 onto green, with `release` as the body of `[services.chat.release]` and
/// `green_args` for green's mock.
async fn router(dir: &TempDir, green_args: &[&str], release: &str) -> (Router, Mock, Mock) {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", green_args).await;
    let release = release.replace("{dir}", &dir.path().display().to_string());
    let r = Router::start(&format!(
        "{}\n[services.chat.release]\n{release}\n",
        static_service(&[&blue], &[&green], "")
    ))
    .await;
    assert_eq!(r.switch("blue").await.status, 200);
    (r, blue, green)
}

/// Every event is signed with the shared secret, carries a Slack `text`, and arrives in the
/// order it happened (sequence numbers without a gap, phases in the document's order); a
/// webhook that asks only for `completed` gets only that; one whose signatures the receiver
/// refuses (401) is not retried.
#[tokio::test]
async fn webhook_events_are_signed_and_arrive_in_order() {
    let dir = TempDir::new("webhooks");
    let rx = Receiver::start(&dir, "s3cret");
    let release = format!(
        "[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n\
         [[services.chat.release.webhooks]]\nurl = \"{}\"\nsecret_file = \"{{dir}}/hook.secret\"\n\
         [[services.chat.release.webhooks]]\nurl = \"{}\"\nsecret_file = \"{{dir}}/hook.secret\"\nevents = [\"completed\"]\n\
         [[services.chat.release.webhooks]]\nurl = \"{}\"\nsecret_file = \"{{dir}}/wrong.secret\"\n",
        rx.url("/all"),
        rx.url("/done"),
        rx.url("/wrong")
    );
    std::fs::write(dir.path().join("wrong.secret"), "not-the-secret").unwrap();
    let (r, _b, _g) = router(&dir, &[], &release).await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let all = wait_for("the completed event", Duration::from_secs(30), || async {
        let all = rx.received("/all");
        all.iter().any(|e| e["body"]["event"] == "completed").then_some(all)
    })
    .await;
    assert!(all.iter().all(|e| e["sig_ok"] == true), "{all:?}");
    let seqs: Vec<u64> = all.iter().map(|e| e["body"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "in order, none missing"
    );
    let phases: Vec<&str> = all
        .iter()
        .filter(|e| e["body"]["event"] == "phase")
        .map(|e| e["body"]["phase"].as_str().unwrap())
        .collect();
    let doc_phases: Vec<&str> = d["phases"].as_array().unwrap()[1..]
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    // The document records every phase but the terminal one, which is its outcome.
    assert_eq!(phases.last(), Some(&"completed"), "{phases:?}");
    assert_eq!(
        phases[..phases.len() - 1],
        doc_phases[..],
        "one phase event per transition, in order"
    );
    let last = &all.last().unwrap()["body"];
    assert_eq!(
        (last["event"].as_str(), last["release"].as_i64()),
        (Some("completed"), Some(id))
    );
    assert!(last["text"].as_str().unwrap().contains("chat release #"), "{last}");
    // A wrong key: the receiver answers 401, which is final (no retry): by the time the last
    // event arrived there, every earlier one had arrived exactly once, in order.
    let wrong = wait_for("the completed event at /wrong", Duration::from_secs(30), || async {
        let w = rx.received("/wrong");
        w.iter().any(|e| e["body"]["event"] == "completed").then_some(w)
    })
    .await;
    assert!(wrong.iter().all(|e| e["sig_ok"] == false));
    let wrong_seqs: Vec<u64> = wrong.iter().map(|e| e["body"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(wrong_seqs, seqs, "each refused event sent once, none retried");
    let done = rx.received("/done");
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0]["body"]["event"], "completed");
}

/// A receiver that accepts connections and never answers (timeout 60 s, 5 attempts) holds
/// its own queue only: the rollback is recorded while its first attempt is still open, and
/// a working receiver gets the rolled_back event.
#[tokio::test]
async fn a_dead_webhook_does_not_delay_a_rollback() {
    let dir = TempDir::new("webhooks-dead");
    let rx = Receiver::start(&dir, "s3cret");
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let held = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = dead.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                open.push(conn);
            }
        })
    };
    let release = format!(
        "[services.chat.release.verify]\nbake = \"10s\"\nmin_requests = 0\n\
         [[services.chat.release.verify.scrape]]\nmetric = \"vllm:num_requests_waiting\"\nmax = 5\ninterval = \"200ms\"\n\
         [[services.chat.release.webhooks]]\nurl = \"http://127.0.0.1:{dead_port}/\"\ntimeout = \"60s\"\n\
         [[services.chat.release.webhooks]]\nurl = \"{}\"\nsecret_file = \"{{dir}}/hook.secret\"\n",
        rx.url("/live")
    );
    let (r, _b, _g) = router(&dir, &["--metric", "vllm:num_requests_waiting=7"], &release).await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    // The dead receiver took one connection for its first event and answered nothing: every
    // later event, the rollback's included, waits behind it in its own queue.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(r.status().await["live"], "blue");
    let live = wait_for("the rolled_back event", Duration::from_secs(30), || async {
        let live = rx.received("/live");
        live.iter().any(|e| e["body"]["event"] == "rolled_back").then_some(live)
    })
    .await;
    assert!(live.iter().all(|e| e["sig_ok"] == true), "{live:?}");
    held.abort();
}

/// With manual promotion, the approval webhook's 200 approves the release; the document says
/// who approved.
#[tokio::test]
async fn an_approval_webhook_approves_a_manual_release() {
    let dir = TempDir::new("webhooks-approve");
    let rx = Receiver::start(&dir, "s3cret");
    let release = format!(
        "promotion = \"manual\"\n[services.chat.release.approval_webhook]\nurl = \"{}\"\nsecret_file = \"{{dir}}/hook.secret\"\ninterval = \"200ms\"\n\
         [services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 0\n",
        rx.url("/approve")
    );
    let (r, _b, _g) = router(&dir, &[], &release).await;
    let id = r.release("v2").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let approval = d["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "awaiting_approval")
        .cloned()
        .expect("the release waited for approval");
    let detail = approval["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("approval webhook"), "{d}");
    let asked = rx.received("/approve");
    assert!(
        !asked.is_empty() && asked.iter().all(|e| e["sig_ok"] == true),
        "{asked:?}"
    );
    assert_eq!(asked[0]["body"]["id"], id);
}
