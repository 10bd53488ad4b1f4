//! The client commands: one function each, talking to a running router over the admin API.

use serde_json::{json, Value};

use crate::cli::{Command, FleetSub, Progress, ReleaseCmd, ReleaseSub, Remote};
use crate::client::{Client, Failure};
use crate::{follow, logs, output};

/// Runs a client command (everything but `serve`, `check`, `demo` and the generators).
pub async fn run(cmd: Command) -> Result<(), Failure> {
    match cmd {
        Command::Status { service, remote } => status(&remote, service).await,
        Command::History { service, limit, remote } => history(&remote, service, limit).await,
        Command::Switch {
            service,
            color,
            force,
            if_generation,
            reason,
            remote,
        } => {
            let body = json!({"to": color, "force": force, "if_generation": if_generation, "reason": reason});
            switch(&remote, &service, body).await
        }
        Command::Release(r) => release_cmd(r).await,
        Command::Reload { remote } => reload(&remote).await,
        Command::Fleet(f) => match f.sub {
            FleetSub::Status { remote } => fleet(&remote).await,
        },
        Command::Releases { service, limit, remote } => releases(&remote, &service, limit).await,
        Command::Approve {
            service,
            release,
            remote,
        } => approve(&remote, &service, release).await,
        Command::Abort {
            service,
            release,
            remote,
        } => abort(&remote, &service, release).await,
        Command::Rollback {
            service,
            redeploy,
            force,
            reason,
            progress,
            remote,
        } => {
            let body = json!({"force": force, "reason": reason, "redeploy": redeploy});
            rollback(&remote, &service, redeploy, body, progress).await
        }
        Command::Stop {
            service,
            color,
            force,
            reason,
            remote,
        } => {
            let body = json!({"color": color, "force": force, "reason": reason});
            stop(&remote, &service, body).await
        }
        Command::Logs {
            service,
            color,
            follow,
            tail,
            replica,
            remote,
        } => {
            let args = logs::LogsArgs {
                service: &service,
                color: color.as_deref(),
                follow,
                tail,
                replica,
                json: remote.json,
            };
            until_interrupted(logs::run(&Client::new(&remote)?, &args), None).await
        }
        _ => Err(Failure::new(2, "not a client command")),
    }
}

async fn reload(remote: &Remote) -> Result<(), Failure> {
    let v = Client::new(remote)?.post("/v1/reload", &json!({})).await?;
    output::print(remote, &v, |v| {
        format!("reloaded: {}", v["summary"].as_str().unwrap_or("?"))
    })
}

async fn fleet(remote: &Remote) -> Result<(), Failure> {
    let v = Client::new(remote)?.get("/v1/fleet").await?;
    output::print(remote, &v, fleet_status)
}

async fn releases(remote: &Remote, service: &str, limit: usize) -> Result<(), Failure> {
    let v = Client::new(remote)?
        .get(&format!("/v1/services/{service}/releases"))
        .await?;
    output::print(remote, &v, |v| output::releases(v, limit))
}

async fn status(remote: &Remote, service: Option<String>) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    match service {
        Some(s) => {
            let v = c.get(&format!("/v1/services/{s}")).await?;
            output::print(remote, &v, output::status)
        }
        None => {
            let v = c.get("/v1/services").await?;
            output::print(remote, &v, |v| {
                v["services"]
                    .as_array()
                    .map(|a| a.iter().map(output::status).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            })
        }
    }
}

async fn history(remote: &Remote, service: Option<String>, limit: u32) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let names = match service {
        Some(s) => vec![s],
        None => {
            let v = c.get("/v1/services").await?;
            v["services"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str().map(String::from))
                .collect()
        }
    };
    for name in names {
        let v = c.get(&format!("/v1/services/{name}/history?limit={limit}")).await?;
        output::print(remote, &v, output::history)?;
    }
    Ok(())
}

async fn switch(remote: &Remote, service: &str, body: Value) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let v = c.post(&format!("/v1/services/{service}/switch"), &body).await?;
    output::print(remote, &v, |v| {
        let mut text = format!(
            "{service}: {} is live (generation {}, version {})",
            v["live"].as_str().unwrap_or("?"),
            v["generation"],
            v["version"].as_str().unwrap_or("-")
        );
        text.push_str(&sync_lines(service, v));
        if let Some(id) = v["ended_release"].as_i64() {
            text.push_str(&format!(
                "\n{service}: release #{id} ended (aborted) by this forced switch"
            ));
        }
        text
    })
}

