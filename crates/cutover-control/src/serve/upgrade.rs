//! The hand-over of `serve --upgrade`, both sides: the running router (the predecessor)
//! serves a Unix socket; a new router (the successor) connects, asks for the listening
//! sockets, and is sent every one with SCM_RIGHTS and a manifest naming each by its config key
//! (`admin`, `services.NAME.listen`, `services.NAME.preview_listen`), never by address: two
//! listeners configured on port 0 would otherwise be told apart by nothing. The successor
//! says `ready` once it serves; only then does the predecessor close its copies and drain.
//!
//! The wire is frames of a 4-byte big-endian length and a JSON message; the file descriptors
//! travel with the frame that lists them. `server` sequences the two sides.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

/// The socket's name under `[store] data_dir`.
pub const SOCKET_NAME: &str = "upgrade.sock";
/// The whole hand-over, from the successor's hello to its `ready`, must fit in this; past it
/// the predecessor resumes and the successor gives up.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// A frame larger than this is refused (a manifest of 250 listeners is about 30 KiB).
const MAX_FRAME: usize = 256 * 1024;
/// The kernel passes at most 253 descriptors in one message (SCM_MAX_FD).
pub const MAX_LISTENERS: usize = 250;

/// Where a router whose data folder is `data_dir` listens for its successor.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// One listening socket as the manifest names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The config key whose listener this is: `admin`, `services.NAME.listen`, ...
    pub key: String,
    /// The address the config says (port 0 stays 0): the successor takes the socket only if
    /// its own config says the same.
    pub configured: SocketAddr,
    /// The address the socket is bound to.
    pub bound: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    /// Successor → predecessor: give me your listeners.
    Hello { pid: u32, version: String },
    /// Predecessor → successor, with one descriptor per entry, in order. The control plane
    /// is paused from here until `Failed` (it resumes) or `Ready` (it never does).
    Listeners { pid: u32, entries: Vec<Entry> },
    /// Predecessor → successor: no hand-over now, and why.
    Refused { reason: String },
    /// Successor → predecessor: serving on every listener; stop accepting and drain.
    Ready { pid: u32 },
    /// Successor → predecessor: giving up, and why; the predecessor resumes.
    Failed { reason: String },
    /// Predecessor → successor: the socket file is gone; bind your own.
    Bye,
}

/// One end of a hand-over connection: frames in and out, descriptors collected as they come.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Conn {
    fn new(stream: UnixStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Refuses a peer that runs as another user: listening sockets and the pause are the
    /// router's own user's to hand over.
    fn check_peer(&self) -> std::io::Result<u32> {
        let cred = self.stream.peer_cred()?;
        let me = rustix::process::getuid().as_raw();
        if cred.uid() != me {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("the peer runs as uid {}, not this process's uid {me}", cred.uid()),
            ));
        }
        Ok(cred.pid().map_or(0, |p| p as u32))
    }

    async fn send(&mut self, msg: &Message, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let body = serde_json::to_vec(msg)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut sent = 0;
        if !fds.is_empty() {
            let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            sent = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                        return Err(std::io::Error::other("the descriptors do not fit in one message"));
                    }
                    rustix::net::sendmsg(&self.stream, &[IoSlice::new(&frame)], &mut control, SendFlags::NOSIGNAL)
                        .map_err(std::io::Error::from)
                })
                .await?;
        }
        // The descriptors went with the first byte; the rest of a long frame follows plainly.
        self.stream.write_all(&frame[sent..]).await
    }

    async fn recv(&mut self) -> std::io::Result<Message> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                if len > MAX_FRAME {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a frame of {len} bytes (at most {MAX_FRAME})"),
                    ));
                }
                if self.buf.len() >= 4 + len {
                    let msg = serde_json::from_slice(&self.buf[4..4 + len])
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                    self.buf.drain(..4 + len);
                    return Ok(msg);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
            let mut fds = Vec::new();
            let got = self
                .stream
                .async_io(Interest::READABLE, || {
                    let mut control = RecvAncillaryBuffer::new(&mut space);
                    // Close-on-exec from the first instant: a model server started later must
                    // not inherit a listening socket.
                    let r = rustix::net::recvmsg(
                        &self.stream,
                        &mut [IoSliceMut::new(&mut chunk)],
                        &mut control,
                        RecvFlags::CMSG_CLOEXEC,
                    )
                    .map_err(std::io::Error::from)?;
                    for m in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(received) = m {
                            fds.extend(received);
                        }
                    }
                    Ok(r)
                })
                .await?;
            self.fds.append(&mut fds);
            if got.flags.contains(ReturnFlags::CTRUNC) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("more descriptors than the {MAX_LISTENERS} a hand-over carries"),
                ));
            }
            if got.bytes == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the other process closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..got.bytes]);
        }
    }
}

/// The predecessor's socket for successors: mode 0600 in the data folder, removed when
/// dropped (if it is still the one this process bound).
pub struct UpgradeSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's inode, so a successor's socket at the same path is never removed.
    ino: u64,
}

