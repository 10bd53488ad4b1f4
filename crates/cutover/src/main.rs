//! The `cutover` binary: parses the command line, then either runs the router and controller
//! (`serve`), validates a config (`check`), or talks to a running router over the admin API.
//!
//! Exit codes: 0 success; 1 the operation ran and failed; 2 usage or config error;
//! 3 the router could not be reached or refused the token.

#![forbid(unsafe_code)]

mod client;
mod demo;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::{Client, Failure};

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Blue-green releases for AI model services, with zero downtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct Remote {
    /// Admin API of the running router.
    #[arg(long, env = "CUTOVER_ADMIN", global = true)]
    admin: Option<String>,
    /// Admin bearer token.
    #[arg(long, env = "CUTOVER_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// File holding the admin bearer token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Take the admin address and token file from this config.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of text for people.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router (data plane) and the release controller.
    Serve {
        /// Config file.
        #[arg(long, short, default_value = "cutover.toml")]
        config: PathBuf,
        /// How long in-flight requests may finish after SIGTERM.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace: Duration,
        /// Worker threads; 1 runs everything on one thread (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Once every listener serves, write their bound addresses here as JSON
        /// (`{"admin": ..., "services": {NAME: {"listen": ..., "preview_listen": ...}}}`):
        /// how a script finds the ports of a config that says port 0.
        #[arg(long)]
        addresses_file: Option<PathBuf>,
    },
    /// Run the whole story on this machine: releases v1, v2 and a faulty v3 under traffic.
    Demo,
    /// Validate a config file without starting anything.
    Check {
        /// Config file.
        file: PathBuf,
    },
    /// Show services: live color, generation, versions, endpoints.
    Status {
        service: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show the switch and release history of a service.
    History {
        service: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a color live now (manual, no gates). Without a color: the idle one.
    Switch {
        service: String,
        color: Option<String>,
        /// Switch even if the target has no healthy endpoint.
        #[arg(long)]
        force: bool,
        /// Refuse unless the generation is still this one.
        #[arg(long)]
        if_generation: Option<u64>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Release VERSION into the idle color through the whole pipeline.
    Release {
        service: String,
        version: String,
        /// Follow the release phase by phase; exit 0 when live and verified, 1 otherwise.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve the release awaiting approval.
    Approve {
        service: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Abort the release in progress (before the switch; live traffic is untouched).
    Abort {
        service: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Switch back to the previous live color.
    Rollback {
        service: String,
        /// The previous color was scaled down: release its version again through the pipeline.
        #[arg(long)]
        redeploy: bool,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run the stand-in model server (the same as the `mock-model` binary).
    #[command(hide = true, disable_help_flag = true)]
    MockModel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e}): expected e.g. 500ms, 30s, 10m"))
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::MockModel { args } => {
            let argv = std::iter::once("mock-model".to_string()).chain(args);
            mock_model::main_with_args(<mock_model::Args as Parser>::parse_from(argv))
        }
        Command::Demo => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            match rt.block_on(demo::run()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(f) => {
                    eprintln!("error: {}", f.message);
                    ExitCode::from(f.exit)
                }
            }
        }
        Command::Check { file } => match cutover_config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} service{})",
                    file.display(),
                    c.services.len(),
                    if c.services.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            config,
            grace,
            threads,
            log_format,
            addresses_file,
        } => {
            init_logs(log_format);
            serve(&config, grace, threads, addresses_file)
        }
        cmd => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            match rt.block_on(remote(cmd)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(f) => {
                    eprintln!("error: {}", f.message);
                    ExitCode::from(f.exit)
                }
            }
        }
    }
}