async fn release_cmd(r: ReleaseCmd) -> Result<(), Failure> {
    match r.sub {
        Some(ReleaseSub::Show { service, id, remote }) => show(&remote, &service, id).await,
        Some(ReleaseSub::Follow {
            service,
            id,
            progress,
            remote,
        }) => {
            let c = Client::new(&remote)?;
            let id = match id {
                Some(id) => id,
                None => in_progress(&c, &service).await?,
            };
            let d = c.get(&format!("/v1/services/{service}/releases/{id}")).await?;
            if !remote.json {
                output::line(&header(&service, &d))?;
            }
            wait(&c, &remote, &service, id, progress).await
        }
        None => {
            let (Some(service), Some(version)) = (r.service, r.version) else {
                return Err(Failure::new(2, "usage: cutover release SERVICE VERSION [--wait]"));
            };
            start(&r.remote, &service, &version, r.wait, r.progress).await
        }
    }
}

fn header(service: &str, d: &Value) -> String {
    format!(
        "{service}: release #{} of {} into {}",
        d["id"],
        d["version"].as_str().unwrap_or("?"),
        d["color"].as_str().unwrap_or("?")
    )
}

async fn start(remote: &Remote, service: &str, version: &str, wait_: bool, p: Progress) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let v = c
        .post(
            &format!("/v1/services/{service}/releases"),
            &json!({"version": version}),
        )
        .await
        .map_err(|mut f| {
            if f.code.as_deref() == Some("release_in_progress") {
                f.message
                    .push_str(&format!("; `cutover release follow {service}` re-attaches to it"));
            }
            f
        })?;
    let id = v["id"].as_i64().unwrap_or(0);
    if !wait_ {
        return output::print(remote, &v, |v| format!("{} started", header(service, v)));
    }
    if !remote.json {
        output::line(&header(service, &v))?;
    }
    wait(&c, remote, service, id, p).await
}

/// `release show`: one release, the latest by default.
async fn show(remote: &Remote, service: &str, id: Option<i64>) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let d = match id {
        Some(id) => c.get(&format!("/v1/services/{service}/releases/{id}")).await?,
        None => {
            let v = c.get(&format!("/v1/services/{service}/releases")).await?;
            v["releases"]
                .as_array()
                .and_then(|a| a.first().cloned())
                .ok_or_else(|| Failure::new(1, format!("{service} has no releases yet")))?
        }
    };
    output::print(remote, &d, output::release)
}

/// The id of the release in progress (the one named, if it is that one).
async fn in_progress(c: &Client, service: &str) -> Result<i64, Failure> {
    let v = c.get(&format!("/v1/services/{service}")).await?;
    if let Some(id) = v["release"]["id"].as_i64() {
        return Ok(id);
    }
    let latest = c.get(&format!("/v1/services/{service}/releases")).await?;
    let hint = match latest["releases"].as_array().and_then(|a| a.first()) {
        Some(r) => format!(
            "; the latest, #{} of {}, is {}: `cutover release show {service}`",
            r["id"],
            r["version"].as_str().unwrap_or("?"),
            r["outcome"].as_str().unwrap_or("?")
        ),
        None => String::new(),
    };
    Err(Failure::new(1, format!("no release is in progress in {service}{hint}")))
}

/// The latest release (the one named, if it is that one) when it ended `interrupted`.
async fn interrupted(c: &Client, service: &str, wanted: Option<i64>) -> Result<Option<i64>, Failure> {
    let v = c.get(&format!("/v1/services/{service}/releases")).await?;
    let latest = v["releases"].as_array().and_then(|a| a.first());
    Ok(latest
        .filter(|r| r["outcome"] == "interrupted")
        .and_then(|r| r["id"].as_i64())
        .filter(|id| wanted.is_none_or(|w| w == *id)))
}

/// The release a signal is for: the one in progress, which must be `wanted` if given.
async fn target(c: &Client, service: &str, wanted: Option<i64>) -> Result<i64, Failure> {
    let id = in_progress(c, service).await?;
    match wanted {
        Some(w) if w != id => Err(Failure::new(
            1,
            format!("release #{w} is not the one in progress in {service} (#{id} is)"),
        )),
        _ => Ok(id),
    }
}

