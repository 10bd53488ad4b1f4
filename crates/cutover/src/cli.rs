//! The command line as clap sees it: every command, its arguments, their defaults and
//! examples. `--help`, the shell completions and the man page are all generated from here.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The admin URL clients use when neither `--admin`, `CUTOVER_ADMIN` nor `--config` says one.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Blue-green releases for AI model services, with zero downtime",
    long_about = "Blue-green releases for AI model services, with zero downtime.\n\n\
        `cutover serve` runs the router (the reverse proxy in front of your model servers) and \
        the release controller. Every other command talks to a running router through its admin \
        API: --admin URL (env CUTOVER_ADMIN, default http://127.0.0.1:9901) and --token (env \
        CUTOVER_TOKEN) or --token-file, or --config FILE to take both from that config.",
    after_help = "Exit codes: 0 success; 1 the operation ran and failed (release aborted or rolled back, \
        409 conflict); 2 usage or config error; 3 the router could not be reached, is not a cutover admin API \
        or refused the token; 4 the release is live but not verified (too little traffic in the bake); \
        5 --timeout passed before the release ended (it goes on); 141 stdout was closed (e.g. piped into \
        `head`); 130 interrupted (Ctrl-C).\n\n\
        Examples:\n  cutover serve --config cutover.toml\n  cutover release chat v2 --wait\n  \
        cutover status chat --json"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How a client command finds the router and proves it may talk to it.
