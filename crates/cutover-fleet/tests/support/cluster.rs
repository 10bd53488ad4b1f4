//! A real etcd cluster on loopback for tests: `/usr/bin/etcd` members in a temp folder, on
//! free ports, stopped (and their folder removed) on drop. Shared with cutover's e2e tests
//! (`#[path]`-included there), so it uses only std, tokio, rcgen and the crate's client.
//!
//! TLS mode ([`Cluster::start_tls`]): members serve clients over TLS only, with
//! `--client-cert-auth` (peers stay plain HTTP on loopback), certificates made here by a test
//! CA; [`Cluster::enable_auth`] then adds `root` and turns etcd's auth on, and
//! [`Cluster::add_user`] makes least-privilege users. The harness's own calls go as root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cutover_fleet::{Access, Credentials, Etcd, Grant};

/// The etcd binary (Debian's `etcd-server`; `.ci/run` installs it).
pub const ETCD: &str = "/usr/bin/etcd";
/// Its control tool (Debian's `etcd-client`), for snapshots.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// A loopback port free a moment ago and not handed out before by this process.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let mut g = GIVEN.lock().unwrap();
        if !g.contains(&p) {
            g.push(p);
            return p;
        }
    }
}

/// One member: its ports, folder and process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Member {
    /// `127.0.0.1:PORT` of its client URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new(ETCD)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/etcd (apt-get install etcd-server)");
        self.child = Some(child);
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The certificates of a TLS cluster, in `<root>/pki`.
pub struct Pki {
    pub dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA (PEM) that signed the members' and clients' certificates.
    pub ca: PathBuf,
    /// The members' certificate and key (127.0.0.1 and localhost).
    pub server: (PathBuf, PathBuf),
    /// A client certificate with no Common Name: etcd's JSON gateway refuses one that has a
    /// CN once auth is on. Users are named by password.
    pub client: (PathBuf, PathBuf),
    /// Whether etcd's auth is on (the harness's calls then go as root).
    auth: std::sync::atomic::AtomicBool,
}

static SERIAL: AtomicU64 = AtomicU64::new(100);

