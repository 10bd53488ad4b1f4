//! `GET /v1/services/{svc}/logs`: the current log of each replica of a managed color, as a
//! tail or from a byte offset (how `cutover logs -f` follows, by polling).
//!
//! Which file is a replica's current log is decided in one place, [`current_log`]: the
//! newest file in `store.data_dir/logs/` named `{service}-{color}-{replica}.log` or
//! `{service}-{color}-{replica}-*.log` (one file per process start). A client that follows
//! sends back the `file` it read with its `offset`; when a new process start has made another
//! file current, the answer says `rotated` and starts that file from its beginning. No path
//! from a request is ever opened: `file` is only compared with the current file's name.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cutover_config::Environments;
use cutover_proxy::Color;
use serde::{Deserialize, Serialize};

use super::ApiError;

/// At most this much text per replica per answer: a follower asks again from `next_offset`.
pub const MAX_CHUNK: u64 = 256 * 1024;
/// Lines of a tail when the request names no offset.
pub const DEFAULT_TAIL: usize = 200;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// `blue` or `green`; both when absent.
    pub color: Option<String>,
    pub replica: Option<u32>,
    /// Last N lines (default 200), when there is no `offset`.
    pub tail: Option<usize>,
    /// Byte offset into `file` to read from (following).
    pub offset: Option<u64>,
    /// The file name the offset belongs to, as an earlier answer gave it.
    pub file: Option<String>,
}

/// One replica's log text.
#[derive(Serialize, Debug)]
pub struct LogChunk {
    pub color: Color,
    pub replica: u32,
    /// The current log file's name (in `store.data_dir/logs/`); `null` before the first start.
    pub file: Option<String>,
    /// Its size now, in bytes.
    pub size: u64,
    /// The byte range of `text` in the file.
    pub offset: u64,
    pub next_offset: u64,
    /// The offset named another file, or lay past the end (the file was replaced).
    pub rotated: bool,
    pub text: String,
}

/// The current log of one replica, if it was ever started. The supervisor keeps
/// `SERVICE-COLOR-REPLICA.log` as a symlink to the newest start's file: it is followed, so the
/// name answered changes when a new start makes another file current. Without the link, the
/// newest of `SERVICE-COLOR-REPLICA.log` (one appended file) and `SERVICE-COLOR-REPLICA-*.log`.
pub fn current_log(data_dir: &Path, service: &str, color: Color, replica: u32) -> Option<PathBuf> {
    let stem = format!("{service}-{color}-{replica}");
    let dir = data_dir.join("logs");
    if let Ok(target) = std::fs::read_link(dir.join(format!("{stem}.log"))) {
        let p = dir.join(target);
        if p.is_file() {
            return Some(p);
        }
    }
    std::fs::read_dir(&dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(&stem)
                .and_then(|rest| rest.strip_suffix(".log"))
                .is_some_and(|mid| mid.is_empty() || mid.starts_with('-'))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.file_name(), e.path())))
        // Newest first by time, then by name (per-start names sort by their start time).
        .max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
        .map(|(_, _, p)| p)
}

/// Which colors and replicas a request covers, for a managed service.
pub fn targets(env: &Environments, q: &LogsQuery, service: &str) -> Result<Vec<(Color, u32)>, ApiError> {
    let Environments::Managed(run) = env else {
        // 409: the request is well formed; the service's configuration is what rules it out.
        return Err(ApiError::conflict(
            "not_managed",
            format!("service {service} has static endpoints: cutover does not run its model servers, so it has no logs of them"),
        ));
    };
    if !run.hosts.is_empty() {
        // Logs stay on the GPU hosts: shipping model-server output through etcd would load
        // the coordination store with bulk data.
        return Err(ApiError::conflict(
            "on_host_agents",
            format!(
                "the model servers of {service} run on host agents ({}): their logs are on those hosts, in each agent's --data-dir/logs/ (`cutover status` shows each process's file)",
                run.hosts.join(", ")
            ),
        ));
    }
    let colors = match q.color.as_deref() {
        None => vec![Color::Blue, Color::Green],
        Some(c) => vec![super::color(c)?],
    };
    let replicas = run.ports.blue.len() as u32;
    if let Some(r) = q.replica.filter(|r| *r >= replicas) {
        return Err(ApiError::not_found(format!(
            "replica {r} does not exist: service {service} has {replicas} per color (0 to {})",
            replicas - 1
        )));
    }
    Ok(colors
        .into_iter()
        .flat_map(|c| (0..replicas).map(move |r| (c, r)))
        .filter(|(_, r)| q.replica.is_none_or(|want| want == *r))
        .collect())
}

