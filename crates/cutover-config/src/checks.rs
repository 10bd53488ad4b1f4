//! Checks that catch configs which parse but cannot work (errors), or may not (warnings).
//!
//! Errors, part of validation: an unknown placeholder in a managed command or its env
//! (`{prot}`), a managed command that is never told its port (it would wait out the health
//! timeout), blue and green on one endpoint. Warnings, only from [`check`] (`cutover
//! check`): they look at this machine, which may change before the release runs — a
//! command whose program is not found, a managed port already taken.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Environments, RunConfig, Source, Span};

/// The placeholders the supervisor substitutes in `run.command` and `run.env`.
/// `{host}` is the address the processes listen on: `run.host`, or on a host agent the
/// address it advertises.
pub const PLACEHOLDERS: [&str; 5] = ["version", "port", "color", "replica", "host"];

/// The `{name}` placeholders in one template string (`{` ... `}` around a plain word; JSON
/// such as `{"a": 1}` in an argument is not one).
fn placeholders(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else { break };
        let inner = &after[..j];
        if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(inner);
        }
        rest = &after[j..];
    }
    out
}

/// Edit distance, for "did you mean {port}?".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn unknown_placeholder(name: &str, value: &str) -> String {
    let known: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
    let near = PLACEHOLDERS
        .iter()
        .map(|p| (distance(name, p), p))
        .min()
        .filter(|(d, _)| *d <= 2)
        .map(|(_, p)| format!(" (did you mean {{{p}}}?)"))
        .unwrap_or_default();
    format!(
        "unknown placeholder {{{name}}} in {value:?}{near}; the known ones are {}",
        known.join(", ")
    )
}

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
    /// The span of `key`, or of the nearest enclosing key the file has.
    fn near(&self, keys: &[&str], fallback: &Span) -> Span {
        keys.iter()
            .find_map(|k| self.span_of(k))
            .unwrap_or_else(|| fallback.clone())
    }

    /// Errors of a managed environment's template: unknown placeholders, and no `{port}`.
    pub(super) fn run_template(&self, name: &str, run: &RunConfig, rspan: &Span) -> Result<(), ConfigError> {
        let k = |rest: &str| format!("services.{name}.run.{rest}");
        for (i, arg) in run.command.iter().enumerate() {
            if let Some(p) = placeholders(arg).into_iter().find(|p| !PLACEHOLDERS.contains(p)) {
                let span = self.near(&[&k(&format!("command.{i}")), &k("command")], rspan);
                return self.err(span, format!("{}[{i}]", k("command")), unknown_placeholder(p, arg));
            }
        }
        for (key, value) in &run.env {
            if let Some(p) = placeholders(value).into_iter().find(|p| !PLACEHOLDERS.contains(p)) {
                let span = self.near(&[&k(&format!("env.{key}")), &k("env")], rspan);
                return self.err(span, k(&format!("env.{key}")), unknown_placeholder(p, value));
            }
        }
        let told_port = run
            .command
            .iter()
            .chain(run.env.values())
            .any(|s| placeholders(s).contains(&"port"));
        if !told_port {
            let span = self.near(&[&k("command")], rspan);
            return self.err(
                span,
                k("command"),
                "no {port} in the command or its env: each replica must listen on the port cutover gives it (run.ports), \
                 or the release waits out its whole health_timeout (default 10m) and fails; add e.g. \"--port\", \"{port}\""
                    .into(),
            );
        }
        Ok(())
    }

    /// Blue and green are two environments: one endpoint in both would make a switch a no-op.
    pub(super) fn colors_apart(&self, name: &str, env: &Environments) -> Result<(), ConfigError> {
        let Environments::Static { blue, green } = env else {
            return Ok(());
        };
        let Some((i, e)) = green
            .endpoints
            .iter()
            .enumerate()
            .find(|(_, e)| blue.endpoints.contains(e))
        else {
            return Ok(());
        };
        let key = format!("services.{name}.green.endpoints");
        let span = self.near(&[&format!("{key}.{i}"), &key], &(0..0));
        self.err(
            span,
            key,
            format!("endpoint {e} is in both blue and green: the colors must be two separate environments, or a switch changes nothing (a benchmark or test rig that means it sets `allow_shared_endpoints = true` in [services.{name}])"),
        )
    }

    /// Warnings about this machine: programs not found, managed ports already taken.
    fn warnings(&self, cfg: &Config) -> Vec<ConfigError> {
        let mut out = Vec::new();
        // `key` as errors show it (`command[0]`); its line from the dotted path (`command.0`).
        let warn = |out: &mut Vec<ConfigError>, key: String, message: String| {
            let path = key.replace('[', ".").replace(']', "");
            let line = self.span_of(&path).map(|s| self.line_of(s.start)).unwrap_or(0);
            out.push(ConfigError {
                file: self.path.to_path_buf(),
                line,
                key,
                message,
            });
        };
        let dir = self.dir();
        let cwd = std::env::current_dir().unwrap_or_else(|_| dir.clone());
        for (name, svc) in &cfg.services {
            if let Environments::Static { blue, green } = &svc.environments {
                // Looked up at once, each on its own thread, with one deadline for all: a
                // machine without a reachable DNS server must not make `check` wait for minutes.
                let mut pending = Vec::new();
                for (color, c) in [("blue", blue), ("green", green)] {
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
                    warn(
                        &mut out,
                        key,
                        format!("{e} does not resolve on this machine ({why}); `serve` keeps trying every second and routes to it once it does"),
                    );
                }
            }
            // On host agents: the program and ports are the agents' machines' business.
            if let Some(run) = match &svc.environments {
                Environments::Managed(run) if run.hosts.is_empty() => Some(run),
                _ => None,
            } {
                let prog = &run.command[0];
                let workdir = run.workdir.clone().unwrap_or_else(|| dir.clone());
                if let Some(m) = shell_script(&run.command) {
                    warn(&mut out, format!("services.{name}.run.command"), m);
                }
                if placeholders(prog).is_empty() && !program_found(prog, &[&workdir]) {
                    warn(
                        &mut out,
                        format!("services.{name}.run.command[0]"),
                        format!("program {prog:?} is not on PATH nor an executable file (relative to the workdir {}); the release's provisioning will fail unless it appears by then", workdir.display()),
                    );
                }
                for (color, ports) in [("blue", &run.ports.blue), ("green", &run.ports.green)] {
                    for p in ports {
                        let Ok(ip) = run.host.parse() else { continue };
                        let addr = SocketAddr::new(ip, *p);
                        if TcpListener::bind(addr).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse) {
                            warn(
                                &mut out,
                                format!("services.{name}.run.ports.{color}"),
                                format!("port {p} ({addr}) is already in use: unless it is this router's own running {color} model server, a release into {color} will fail to start there"),
                            );
                        }
                    }
                }
            }
            let hooks = &svc.release.hooks;
            for (stage, list) in [
                ("pre_switch", &hooks.pre_switch),
                ("post_switch", &hooks.post_switch),
                ("on_rollback", &hooks.on_rollback),
            ] {
                for (i, argv) in list.iter().enumerate() {
                    let Some(prog) = argv.first() else { continue };
                    if !program_found(prog, &[&dir, &cwd]) {
                        warn(
                            &mut out,
                            format!("services.{name}.release.hooks.{stage}[{i}]"),
                            format!("hook program {prog:?} is not on PATH nor an executable file; the {stage} hook will fail unless it appears by then"),
                        );
                    }
                }
            }
        }
        out
    }
}

