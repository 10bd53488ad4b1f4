//! The shared vocabulary in SQLite: each word is one TEXT column holding exactly the text
//! serde and the API use (`"blue"`, `"rolled_back"`). The types live in `cutover-types`,
//! which depends on serde only, so the store wraps them to give them rusqlite's traits.

use std::str::FromStr;

use cutover_types::{Color, HistoryKind};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Row, ToSql};

/// A word stored as its text.
pub(crate) trait Word: Copy + FromStr<Err = String> {
    fn text(self) -> &'static str;
}

impl Word for Color {
    fn text(self) -> &'static str {
        self.as_str()
    }
}

impl Word for HistoryKind {
    fn text(self) -> &'static str {
        self.as_str()
    }
}

/// A word as a query parameter or a column value.
pub(crate) struct Text<T>(pub(crate) T);

impl<T: Word> ToSql for Text<T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.text()))
    }
}

impl<T: Word> FromSql for Text<T> {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        v.as_str()?
            .parse()
            .map(Text)
            .map_err(|e: String| FromSqlError::Other(e.into()))
    }
}

/// An optional word as a query parameter (`NULL` for none).
pub(crate) fn opt<T: Word>(w: Option<T>) -> Option<Text<T>> {
    w.map(Text)
}

/// Column `i` of `row`, a word.
pub(crate) fn word<T: Word>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    Ok(row.get::<_, Text<T>>(i)?.0)
}

/// Column `i` of `row`, a word or `NULL`.
pub(crate) fn opt_word<T: Word>(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<T>> {
    Ok(row.get::<_, Option<Text<T>>>(i)?.map(|t| t.0))
}