#[derive(Args, Clone, Default)]
pub struct Remote {
    /// Admin API URL of the running router [default: http://127.0.0.1:9901, or the one
    /// `--config` names].
    #[arg(long, env = "CUTOVER_ADMIN", global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// Admin bearer token.
    #[arg(long, env = "CUTOVER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin bearer token (e.g. the router's admin.token).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Take the admin address and token file from this config.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PEM file of the CA that signed an https:// router's certificate [default: the system's
    /// roots].
    #[arg(long, env = "CUTOVER_CACERT", global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Print JSON instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// How `--wait` and `follow` report a release while it runs.
#[derive(Args, Clone, Copy)]
pub struct Progress {
    /// When stdout is not a terminal (CI logs), print a line at least this often saying what
    /// the release is waiting for.
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub heartbeat: Duration,
    /// Stop following after this long (exit 5): the release goes on, and `cutover release
    /// follow` re-attaches [default: follow until it ends].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the router (data plane) and the release controller.
    #[command(after_help = "Examples:\n  cutover serve --config /etc/cutover/cutover.toml\n  \
        cutover serve -c cutover.toml --log-format json --grace 60s\n  \
        cutover serve -c cutover.toml --upgrade    # take over from the running one, no gap")]
    Serve {
        /// Config file.
        #[arg(long, short, default_value = "cutover.toml", value_name = "FILE")]
        config: PathBuf,
        /// How long in-flight requests may finish after SIGTERM.
        #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
        grace: Duration,
        /// Worker threads; 1 runs everything on one thread [default: one per core].
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Log lines as text for people or as JSON for collectors.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Once every listener serves, write their bound addresses here as JSON
        /// (`{"admin": ..., "services": {NAME: {"listen": ..., "preview_listen": ...}}}`):
        /// how a script finds the ports of a config that says port 0.
        #[arg(long, value_name = "FILE")]
        addresses_file: Option<PathBuf>,
        /// Take over from the `cutover serve` running with this config: its listening
        /// sockets (no connection refused), store and managed model servers; it drains and
        /// exits once this one serves. If anything fails first, it keeps serving and this
        /// one exits 1. See docs/upgrade.md.
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the managed model servers a fleet assigns to this host (fleet mode, `run.hosts`).
    #[command(
        long_about = "Run, on one GPU host, the managed environments of the services whose `run.hosts` \
            name this host: started, health-checked by the routers, restarted by the policy, stopped, and \
            adopted again after an agent restart, as `serve` does on one machine, driven through etcd. \
            The model servers keep running when the agent stops or loses etcd. See docs/fleet.md.",
        after_help = "Example:\n  cutover agent --etcd etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 \\\n    \
            --fleet prod --host gpu-a --advertise 10.0.1.17 --data-dir /var/lib/cutover-agent --allow-command vllm\n\n\
            Over TLS, with a client certificate and an etcd user whose role may not write desired/:\n  \
            cutover agent --etcd https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379 \\\n    \
            --etcd-ca /etc/cutover/etcd-ca.pem --etcd-cert /etc/cutover/gpu-a.pem --etcd-key /etc/cutover/gpu-a.key \\\n    \
            --etcd-user agent-gpu-a --etcd-password-file /etc/cutover/etcd.password \\\n    \
            --fleet prod --host gpu-a --advertise 10.0.1.17 --allow-command vllm"
    )]
    Agent {
        /// The fleet's etcd members, as `[store] url` says them.
        #[arg(long, value_name = "URL")]
        etcd: String,
        /// PEM CA that signed the etcd members' certificates (`https://` members; default:
        /// the system's roots), as `[store] tls.ca`.
        #[arg(long, value_name = "FILE")]
        etcd_ca: Option<PathBuf>,
        /// This host's client certificate for etcd (`--client-cert-auth`), as `[store] tls.cert`;
        /// read again when the file changes.
        #[arg(long, value_name = "FILE", requires = "etcd_key")]
        etcd_cert: Option<PathBuf>,
        /// The client certificate's private key, as `[store] tls.key`.
        #[arg(long, value_name = "FILE", requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
        /// etcd's user for this host (auth enabled), as `[store] username`.
        #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
        etcd_user: Option<String>,
        /// File whose first line is the etcd user's password, as `[store] password_file`.
        #[arg(long, value_name = "FILE", requires = "etcd_user")]
        etcd_password_file: Option<PathBuf>,
        /// The fleet's name (`[store] fleet`).
        #[arg(long, value_name = "NAME")]
        fleet: String,
        /// This host's name, as `run.hosts` lists it.
        #[arg(long, value_name = "NAME")]
        host: String,
        /// The IP address the model servers listen on (`{host}` in the command) and routers
        /// connect to.
        #[arg(long, value_name = "IP")]
        advertise: std::net::IpAddr,
        /// Logs, process records and the snapshot of what was applied.
        #[arg(long, default_value = "cutover-agent", value_name = "DIR")]
        data_dir: PathBuf,
        /// Where the model servers run unless the service's `run.workdir` says otherwise
        /// [default: the current directory].
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// A program this host runs (`run.command[0]` exactly as the config writes it);
        /// repeat for several. Whoever can write the fleet's keys in etcd chooses commands:
        /// this is the host's say in which programs.
        #[arg(long = "allow-command", value_name = "PROGRAM")]
        allow_command: Vec<String>,
        /// Run any program the fleet's documents name (instead of --allow-command).
        #[arg(long, conflicts_with = "allow_command")]
        allow_any_command: bool,
        /// Log lines as text for people or as JSON for collectors.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Run the whole story on this machine: releases v1, v2 and a faulty v3 under traffic.
    #[command(after_help = "Examples:\n  cutover demo\n  cutover demo --canary")]
    Demo {
        /// Release through a 10% canary step: the faulty v3 is caught while it has only
        /// its share of the traffic (no shadow comparison).
        #[arg(long)]
        canary: bool,
    },
    /// Validate a config file without starting anything.
    #[command(
        long_about = "Validate a config file without starting anything. Errors (exit 2) and warnings \
            (exit 0: the config can work, but check) name the file, line and key; warnings go to stderr.",
        after_help = "Examples:\n  cutover check cutover.toml\n  cutover check /etc/cutover/cutover.toml && systemctl reload cutover"
    )]
    Check {
        /// Config file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show services: live color, generation, versions, endpoints, the release in progress.
    #[command(after_help = "Examples:\n  cutover status\n  cutover status chat --json")]
    Status {
        /// Only this service [default: every service].
        service: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Reload the running router's configuration file (as SIGHUP does) and say what changed.
    #[command(
        long_about = "Reload the running router's configuration file (as SIGHUP does) and say what changed. \
            The file is validated whole first: an invalid file (exit 2, naming file, line and key), or a change \
            reload cannot make in place ([admin], [store], static <-> managed, upstream_protocol, run.host/ports, \
            a service mid-release; exit 1), changes nothing. Connections are not dropped; a listener is re-bound \
            only when its address changed.",
        after_help = "Examples:\n  cutover reload\n  cutover check /etc/cutover/cutover.toml && cutover reload --json"
    )]
    Reload {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show the switch, release, approval and abort history of a service, newest first.
    #[command(after_help = "Examples:\n  cutover history chat\n  cutover history --limit 100 --json")]
    History {
        /// Only this service [default: every service].
        service: Option<String>,
        /// How many entries per service.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a color live now (manual, no gates).
    #[command(
        long_about = "Make a color live now (manual, no gates). Refused when the target has no healthy \
            endpoint, and while a release is in progress (approve or abort it first); --force overrides \
            both, and a forced switch ends a release that has not switched yet (recorded as aborted).",
        after_help = "Examples:\n  cutover switch chat          # the idle color\n  \
            cutover switch chat blue --if-generation 7 --reason \"back to v1\""
    )]
    Switch {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// blue or green [default: the idle color].
        #[arg(value_parser = ColorParser)]
        color: Option<String>,
        /// Switch even if the target has no healthy endpoint or a release is in progress (that
        /// release then ends, aborted).
        #[arg(long)]
        force: bool,
        /// Refuse unless the generation is still this one (compare-and-swap).
        #[arg(long, value_name = "N")]
        if_generation: Option<u64>,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Release a version through the pipeline; `release show|follow` look at releases.
    Release(ReleaseCmd),
    /// List the releases of a service, newest first.
    #[command(after_help = "Examples:\n  cutover releases chat\n  cutover releases chat --limit 5 --json")]
    Releases {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// How many releases.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve the release awaiting approval.
    #[command(after_help = "Examples:\n  cutover approve chat\n  cutover approve chat --release 12")]
    Approve {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// Only if the release in progress is this one [default: whichever is in progress].
        #[arg(long, value_name = "ID")]
        release: Option<i64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Abort the release in progress (before the switch; live traffic is untouched).
    #[command(after_help = "Examples:\n  cutover abort chat\n  cutover abort chat --release 12")]
    Abort {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// Only if the release in progress is this one [default: whichever is in progress].
        #[arg(long, value_name = "ID")]
        release: Option<i64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Switch back to the previous live color.
    #[command(
        after_help = "Examples:\n  cutover rollback chat\n  cutover rollback chat --redeploy   # the old color was scaled down"
    )]
    Rollback {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// The previous color was scaled down: release its version again through the pipeline
        /// (and follow it).
        #[arg(long)]
        redeploy: bool,
        /// Roll back even if the previous color has no healthy endpoint.
        #[arg(long)]
        force: bool,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        progress: Progress,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a managed service's model servers on purpose (the idle color by default).
    #[command(
        long_about = "Stop the model servers of a managed service's color on purpose: its requests drain \
            first (up to drain_timeout), then its processes get SIGTERM (SIGKILL after run.stop_timeout). \
            The idle color by default; the live color only with --force (the service then answers 503 \
            until a switch or release). Recorded in the history as `stopped`. A release in progress is \
            refused: abort it first. Static services have no processes to stop.",
        after_help = "Examples:\n  cutover stop chat             # the idle color\n  \
            cutover stop chat green --reason \"free the GPU\"\n  cutover stop chat blue --force   # even if blue is live"
    )]
    Stop {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// blue or green [default: the idle color].
        #[arg(value_parser = ColorParser)]
        color: Option<String>,
        /// Stop even the live color (its clients then get 503 until something is live again).
        #[arg(long)]
        force: bool,
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show (and with -f follow) the log of a managed color's model servers.
    #[command(
        long_about = "Show the current log of each replica of a managed service's colors (both colors \
            unless one is named); with -f, keep following it, across process restarts. Lines are \
            prefixed with [color/replica] when more than one log is shown.",
        after_help = "Examples:\n  cutover logs chat green\n  cutover logs chat green -f --tail 50"
    )]
    Logs {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// blue or green [default: both].
        #[arg(value_parser = ColorParser)]
        color: Option<String>,
        /// Keep printing new lines as they are written (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
        /// Lines to show first, per replica.
        #[arg(long, default_value_t = 200, value_name = "N")]
        tail: usize,
        /// Only this replica.
        #[arg(long, value_name = "N")]
        replica: Option<u32>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Fleet mode: the routers, their acks and the elected leader.
    Fleet(FleetCmd),
    /// Create, list or delete named admin tokens with roles (the tokens file), offline.
    Token(TokenCmd),
    /// Print shell completions (bash, zsh or fish) to stdout.
    #[command(
        after_help = "Examples:\n  cutover completions bash > /etc/bash_completion.d/cutover\n  \
        cutover completions zsh > \"${fpath[1]}/_cutover\"\n  cutover completions fish > ~/.config/fish/completions/cutover.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) to stdout, or write one page per command into a folder.
    #[command(after_help = "Examples:\n  cutover man | man -l -\n  cutover man --dir /usr/local/share/man/man1")]
    Man {
        /// Write cutover.1 and cutover-COMMAND.1 pages into this folder instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Run the stand-in model server (the same as the `mock-model` binary).
    #[command(hide = true, disable_help_flag = true)]
    MockModel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `cutover fleet status`.
#[derive(Args)]
#[command(
    long_about = "Fleet mode (`[store] url = \"etcd://...\"`): what this router knows of its fleet: \
        whether it reaches etcd, the elected leader (which runs every release), and each router \
        with its state (SYNCED, STALE, REJECTED, LOST) and the generations it acked.",
    after_help = "Examples:\n  cutover fleet status\n  cutover fleet status --json"
)]
pub struct FleetCmd {
    #[command(subcommand)]
    pub sub: FleetSub,
}

