//! `cutover check`'s warnings: a config that validates but may not work on this machine,
//! which may change before the release runs — an endpoint name that does not resolve, a
//! command whose program is not found, a managed port already taken, a hook program
//! missing. Each warning names the file, line and key, as an error does.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::model::{Config, Environments, HooksConfig, RunConfig, StaticColor};
use crate::validate::run::placeholders;
use crate::validate::Source;

/// Does `prog` name an executable file, as the process would find it (a path relative to
/// one of `dirs`, or a name on `PATH`)?
fn program_found(prog: &str, dirs: &[&Path]) -> bool {
    let executable =
        |p: PathBuf| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if prog.contains('/') {
        let p = Path::new(prog);
        if p.is_absolute() {
            return executable(p.to_path_buf());
        }
        return dirs.iter().any(|d| executable(d.join(p)));
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| executable(d.join(prog))))
}

/// The warning for a command that hands a script to a shell (`sh -c "..."`, `bash -lc`):
/// what runs is decided by the script, which `check` cannot follow.
fn shell_script(command: &[String]) -> Option<String> {
    let shell = Path::new(command.first()?).file_name()?.to_str()?;
    if !matches!(shell, "sh" | "bash" | "dash" | "zsh" | "ash" | "ksh") {
        return None;
    }
    let flag = command[1..]
        .iter()
        .find(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'))?;
    Some(format!(
        "`{shell} {flag}` runs a script: the programs it starts were not checked (whether they are installed and executable here); only {shell} was"
    ))
}

impl Source<'_> {
    /// Warnings about this machine: names that do not resolve, programs not found, managed
    /// ports already taken.
    fn warnings(&self, cfg: &Config) -> Vec<ConfigError> {
        let mut out = Vec::new();
        for (name, svc) in &cfg.services {
            match &svc.environments {
                Environments::Static { blue, green } => self.unresolved(name, [blue, green], &mut out),
                // On host agents: the program and ports are the agents' machines' business.
                Environments::Managed(run) if run.hosts.is_empty() => self.run_warnings(name, run, &mut out),
                Environments::Managed(_) => {}
            }
            self.hook_warnings(name, &svc.release.hooks, &mut out);
        }
        out
    }

    /// A warning about `key` as errors show it (`command[0]`), on the line of its dotted
    /// path (`command.0`).
    fn warn(&self, out: &mut Vec<ConfigError>, key: String, message: String) {
        let path = key.replace('[', ".").replace(']', "");
        let line = self.span_of(&path).map(|s| self.line_of(s.start)).unwrap_or(0);
        out.push(ConfigError {
            file: self.path.to_path_buf(),
            line,
            key,
            message,
        });
    }

    /// Endpoint names that do not resolve here. Looked up at once, each on its own thread,
    /// with one deadline for all: a machine without a reachable DNS server must not make
    /// `check` wait for minutes.
    fn unresolved(&self, name: &str, colors: [&StaticColor; 2], out: &mut Vec<ConfigError>) {
        let mut pending = Vec::new();
        for (color, c) in ["blue", "green"].into_iter().zip(colors) {
            for (i, e) in c.endpoints.iter().enumerate().filter(|(_, e)| e.literal().is_none()) {
                let (tx, rx) = std::sync::mpsc::channel();
                let (host, port) = (e.host.clone(), e.port);
                std::thread::spawn(move || {
                    use std::net::ToSocketAddrs;
                    let _ = tx.send((host.as_str(), port).to_socket_addrs().map(|_| ()));
                });
                pending.push((format!("services.{name}.{color}.endpoints[{i}]"), e.to_string(), rx));
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        for (key, e, rx) in pending {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let why = match rx.recv_timeout(left) {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => err.to_string(),
                Err(_) => "no answer within 3 s".to_string(),
            };
            self.warn(
                out,
                key,
                format!("{e} does not resolve on this machine ({why}); `serve` keeps trying every second and routes to it once it does"),
            );
        }
    }

    /// A managed environment on this machine: its program, and ports already taken.
    fn run_warnings(&self, name: &str, run: &RunConfig, out: &mut Vec<ConfigError>) {
        let dir = self.dir();
        let prog = &run.command[0];
        let workdir = run.workdir.clone().unwrap_or_else(|| dir.clone());
        if let Some(m) = shell_script(&run.command) {
            self.warn(out, format!("services.{name}.run.command"), m);
        }
        if placeholders(prog).is_empty() && !program_found(prog, &[&workdir]) {
            self.warn(
                out,
                format!("services.{name}.run.command[0]"),
                format!("program {prog:?} is not on PATH nor an executable file (relative to the workdir {}); the release's provisioning will fail unless it appears by then", workdir.display()),
            );
        }
        for (color, ports) in [("blue", &run.ports.blue), ("green", &run.ports.green)] {
            for p in ports {
                let addr = SocketAddr::new(run.host, *p);
                if TcpListener::bind(addr).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse) {
                    self.warn(
                        out,
                        format!("services.{name}.run.ports.{color}"),
                        format!("port {p} ({addr}) is already in use: unless it is this router's own running {color} model server, a release into {color} will fail to start there"),
                    );
                }
            }
        }
    }

    /// Hook programs that are not found (relative to the config's folder or the current one).
    fn hook_warnings(&self, name: &str, hooks: &HooksConfig, out: &mut Vec<ConfigError>) {
        let dir = self.dir();
        let cwd = std::env::current_dir().unwrap_or_else(|_| dir.clone());
        for (stage, list) in [
            ("pre_switch", &hooks.pre_switch),
            ("post_switch", &hooks.post_switch),
            ("on_rollback", &hooks.on_rollback),
        ] {
            for (i, argv) in list.iter().enumerate() {
                let Some(prog) = argv.first() else { continue };
                if !program_found(prog, &[&dir, &cwd]) {
                    self.warn(
                        out,
                        format!("services.{name}.release.hooks.{stage}[{i}]"),
                        format!("hook program {prog:?} is not on PATH nor an executable file; the {stage} hook will fail unless it appears by then"),
                    );
                }
            }
        }
    }
}

/// Reads and validates a config file like [`crate::load_all`] (every error, in file order),
/// and also returns the warnings about this machine (each with file, line and key).
pub fn check(path: &Path) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![ConfigError::unreadable(path, &e)])?;
    let cfg = crate::validate::parse_all(path, &text)?;
    let ctx = Source::new(path, &text);
    let warnings = ctx.warnings(&cfg);
    Ok((cfg, warnings))
}
