//! The `cutover` binary: parses the command line, then either runs the router and controller
//! (`serve`), validates a config (`check`), generates completions or man pages, or talks to a
//! running router over the admin API.
//!
//! # Layout
//! - `cli`: every command and argument (clap), with help texts and examples.
//! - `client`: the admin API client, `Failure` and its exit code, the actor.
//! - `output`: text for people (JSON with `--json`), safe on a closed stdout.
//! - `follow`: following a release phase by phase (terminal and CI output).
//! - `logs`: `cutover logs`, showing and following managed processes' logs.
//! - `commands`: one function per client command.
//! - `token_cmd`: `cutover token create|list`, offline on the tokens file.
//! - `demo`: `cutover demo`.
//!
//! Exit codes: 0 success; 1 the operation ran and failed; 2 usage or config error;
//! 3 the router could not be reached or refused the token; 141 stdout was closed (what a
//! shell reports for a SIGPIPE end); 130 interrupted by Ctrl-C.

#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod demo;
mod follow;
mod logs;
mod output;
mod token_cmd;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, LogFormat, Shell};
use crate::client::Failure;

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

/// The exit code of a command's result; the failure's message goes to stderr (a closed
/// stderr is ignored: there is nobody left to tell).
fn exit(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                let _ = writeln!(std::io::stderr(), "error: {}", f.message);
            }
            ExitCode::from(f.exit)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::MockModel { args } => {
            let argv = std::iter::once("mock-model".to_string()).chain(args);
            mock_model::main_with_args(<mock_model::Args as Parser>::parse_from(argv))
        }
        Command::Demo { canary } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            exit(rt.block_on(demo::run(canary)))
        }
        Command::Check { file } => exit(check(&file)),
        Command::Completions { shell } => exit(completions(shell)),
        Command::Man { dir } => exit(man(dir.as_deref())),
        Command::Token(t) => exit(token_cmd::run(t.sub)),
        Command::Serve {
            config,
            grace,
            threads,
            log_format,
            addresses_file,
            upgrade,
        } => {
            init_logs(log_format);
            let opts = cutover_control::serve::ServeOptions {
                grace,
                addresses_file,
                upgrade,
            };
            serve(&config, threads, opts)
        }
        Command::Agent {
            etcd,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_user,
            etcd_password_file,
            fleet,
            host,
            advertise,
            data_dir,
            workdir,
            allow_command,
            allow_any_command,
            log_format,
        } => {
            init_logs(log_format);
            let allowed = (!allow_any_command).then_some(allow_command);
            // Relative to where the agent starts, as every path flag.
            let absolute = |p: Option<std::path::PathBuf>| p.map(|p| std::path::absolute(&p).unwrap_or(p));
            let etcd = cutover_config::EtcdAccessInput {
                url: etcd,
                ca: absolute(etcd_ca),
                cert: absolute(etcd_cert),
                key: absolute(etcd_key),
                username: etcd_user,
                password_file: absolute(etcd_password_file),
            };
            exit(agent(etcd, fleet, host, advertise, data_dir, workdir, allowed))
        }
        cmd => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            exit(rt.block_on(commands::run(cmd)))
        }
    }
}

/// Every config error, one `error:` line each (the first one's prefix is the caller's), and
/// how many when there are several.
fn config_errors(errors: &[cutover_config::ConfigError]) -> String {
    let mut text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\nerror: ");
    if errors.len() > 1 {
        text.push_str(&format!("\n{} errors", errors.len()));
    }
    text
}

/// `cutover check`: every error (exit 2); warnings (on stderr, file:line and key) exit 0.
fn check(file: &Path) -> Result<(), Failure> {
    let (c, warnings) = cutover_config::check(file).map_err(|e| Failure::new(2, config_errors(&e)))?;
    for w in &warnings {
        let _ = writeln!(std::io::stderr(), "warning: {w}");
    }
    let n = c.services.len();
    output::line(&format!(
        "{}: ok ({n} service{}{}{})",
        file.display(),
        if n == 1 { "" } else { "s" },
        match c.listeners.len() {
            0 => String::new(),
            1 => ", 1 shared listener".into(),
            l => format!(", {l} shared listeners"),
        },
        match warnings.len() {
            0 => String::new(),
            1 => ", 1 warning".into(),
            w => format!(", {w} warnings"),
        }
    ))
}

