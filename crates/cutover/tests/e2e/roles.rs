//! Access control: named tokens with roles from the tokens file, made with `cutover token
//! create` while the router runs, refused with 403 when their role is too low, recorded as
//! the actor; the tokens file's checks; the legacy `admin.token` on every route.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::support::*;

/// `cutover token create NAME --role ROLE` on the router's config: (exit code, stdout, stderr).
fn token_create(config: &std::path::Path, name: &str, role: &str) -> (i32, String, String) {
    let out = Command::new(CUTOVER)
        .args(["token", "create", name, "--role", role, "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A token made for this router, checked to be one line of 64 hex characters.
fn new_token(r: &Router, name: &str, role: &str) -> String {
    let (code, out, err) = token_create(&r.config, name, role);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("only time it is shown"), "{err}");
    let token = out.trim().to_string();
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );
    token
}

/// `curl` of an admin path with `token`: (status, body as JSON).
fn curl(r: &Router, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(["-H", "content-type: application/json", "--data-binary", body])
        .arg(r.admin_url(path))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The CLI against `r` with `token` instead of the admin one.
fn cli_as(r: &Router, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(CUTOVER)
        .args(args)
        .env("CUTOVER_ADMIN", r.admin_url(""))
        .env("CUTOVER_TOKEN", token)
        .env("USER", "bob")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn viewer_reads_operator_switches_and_the_history_names_the_token() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    assert_eq!(r.switch("blue").await.status, 200);

    // Made while the router runs, used at once: no restart, no reload, no wait.
    let viewer = new_token(&r, "grafana", "viewer");
    let operator = new_token(&r, "deploy", "operator");

    // The tokens file holds digests only.
    let path = r.dir.path().join("tokens.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(&viewer) && !text.contains(&operator),
        "a token in plain text:\n{text}"
    );
    assert!(
        text.contains("name = \"grafana\"") && text.contains("role = \"operator\""),
        "{text}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    // A viewer reads, with a real third-party client (python httpx).
    let py = Command::new("python3")
        .args([
            "-c",
            "import httpx, sys; r = httpx.get(sys.argv[1], headers={'authorization': 'Bearer ' + sys.argv[2]}); print(r.status_code, r.json()['live'])",
        ])
        .arg(r.admin_url("/v1/services/chat"))
        .arg(&viewer)
        .output()
        .expect("python3 with httpx");
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        "200 blue",
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let (status, _) = curl(&r, "GET", "/v1/services/chat/history", &viewer, "");
    assert_eq!(status, 200);

    // ... and may not switch: 403 with the JSON error naming both roles; nothing changed.
    let (status, body) = curl(&r, "POST", "/v1/services/chat/switch", &viewer, r#"{"to":"green"}"#);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("role operator or higher") && msg.contains("\"grafana\" has the role viewer"),
        "{msg}"
    );
    // The path asked for, not the route template (issue #25).
    assert!(msg.starts_with("POST /v1/services/chat/switch needs"), "{msg}");
    assert_eq!(r.status().await["live"], "blue");
    let (code, _, err) = cli_as(&r, &viewer, &["switch", "chat", "green"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("HTTP 403") && err.contains("role viewer"), "{err}");

    // A wrong token is still 401, not 403.
    let (status, body) = curl(&r, "GET", "/v1/services", &"0".repeat(64), "");
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));

    // An operator switches through the CLI; the history names the token, then the label.
    let (code, out, err) = cli_as(&r, &operator, &["switch", "chat", "green", "--reason", "roles test"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(r.status().await["live"], "green");
    let (code, out, err) = cli_as(&r, &viewer, &["history", "chat", "--json"]);
    assert_eq!(code, 0, "{err}");
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["history"][0]["kind"], "switched", "{h}");
    assert_eq!(h["history"][0]["actor"], "token:deploy (cli:bob)", "{h}");

    // A client cannot pass itself off as another token: its label only follows the name.
    let (status, _) = curl(&r, "POST", "/v1/services/chat/rollback", &operator, "{}");
    assert_eq!(status, 200);
    let hist = r
        .api(Method::GET, "/v1/services/chat/history?limit=1", Value::Null)
        .await
        .json();
    assert_eq!(hist["history"][0]["actor"], "token:deploy", "{hist}");
    let spoof = send(
        &r.http,
        Method::POST,
        &r.admin_url("/v1/services/chat/switch"),
        &[
            ("authorization", &format!("Bearer {operator}")),
            ("x-cutover-actor", "token:admin"),
        ],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(spoof.status, 200, "{}", spoof.text());
    let hist = r
        .api(Method::GET, "/v1/services/chat/history?limit=1", Value::Null)
        .await
        .json();
    assert_eq!(hist["history"][0]["actor"], "token:deploy (token:admin)", "{hist}");

    // The metrics and the dashboard page need no token, as before.
    assert_eq!(get(&r.admin_url("/metrics")).await.unwrap().status, 200);
    assert_eq!(get(&r.admin_url("/")).await.unwrap().status, 200);

    // `token list` shows names and roles, never a token or a digest.
    let out = Command::new(CUTOVER)
        .args(["token", "list", "--config"])
        .arg(&r.config)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        list.contains("grafana") && list.contains("viewer") && list.contains("deploy") && list.contains("admin"),
        "{list}"
    );
    let digest_of_a_line = text.lines().find_map(|l| l.strip_prefix("sha256 = \"")).unwrap();
    assert!(
        !list.contains(&viewer) && !list.contains(&digest_of_a_line[..64]),
        "{list}"
    );
}

/// Every admin route, with a body where it takes one, as (method, path, body, role needed).
const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("GET", "/v1/services", "", "viewer"),
    ("GET", "/v1/services/chat", "", "viewer"),
    ("GET", "/v1/services/chat/history", "", "viewer"),
    ("GET", "/v1/services/chat/series", "", "viewer"),
    ("GET", "/v1/services/chat/logs", "", "viewer"),
    ("GET", "/v1/services/chat/releases", "", "viewer"),
    ("GET", "/v1/services/chat/releases/999", "", "viewer"),
    ("POST", "/v1/services/chat/switch", r#"{"to":"green"}"#, "operator"),
    ("POST", "/v1/services/chat/rollback", "{}", "operator"),
    // An unknown service: the role is checked before the service is looked up, and a release
    // started here would hold the switches that follow.
    ("POST", "/v1/services/nope/releases", r#"{"version":"v9"}"#, "operator"),
    ("POST", "/v1/services/chat/releases/999/approve", "", "operator"),
    ("POST", "/v1/services/chat/releases/999/abort", "", "operator"),
    // The config is unchanged: a reload that an admin may make changes nothing.
    ("POST", "/v1/reload", "", "admin"),
];

#[tokio::test]
async fn each_role_reaches_exactly_its_routes_and_admin_token_reaches_all() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let viewer = new_token(&r, "v", "viewer");
    let operator = new_token(&r, "o", "operator");
    let admin_named = new_token(&r, "root", "admin");
    let rank = |role: &str| ["viewer", "operator", "admin"].iter().position(|r| *r == role).unwrap();
    let mut wrong = Vec::new();
    // The legacy admin.token last, so the POSTs it makes see the state the others left.
    for (token, role) in [
        (&viewer, "viewer"),
        (&operator, "operator"),
        (&admin_named, "admin"),
        (&r.token, "admin"),
    ] {
        for (method, path, body, needed) in ROUTES {
            let (status, v) = curl(&r, method, path, token, body);
            let allowed = rank(role) >= rank(needed);
            let ok = if allowed {
                status != 401 && status != 403 && status < 500
            } else {
                status == 403 && v["error"]["code"] == "forbidden"
            };
            if !ok {
                wrong.push(format!("{role} {method} {path}: {status} {v}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The viewer's refused POSTs changed nothing before the operator's first switch: the
    // history is the operator's, the named admin's and the admin token's, in that order.
    let h = r
        .api(Method::GET, "/v1/services/chat/history", Value::Null)
        .await
        .json();
    let actors: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|e| e["kind"] == "switched" || e["kind"] == "rolled_back")
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(
        actors,
        [
            "token:o",
            "token:o",
            "token:root",
            "token:root",
            "token:admin",
            "token:admin"
        ],
        "{h}"
    );
}

#[tokio::test]
async fn tokens_file_refused_when_exposed_or_malformed_and_duplicates_refused() {
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let mut r = Router::start(&static_service(&[&blue], &[&green], "")).await;
    let ci = new_token(&r, "ci", "operator");
    let path = r.dir.path().join("tokens.toml");
    let good = std::fs::read_to_string(&path).unwrap();

    // A duplicate name: exit 2, the line of the first, nothing written.
    let (code, out, err) = token_create(&r.config, "ci", "viewer");
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(
        err.contains("tokens.toml:5: key `token[0].name`: a token named \"ci\" exists already"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good);

    // The running router: an edit that breaks the file keeps the set it had (with `ci`, in
    // use already), and says why.
    let (status, _) = curl(&r, "GET", "/v1/services", &ci, "");
    assert_eq!(status, 200);
    std::fs::write(
        &path,
        format!(
            "{good}\n[[token]]\nname = \"late\"\nrole = \"boss\"\nsha256 = \"{}\"\n",
            "1".repeat(64)
        ),
    )
    .unwrap();
    let (status, _) = curl(&r, "GET", "/v1/services", &"1".repeat(64), "");
    assert_eq!(status, 401);
    let (status, _) = curl(&r, "GET", "/v1/services", &ci, "");
    assert_eq!(status, 200, "the previous set is kept");
    wait_for(
        "the router to log the broken tokens file",
        Duration::from_secs(10),
        || {
            let log = r.log();
            async move { log.contains("tokens file changed but is invalid").then_some(()) }
        },
    )
    .await;
    assert!(
        r.log().contains("unknown role \\\"boss\\\"") || r.log().contains("unknown role \"boss\""),
        "{}",
        r.log()
    );

    // At start, the same file stops `serve` with file, line and key.
    r.proc.signal("TERM");
    assert!(r.proc.wait_exit(Duration::from_secs(15)).is_some());
    let serve = |r: &Router| {
        let out = Command::new(CUTOVER)
            .args(["serve", "--config"])
            .arg(&r.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = serve(&r);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("tokens.toml:13: key `token[1].role`: unknown role \"boss\""),
        "{err}"
    );
    let (code, _, err) = token_create(&r.config, "other", "viewer");
    assert_eq!(code, 2);
    assert!(err.contains("tokens.toml:13"), "{err}");

    // Readable by the group: refused at start and by `token create`, with the fix.
    std::fs::write(&path, &good).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, err) = serve(&r);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("mode 640") && err.contains("chmod 600"), "{err}");
    let (code, _, err) = token_create(&r.config, "other", "viewer");
    assert_eq!(code, 2);
    assert!(err.contains("chmod 600"), "{err}");

    // Fixed: it starts, and the token made before still works.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    r.spawn().await;
    let (status, _) = curl(&r, "GET", "/v1/services", &ci, "");
    assert_eq!(status, 200);
}