impl UpgradeSocket {
    /// Binds `path`, replacing a stale socket a crashed router left; refuses when another
    /// process answers there.
    pub fn bind(path: &Path) -> anyhow::Result<UpgradeSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if std::fs::symlink_metadata(path).is_ok() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another process serves {} (a second cutover on the same data_dir?)",
                    path.display()
                );
            }
            std::fs::remove_file(path).with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
        let listener = UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
        let ino = std::fs::symlink_metadata(path)?.ino();
        Ok(UpgradeSocket {
            listener,
            path: path.to_path_buf(),
            ino,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next successor of this process's user; others are logged and turned away.
    pub async fn accept(&self) -> Successor {
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let conn = Conn::new(stream);
            match conn.check_peer() {
                Ok(pid) => return Successor { conn, pid },
                Err(e) => tracing::warn!(error = %e, "upgrade: refused a connection to the upgrade socket"),
            }
        }
    }
}

impl Drop for UpgradeSocket {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _gone = std::fs::remove_file(&self.path);
        }
    }
}

/// The predecessor's side of one hand-over.
pub struct Successor {
    conn: Conn,
    /// From SO_PEERCRED, then from its hello.
    pub pid: u32,
}

impl Successor {
    /// Waits for the successor's hello.
    pub async fn hello(&mut self) -> anyhow::Result<String> {
        match self.conn.recv().await.context("reading the successor's hello")? {
            Message::Hello { pid, version } => {
                if pid != 0 {
                    self.pid = pid;
                }
                Ok(version)
            }
            other => anyhow::bail!("expected a hello, got {other:?}"),
        }
    }

    pub async fn refuse(&mut self, reason: &str) {
        let _ = self
            .conn
            .send(
                &Message::Refused {
                    reason: reason.to_string(),
                },
                &[],
            )
            .await;
    }

    /// Sends every listener (`entries[i]` is `fds[i]`).
    pub async fn offer(&mut self, entries: Vec<Entry>, fds: &[BorrowedFd<'_>]) -> anyhow::Result<()> {
        anyhow::ensure!(
            entries.len() == fds.len() && fds.len() <= MAX_LISTENERS,
            "{} listeners to hand over (at most {MAX_LISTENERS})",
            fds.len()
        );
        let msg = Message::Listeners {
            pid: std::process::id(),
            entries,
        };
        self.conn.send(&msg, fds).await.context("sending the listeners")
    }

    /// Waits for `ready`: `Err` says why the successor gave up (or died).
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        match self.conn.recv().await {
            Ok(Message::Ready { .. }) => Ok(()),
            Ok(Message::Failed { reason }) => anyhow::bail!("the new process failed: {reason}"),
            Ok(other) => anyhow::bail!("expected ready, got {other:?}"),
            Err(e) => anyhow::bail!("the new process went away before it was ready ({e})"),
        }
    }

    /// Tells the successor the socket path is free.
    pub async fn bye(mut self) {
        let _ = self.conn.send(&Message::Bye, &[]).await;
    }
}

/// The successor's side of one hand-over.
pub struct Predecessor {
    conn: Conn,
    pub pid: u32,
    pub path: PathBuf,
}

/// A listening socket received from the predecessor.
pub struct Received {
    pub entry: Entry,
    pub listener: std::net::TcpListener,
}

impl Predecessor {
    /// Connects to the running router at `path` (the same user's).
    pub async fn connect(path: &Path) -> anyhow::Result<Predecessor> {
        let stream = UnixStream::connect(path).await.with_context(|| {
            format!(
                "cannot reach a running cutover at {} (is `cutover serve` running with this config's [store] data_dir?)",
                path.display()
            )
        })?;
        let conn = Conn::new(stream);
        let pid = conn
            .check_peer()
            .with_context(|| format!("refusing to take listeners over {}", path.display()))?;
        Ok(Predecessor {
            conn,
            pid,
            path: path.to_path_buf(),
        })
    }

    /// Asks for the listeners; the predecessor pauses its control plane before it answers.
    /// Each descriptor is checked to be a listening TCP socket bound where the manifest says.
    pub async fn take(&mut self) -> anyhow::Result<Vec<Received>> {
        let hello = Message::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        self.conn.send(&hello, &[]).await.context("sending the hello")?;
        let entries = match self.conn.recv().await.context("waiting for the listeners")? {
            Message::Listeners { pid, entries } => {
                self.pid = pid;
                entries
            }
            Message::Refused { reason } => anyhow::bail!("the running cutover refused the hand-over: {reason}"),
            other => anyhow::bail!("expected the listeners, got {other:?}"),
        };
        let fds = std::mem::take(&mut self.conn.fds);
        anyhow::ensure!(
            fds.len() == entries.len(),
            "the manifest lists {} listeners but {} descriptors came",
            entries.len(),
            fds.len()
        );
        let mut out = Vec::new();
        for (entry, fd) in entries.into_iter().zip(fds) {
            let listening = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
            let listener = std::net::TcpListener::from(fd);
            let bound = listener.local_addr().ok();
            anyhow::ensure!(
                listening && bound == Some(entry.bound),
                "the descriptor sent for {} is not a TCP socket listening on {} (found {bound:?})",
                entry.key,
                entry.bound
            );
            out.push(Received { entry, listener });
        }
        Ok(out)
    }