/// `cutover serve`: stage one (the config, no side effects) here, the rest in the server.
fn serve(
    config: &std::path::Path,
    grace: Duration,
    threads: Option<usize>,
    addresses_file: Option<PathBuf>,
) -> ExitCode {
    let cfg = match cutover_config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cutover_control::server::serve(
        cfg,
        cutover_control::server::ServeOptions { grace, addresses_file },
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn remote(cmd: Command) -> Result<(), Failure> {
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
            let body =
                serde_json::json!({"to": color, "force": force, "if_generation": if_generation, "reason": reason});
            let c = Client::new(&remote)?;
            let v = c.post(&format!("/v1/services/{service}/switch"), &body).await?;
            output::print(&remote, &v, |v| {
                format!(
                    "{service}: {} is live (generation {}, version {})",
                    v["live"].as_str().unwrap_or("?"),
                    v["generation"],
                    v["version"].as_str().unwrap_or("-")
                )
            })
        }
        Command::Release {
            service,
            version,
            wait,
            remote,
        } => release(&remote, &service, &version, wait).await,
        Command::Approve { service, remote } => signal(&remote, &service, "approve").await,
        Command::Abort { service, remote } => signal(&remote, &service, "abort").await,
        Command::Rollback {
            service,
            redeploy,
            force,
            reason,
            remote,
        } => rollback(&remote, &service, redeploy, force, reason).await,
        Command::Serve { .. } | Command::Check { .. } | Command::MockModel { .. } | Command::Demo => {
            unreachable!("handled in main")
        }
    }
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

async fn release(remote: &Remote, service: &str, version: &str, wait: bool) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let v = c
        .post(
            &format!("/v1/services/{service}/releases"),
            &serde_json::json!({"version": version}),
        )
        .await?;
    let id = v["id"].as_i64().unwrap_or(0);
    if !wait {
        return output::print(remote, &v, |v| {
            format!(
                "{service}: release #{id} of {version} into {} started",
                v["color"].as_str().unwrap_or("?")
            )
        });
    }
    println!(
        "{service}: release #{id} of {version} into {}",
        v["color"].as_str().unwrap_or("?")
    );
    follow(&c, remote, service, id).await
}

/// `approve` or `abort` the release in progress.
async fn signal(remote: &Remote, service: &str, what: &str) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let id = active_release(&c, service).await?;
    let v = c
        .post(
            &format!("/v1/services/{service}/releases/{id}/{what}"),
            &serde_json::json!({}),
        )
        .await?;
    output::print(remote, &v, |_| match what {
        "approve" => format!("{service}: release #{id} approved"),
        _ => format!("{service}: aborting release #{id}"),
    })
}

async fn rollback(
    remote: &Remote,
    service: &str,
    redeploy: bool,
    force: bool,
    reason: Option<String>,
) -> Result<(), Failure> {
    let c = Client::new(remote)?;
    let body = serde_json::json!({"force": force, "reason": reason, "redeploy": redeploy});
    let v = c.post(&format!("/v1/services/{service}/rollback"), &body).await?;
    if redeploy {
        let id = v["release"]["id"].as_i64().unwrap_or(0);
        println!(
            "{service}: redeploying {} as release #{id}",
            v["release"]["version"].as_str().unwrap_or("?")
        );
        return follow(&c, remote, service, id).await;
    }
    output::print(remote, &v, |v| {
        format!(
            "{service}: rolled back to {} (generation {}, version {})",
            v["live"].as_str().unwrap_or("?"),
            v["generation"],
            v["version"].as_str().unwrap_or("-")
        )
    })
}

async fn active_release(c: &Client, service: &str) -> Result<i64, Failure> {
    let v = c.get(&format!("/v1/services/{service}")).await?;
    v["release"]["id"]
        .as_i64()
        .ok_or_else(|| Failure::new(1, format!("no release is in progress in {service}")))
}

/// Follows a release until it ends: 0 when completed, 1 when aborted or rolled back.
async fn follow(c: &Client, remote: &Remote, service: &str, id: i64) -> Result<(), Failure> {
    let doc = output::follow_release(c, service, id, remote.json).await?;
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    match doc["outcome"].as_str() {
        Some("completed") => Ok(()),
        other => Err(Failure::new(
            1,
            format!(
                "release #{id} {}: {}",
                other.unwrap_or("ended"),
                doc["reason"].as_str().unwrap_or("")
            ),
        )),
    }
}
