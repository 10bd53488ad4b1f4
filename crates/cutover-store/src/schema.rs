//! The store file's tables, and how an older file is brought up to date at open.

use rusqlite::{params, Connection};

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS services (
    name          TEXT PRIMARY KEY,
    live          TEXT CHECK (live IN ('blue', 'green')),
    generation    INTEGER NOT NULL DEFAULT 0,
    blue_version  TEXT,
    green_version TEXT,
    updated_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service     TEXT NOT NULL,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    from_color  TEXT,
    to_color    TEXT,
    generation  INTEGER NOT NULL,
    version     TEXT,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    release_id  INTEGER
);
CREATE INDEX IF NOT EXISTS history_by_service ON history (service, id);
CREATE TABLE IF NOT EXISTS releases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service     TEXT NOT NULL,
    doc         TEXT NOT NULL,
    finished    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS releases_by_service ON releases (service, id);
CREATE TABLE IF NOT EXISTS processes (
    service     TEXT NOT NULL,
    color       TEXT NOT NULL,
    replica     INTEGER NOT NULL,
    port        INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    start_time  INTEGER NOT NULL,
    version     TEXT NOT NULL,
    log         TEXT,
    started_at  TEXT,
    PRIMARY KEY (service, color, replica)
);
"#;

/// Columns added after the first schema, with their type: added to an older file at open.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("processes", "log", "TEXT"), ("processes", "started_at", "TEXT")];

/// Creates what is missing: the tables of a new file, the columns an older file lacks.
pub(crate) fn bring_up_to_date(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    for (table, column, ty) in ADDED_COLUMNS {
        let has: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            params![column],
            |r| r.get(0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty};"))?;
        }
    }
    Ok(())
}
