//! Fleet mode on a real 3-member etcd that serves clients over TLS only, with
//! `--client-cert-auth` and etcd's auth on, certificates made by the test and the
//! least-privilege roles of docs/fleet.md: routers that ack every switch and take a renewed
//! client certificate, an agent that runs a release and whose user cannot write `desired/`,
//! a router without a certificate that says why it is cut off, and configs that mix
//! `http://` and `https://` members refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::fleet::cluster::Cluster;
use crate::fleet::{fleet_view, wait_routers};
use crate::support::*;

/// `[store]` lines of a router reaching `etcd` over TLS with its own certificate `cert`
/// (none: `tls` names only the CA) as etcd user `user`.
fn tls_lines(etcd: &Cluster, fleet: &str, id: &str, cert: Option<&(PathBuf, PathBuf)>, user: &str) -> String {
    let pki = etcd.pki();
    let cert = cert
        .map(|(c, k)| {
            format!(
                ", cert = {:?}, key = {:?}",
                c.display().to_string(),
                k.display().to_string()
            )
        })
        .unwrap_or_default();
    format!(
        "url = \"{}\"\nfleet = \"{fleet}\"\nrouter_id = \"{id}\"\ntls = {{ ca = {:?}{cert} }}\nusername = \"{user}\"\npassword_file = {:?}\n",
        etcd.url(),
        pki.ca.display().to_string(),
        pki.dir.join(format!("{user}.password")).display().to_string(),
    )
}