#[derive(Subcommand)]
pub enum FleetSub {
    /// The routers, their acks and the leader, as this router sees them.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
}

/// `cutover release SERVICE VERSION [--wait]`, or `cutover release show|follow SERVICE [ID]`.
#[derive(Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    long_about = "Release VERSION into the idle color through the whole pipeline: provisioning, \
        waiting_healthy, warming_up, smoke_testing, awaiting_approval, pre_switch_hooks, switching, \
        verifying, completed (or aborted / rolled_back). With --wait, follow it: exit 0 when live and \
        verified, 1 when aborted or rolled back, 4 when live but not verified (too few requests in the \
        bake to judge), 5 when --timeout passed first. Ctrl-C or --timeout stop following, not the \
        release: `cutover release follow SERVICE` re-attaches.",
    after_help = "Exit codes: 0 live and verified; 1 aborted, rolled back or interrupted; 2 usage error; \
        3 the router could not be reached; 4 live but not verified; 5 --timeout passed (the release goes on).\n\n\
        Examples:\n  cutover release chat v2 --wait\n  cutover release chat v2 --wait --timeout 30m   # CI: never wait for ever\n  \
        cutover release show chat\n  cutover release follow chat --timeout 10m"
)]
pub struct ReleaseCmd {
    #[command(subcommand)]
    pub sub: Option<ReleaseSub>,
    /// The service to release into.
    #[arg(required = true)]
    pub service: Option<String>,
    /// The version label ({version} in a managed command template).
    #[arg(required = true)]
    pub version: Option<String>,
    /// Follow the release phase by phase; exit 0 when live and verified, 1 when it failed, 4
    /// when live but not verified, 5 when --timeout passed first.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub progress: Progress,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Subcommand)]
pub enum ReleaseSub {
    /// Show one release: phases with timings and details, gates, outcome.
    #[command(
        after_help = "Examples:\n  cutover release show chat      # the latest\n  cutover release show chat 12 --json"
    )]
    Show {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// Release id [default: the latest].
        id: Option<i64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-attach to a release: the same output and exit codes as `release --wait`.
    #[command(
        after_help = "Examples:\n  cutover release follow chat    # the one in progress\n  cutover release follow chat 12"
    )]
    Follow {
        /// The service, as named by its [services.NAME] table.
        service: String,
        /// Release id [default: the one in progress].
        id: Option<i64>,
        #[command(flatten)]
        progress: Progress,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `cutover token create NAME --role ROLE`, `cutover token list` and `cutover token delete NAME`.
#[derive(Args)]
#[command(
    long_about = "Create, list or delete named admin tokens. They live in the tokens file (`[admin] tokens_file`, \
        default tokens.toml next to the config), which holds each token's SHA-256 and never the token \
        itself. These commands work on the file, without a running router; a running `cutover serve` \
        takes a new token on its first use, no restart needed. Roles: viewer (every read), operator \
        (also switch, rollback, release, approve, abort, stop), admin (also reload).",
    after_help = "Examples:\n  cutover token create ci --role operator\n  \
        cutover token create grafana --role viewer --config /etc/cutover/cutover.toml\n  cutover token list\n  \
        cutover token delete grafana"
)]
pub struct TokenCmd {
    #[command(subcommand)]
    pub sub: TokenSub,
}