/// Reads one replica's chunk: from `q.offset` in `q.file`, or the last `q.tail` lines.
pub fn read(data_dir: &Path, service: &str, color: Color, replica: u32, q: &LogsQuery) -> std::io::Result<LogChunk> {
    let mut chunk = LogChunk {
        color,
        replica,
        file: None,
        size: 0,
        offset: 0,
        next_offset: 0,
        rotated: false,
        text: String::new(),
    };
    let Some(path) = current_log(data_dir, service, color, replica) else {
        return Ok(chunk);
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut f = std::fs::File::open(&path)?;
    let size = f.metadata()?.len();
    let start = match q.offset {
        Some(off) => {
            let same = q.file.is_none() || q.file == name;
            chunk.rotated = !same || off > size;
            if chunk.rotated {
                0
            } else {
                off
            }
        }
        None => tail_start(&mut f, size, q.tail.unwrap_or(DEFAULT_TAIL))?,
    };
    let len = (size - start).min(MAX_CHUNK);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    chunk.file = name;
    chunk.size = size;
    chunk.offset = start;
    chunk.next_offset = start + buf.len() as u64;
    chunk.text = String::from_utf8_lossy(&buf).into_owned();
    Ok(chunk)
}

/// The offset where the last `lines` lines of the file begin (at most `MAX_CHUNK` back).
fn tail_start(f: &mut std::fs::File, size: u64, lines: usize) -> std::io::Result<u64> {
    let from = size.saturating_sub(MAX_CHUNK);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(size - from).read_to_end(&mut buf)?;
    // A final newline ends the last line; it does not start another one.
    let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return Ok(from + i as u64 + 1);
            }
        }
    }
    if lines == 0 {
        return Ok(size);
    }
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cutover-logs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("logs")).unwrap();
        d
    }

    fn q(offset: Option<u64>, file: Option<&str>, tail: Option<usize>) -> LogsQuery {
        LogsQuery {
            offset,
            file: file.map(str::to_string),
            tail,
            ..LogsQuery::default()
        }
    }

    #[test]
    fn current_log_matches_one_replica_in_either_naming() {
        let d = dir("names");
        for n in [
            "chat-green-1.log",
            "chat-green-10.log",
            "chat-blue-1.log",
            "chat-green-1x.log",
        ] {
            std::fs::write(d.join("logs").join(n), "x").unwrap();
        }
        let got = current_log(&d, "chat", Color::Green, 1).unwrap();
        assert_eq!(got.file_name().unwrap(), "chat-green-1.log");
        // One file per start: the newest is current.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.join("logs").join("chat-green-1-1700000000.log"), "y").unwrap();
        let got = current_log(&d, "chat", Color::Green, 1).unwrap();
        assert_eq!(got.file_name().unwrap(), "chat-green-1-1700000000.log");
        assert_eq!(current_log(&d, "chat", Color::Green, 2), None);
        assert_eq!(current_log(&d, "other", Color::Green, 1), None);
        // The supervisor's link to the newest start wins over modification times.
        let logs = d.join("logs");
        std::fs::write(logs.join("chat-blue-0-20260101T000000000Z.log"), "a").unwrap();
        std::fs::write(logs.join("chat-blue-0-20260102T000000000Z.log"), "b").unwrap();
        std::os::unix::fs::symlink("chat-blue-0-20260101T000000000Z.log", logs.join("chat-blue-0.log")).unwrap();
        let got = current_log(&d, "chat", Color::Blue, 0).unwrap();
        assert_eq!(got.file_name().unwrap(), "chat-blue-0-20260101T000000000Z.log");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn tail_then_follow_from_the_offset() {
        let d = dir("tail");
        let p = d.join("logs").join("chat-blue-0.log");
        std::fs::write(&p, "one\ntwo\nthree\n").unwrap();
        let c = read(&d, "chat", Color::Blue, 0, &q(None, None, Some(2))).unwrap();
        assert_eq!(c.text, "two\nthree\n");
        assert_eq!(c.next_offset, 14);
        let all = read(&d, "chat", Color::Blue, 0, &q(None, None, Some(10))).unwrap();
        assert_eq!(all.text, "one\ntwo\nthree\n");
        let none = read(&d, "chat", Color::Blue, 0, &q(None, None, Some(0))).unwrap();
        assert_eq!(none.text, "");
        std::fs::write(&p, "one\ntwo\nthree\nfour\n").unwrap();
        let next = read(&d, "chat", Color::Blue, 0, &q(Some(14), c.file.as_deref(), None)).unwrap();
        assert_eq!((next.text.as_str(), next.rotated), ("four\n", false));
        // Another file's offset: start the current one from its beginning.
        let other = read(
            &d,
            "chat",
            Color::Blue,
            0,
            &q(Some(14), Some("chat-blue-0-1.log"), None),
        )
        .unwrap();
        assert!(other.rotated);
        assert_eq!(other.offset, 0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