/// Approves, then says what the release did with it: the next phase, or why it did not go on.
async fn approve(remote: &Remote, service: &str, wanted: Option<i64>) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let id = target(&c, service, wanted).await?;
    let path = format!("/v1/services/{service}/releases/{id}");
    c.post(&format!("{path}/approve"), &json!({})).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut d = c.get(&path).await?;
    while d["phase"] == "awaiting_approval" && d["outcome"].is_null() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        d = c.get(&path).await?;
    }
    if d["phase"] == "aborted" || (!d["outcome"].is_null() && d["outcome"] != "completed") {
        return Err(Failure::new(
            1,
            format!(
                "release #{id} was not approved: it ended {}: {}",
                d["outcome"].as_str().unwrap_or("aborted"),
                d["reason"].as_str().unwrap_or("")
            ),
        ));
    }
    output::print(remote, &d, |d| {
        format!(
            "{service}: release #{id} approved; now {}",
            d["phase"].as_str().unwrap_or("?")
        )
    })
}

async fn abort(remote: &Remote, service: &str, wanted: Option<i64>) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let id = match target(&c, service, wanted).await {
        Ok(id) => id,
        // A release a lost fleet leader left interrupted is not in progress, yet an abort
        // closes it (and stops what it started on the host agents).
        Err(f) => interrupted(&c, service, wanted).await?.ok_or(f)?,
    };
    let v = c
        .post(&format!("/v1/services/{service}/releases/{id}/abort"), &json!({}))
        .await?;
    output::print(remote, &v, |_| {
        format!("{service}: aborting release #{id} (live traffic untouched)")
    })
}

async fn rollback(remote: &Remote, service: &str, redeploy: bool, body: Value, p: Progress) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let v = c.post(&format!("/v1/services/{service}/rollback"), &body).await?;
    if redeploy {
        let id = v["release"]["id"].as_i64().unwrap_or(0);
        if !remote.json {
            output::line(&format!(
                "{service}: redeploying {} as release #{id}",
                v["release"]["version"].as_str().unwrap_or("?")
            ))?;
        }
        return wait(&c, remote, service, id, p).await;
    }
    output::print(remote, &v, |v| {
        format!(
            "{service}: rolled back to {} (generation {}, version {}){}",
            v["live"].as_str().unwrap_or("?"),
            v["generation"],
            v["version"].as_str().unwrap_or("-"),
            sync_lines(service, v)
        )
    })
}

async fn stop(remote: &Remote, service: &str, body: Value) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let v = c.post(&format!("/v1/services/{service}/stop"), &body).await?;
    output::print(remote, &v, |v| stopped(service, v))
}

/// `cutover stop`: what was stopped, and how.
fn stopped(service: &str, v: &Value) -> String {
    let color = v["color"].as_str().unwrap_or("?");
    let version = v["version"].as_str().unwrap_or("no version");
    if v["had_processes"] != true {
        return format!("{service}: {color} ({version}) runs no model server: nothing to stop");
    }
    let mut text = format!(
        "{service}: stopped {color} ({version}); {}",
        v["drained"].as_str().unwrap_or("")
    );
    if v["was_live"] == true {
        text.push_str(&format!(
            "\n{service}: {color} was live: clients get errors until a switch or a release makes a color live"
        ));
    }
    text
}