fn completions(shell: Shell) -> Result<(), Failure> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "cutover", &mut buf);
    output::raw(&String::from_utf8_lossy(&buf))
}

/// The man page of `cutover` on stdout, or one page per command (`cutover-release.1`, ...)
/// into `dir`.
fn man(dir: Option<&Path>) -> Result<(), Failure> {
    let cmd = Cli::command();
    let render = |c: clap::Command| {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf).map(|_| buf)
    };
    let fail = |e: std::io::Error| Failure::new(1, format!("cannot write the man page: {e}"));
    let Some(dir) = dir else {
        let page = render(cmd).map_err(fail)?;
        return output::raw(&String::from_utf8_lossy(&page));
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut pages = vec![("cutover".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("cutover-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("cutover {}", sub.get_name()));
        pages.push((name, page));
    }
    for (name, c) in pages {
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, render(c).map_err(fail)?).map_err(fail)?;
        output::line(&path.display().to_string())?;
    }
    Ok(())
}

/// `cutover agent`: checks its arguments like a config (exit 2), then runs until SIGINT or
/// SIGTERM; the model servers it runs stay.
fn agent(
    etcd: cutover_config::EtcdAccessInput,
    fleet: String,
    host: String,
    advertise: std::net::IpAddr,
    data_dir: std::path::PathBuf,
    workdir: Option<std::path::PathBuf>,
    allowed: Option<Vec<String>>,
) -> Result<(), Failure> {
    if allowed.as_ref().is_some_and(|a| a.is_empty()) {
        return Err(Failure::new(
            2,
            "say which programs this host runs: --allow-command PROGRAM (repeatable; run.command[0] as the config writes it), \
             or --allow-any-command to run whatever the fleet's documents in etcd name",
        ));
    }
    let cutover_config::EtcdAccess { members, tls, user } =
        cutover_config::etcd_access(&etcd).map_err(|(which, e)| {
            use cutover_config::EtcdSetting as S;
            let flag = match which {
                S::Url => "--etcd",
                S::Tls | S::Ca => "--etcd-ca",
                S::Cert => "--etcd-cert",
                S::Key => "--etcd-key",
                S::Username => "--etcd-user",
                S::PasswordFile => "--etcd-password-file",
            };
            Failure::new(2, format!("{flag}: {e}"))
        })?;
    if !cutover_config::is_key_word(&fleet) {
        return Err(Failure::new(
            2,
            format!("--fleet: {fleet:?} is not a fleet name (letters, digits, `-`, `_`, `.`)"),
        ));
    }
    if !cutover_config::is_host_name(&host) {
        return Err(Failure::new(
            2,
            format!("--host: {host:?} is not a host name (letters, digits, `-`, `.`), as `run.hosts` lists it"),
        ));
    }
    let workdir = match workdir {
        Some(w) => w,
        None => {
            std::env::current_dir().map_err(|e| Failure::new(1, format!("cannot read the current directory: {e}")))?
        }
    };
    let opts = cutover_control::agent::AgentOptions {
        members: members.addrs,
        tls,
        user,
        fleet,
        host,
        advertise,
        data_dir,
        workdir,
        allowed,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(1, format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => std::future::pending().await,
            }
        };
        cutover_control::agent::run(opts, shutdown).await
    })
    .map_err(|e| Failure::new(1, format!("{e:#}")))
}

/// `cutover serve`: stage one (the config, no side effects) here, the rest in the server.
fn serve(config: &Path, threads: Option<usize>, opts: cutover_control::serve::ServeOptions) -> ExitCode {
    let cfg = match cutover_config::load_all(config) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", config_errors(&e));
            return ExitCode::from(2);
        }
    };
    if let Some(v) = std::env::var_os("CUTOVER_HTTP1_ENGINE") {
        // It used to choose the engine; an operator relying on it as an escape hatch must hear
        // that it no longer does.
        let _ = writeln!(
            std::io::stderr(),
            "warning: CUTOVER_HTTP1_ENGINE={} is no longer read; set http1_engine = \"hyper\" in a service's table instead",
            v.to_string_lossy()
        );
    }
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
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cutover_control::serve::serve(cfg, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(1)
        }
    }
}