/// etcd with TLS and auth on, and a `router` user holding the router role of `fleet`.
async fn secure_etcd(fleet: &str) -> Cluster {
    let etcd = Cluster::start_tls(3).await;
    etcd.enable_auth();
    etcd.add_user("router", &cutover_fleet::Keys::new(fleet).router_grants());
    etcd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_tls_three_routers_with_client_certificates_ack_every_switch_and_take_a_renewed_certificate() {
    let fleet = "tls";
    let etcd = secure_etcd(fleet).await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let svc = static_service(&[&blue], &[&green], "");
    let mut routers = Vec::new();
    for i in 0..3 {
        let cert = etcd.pki().issue(&format!("router-{i}"), &[], None);
        let lines = tls_lines(&etcd, fleet, &format!("r{i}"), Some(&cert), "router");
        routers.push(Router::start(&format!("{lines}\n{svc}")).await);
    }
    let v = wait_routers(&routers[0], 3, "SYNCED").await;
    assert_eq!(v["connected"], true, "{v}");
    for (i, to) in ["green", "blue", "green"].iter().enumerate() {
        let s = routers[i % 3].switch(to).await;
        assert_eq!(s.status, 200, "{}", s.text());
        let v = s.json();
        assert_eq!(v["generation"], i + 1, "{v}");
        assert_eq!(
            (v["sync"]["synced"].clone(), v["sync"]["of"].clone()),
            (3.into(), 3.into()),
            "{v}"
        );
    }

    // A renewed pair is read by a reload, as the listeners' are, and etcd still takes it.
    let renewed = etcd.pki().issue("router-0-renewed", &[], None);
    let target = etcd.pki().dir.join("router-0.pem");
    std::fs::copy(&renewed.1, etcd.pki().dir.join("router-0.key")).unwrap();
    std::fs::copy(&renewed.0, &target).unwrap();
    let r = routers[0].api(Method::POST, "/v1/reload", Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let certs = &r.json()["certificates"];
    assert_eq!(
        certs["store.tls.ca"], "unchanged",
        "the CA file is read again too: {certs}"
    );
    let outcome = certs["store.tls"].as_str().unwrap_or_default().to_string();
    // The poll (every 3 s) may have read the new files first: then the reload finds them unchanged.
    assert!(outcome == "reloaded" || outcome == "unchanged", "{certs}");
    assert!(
        outcome == "reloaded" || routers[0].log().contains("TLS certificate reloaded"),
        "{certs}\n{}",
        routers[0].log()
    );
    let s = routers[0].switch("blue").await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.json()["sync"]["synced"], 3, "{}", s.text());
    for r in &routers {
        assert!(!r.log().contains("cannot read from etcd"), "{}", r.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_tls_a_router_without_a_client_certificate_is_refused_and_says_why() {
    let etcd = secure_etcd("tls").await;
    let blue = Mock::start("v1", &[]).await;
    let green = Mock::start("v2", &[]).await;
    let lines = tls_lines(&etcd, "tls", "bare", None, "router");
    let r = Router::start(&format!("{lines}\n{}", static_service(&[&blue], &[&green], ""))).await;
    let v = wait_for("the refusal in GET /v1/fleet", Duration::from_secs(20), || async {
        let v = fleet_view(&r).await;
        v["etcd_error"].is_string().then_some(v)
    })
    .await;
    assert_eq!(v["connected"], false, "{v}");
    let why = v["etcd_error"].as_str().unwrap();
    assert!(
        why.contains("etcd requires a client certificate and none is configured"),
        "{v}"
    );
    assert!(
        r.log()
            .contains("etcd requires a client certificate and none is configured"),
        "{}",
        r.log()
    );
    let (code, out, err) = r.cli_async(&["fleet", "status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("CUT FROM ETCD") && out.contains("etcd requires a client certificate"),
        "{out}"
    );
    let kvs = etcd.client().range_prefix("/cutover/tls/routers/").await.unwrap().kvs;
    assert!(kvs.is_empty(), "no ack of the refused router: {kvs:?}");
}

/// A `cutover agent` for `host` reaching etcd over TLS with its own certificate and user.
fn spawn_agent(etcd: &Cluster, dir: &Path, host: &str, advertise: &str, user: &str) -> Proc {
    let pki = etcd.pki();
    let (cert, key) = pki.issue(&format!("agent-{host}"), &[], None);
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = Command::new(CUTOVER)
        .args([
            "agent",
            "--etcd",
            &etcd.url(),
            "--fleet",
            "tls",
            "--host",
            host,
            "--advertise",
            advertise,
        ])
        .arg("--etcd-ca")
        .arg(&pki.ca)
        .arg("--etcd-cert")
        .arg(cert)
        .arg("--etcd-key")
        .arg(key)
        .args(["--etcd-user", user, "--etcd-password-file"])
        .arg(pki.dir.join(format!("{user}.password")))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--allow-command", MOCK])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn cutover agent");
    Proc(Some(child))
}

/// The mock-model an agent started outlives it on purpose: killed when the test ends.
struct HostPort(&'static str, u16);

impl Drop for HostPort {
    fn drop(&mut self) {
        kill_mock_at(self.0, self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_tls_an_agent_with_its_own_user_runs_a_release_and_its_user_cannot_write_desired() {
    let fleet = "tls";
    let etcd = secure_etcd(fleet).await;
    let keys = cutover_fleet::Keys::new(fleet);
    etcd.add_user("agent-gpu-a", &keys.agent_grants("gpu-a"));
    let (ip, port) = ("127.0.0.2", free_port());
    let _kill = HostPort(ip, port);
    let cert = etcd.pki().issue("router-0", &[], None);
    let svc = format!(
        "{}\n[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\" }}\n\
         [services.chat.run]\ncommand = [{MOCK:?}, \"--host\", \"{{host}}\", \"--port\", \"{{port}}\", \"--model-version\", \"{{version}}\"]\n\
         ports = {{ blue = [{port}], green = [{}] }}\nhosts = [\"gpu-a\"]\nstop_timeout = \"2s\"\n\n\
         [services.chat.release]\nscale_down_delay = \"300ms\"\n[services.chat.release.verify]\nbake = \"1s\"\nmin_requests = 1000\non_inconclusive = \"complete\"\n",
        tls_lines(&etcd, fleet, "r0", Some(&cert), "router"),
        free_port(),
    );
    let r = Router::start(&svc).await;
    let dir = TempDir::new("agent-tls");
    let mut agent = spawn_agent(&etcd, dir.path(), "gpu-a", ip, "agent-gpu-a");
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    wait_for(
        "agent gpu-a connected in GET /v1/fleet",
        Duration::from_secs(30),
        || async {
            let v = fleet_view(&r).await;
            v["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["host"] == "gpu-a" && a["connected"] == true)
                .then_some(())
        },
    )
    .await;

    let id = r.release("v1").await;
    let d = r.wait_end(id, Duration::from_secs(90)).await;
    assert_eq!(d["outcome"], "completed", "{d}\n{}", agent_log());
    let stats = get(&format!("http://{ip}:{port}/mock/stats"))
        .await
        .expect("v1 runs on gpu-a")
        .json();
    assert_eq!(stats["version"], "v1", "{stats}");
    let pid = stats["pid"].clone();

    // The agent's own credentials: what it reads is there, a write under desired/ is
    // denied by etcd, so no agent (nor whoever steals its key and password) picks commands.
    let pki = etcd.pki();
    let as_agent = etcd.client_with(pki.access(Some(&pki.issue("agent-2", &[], None)), Some("agent-gpu-a")));
    let key = keys.desired_of("chat", cutover_fleet::doc::Color::Blue);
    let (before, _) = as_agent.get(&key).await.unwrap();
    let before = before.expect("the router's desired document for blue");
    let evil = String::from_utf8_lossy(&before.value).replace(MOCK, "/bin/sh");
    let e = as_agent.put(&key, evil.as_bytes(), 0).await.unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    let (after, _) = etcd.client().get(&key).await.unwrap();
    assert_eq!(after.unwrap().mod_revision, before.mod_revision, "desired/ unchanged");
    let again = get(&format!("http://{ip}:{port}/mock/stats")).await.unwrap().json();
    assert_eq!(again["pid"], pid, "the host runs what it ran");
    agent.kill9();
}

#[test]
fn fleet_tls_check_and_the_agent_refuse_a_url_that_mixes_http_and_https_members() {
    let dir = TempDir::new("mixed");
    let path = dir.path().join("cutover.toml");
    std::fs::write(
        &path,
        "[store]\nfleet = \"prod\"\nurl = \"https://10.0.0.1:2379,http://10.0.0.2:2379\"\n\n\
         [services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n\
         [services.chat.green]\nendpoints = [\"127.0.0.1:9002\"]\n",
    )
    .unwrap();
    let out = Command::new(CUTOVER).arg("check").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cutover.toml:3") && err.contains("store.url"), "{err}");
    assert!(err.contains("mixes http:// and https:// members"), "{err}");

    let out = Command::new(CUTOVER)
        .args([
            "agent",
            "--etcd",
            "https://10.0.0.1:2379,http://10.0.0.2:2379",
            "--fleet",
            "prod",
        ])
        .args(["--host", "gpu-a", "--advertise", "127.0.0.2", "--allow-any-command"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--etcd") && err.contains("mixes http:// and https://"),
        "{err}"
    );
}