/// `cutover fleet status`: the connection, the leader, "n/m routers synced", a line per router.
fn fleet_status(v: &Value) -> String {
    let leader = match v["leader"]["router_id"].as_str() {
        Some(id) => format!(
            "{id} at {} since {}",
            v["leader"]["admin_url"].as_str().unwrap_or("?"),
            v["leader"]["since"].as_str().unwrap_or("?")
        ),
        None => "none elected right now".into(),
    };
    let routers = v["routers"].as_array().cloned().unwrap_or_default();
    let synced = routers.iter().filter(|r| r["state"] == "SYNCED").count();
    let mut text = format!(
        "fleet {} as {}: {}\nleader: {leader}\n{synced}/{} routers synced",
        v["fleet"].as_str().unwrap_or("?"),
        v["router_id"].as_str().unwrap_or("?"),
        if v["connected"] == true {
            "connected to etcd".to_string()
        } else {
            let why = v["etcd_error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
            format!("CUT FROM ETCD since {}{why}", v["since"].as_str().unwrap_or("?"))
        },
        routers.len()
    );
    for r in &routers {
        let gens: Vec<String> = r["generations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(svc, g)| format!("{svc}={g}"))
            .collect();
        let id = r["id"].as_str().unwrap_or("?");
        let mark = if v["leader"]["router_id"] == r["id"] {
            " (leader)"
        } else {
            ""
        };
        let reason = r["reason"].as_str().map(|why| format!(": {why}")).unwrap_or_default();
        text.push_str(&format!(
            "\n  {id}{mark} {} {}{reason}",
            r["state"].as_str().unwrap_or("?"),
            gens.join(" ")
        ));
    }
    let agents = v["agents"].as_array().cloned().unwrap_or_default();
    if !agents.is_empty() {
        let here = agents.iter().filter(|a| a["connected"] == true).count();
        text.push_str(&format!("\n{here}/{} host agents connected", agents.len()));
        for a in &agents {
            text.push_str(&format!(
                "\n  {} at {} {}",
                a["host"].as_str().unwrap_or("?"),
                a["advertise"].as_str().unwrap_or("?"),
                if a["connected"] == true {
                    "connected".to_string()
                } else {
                    "AWAY (its model servers keep running)".to_string()
                }
            ));
        }
    }
    text
}

/// Fleet mode: "n/m routers synced", then each router that is not, with its state.
fn sync_lines(service: &str, v: &Value) -> String {
    let s = &v["sync"];
    if s.is_null() {
        return String::new();
    }
    let mut text = format!("\n{service}: {}/{} routers synced", s["synced"], s["of"]);
    for r in s["routers"].as_array().into_iter().flatten() {
        if r["state"] != "SYNCED" {
            let generation = r["generation"]
                .as_u64()
                .map(|g| format!(" at generation {g}"))
                .unwrap_or_default();
            let reason = r["reason"].as_str().map(|why| format!(": {why}")).unwrap_or_default();
            text.push_str(&format!(
                "\n  {} {}{generation}{reason}",
                r["id"].as_str().unwrap_or("?"),
                r["state"].as_str().unwrap_or("?")
            ));
        }
    }
    text
}

/// Follows a release until it ends: 0 when completed and verified, 4 when completed with an
/// inconclusive verification (live, but nothing showed it works: too few requests in the
/// bake), 1 when aborted, rolled back or interrupted. Ctrl-C stops following (exit 130) and
/// says how to re-attach.
async fn wait(c: &Client, remote: &Remote, service: &str, id: i64, p: Progress) -> Result<(), Failure> {
    let hint =
        format!("stopped following release #{id}; it goes on: `cutover release follow {service} {id}` re-attaches");
    let mut doc = Value::Null;
    until_interrupted(
        async {
            doc = follow::release(c, remote, service, id, p).await?;
            Ok(())
        },
        Some(hint),
    )
    .await?;
    if remote.json {
        output::line(&serde_json::to_string_pretty(&doc).unwrap_or_default())?;
    }
    match doc["outcome"].as_str() {
        Some("completed") => match inconclusive(&doc) {
            Some(detail) => Err(Failure::new(
                4,
                format!("release #{id} is live but not verified ({detail}); exit code 4"),
            )),
            None => Ok(()),
        },
        // The reason is on stdout already, unless only the JSON document went there.
        other if remote.json => Err(Failure::new(
            1,
            format!(
                "release #{id} {}: {}",
                other.unwrap_or("ended"),
                doc["reason"].as_str().unwrap_or("")
            ),
        )),
        other => Err(Failure::new(
            1,
            format!(
                "release #{id} {}: why is above; `cutover release show {service} {id}` has every phase",
                other.unwrap_or("ended")
            ),
        )),
    }
}

/// The verification detail of a release that completed without a verdict, if it did.
fn inconclusive(doc: &Value) -> Option<String> {
    doc["phases"]
        .as_array()?
        .iter()
        .rev()
        .find(|p| p["phase"] == "verifying")
        .and_then(|p| p["detail"].as_str())
        .filter(|d| d.starts_with("inconclusive"))
        .map(str::to_string)
}

/// Runs `work` until it ends or Ctrl-C (exit 130, with `hint` on stderr).
async fn until_interrupted(
    work: impl std::future::Future<Output = Result<(), Failure>>,
    hint: Option<String>,
) -> Result<(), Failure> {
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => {
            // Leave a terminal's redrawn status line behind a newline.
            let _ = output::raw("\n");
            Err(Failure::new(130, hint.unwrap_or_default()))
        }
    }
}
