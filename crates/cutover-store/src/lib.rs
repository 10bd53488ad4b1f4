//! Durable state in one SQLite file: per service the live color, generation and versions, an
//! append-only history, releases and the managed processes.
//!
//! Every write is one transaction committed with `synchronous=FULL` in WAL mode before the
//! call returns, so an acknowledged switch survives `kill -9` and power loss alike. Calls
//! block (they fsync): async callers run them on a blocking thread.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::sql::{opt, opt_word, word, Text};

mod schema;
mod sql;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("generation is {actual}, not {expected}: someone else changed the routing first")]
    Conflict { expected: u64, actual: u64 },
    #[error("no service named {0:?} in the store")]
    NotFound(String),
    #[error("store: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A color as the store writes it (`"blue"` / `"green"`, the same text the API shows), and
/// what a history line records (`kind`): the workspace's one type for each.
pub use cutover_types::{Color, HistoryKind};

/// The two kinds of history line a switch writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchKind {
    Switched,
    RolledBack,
    /// A progressive release's step: a new weight, the live color unchanged.
    Stepped,
}

impl From<SwitchKind> for HistoryKind {
    fn from(k: SwitchKind) -> HistoryKind {
        match k {
            SwitchKind::Switched => HistoryKind::Switched,
            SwitchKind::RolledBack => HistoryKind::RolledBack,
            SwitchKind::Stepped => HistoryKind::Stepped,
        }
    }
}

/// The committed routing state of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    /// `None` before anything was live.
    pub live: Option<Color>,
    pub generation: u64,
    pub blue_version: Option<String>,
    pub green_version: Option<String>,
}

impl ServiceState {
    pub fn version(&self, color: Color) -> Option<&str> {
        match color {
            Color::Blue => self.blue_version.as_deref(),
            Color::Green => self.green_version.as_deref(),
        }
    }
}

/// One line of a service's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub at: String,
    pub kind: HistoryKind,
    pub from: Option<Color>,
    pub to: Option<Color>,
    pub generation: u64,
    pub version: Option<String>,
    pub actor: String,
    pub reason: String,
    pub release_id: Option<i64>,
}

/// What a switch writes: the new routing plus the history line explaining it.
#[derive(Debug, Clone)]
pub struct SwitchRecord<'a> {
    pub service: &'a str,
    /// Compare-and-swap: the switch applies only if the stored generation is this one.
    pub expected_generation: u64,
    pub to: Color,
    pub kind: SwitchKind,
    pub actor: &'a str,
    pub reason: &'a str,
    pub release_id: Option<i64>,
}

/// A history line that is not a switch: the routing it names is the stored one.
#[derive(Debug, Clone)]
pub struct EventRecord<'a> {
    pub service: &'a str,
    pub kind: HistoryKind,
    /// The color the event is about (shown as `to`).
    pub color: Option<Color>,
    pub version: Option<&'a str>,
    pub actor: &'a str,
    pub reason: &'a str,
    pub release_id: Option<i64>,
}

/// A managed model-server process, recorded so a restarted cutover can adopt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub service: String,
    pub color: Color,
    pub replica: u32,
    pub port: u16,
    pub pid: u32,
    /// Start time from /proc/PID/stat (clock ticks since boot), to tell a reused pid apart.
    pub start_time: u64,
    pub version: String,
    /// The log file of this start of the process (one file per start); `None` in rows
    /// written before logs were kept per start.
    #[serde(default)]
    pub log: Option<String>,
    /// When this start happened (RFC 3339).
    #[serde(default)]
    pub started_at: Option<String>,
}

pub struct Store {
    conn: Mutex<Connection>,
}