/// Reads and validates a config file like [`super::load_all`] (every error, in file order),
/// and also returns the warnings about this machine (each with file, line and key).
pub fn check(path: &Path) -> Result<(Config, Vec<ConfigError>), Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }]
    })?;
    let cfg = super::parse_all(path, &text)?;
    let ctx = Source {
        path,
        text: &text,
        doc: toml::de::DeTable::parse(&text).ok(),
    };
    let warnings = ctx.warnings(&cfg);
    Ok((cfg, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        super::super::parse(Path::new("/etc/cutover/cutover.toml"), text)
    }

    const MANAGED: &str = "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.run]\n";

    #[test]
    fn placeholders_are_plain_words_in_braces() {
        assert_eq!(placeholders("--port={port}/{version}"), vec!["port", "version"]);
        assert_eq!(placeholders(r#"{"a": 1}"#), Vec::<&str>::new());
        assert_eq!(placeholders("{gpu"), Vec::<&str>::new());
        assert_eq!(distance("prot", "port"), 2);
    }

    #[test]
    fn an_unknown_placeholder_names_its_line_key_and_the_known_ones() {
        let text = format!(
            "{MANAGED}command = [\n  \"serve\",\n  \"--port\", \"{{prot}}\",\n]\nports = {{ blue = [9001], green = [9002] }}\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (6, "services.chat.run.command[2]"), "{e}");
        assert!(e.message.contains("unknown placeholder {prot}"), "{e}");
        assert!(e.message.contains("did you mean {port}?"), "{e}");
        assert!(e.message.contains("{version}, {port}, {color}, {replica}"), "{e}");
        let text = format!(
            "{MANAGED}command = [\"serve\", \"--port\", \"{{port}}\"]\nenv = {{ CUDA_VISIBLE_DEVICES = \"{{gpu}}\" }}\nports = {{ blue = [9001], green = [9002] }}\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (5, "services.chat.run.env.CUDA_VISIBLE_DEVICES"),
            "{e}"
        );
        assert!(e.message.contains("{gpu}"), "{e}");
    }

    #[test]
    fn a_command_never_told_its_port_is_an_error_unless_env_tells_it() {
        let text =
            format!("{MANAGED}command = [\"serve\", \"{{version}}\"]\nports = {{ blue = [9001], green = [9002] }}\n");
        let e = parse(&text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "services.chat.run.command"), "{e}");
        assert!(e.message.contains("no {port}"), "{e}");
        let text = format!(
            "{MANAGED}command = [\"serve\"]\nenv = {{ PORT = \"{{port}}\" }}\nports = {{ blue = [9001], green = [9002] }}\n"
        );
        parse(&text).unwrap();
    }

    #[test]
    fn blue_and_green_on_one_endpoint_is_an_error_at_the_green_entry() {
        let text = "[services.chat]\nlisten = \"127.0.0.1:8080\"\n[services.chat.blue]\nendpoints = [\"127.0.0.1:9001\"]\n[services.chat.green]\nendpoints = [\"127.0.0.1:9002\",\n  \"127.0.0.1:9001\"]\n";
        let e = parse(text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (7, "services.chat.green.endpoints"), "{e}");
        assert!(e.message.contains("both blue and green"), "{e}");
        let allowed = text.replace(
            "[services.chat.blue]",
            "allow_shared_endpoints = true\n[services.chat.blue]",
        );
        parse(&allowed).unwrap();
    }
}