#[derive(Subcommand)]
pub enum TokenSub {
    /// Make a new random token, add its hash to the tokens file, print the token once.
    #[command(
        long_about = "Make a new random token (256 bits, 64 hex characters), append its name, role, \
            SHA-256 and creation time to the tokens file (created with mode 0600 when missing), and \
            print the token on stdout, once: it is not stored anywhere, so keep it now. A name already \
            in the file, a malformed file or one that group or others may read is refused (exit 2) \
            and nothing is written.",
        after_help = "Examples:\n  cutover token create ci --role operator\n  \
            CUTOVER_TOKEN=$(cutover token create deploy-bot --role operator -c /etc/cutover/cutover.toml)"
    )]
    Create {
        /// The token's name: recorded as the actor of what it does (`token:NAME`). Letters,
        /// digits, `.`, `_` and `-`; `admin` is the admin.token file's.
        name: String,
        /// What the token may do: viewer, operator or admin.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["viewer", "operator", "admin"]))]
        role: String,
        /// The router's config: its `[admin] tokens_file` is the file written.
        #[arg(long, short, default_value = "cutover.toml", value_name = "FILE")]
        config: PathBuf,
    },
    /// Remove a named token from the tokens file: a running router refuses it from its next
    /// use on (it re-reads the file when it changes).
    #[command(
        after_help = "Examples:\n  cutover token delete ci\n  cutover token delete grafana -c /etc/cutover/cutover.toml"
    )]
    Delete {
        /// The token's name, as `cutover token list` shows it.
        name: String,
        /// The router's config: its `[admin] tokens_file` is the file written.
        #[arg(long, short, default_value = "cutover.toml", value_name = "FILE")]
        config: PathBuf,
    },
    /// List the tokens a router of this config accepts: names, roles, creation times (never
    /// a token or a hash).
    #[command(
        after_help = "Examples:\n  cutover token list\n  cutover token list -c /etc/cutover/cutover.toml --json"
    )]
    List {
        /// The router's config.
        #[arg(long, short, default_value = "cutover.toml", value_name = "FILE")]
        config: PathBuf,
        /// Print JSON instead of text for people.
        #[arg(long)]
        json: bool,
    },
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e}): expected e.g. 500ms, 30s, 10m"))
}

/// `blue` or `green`, with a plain message for anything else (and both offered to shell
/// completion).
#[derive(Clone)]
pub struct ColorParser;

impl TypedValueParser for ColorParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let v = value.to_string_lossy();
        match &*v {
            "blue" | "green" => Ok(v.into_owned()),
            other => Err(clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("unknown color {other:?}: expected blue or green\n"),
            )
            .with_cmd(cmd)),
        }
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(["blue", "green"].into_iter().map(PossibleValue::new)))
    }
}