/// Now, as RFC 3339 UTC with seconds, e.g. `2026-11-27T10:00:00Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Now, as RFC 3339 UTC with milliseconds, e.g. `2026-11-27T10:00:00.123Z` (log file names).
pub fn now_rfc3339_millis() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Store {
    /// Opens (or creates) the store file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL keeps readers off the writer's back; FULL makes each commit reach the disk
        // before it returns, which is what "acknowledged" promises.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "store: the file system refused WAL mode; commits are still durable but slower");
        }
        conn.execute_batch("PRAGMA synchronous=FULL;")?;
        schema::bring_up_to_date(&conn)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the service has a row; a new one starts with nothing live. Versions are
    /// filled in only where the store has none yet (config labels never override history).
    pub fn ensure_service(
        &self,
        name: &str,
        blue_version: Option<&str>,
        green_version: Option<&str>,
    ) -> Result<ServiceState> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO services (name, live, generation, blue_version, green_version, updated_at)
             VALUES (?1, NULL, 0, ?2, ?3, ?4) ON CONFLICT(name) DO NOTHING",
            params![name, blue_version, green_version, now_rfc3339()],
        )?;
        tx.execute(
            "UPDATE services SET blue_version = COALESCE(blue_version, ?2), green_version = COALESCE(green_version, ?3) WHERE name = ?1",
            params![name, blue_version, green_version],
        )?;
        let s = read_service(&tx, name)?.ok_or_else(|| StoreError::NotFound(name.into()))?;
        tx.commit()?;
        Ok(s)
    }

    /// Makes `to` live if the generation is still `expected_generation`; appends the history
    /// line in the same transaction. Returns the new state.
    pub fn switch(&self, rec: &SwitchRecord<'_>) -> Result<ServiceState> {
        self.advance(rec, true)
    }

    /// A progressive release's step (or its return to 0%): +1 on the generation if it is
    /// still `expected_generation`, the live color unchanged, and the history line (`to` is
    /// the color that gets the share) in the same transaction. The weight itself is not
    /// stored: a restart ends the release as interrupted and routes all to the live color.
    pub fn step(&self, rec: &SwitchRecord<'_>) -> Result<ServiceState> {
        self.advance(rec, false)
    }

    /// A switch (`make_live`) or a step: the compare on the generation, +1, and the history
    /// line, in one transaction.
    fn advance(&self, rec: &SwitchRecord<'_>, make_live: bool) -> Result<ServiceState> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cur = read_service(&tx, rec.service)?.ok_or_else(|| StoreError::NotFound(rec.service.into()))?;
        if cur.generation != rec.expected_generation {
            return Err(StoreError::Conflict {
                expected: rec.expected_generation,
                actual: cur.generation,
            });
        }
        let generation = cur.generation + 1;
        let at = now_rfc3339();
        let live = if make_live { Some(rec.to) } else { cur.live };
        tx.execute(
            "UPDATE services SET live = ?2, generation = ?3, updated_at = ?4 WHERE name = ?1",
            params![rec.service, opt(live), generation as i64, at],
        )?;
        tx.execute(
            "INSERT INTO history (service, at, kind, from_color, to_color, generation, version, actor, reason, release_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                rec.service,
                at,
                Text(HistoryKind::from(rec.kind)),
                opt(cur.live),
                Text(rec.to),
                generation as i64,
                cur.version(rec.to),
                rec.actor,
                rec.reason,
                rec.release_id
            ],
        )?;
        let s = read_service(&tx, rec.service)?.ok_or_else(|| StoreError::NotFound(rec.service.into()))?;
        tx.commit()?;
        Ok(s)
    }

    /// Fleet mode's snapshot: writes a routing state applied from etcd if it is newer than
    /// the stored one (a router started while etcd is away serves it). Returns whether it
    /// was written.
    pub fn apply_snapshot(&self, s: &ServiceState) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE services SET live = ?2, generation = ?3, blue_version = ?4, green_version = ?5, updated_at = ?6
             WHERE name = ?1 AND generation < ?3",
            params![
                s.name,
                opt(s.live),
                s.generation as i64,
                s.blue_version,
                s.green_version,
                now_rfc3339()
            ],
        )?;
        Ok(n > 0)
    }

    /// Records the version now at `color` (a release provisioned it).
    pub fn set_version(&self, service: &str, color: Color, version: Option<&str>) -> Result<ServiceState> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let col = match color {
            Color::Blue => "blue_version",
            Color::Green => "green_version",
        };
        let n = tx.execute(
            &format!("UPDATE services SET {col} = ?2, updated_at = ?3 WHERE name = ?1"),
            params![service, version, now_rfc3339()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(service.into()));
        }
        let s = read_service(&tx, service)?.ok_or_else(|| StoreError::NotFound(service.into()))?;
        tx.commit()?;
        Ok(s)
    }

    /// Appends a history line that is not a switch (a release started, was aborted, ...).
    pub fn record_event(&self, e: &EventRecord<'_>) -> Result<()> {
        self.record_event_at(e, &now_rfc3339())
    }

    /// As `record_event`, dated `at` (RFC 3339): an event that happened before it could be
    /// recorded (a host agent's report of an exit, read after a partition healed) keeps
    /// the time it happened.
    pub fn record_event_at(&self, e: &EventRecord<'_>, at: &str) -> Result<()> {
        let conn = self.conn();
        let cur = read_service(&conn, e.service)?.ok_or_else(|| StoreError::NotFound(e.service.into()))?;
        conn.execute(
            "INSERT INTO history (service, at, kind, from_color, to_color, generation, version, actor, reason, release_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                e.service,
                at,
                Text(e.kind),
                opt(cur.live),
                opt(e.color),
                cur.generation as i64,
                e.version,
                e.actor,
                e.reason,
                e.release_id
            ],
        )?;
        Ok(())
    }

    /// History of a service, newest first.
    pub fn history(&self, service: &str, limit: u32) -> Result<Vec<HistoryEntry>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT id, at, kind, from_color, to_color, generation, version, actor, reason, release_id
             FROM history WHERE service = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![service, limit], |r| {
            Ok(HistoryEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: word(r, 2)?,
                from: opt_word(r, 3)?,
                to: opt_word(r, 4)?,
                generation: r.get::<_, i64>(5)? as u64,
                version: r.get(6)?,
                actor: r.get(7)?,
                reason: r.get(8)?,
                release_id: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The version that was last made live on `color` (by a switch or a rollback), from the
    /// history: what `rollback --redeploy` brings back. A label a release wrote and that never
    /// went live (an aborted build) is not it.
    pub fn last_live_version(&self, service: &str, color: Color) -> Result<Option<String>> {
        let conn = self.conn();
        let v: Option<Option<String>> = conn
            .query_row(
                "SELECT version FROM history WHERE service = ?1 AND to_color = ?2 AND kind IN (?3, ?4)
                 ORDER BY id DESC LIMIT 1",
                params![
                    service,
                    Text(color),
                    Text(HistoryKind::Switched),
                    Text(HistoryKind::RolledBack)
                ],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.flatten())
    }

    /// Stores a new release document and returns its id.
    pub fn insert_release(&self, service: &str, doc: &serde_json::Value) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO releases (service, doc, finished) VALUES (?1, ?2, 0)",
            params![service, doc.to_string()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Replaces a release document (each phase transition), marking it finished or not.
    pub fn update_release(&self, id: i64, doc: &serde_json::Value, finished: bool) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE releases SET doc = ?2, finished = ?3 WHERE id = ?1",
            params![id, doc.to_string(), finished as i64],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("release {id}")));
        }
        Ok(())
    }

    pub fn release(&self, id: i64) -> Result<Option<(String, serde_json::Value)>> {
        let conn = self.conn();
        let row: Option<(String, String)> = conn
            .query_row("SELECT service, doc FROM releases WHERE id = ?1", params![id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match row {
            Some((svc, doc)) => Ok(Some((svc, serde_json::from_str(&doc)?))),
            None => Ok(None),
        }
    }

    /// Like `insert_release`, with an id of at least `min_id`: in fleet mode release ids
    /// name documents in etcd, so a new leader numbers after every id the fleet used.
    pub fn insert_release_from(&self, service: &str, doc: &serde_json::Value, min_id: i64) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO releases (id, service, doc, finished) \
             VALUES (MAX(?3, COALESCE((SELECT MAX(id) FROM releases), 0) + 1), ?1, ?2, 0)",
            params![service, doc.to_string(), min_id],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Writes a release under its id whether or not this store has it (a fleet leader
    /// keeps a copy of a document another router's run started).
    pub fn put_release(&self, id: i64, service: &str, doc: &serde_json::Value, finished: bool) -> Result<()> {
        self.conn().execute(
            "INSERT INTO releases (id, service, doc, finished) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(id) DO UPDATE SET service = ?2, doc = ?3, finished = ?4",
            params![id, service, doc.to_string(), finished as i64],
        )?;
        Ok(())
    }

    /// Releases of a service that never finished (a restart interrupted them).
    pub fn unfinished_releases(&self, service: &str) -> Result<Vec<(i64, serde_json::Value)>> {
        self.release_docs(
            "SELECT id, doc FROM releases WHERE service = ?1 AND finished = 0 ORDER BY id",
            params![service],
        )
    }

    /// The newest releases of a service, newest first.
    pub fn releases(&self, service: &str, limit: u32) -> Result<Vec<(i64, serde_json::Value)>> {
        self.release_docs(
            "SELECT id, doc FROM releases WHERE service = ?1 ORDER BY id DESC LIMIT ?2",
            params![service, limit],
        )
    }

    /// Runs a `SELECT id, doc FROM releases ...` and decodes each document.
    fn release_docs(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<(i64, serde_json::Value)>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(sql)?;
        let rows = st.query_map(args, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, doc) = row?;
            out.push((id, serde_json::from_str(&doc)?));
        }
        Ok(out)
    }

    pub fn put_process(&self, p: &ProcessRecord) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO processes (service, color, replica, port, pid, start_time, version, log, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![p.service, Text(p.color), p.replica, p.port, p.pid, p.start_time as i64, p.version, p.log, p.started_at],
        )?;
        Ok(())
    }

    pub fn remove_processes(&self, service: &str, color: Color) -> Result<()> {
        self.conn().execute(
            "DELETE FROM processes WHERE service = ?1 AND color = ?2",
            params![service, Text(color)],
        )?;
        Ok(())
    }

    pub fn processes(&self, service: &str) -> Result<Vec<ProcessRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT service, color, replica, port, pid, start_time, version, log, started_at FROM processes WHERE service = ?1 ORDER BY color, replica",
        )?;
        let rows = st.query_map(params![service], |r| {
            Ok(ProcessRecord {
                service: r.get(0)?,
                color: word(r, 1)?,
                replica: r.get(2)?,
                port: r.get(3)?,
                pid: r.get(4)?,
                start_time: r.get::<_, i64>(5)? as u64,
                version: r.get(6)?,
                log: r.get(7)?,
                started_at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// `PRAGMA integrity_check`: `"ok"` when the file is sound.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self.conn().query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

fn read_service(conn: &Connection, name: &str) -> Result<Option<ServiceState>> {
    Ok(conn
        .query_row(
            "SELECT name, live, generation, blue_version, green_version FROM services WHERE name = ?1",
            params![name],
            |r| {
                Ok(ServiceState {
                    name: r.get(0)?,
                    live: opt_word(r, 1)?,
                    generation: r.get::<_, i64>(2)? as u64,
                    blue_version: r.get(3)?,
                    green_version: r.get(4)?,
                })
            },
        )
        .optional()?)
}

#[cfg(test)]
mod tests;
