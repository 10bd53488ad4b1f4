//! The model servers' log files: one per start, `SERVICE-COLOR-REPLICA-<start time>.log` under
//! `data_dir/logs/`, beginning with a header line; `SERVICE-COLOR-REPLICA.log` is a symlink to
//! the newest, and the newest [`LOGS_KEPT`] per replica are kept. An exit quotes the last
//! lines of its log.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cutover_proxy::Color;
use cutover_store::now_rfc3339_millis;

/// Log files kept per replica (one per start); older ones are removed at the next start.
pub const LOGS_KEPT: usize = 10;
/// Lines of a process's log quoted in an exit's reason.
pub(super) const TAIL_LINES: usize = 10;

/// The stable name of a replica's log: a symlink to the file of its newest start.
pub fn log_path(data_dir: &Path, service: &str, color: Color, replica: u32) -> PathBuf {
    data_dir.join("logs").join(format!("{service}-{color}-{replica}.log"))
}

/// The last `n` lines of a file (read from its last 16 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _partial = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let lines = &lines[lines.len().saturating_sub(n)..];
    lines
        .iter()
        .map(|l| {
            let l: String = l.chars().take(300).collect();
            format!("| {l}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Opens the log file of a new start: a new file, a header line, the stable symlink pointed
/// at it, the oldest files beyond [`LOGS_KEPT`] removed.
pub(super) fn new_log(
    dir: &Path,
    service: &str,
    color: Color,
    replica: u32,
    header: &str,
) -> std::io::Result<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(dir)?;
    let prefix = format!("{service}-{color}-{replica}-");
    let stamp: String = now_rfc3339_millis()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let (path, mut file) = create_new(dir, &prefix, &stamp)?;
    writeln!(file, "{header}")?;
    let link = dir.join(format!("{service}-{color}-{replica}.log"));
    if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_file()) {
        // The single appended file of an older cutover: keep it under a name retention skips.
        std::fs::rename(
            &link,
            dir.join(format!("{service}-{color}-{replica}.before-per-start-logs.log")),
        )?;
    }
    let tmp = dir.join(format!(".{service}-{color}-{replica}.log.tmp"));
    let _stale = std::fs::remove_file(&tmp);
    if let Some(name) = path.file_name() {
        std::os::unix::fs::symlink(name, &tmp)?;
        std::fs::rename(&tmp, &link)?;
    }
    remove_oldest(dir, &prefix)?;
    Ok((path, file))
}

/// Creates `PREFIX STAMP.log`, or `PREFIX STAMP-N.log` after the highest start of this
/// millisecond still on disk: a name freed by retention must not come back for a newer
/// start, or it would sort as the oldest.
fn create_new(dir: &Path, prefix: &str, stamp: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    let taken = |name: &str| -> Option<u32> {
        let rest = name.strip_prefix(prefix)?.strip_prefix(stamp)?.strip_suffix(".log")?;
        match rest {
            "" => Some(1),
            r => r.strip_prefix('-')?.parse().ok(),
        }
    };
    let mut n = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| taken(e.file_name().to_str()?))
        .max()
        .map_or(1, |m| m + 1);
    loop {
        let name = if n == 1 {
            format!("{prefix}{stamp}.log")
        } else {
            format!("{prefix}{stamp}-{n}.log")
        };
        let path = dir.join(&name);
        match std::fs::OpenOptions::new().create_new(true).append(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the oldest per-start files of `prefix` beyond [`LOGS_KEPT`].
fn remove_oldest(dir: &Path, prefix: &str) -> std::io::Result<()> {
    // Names sort by start time; a name whose rest is not a timestamp belongs to another service
    // whose name extends this one ("chat" vs "chat-blue-0").
    let mut old: Vec<((String, u32), PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(prefix)?.strip_suffix(".log")?;
            if !rest.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            // `STAMP` or `STAMP-N` (a second start within the same millisecond).
            let key = match rest.split_once('-') {
                Some((stamp, n)) => (stamp.to_string(), n.parse().ok()?),
                None => (rest.to_string(), 1),
            };
            Some((key, e.path()))
        })
        .collect();
    old.sort();
    for (_, p) in old.iter().take(old.len().saturating_sub(LOGS_KEPT)) {
        let _gone = std::fs::remove_file(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_log_file_per_start_with_a_header_a_symlink_and_retention() {
        let dir = std::env::temp_dir().join(format!("cutover-logs-test-{}", std::process::id()));
        let _fresh = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // An older cutover's single file is kept aside, not overwritten.
        std::fs::write(dir.join("chat-blue-0.log"), "old lines\n").unwrap();
        // Another service whose name extends this one: never removed by this one's retention.
        std::fs::write(dir.join("chat-blue-0-blue-0-20000101T000000.000Z.log"), "x").unwrap();
        let mut paths = Vec::new();
        for i in 0..(LOGS_KEPT + 2) {
            let (p, mut f) = new_log(&dir, "chat", Color::Blue, 0, &format!("=== start {i} ===")).unwrap();
            writeln!(f, "line of start {i}").unwrap();
            paths.push(p);
        }
        let names: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let per_start = names
            .iter()
            .filter(|n| n.starts_with("chat-blue-0-2") && n.ends_with(".log"))
            .count();
        assert_eq!(per_start, LOGS_KEPT, "{names:?}");
        assert!(names.contains("chat-blue-0.before-per-start-logs.log"), "{names:?}");
        assert!(
            names.contains("chat-blue-0-blue-0-20000101T000000.000Z.log"),
            "{names:?}"
        );
        assert!(
            !paths[0].exists() && !paths[1].exists() && paths[2].exists() && paths[LOGS_KEPT + 1].exists(),
            "the two oldest went: {paths:?} {names:?}"
        );
        let newest = std::fs::read_to_string(dir.join("chat-blue-0.log")).unwrap();
        assert_eq!(
            newest,
            format!("=== start {} ===\nline of start {}\n", LOGS_KEPT + 1, LOGS_KEPT + 1)
        );
        assert_eq!(
            tail(&paths[LOGS_KEPT + 1], 1),
            format!("| line of start {}", LOGS_KEPT + 1)
        );
        let _gone = std::fs::remove_dir_all(&dir);
    }
}