    /// Tells the predecessor why this process gives up (it resumes).
    pub async fn fail(&mut self, reason: &str) {
        let _ = self
            .conn
            .send(
                &Message::Failed {
                    reason: reason.to_string(),
                },
                &[],
            )
            .await;
    }

    /// Says `ready` and waits (briefly) for the predecessor to free the socket path.
    pub async fn ready(mut self) -> anyhow::Result<()> {
        let ready = Message::Ready {
            pid: std::process::id(),
        };
        self.conn.send(&ready, &[]).await.context("sending ready")?;
        match tokio::time::timeout(Duration::from_secs(5), self.conn.recv()).await {
            Ok(Ok(Message::Bye)) => Ok(()),
            Ok(Ok(other)) => anyhow::bail!("expected bye, got {other:?}"),
            Ok(Err(e)) => anyhow::bail!("the old process went away after ready ({e})"),
            Err(_) => anyhow::bail!("the old process did not answer ready within 5 s"),
        }
    }
}

/// Starts `serve --upgrade` from the binary this process was started as (`argv[0]`, so a new
/// binary installed at that path is what runs), with this process's arguments, environment,
/// standard output and error (the journal, under systemd) and cgroup: what SIGUSR2 does, so
/// that under systemd the successor is inside the unit. Returns its pid; a failed successor's
/// exit status is logged.
pub fn spawn_successor() -> std::io::Result<u32> {
    let mut args = std::env::args_os();
    let exe = args
        .next()
        .ok_or_else(|| std::io::Error::other("this process has no argv[0] to start again"))?;
    let mut rest: Vec<std::ffi::OsString> = args.collect();
    if !rest.iter().any(|a| a == "--upgrade") {
        rest.push("--upgrade".into());
    }
    let mut child = tokio::process::Command::new(&exe)
        .args(&rest)
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    tokio::spawn(async move {
        match child.wait().await {
            Ok(st) if st.success() => {}
            Ok(st) => {
                tracing::warn!(successor_pid = pid, status = %st, "upgrade: the new process exited before taking over")
            }
            Err(e) => tracing::warn!(successor_pid = pid, error = %e, "upgrade: cannot wait for the new process"),
        }
    });
    Ok(pid)
}

/// Tells the service manager `state` (`READY=1`, `MAINPID=N`) when one started this process
/// with `Type=notify` (`$NOTIFY_SOCKET`); nothing otherwise.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|s| {
        use std::os::unix::ffi::OsStrExt;
        match path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.send_to_addr(state.as_bytes(), &addr)
            }
            None => s.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, notify_socket = ?path, state, "cannot notify the service manager");
    }
}

/// Borrowed views of owned descriptors, for [`Successor::offer`].
pub fn borrowed(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_cross_a_socket_pair_by_key_and_still_accept() {
        let (a, b) = UnixStream::pair().unwrap();
        let one = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let two = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let entries = vec![
            Entry {
                key: "services.a.listen".into(),
                configured: "127.0.0.1:0".parse().unwrap(),
                bound: one.local_addr().unwrap(),
            },
            Entry {
                key: "services.b.listen".into(),
                configured: "127.0.0.1:0".parse().unwrap(),
                bound: two.local_addr().unwrap(),
            },
        ];
        let mut old = Successor {
            conn: Conn::new(a),
            pid: 0,
        };
        let mut new = Predecessor {
            conn: Conn::new(b),
            pid: 0,
            path: PathBuf::new(),
        };
        let sent = entries.clone();
        let offer = async {
            old.hello().await.unwrap();
            old.offer(sent, &[one.as_fd(), two.as_fd()]).await.unwrap();
        };
        let (_, got) = tokio::join!(offer, new.take());
        let got = got.unwrap();
        assert_eq!(got.iter().map(|r| r.entry.clone()).collect::<Vec<_>>(), entries);
        assert_eq!(new.pid, std::process::id());
        drop((one, two));
        // The received copies are the same sockets: a connection to the first one's address
        // is accepted from its copy.
        let c = std::net::TcpStream::connect(entries[0].bound).unwrap();
        let (s, _) = got[0].listener.accept().unwrap();
        assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_successor_that_dies_before_ready_is_a_failed_hand_over() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut old = Successor {
            conn: Conn::new(a),
            pid: 0,
        };
        drop(b);
        let err = old.wait_ready().await.unwrap_err().to_string();
        assert!(err.contains("went away before it was ready"), "{err}");
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut a = a;
        a.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes()).await.unwrap();
        let err = Conn::new(b).recv().await.unwrap_err();
        assert!(err.to_string().contains("a frame of"), "{err}");
    }
}