impl Pki {
    fn new(dir: PathBuf) -> Pki {
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("cutover etcd test CA {}", dir.display()),
        );
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let mut pki = Pki {
            dir,
            issuer: rcgen::Issuer::new(params, key),
            ca,
            server: (PathBuf::new(), PathBuf::new()),
            client: (PathBuf::new(), PathBuf::new()),
            auth: std::sync::atomic::AtomicBool::new(false),
        };
        pki.server = pki.issue("server", &["127.0.0.1", "localhost"], Some("etcd"));
        pki.client = pki.issue("client", &[], None);
        pki
    }

    /// A certificate signed by the CA, written to `NAME.pem` and `NAME.key`: with `cn`
    /// as its Common Name, or with none (only an organization).
    pub fn issue(&self, name: &str, sans: &[&str], cn: Option<&str>) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.serial_number = Some(SERIAL.fetch_add(1, Ordering::Relaxed).into());
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cutover tests");
        if let Some(cn) = cn {
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A password file for `user` (its password is the file's only line).
    pub fn password_file(&self, user: &str) -> PathBuf {
        let p = self.dir.join(format!("{user}.password"));
        std::fs::write(&p, format!("pw-{user}-{}\n", std::process::id())).unwrap();
        p
    }

    fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{user}.password")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Client access over TLS with `cert` (a pair, or none) and `user` (its password file
    /// made by [`Pki::password_file`]).
    pub fn access(&self, cert: Option<&(PathBuf, PathBuf)>, user: Option<&str>) -> Access {
        let store = cert.map(|(c, k)| cutover_proxy::tls::CertStore::open("test", c, k).unwrap());
        let ca = cutover_proxy::tls::CaStore::open("test", &self.ca).unwrap();
        Access {
            tls: Some(cutover_fleet::access::tls_config(Some(ca), store).unwrap()),
            user: user.map(|u| Credentials {
                name: u.to_string(),
                password_file: self.dir.join(format!("{u}.password")),
            }),
        }
    }
}

/// A cluster of real etcd members on loopback.
pub struct Cluster {
    pub root: PathBuf,
    pub members: Vec<Member>,
    /// `Some` in TLS mode.
    pub pki: Option<Pki>,
}

impl Cluster {
    /// Starts `n` members and waits until every one answers and a leader is elected.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, false).await
    }

    /// [`Cluster::start`] with clients on TLS only and `--client-cert-auth`: a client
    /// without a certificate signed by [`Pki::ca`] cannot even connect.
    pub async fn start_tls(n: usize) -> Cluster {
        Cluster::start_with(n, true).await
    }

    async fn start_with(n: usize, tls: bool) -> Cluster {
        static N: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "cutover-etcd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = root.file_name().unwrap().to_string_lossy().to_string();
        let pki = tls.then(|| Pki::new(root.join("pki")));
        let scheme = if tls { "https" } else { "http" };
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let dir = root.join(format!("m{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut args = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.join("data").display()),
                format!("--listen-client-urls={scheme}://127.0.0.1:{c}"),
                format!("--advertise-client-urls={scheme}://127.0.0.1:{c}"),
                format!("--listen-peer-urls=http://127.0.0.1:{p}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token={token}"),
                // Loopback: elections in well under a second instead of etcd's WAN defaults.
                "--heartbeat-interval=50".into(),
                "--election-timeout=500".into(),
                // Watches with progress_notify hear from the server at least this often.
                "--experimental-watch-progress-notify-interval=1s".into(),
                "--logger=zap".into(),
                "--log-level=warn".into(),
            ];
            if let Some(pki) = &pki {
                args.extend([
                    "--client-cert-auth".to_string(),
                    format!("--trusted-ca-file={}", pki.ca.display()),
                    format!("--cert-file={}", pki.server.0.display()),
                    format!("--key-file={}", pki.server.1.display()),
                ]);
            }
            let mut m = Member {
                name: format!("m{i}"),
                client_port: *c,
                peer_port: *p,
                dir,
                child: None,
                args,
            };
            m.spawn();
            members.push(m);
        }
        let cluster = Cluster { root, members, pki };
        cluster.wait_healthy(Duration::from_secs(30)).await;
        cluster
    }

    /// The URL of every member: `etcd://` plain, or each `https://` in TLS mode.
    pub fn url(&self) -> String {
        match &self.pki {
            None => format!(
                "etcd://{}",
                self.members.iter().map(Member::addr).collect::<Vec<_>>().join(",")
            ),
            Some(_) => self
                .members
                .iter()
                .map(|m| format!("https://{}", m.addr()))
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The URL of one member only.
    pub fn url_of(&self, i: usize) -> String {
        match &self.pki {
            None => format!("etcd://{}", self.members[i].addr()),
            Some(_) => format!("https://{}", self.members[i].addr()),
        }
    }

    pub fn pki(&self) -> &Pki {
        self.pki.as_ref().expect("a cluster started with start_tls")
    }

    /// How the harness reaches the members: plain, or with the CN-less client certificate
    /// and, once auth is on, as root.
    fn access(&self) -> Access {
        match &self.pki {
            None => Access::default(),
            Some(pki) => {
                let root = pki.auth.load(Ordering::SeqCst).then_some("root");
                pki.access(Some(&pki.client), root)
            }
        }
    }

    /// A client of every member.
    pub fn client(&self) -> Etcd {
        Etcd::connect(self.members.iter().map(Member::addr).collect(), self.access())
    }

    /// A client of the members whose index is in `which`, in that order.
    pub fn client_of(&self, which: &[usize]) -> Etcd {
        Etcd::connect(which.iter().map(|i| self.members[*i].addr()).collect(), self.access())
    }

    /// A client of every member reached as `access` says.
    pub fn client_with(&self, access: Access) -> Etcd {
        Etcd::connect(self.members.iter().map(Member::addr).collect(), access)
    }

    /// `etcdctl` against every member, over TLS with the harness's certificate and as root
    /// once auth is on; panics unless it succeeds.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url().trim_start_matches("etcd://")));
        if let Some(pki) = &self.pki {
            cmd.arg(format!("--cacert={}", pki.ca.display()))
                .arg(format!("--cert={}", pki.client.0.display()))
                .arg(format!("--key={}", pki.client.1.display()));
            if pki.auth.load(Ordering::SeqCst) {
                cmd.arg(format!("--user=root:{}", pki.password("root")));
            }
        }
        let out = cmd.args(args).output().expect("run /usr/bin/etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Adds `root` (with the root role) and turns etcd's auth on: from now on every call
    /// needs a user, and the harness's go as root.
    pub fn enable_auth(&self) {
        let pki = self.pki();
        pki.password_file("root");
        let pw = format!("--new-user-password={}", pki.password("root"));
        self.etcdctl(&["user", "add", "root", &pw]);
        self.etcdctl(&["user", "grant-role", "root", "root"]);
        self.etcdctl(&["auth", "enable"]);
        pki.auth.store(true, Ordering::SeqCst);
    }

    /// A user `name` with a role of its own holding `grants`; its password file is made.
    pub fn add_user(&self, name: &str, grants: &[Grant]) -> PathBuf {
        let file = self.pki().password_file(name);
        let pw = format!("--new-user-password={}", self.pki().password(name));
        let role = format!("role-{name}");
        self.etcdctl(&["role", "add", &role]);
        for g in grants {
            let args = g.etcdctl_args(&role);
            self.etcdctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        self.etcdctl(&["user", "add", name, &pw]);
        self.etcdctl(&["user", "grant-role", name, &role]);
        file
    }

    /// Waits until every running member answers a status and agrees on a leader.
    pub async fn wait_healthy(&self, timeout: Duration) {
        let start = Instant::now();
        let c = self.client();
        loop {
            let mut leaders = Vec::new();
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                match c.status_of(&m.addr()).await {
                    Ok(s) if s.leader != 0 => leaders.push(s.leader),
                    _ => leaders.clear(),
                }
                if leaders.is_empty() {
                    break;
                }
            }
            let running = self.members.iter().filter(|m| m.child.is_some()).count();
            if leaders.len() == running && leaders.windows(2).all(|w| w[0] == w[1]) {
                // A write through each member proves the quorum serves (not only elects).
                let mut ok = true;
                for m in self.members.iter().filter(|m| m.child.is_some()) {
                    let one = Etcd::connect(vec![m.addr()], self.access());
                    ok &= one.put("/cutover-test/health", b"ok", 0).await.is_ok();
                }
                if ok {
                    return;
                }
            }
            if start.elapsed() > timeout {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| format!("{}: {}", m.name, m.log()))
                    .collect();
                panic!("etcd cluster not healthy after {timeout:?}:\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the member that is the leader now.
    pub async fn leader(&self) -> usize {
        let c = self.client();
        let start = Instant::now();
        loop {
            for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.child.is_some()) {
                if let Ok(s) = c.status_of(&m.addr()).await {
                    if s.is_leader() {
                        return i;
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(15), "no etcd leader within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the member dies at once, its data stays for a restart.
    pub fn kill(&mut self, i: usize) {
        self.members[i].reap();
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.signal("-TERM");
        if let Some(mut c) = m.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts a stopped or killed member again on its data.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.members[i].spawn();
        self.wait_healthy(Duration::from_secs(30)).await;
    }

    /// SIGSTOP / SIGCONT: the member freezes with its sockets open.
    pub fn pause(&self, i: usize) {
        self.members[i].signal("-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.members[i].signal("-CONT");
    }

    /// `etcdctl snapshot save` from member `i` into `to`: a backup as an operator takes it.
    pub fn snapshot_save(&self, i: usize, to: &Path) {
        let out = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.members[i].addr()))
            .args(["snapshot", "save"])
            .arg(to)
            .output()
            .expect("run /usr/bin/etcdctl (apt-get install etcd-client)");
        assert!(
            out.status.success(),
            "etcdctl snapshot save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The disaster recovery of etcd's guide: every member stopped, its data wiped, a new
    /// data dir restored from `snapshot` (`etcdctl snapshot restore`), all started again.
    /// The revision goes back to the snapshot's.
    pub async fn restore_from(&mut self, snapshot: &Path) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = self.root.file_name().unwrap().to_string_lossy().to_string();
        for m in &self.members {
            let data = m.dir.join("data");
            std::fs::remove_dir_all(&data).unwrap();
            let out = Command::new(ETCDCTL)
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(snapshot)
                .arg(format!("--name={}", m.name))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--initial-cluster={initial}"))
                .arg(format!("--initial-cluster-token={token}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                    m.peer_port
                ))
                .output()
                .expect("run /usr/bin/etcdctl");
            assert!(
                out.status.success(),
                "etcdctl snapshot restore: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for m in &mut self.members {
            m.spawn();
        }
        self.wait_healthy(Duration::from_secs(30)).await;
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            // A paused member must be able to die.
            m.signal("-CONT");
            m.reap();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
