//! Host agents on a real 3-member etcd: two `cutover agent` processes stand for two GPU
//! hosts (`gpu-a` advertising 127.0.0.2, `gpu-b` 127.0.0.3, the same ports on each), routers
//! reach the model servers at those addresses. A release refused while one host's agent is
//! missing, then v1 and v2 released under load through two routers with no failed request;
//! an agent killed and restarted adopts its model servers; agents cut from etcd (every member
//! frozen) keep them running and restarted.

use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::Value;

use crate::fleet::cluster::Cluster;
use crate::fleet::{fleet_view, share_operator_token};
use crate::support::*;

const HOSTS: [(&str, &str); 2] = [("gpu-a", "127.0.0.2"), ("gpu-b", "127.0.0.3")];

/// A `cutover agent` in its own data folder (kept across restarts).
struct Agent {
    dir: TempDir,
    host: String,
    advertise: String,
    etcd: String,
    fleet: String,
    /// `--allow-command` values; the mock-model binary unless a test says otherwise.
    allow: Vec<String>,
    proc: Proc,
}

impl Agent {
    fn start(etcd: &str, fleet: &str, host: &str, advertise: &str) -> Agent {
        let mut a = Agent::new(etcd, fleet, host, advertise);
        a.spawn();
        a
    }

    /// An agent not started yet.
    fn new(etcd: &str, fleet: &str, host: &str, advertise: &str) -> Agent {
        Agent {
            dir: TempDir::new("agent"),
            host: host.into(),
            advertise: advertise.into(),
            etcd: etcd.into(),
            fleet: fleet.into(),
            allow: vec![MOCK.into()],
            proc: Proc(None),
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(CUTOVER)
            .args([
                "agent",
                "--etcd",
                &self.etcd,
                "--fleet",
                &self.fleet,
                "--host",
                &self.host,
            ])
            .args(["--advertise", &self.advertise, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(self.allow.iter().flat_map(|a| ["--allow-command", a.as_str()]))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cutover agent");
        self.proc = Proc(Some(child));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

/// The mock-model processes the agents start outlive them on purpose: killed when the
/// test ends.
struct HostPorts {
    blue: u16,
    green: u16,
}

impl HostPorts {
    fn new() -> HostPorts {
        HostPorts {
            blue: free_port(),
            green: free_port(),
        }
    }
}

impl Drop for HostPorts {
    fn drop(&mut self) {
        for (_, ip) in HOSTS {
            for port in [self.blue, self.green] {
                if let Some(pid) = pid_at(ip, port) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}

/// The pid of the mock-model listening on `ip:port`, from its stats (blocking: for Drop).
fn pid_at(ip: &str, port: u16) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((ip, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /mock/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let i = buf.find("\"pid\":")?;
    buf[i + 6..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

async fn stats_at(ip: &str, port: u16) -> Option<Value> {
    get(&format!("http://{ip}:{port}/mock/stats"))
        .await
        .ok()
        .map(|r| r.json())
}

/// A managed service whose processes run on both agents' hosts, with a 1 s bake; `release`
/// goes first in `[services.chat.release]`.
fn hosted_service(ports: &HostPorts, fleet_lines: &str, release: &str) -> String {
    hosted_service_baking(ports, fleet_lines, release, "1s")
}

fn hosted_service_baking(ports: &HostPorts, fleet_lines: &str, release: &str, bake: &str) -> String {
    format!(
        "{fleet_lines}\n[services.chat]\nlisten = \"{{listen}}\"\nhealth = {{ path = \"/health\", interval = \"100ms\", timeout = \"1s\" }}\n\
         [services.chat.run]\ncommand = [{:?}, \"--host\", \"{{host}}\", \"--port\", \"{{port}}\", \"--model-version\", \"{{version}}\"]\n\
         ports = {{ blue = [{}], green = [{}] }}\nhosts = [\"gpu-a\", \"gpu-b\"]\nstop_timeout = \"2s\"\n\n\
         [services.chat.release]\n{release}\nscale_down_delay = \"300ms\"\n[services.chat.release.verify]\nbake = \"{bake}\"\nmin_requests = 1000\non_inconclusive = \"complete\"\n",
        MOCK, ports.blue, ports.green
    )
}

fn fleet_lines(url: &str, fleet: &str, id: &str) -> String {
    format!("url = \"{url}\"\nfleet = \"{fleet}\"\nrouter_id = \"{id}\"")
}

/// Waits until `r` sees the agent of `host` connected (or not).
async fn wait_agent(r: &Router, host: &str, connected: bool) {
    wait_for(
        &format!("agent {host} connected={connected}"),
        Duration::from_secs(30),
        || async {
            let v = fleet_view(r).await;
            v["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["host"] == host && a["connected"] == connected)
                .then_some(())
        },
    )
    .await
}

/// Starts a release once the previous one has finished tearing its color down (its
/// outcome is written first; the stop of its processes follows).
async fn release_when_free(r: &Router, version: &str) -> i64 {
    wait_for("the previous release to finish", Duration::from_secs(30), || async {
        let resp = r
            .api(
                Method::POST,
                "/v1/services/chat/releases",
                serde_json::json!({ "version": version }),
            )
            .await;
        match resp.status.as_u16() {
            202 => Some(resp.json()["id"].as_i64().unwrap()),
            409 if resp.text().contains("release_in_progress") => None,
            s => panic!("{s}: {}", resp.text()),
        }
    })
    .await
}

/// The hosts `color`'s processes run on, as the router's status shows them.
fn hosts_of(st: &Value, color: &str) -> Vec<String> {
    let mut v: Vec<String> = st["colors"][color]["processes"]["running"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["host"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_two_host_agents_goes_from_v1_to_v2_under_load_with_no_failed_request() {
    let etcd = Cluster::start(3).await;
    let ports = HostPorts::new();
    let fleet = "agents";
    let mut routers = vec![
        Router::start(&hosted_service(&ports, &fleet_lines(&etcd.url_of(0), fleet, "r0"), "")).await,
        // r1 on the hyper engine: the hosts' endpoints are the same route on both engines.
        Router::start(&on_engine(
            &hosted_service(&ports, &fleet_lines(&etcd.url_of(2), fleet, "r1"), ""),
            "hyper",
        ))
        .await,
    ];
    share_operator_token(&mut routers).await;
    let (r0, r1) = (&routers[0], &routers[1]);
    let _a = Agent::start(&etcd.url_of(0), fleet, HOSTS[0].0, HOSTS[0].1);
    wait_agent(r0, "gpu-a", true).await;

    // gpu-b has no agent: the release is refused before anything starts, naming it.
    let id = r1.release("v1").await;
    let d = r1.wait_end(id, Duration::from_secs(60)).await;
    // Nothing was switched: the release ends before its switch (`aborted`, as any failed
    // provisioning does).
    assert_eq!(d["outcome"], "aborted", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("\"gpu-b\"") && reason.contains("not connected"), "{d}");
    assert!(
        stats_at(HOSTS[0].1, ports.blue).await.is_none(),
        "nothing started on gpu-a"
    );
    assert!(r0.status().await["live"].is_null());

    // gpu-b's agent does not lend itself to this program: the start fails there, naming
    // the host and the flag; nothing stays running on gpu-a.
    let mut b = Agent::new(&etcd.url(), fleet, HOSTS[1].0, HOSTS[1].1);
    b.allow = vec!["/usr/bin/true".into()];
    b.spawn();
    wait_agent(r0, "gpu-b", true).await;
    let id = r1.release("v1").await;
    let d = r1.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("gpu-b: the agent of gpu-b does not run") && reason.contains("--allow-command"),
        "{d}"
    );
    wait_for("nothing left on gpu-a", Duration::from_secs(30), || async {
        stats_at(HOSTS[0].1, ports.blue).await.is_none().then_some(())
    })
    .await;
    b.proc.kill9();
    b.allow = vec![MOCK.into()];
    b.spawn();
    wait_for("gpu-b's agent back", Duration::from_secs(30), || async {
        (b.log().matches("agent: registered").count() >= 2).then_some(())
    })
    .await;
    wait_agent(r0, "gpu-b", true).await;
    let id = release_when_free(r1, "v1").await;
    let d = r1.wait_end(id, Duration::from_secs(90)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    for (_, ip) in HOSTS {
        let s = stats_at(ip, ports.blue).await.expect("v1 runs on both hosts");
        assert_eq!(s["version"], "v1", "{s}");
    }
    for r in [r0, r1] {
        wait_for("the router to serve v1 on blue", Duration::from_secs(20), || async {
            (get(&r.url("/v1/models")).await.ok()?.header("x-cutover-color") == "blue").then_some(())
        })
        .await;
    }
    let st = r0.status().await;
    assert_eq!(hosts_of(&st, "blue"), ["gpu-a", "gpu-b"], "{st}");
    let (code, out, err) = r1.cli_async(&["status", "chat"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for host in ["gpu-a", "gpu-b"] {
        assert!(out.contains(&format!("replica 0 on {host}  pid ")), "{out}");
    }

    // v2 under load through both routers.
    let t0 = Traffic::start(r0.url("/v1/chat/completions"), 3, Duration::from_millis(5));
    let t1 = Traffic::start(r1.url("/v1/chat/completions"), 3, Duration::from_millis(5));
    let served = |t: &Traffic, v: &str| t.by_version.lock().unwrap().get(v).copied().unwrap_or(0);
    wait_for(
        "traffic on v1 through both routers",
        Duration::from_secs(20),
        || async { (served(&t0, "v1") > 10 && served(&t1, "v1") > 10).then_some(()) },
    )
    .await;
    let id = r0.release("v2").await;
    let d = r0.wait_end(id, Duration::from_secs(90)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    wait_for(
        "traffic on v2 through both routers",
        Duration::from_secs(20),
        || async { (served(&t0, "v2") > 10 && served(&t1, "v2") > 10).then_some(()) },
    )
    .await;
    let (ok0, failed0, by0) = t0.stop().await;
    let (ok1, failed1, by1) = t1.stop().await;
    assert!(
        failed0.is_empty() && failed1.is_empty(),
        "failed: {failed0:?} {failed1:?}"
    );
    assert!(ok0 > 50 && ok1 > 50, "{ok0} {ok1}");
    for by in [&by0, &by1] {
        assert!(by.get("v1").copied().unwrap_or(0) > 0, "{by:?}");
        assert!(by.get("v2").copied().unwrap_or(0) > 0, "{by:?}");
    }
    // The new color serves from both hosts, and the old one is stopped on both.
    for (_, ip) in HOSTS {
        let s = stats_at(ip, ports.green).await.expect("v2 runs on both hosts");
        assert_eq!(s["version"], "v2");
        assert!(s["requests"].as_u64().unwrap_or(0) > 0, "{ip} got traffic: {s}");
    }
    wait_for("v1 stopped on both hosts", Duration::from_secs(30), || async {
        for (_, ip) in HOSTS {
            if stats_at(ip, ports.blue).await.is_some() {
                return None;
            }
        }
        Some(())
    })
    .await;
    let st = r1.status().await;
    assert_eq!(st["live"], "green", "{st}");
    assert_eq!(hosts_of(&st, "green"), ["gpu-a", "gpu-b"], "{st}");
    // Logs stay on the hosts: the router says where rather than answering nothing.
    let (code, _, err) = r1.cli_async(&["logs", "chat"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("run on host agents (gpu-a, gpu-b)"), "{err}");
    let (code, out, err) = r1.cli_async(&["fleet", "status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("2/2 host agents connected") && out.contains("gpu-a at 127.0.0.2"),
        "{out}"
    );

    // v3 cannot start on gpu-b (its port is taken there): the release ends before its
    // switch naming the host and why, what started on gpu-a is stopped, v2 stays live.
    let squatter = std::net::TcpListener::bind((HOSTS[1].1, ports.blue)).unwrap();
    let id = r0.release("v3").await;
    let d = r0.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("gpu-b") && reason.contains("already in use"), "{d}");
    wait_for("v3 stopped on gpu-a", Duration::from_secs(30), || async {
        stats_at(HOSTS[0].1, ports.blue).await.is_none().then_some(())
    })
    .await;
    drop(squatter);
    let st = r1.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["green"]["version"].as_str()),
        (Some("green"), Some("v2")),
        "{st}"
    );
    assert_eq!(
        get(&r1.url("/v1/models")).await.unwrap().header("x-cutover-version"),
        "v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_agents_keep_their_model_servers_through_an_agent_restart_and_through_etcd_going_away() {
    let etcd = Cluster::start(3).await;
    let ports = HostPorts::new();
    let fleet = "adopt";
    let release = "promotion = \"manual\"";
    let r = Router::start(&hosted_service(&ports, &fleet_lines(&etcd.url(), fleet, "r0"), release)).await;
    let mut a = Agent::start(&etcd.url(), fleet, HOSTS[0].0, HOSTS[0].1);
    let _b = Agent::start(&etcd.url(), fleet, HOSTS[1].0, HOSTS[1].1);
    wait_agent(&r, "gpu-a", true).await;
    wait_agent(&r, "gpu-b", true).await;
    // The first release has nothing to promote over: it goes live without an approval.
    let id = r.release("v1").await;
    let d = r.wait_end(id, Duration::from_secs(90)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let ip = HOSTS[0].1;
    let pid = stats_at(ip, ports.blue).await.unwrap()["pid"].as_u64().unwrap();

    // The agent is killed: its model server goes on serving; the agent is reported away.
    let traffic = Traffic::start(r.url("/v1/chat/completions"), 2, Duration::from_millis(10));
    a.proc.kill9();
    wait_agent(&r, "gpu-a", false).await;
    let metrics = get(&r.admin_url("/metrics")).await.unwrap().text();
    assert!(metrics.contains("cutover_fleet_agents{state=\"away\"} 1"), "{metrics}");
    assert!(
        metrics.contains("cutover_fleet_agents{state=\"connected\"} 1"),
        "{metrics}"
    );
    assert_eq!(stats_at(ip, ports.blue).await.unwrap()["pid"].as_u64(), Some(pid));

    // Restarted, it adopts the same process instead of starting another.
    a.spawn();
    wait_agent(&r, "gpu-a", true).await;
    // Back on etcd, it has read the desired state (and found nothing new to apply).
    wait_for("the restarted agent to read etcd", Duration::from_secs(30), || async {
        (a.log().matches("agent: connected to etcd").count() >= 2).then_some(())
    })
    .await;
    assert_eq!(stats_at(ip, ports.blue).await.unwrap()["pid"].as_u64(), Some(pid));
    assert!(a.log().contains("adopted running model server"), "{}", a.log());

    // etcd goes away (every member frozen): the model servers keep running, and the
    // agent's supervision goes on without it: a killed model server is started again.
    for i in 0..3 {
        etcd.pause(i);
    }
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let new_pid = wait_for(
        "the agent to restart its model server",
        Duration::from_secs(30),
        || async {
            let p = stats_at(ip, ports.blue).await?["pid"].as_u64()?;
            (p != pid).then_some(p)
        },
    )
    .await;
    assert!(stats_at(HOSTS[1].1, ports.blue).await.is_some());
    for i in 0..3 {
        etcd.resume(i);
    }
    // Back on etcd: the restart reaches the routers' status.
    wait_for("the restart in the status", Duration::from_secs(30), || async {
        let st = r.status().await;
        let p = &st["colors"]["blue"]["processes"];
        let running = p["running"].as_array()?;
        (p["restarts"] == 1 && running.iter().any(|x| x["pid"] == new_pid && x["host"] == "gpu-a")).then_some(())
    })
    .await;
    let (ok, failed, _) = traffic.stop().await;
    assert!(ok > 0);
    // Requests in flight on the killed process are the only ones that may fail.
    assert!(failed.len() <= 2, "{failed:?}");
    let hist = r.api(Method::GET, "/v1/services/chat/history", Value::Null).await;
    assert!(
        hist.text().contains("on gpu-a"),
        "the exit is in the history: {}",
        hist.text()
    );
    // Dated when it happened (the report carries it), not when etcd came back.
    let st = r.status().await;
    let exit_at = st["colors"]["blue"]["processes"]["last_exit"]["at"].clone();
    let h = hist.json();
    let line = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "process_exited" && e["reason"].as_str().unwrap_or("").contains("on gpu-a"))
        .cloned()
        .unwrap();
    assert_eq!(line["at"], exit_at, "{line} vs {st}");
    // The agent keeps no history of its own: no failed write for each process event.
    assert!(!a.log().contains("could not record"), "{}", a.log());

    // A model server of the color being released exits on gpu-b while the release waits
    // for its approval: the agent does not restart it (it is being released), the release
    // ends naming the host, gpu-a's new process is stopped, v1 stays live.
    let id = r.release("v2").await;
    let d = r.wait_phase(id, "awaiting_approval", Duration::from_secs(60)).await;
    assert_eq!(d["phase"], "awaiting_approval", "{d}");
    let green_b = stats_at(HOSTS[1].1, ports.green).await.expect("v2 runs on gpu-b")["pid"]
        .as_u64()
        .unwrap();
    let _ = Command::new("kill").args(["-9", &green_b.to_string()]).status();
    let d = r.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("green replica 0 on gpu-b") && reason.contains("exited"),
        "{d}"
    );
    wait_for("v2 stopped on gpu-a", Duration::from_secs(30), || async {
        stats_at(HOSTS[0].1, ports.green).await.is_none().then_some(())
    })
    .await;
    assert!(stats_at(HOSTS[1].1, ports.green).await.is_none(), "not restarted");
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["blue"]["version"].as_str()),
        (Some("blue"), Some("v1")),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_lost_after_its_switch_leaves_the_live_color_restarted_by_the_hosts() {
    let etcd = Cluster::start(3).await;
    let ports = HostPorts::new();
    let fleet = "handover";
    let mut routers = Vec::new();
    for i in 0..2 {
        let lines = fleet_lines(&etcd.url_of(i), fleet, &format!("r{i}"));
        routers.push(Router::start(&hosted_service_baking(&ports, &lines, "", "60s")).await);
    }
    share_operator_token(&mut routers).await;
    let _a = Agent::start(&etcd.url(), fleet, HOSTS[0].0, HOSTS[0].1);
    let _b = Agent::start(&etcd.url(), fleet, HOSTS[1].0, HOSTS[1].1);
    wait_agent(&routers[0], "gpu-a", true).await;
    wait_agent(&routers[0], "gpu-b", true).await;
    let leader = wait_for("a leader", Duration::from_secs(20), || async {
        for (i, r) in routers.iter().enumerate() {
            if fleet_view(r).await["is_leader"] == true {
                return Some(i);
            }
        }
        None
    })
    .await;
    let other = 1 - leader;
    // v1 goes live at once (a first release has nothing to verify against); v2 switches and
    // bakes for a minute: its processes are still "being released" when the leader dies.
    let id = routers[leader].release("v1").await;
    let d = routers[leader].wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let id = routers[leader].release("v2").await;
    let d = routers[leader]
        .wait_phase(id, "verifying", Duration::from_secs(60))
        .await;
    assert_eq!(d["phase"], "verifying", "{d}");
    assert_eq!(
        routers[other].status().await["colors"]["green"]["processes"]["role"],
        "releasing"
    );
    routers[leader].proc.kill9();
    // The other router leads, marks the release interrupted and gives the live color back
    // to the restart policy on every host.
    wait_for(
        "the new leader to set green serving",
        Duration::from_secs(30),
        || async {
            let st = routers[other].status().await;
            (st["colors"]["green"]["processes"]["role"] == "serving").then_some(())
        },
    )
    .await;
    let pid = stats_at(HOSTS[0].1, ports.green).await.unwrap()["pid"]
        .as_u64()
        .unwrap();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    wait_for(
        "gpu-a to restart its live model server",
        Duration::from_secs(30),
        || async {
            let p = stats_at(HOSTS[0].1, ports.green).await?["pid"].as_u64()?;
            (p != pid).then_some(())
        },
    )
    .await;
    let d = routers[other].release_doc(id).await;
    assert_eq!(d["outcome"], "interrupted", "{d}");
}

/// True while `pid` is a live process (a zombie is not: it has exited).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(") ").next().map(|rest| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The pid of `color`'s model server on every host, gpu-a first.
async fn pids_of(ports: &HostPorts, color: &str) -> Vec<u64> {
    let port = if color == "blue" { ports.blue } else { ports.green };
    let mut out = Vec::new();
    for (host, ip) in HOSTS {
        let s = stats_at(ip, port)
            .await
            .unwrap_or_else(|| panic!("{color} runs on {host}"));
        out.push(s["pid"].as_u64().unwrap());
    }
    out
}

async fn wait_gone(what: &str, pids: &[u64]) {
    wait_for(what, Duration::from_secs(30), || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await
}

/// The index of the router that leads.
async fn leader_of(routers: &[Router]) -> usize {
    wait_for("a leader", Duration::from_secs(20), || async {
        for (i, r) in routers.iter().enumerate() {
            if fleet_view(r).await["is_leader"] == true {
                return Some(i);
            }
        }
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_cut_off_with_its_leader_stops_what_it_started_and_cutover_abort_closes_it() {
    let etcd = Cluster::start(3).await;
    let ports = HostPorts::new();
    let fleet = "cutoff";
    let mut routers = Vec::new();
    for i in 0..2 {
        let lines = fleet_lines(&etcd.url_of(i), fleet, &format!("r{i}"));
        routers.push(Router::start(&hosted_service(&ports, &lines, "promotion = \"manual\"")).await);
    }
    share_operator_token(&mut routers).await;
    let _a = Agent::start(&etcd.url(), fleet, HOSTS[0].0, HOSTS[0].1);
    let _b = Agent::start(&etcd.url(), fleet, HOSTS[1].0, HOSTS[1].1);
    wait_agent(&routers[0], "gpu-a", true).await;
    wait_agent(&routers[0], "gpu-b", true).await;
    let leader = leader_of(&routers).await;
    let other = 1 - leader;
    let id = routers[leader].release("v1").await;
    let d = routers[leader].wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");

    // v2 comes up on green and waits for an approval.
    let id = routers[leader].release("v2").await;
    let d = routers[leader]
        .wait_phase(id, "awaiting_approval", Duration::from_secs(60))
        .await;
    assert_eq!(d["phase"], "awaiting_approval", "{d}");
    let green = pids_of(&ports, "green").await;
    // A router that did not run the release shows what green runs, not an old label.
    let st = routers[other].status().await;
    assert_eq!(st["colors"]["green"]["version"], "v2", "{st}");

    // The leader dies: the new one marks the release interrupted and stops what it started
    // (nobody will switch to it), on both hosts.
    routers[leader].proc.kill9();
    let r = &routers[other];
    wait_for("the release interrupted", Duration::from_secs(30), || async {
        (r.release_doc(id).await["outcome"] == "interrupted").then_some(())
    })
    .await;
    wait_gone("v2 stopped on both hosts", &green).await;
    let (kv, _) = etcd
        .client()
        .get(&format!("/cutover/{fleet}/desired/chat/green"))
        .await
        .unwrap();
    let desired: Value = serde_json::from_slice(&kv.unwrap().value).unwrap();
    assert_eq!(desired["wanted"], "stop", "{desired}");
    wait_for("green shown stopped", Duration::from_secs(30), || async {
        let st = r.status().await;
        let empty = st["colors"]["green"]["processes"]["running"].as_array()?.is_empty();
        (empty && st["colors"]["green"]["state"] == "stopped").then_some(())
    })
    .await;
    let st = r.status().await;
    assert_eq!(
        (st["live"].as_str(), st["colors"]["blue"]["version"].as_str()),
        (Some("blue"), Some("v1")),
        "{st}"
    );

    // `cutover abort` finds the interrupted release and closes it.
    let (code, out, err) = r.cli_async(&["abort", "chat"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("#{id}")), "{out}");
    assert_eq!(r.release_doc(id).await["outcome"], "aborted");

    // The ex-leader restarted takes the fleet's word for the release it ran: aborted, and
    // no `release_interrupted` line of its own.
    routers[leader].spawn().await;
    let ex = &routers[leader];
    wait_for("the ex-leader to show the abort", Duration::from_secs(30), || async {
        (ex.release_doc(id).await["outcome"] == "aborted").then_some(())
    })
    .await;
    let hist = ex.api(Method::GET, "/v1/services/chat/history", Value::Null).await;
    assert!(!hist.text().contains("release_interrupted"), "{}", hist.text());
    // Nothing runs on green: every router says stopped, not only the one that stopped it.
    let st = ex.status().await;
    assert_eq!(st["colors"]["green"]["state"], "stopped", "{st}");
    assert!(hist.text().contains("release_started"), "{}", hist.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_agent_away_holds_the_switch_fails_it_if_not_back_and_its_processes_stay_listed_as_unknown() {
    let etcd = Cluster::start(3).await;
    let ports = HostPorts::new();
    let fleet = "away";
    let release = "promotion = \"manual\"\nphase_timeout = \"8s\"";
    // A 3 s bake: long enough to kill an agent between the switch and the scale-down.
    let lines = fleet_lines(&etcd.url(), fleet, "r0");
    let r = Router::start(&hosted_service_baking(&ports, &lines, release, "3s")).await;
    let _a = Agent::start(&etcd.url(), fleet, HOSTS[0].0, HOSTS[0].1);
    let mut b = Agent::start(&etcd.url(), fleet, HOSTS[1].0, HOSTS[1].1);
    wait_agent(&r, "gpu-a", true).await;
    wait_agent(&r, "gpu-b", true).await;
    let id = r.release("v1").await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    let approve = |id: i64| {
        let r = &r;
        async move {
            let path = format!("/v1/services/chat/releases/{id}/approve");
            let resp = r.api(Method::POST, &path, Value::Null).await;
            assert!(resp.status.is_success(), "{}", resp.text());
        }
    };
    let holds = || {
        r.log()
            .matches("the switch holds until the host agents are back")
            .count()
    };

    // gpu-b's agent dies while v2 waits for its approval: its process is listed as unknown;
    // the approved switch holds until the agent is back, then goes on.
    let id = r.release("v2").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(60)).await;
    let green_b = pids_of(&ports, "green").await[1];
    b.proc.kill9();
    wait_agent(&r, "gpu-b", false).await;
    let st = r.status().await;
    let on_b = |st: &Value, color: &str| -> Vec<Value> {
        st["colors"][color]["processes"]["running"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["host"] == "gpu-b")
            .cloned()
            .collect()
    };
    let listed = on_b(&st, "green");
    assert!(
        listed.len() == 1 && listed[0]["pid"] == green_b && listed[0]["unknown"] == true,
        "{st}"
    );
    let (code, out, err) = r.cli_async(&["status", "chat"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("on gpu-b  pid {green_b}")) && out.contains("unknown (host agent away"),
        "{out}"
    );
    approve(id).await;
    wait_for("the switch to hold", Duration::from_secs(30), || async {
        (holds() == 1).then_some(())
    })
    .await;
    assert_eq!(r.status().await["live"], "blue");
    b.spawn();
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    assert!(alive(green_b), "adopted, not started again");

    // Away through the whole hold: the release fails naming the host, v2 stays live, and
    // what runs on gpu-b stays listed (unknown) until its agent is back and stops it.
    let id = release_when_free(&r, "v3").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(60)).await;
    let blue = pids_of(&ports, "blue").await;
    b.proc.kill9();
    wait_agent(&r, "gpu-b", false).await;
    approve(id).await;
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "aborted", "{d}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("gpu-b") && reason.contains("away"), "{d}");
    assert_eq!(
        get(&r.url("/v1/models")).await.unwrap().header("x-cutover-version"),
        "v2"
    );
    wait_gone("v3 stopped on gpu-a", &blue[..1]).await;
    assert!(alive(blue[1]), "gpu-b's agent is away: nothing stopped it");
    let listed = on_b(&r.status().await, "blue");
    assert!(listed.len() == 1 && listed[0]["unknown"] == true, "{listed:?}");
    b.spawn();
    wait_gone("v3 stopped on gpu-b once its agent is back", &blue[1..]).await;
    wait_for("gpu-b's blue unlisted", Duration::from_secs(30), || async {
        on_b(&r.status().await, "blue").is_empty().then_some(())
    })
    .await;

    // An agent that goes away during a stop is reported as that, not as a stop timeout
    // (the wait ends when its lease lapses, long before stop_timeout + 10 s).
    wait_agent(&r, "gpu-b", true).await;
    let id = release_when_free(&r, "v4").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(60)).await;
    let blue = pids_of(&ports, "blue").await;
    b.proc.signal("STOP");
    let resp = r
        .api(
            Method::POST,
            &format!("/v1/services/chat/releases/{id}/abort"),
            Value::Null,
        )
        .await;
    assert!(resp.status.is_success(), "{}", resp.text());
    wait_for("the stop to see gpu-b leave", Duration::from_secs(30), || async {
        r.log().contains("into the stop, before reporting it").then_some(())
    })
    .await;
    assert!(!r.log().contains("did not report the stop within"), "{}", r.log());
    assert!(!alive(blue[0]) && alive(blue[1]), "{blue:?}");
    b.proc.signal("CONT");
    wait_gone("v4 stopped on gpu-b after SIGCONT", &blue[1..]).await;

    // An agent lost after the switch: the old color's scale-down reaches it when it is back,
    // and until then its process stays listed as unknown.
    wait_agent(&r, "gpu-b", true).await;
    let id = release_when_free(&r, "v5").await;
    r.wait_phase(id, "awaiting_approval", Duration::from_secs(60)).await;
    let old_green = pids_of(&ports, "green").await;
    approve(id).await;
    let d = r.wait_phase(id, "verifying", Duration::from_secs(60)).await;
    assert_eq!(d["phase"], "verifying", "{d}");
    b.proc.kill9();
    let d = r.wait_end(id, Duration::from_secs(60)).await;
    assert_eq!(d["outcome"], "completed", "{d}");
    wait_gone("v2 scaled down on gpu-a", &old_green[..1]).await;
    wait_agent(&r, "gpu-b", false).await;
    let listed = on_b(&r.status().await, "green");
    assert!(
        listed.len() == 1 && listed[0]["pid"] == old_green[1] && listed[0]["unknown"] == true,
        "{listed:?}"
    );
    assert!(alive(old_green[1]));
    b.spawn();
    wait_gone("v2 scaled down on gpu-b once its agent is back", &old_green[1..]).await;
}

#[test]
fn agent_arguments_are_checked_before_it_starts() {
    let run = |args: &[&str]| {
        let out = Command::new(CUTOVER).arg("agent").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let base = [
        "--etcd",
        "etcd://127.0.0.1:1",
        "--fleet",
        "f",
        "--advertise",
        "127.0.0.2",
    ];
    let with = |extra: &[&'static str]| base.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>();
    let (code, err) = run(&with(&["--host", "gpu-a"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--allow-command PROGRAM") && err.contains("--allow-any-command"),
        "{err}"
    );
    let (code, err) = run(&with(&["--host", "gpu_a", "--allow-any-command"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--host") && err.contains("gpu_a"), "{err}");
    let (code, err) = run(&[
        "--etcd",
        "redis://x:1",
        "--fleet",
        "f",
        "--host",
        "a",
        "--advertise",
        "127.0.0.2",
        "--allow-any-command",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--etcd") && err.contains("etcd://"), "{err}");
    let (code, err) = run(&with(&["--host", "a", "--allow-any-command", "--allow-command", "x"]));
    assert_eq!(code, Some(2), "clap refuses both: {err}");
}
