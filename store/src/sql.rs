//! The little SQL both backends share: values, rows read by column name, and one trait
//! that a SQLite connection and a PostgreSQL client (or transaction) both implement.
//! Statements are written once, with SQLite's `?N` placeholders; PostgreSQL gets `$N`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A value bound to, or read from, a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Value {
        Value::Text(ts(v))
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}
impl<T: Clone + Into<Value>> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Value {
        v.clone().map(Into::into).unwrap_or(Value::Null)
    }
}

/// Timestamps are stored as RFC 3339 text in UTC with milliseconds: they sort as text,
/// and read the same on both backends.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("column {column}: {problem}")]
    Column { column: String, problem: String },
    #[error("the PostgreSQL connection is closed")]
    Closed,
}

/// The server's own message (with its SQLSTATE) rather than tokio-postgres's "db error".
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl SqlError {
    /// Another connection holds a lock (SQLite's BUSY or LOCKED).
    pub fn is_busy(&self) -> bool {
        match self {
            SqlError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }

    /// A serializable transaction lost a race (PostgreSQL's 40001, or a deadlock, 40P01):
    /// running it again gives the right answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            SqlError::Postgres(e) => e.code().is_some_and(|c| {
                *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            }),
            other => other.is_busy(),
        }
    }

    fn column(column: &str, problem: impl Into<String>) -> SqlError {
        SqlError::Column {
            column: column.to_string(),
            problem: problem.into(),
        }
    }
}

/// One result row; columns are read by name.
#[derive(Debug, Clone)]
pub struct Row {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    fn value(&self, column: &str) -> Result<&Value, SqlError> {
        self.names
            .iter()
            .position(|n| n == column)
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| SqlError::column(column, "not in the result"))
    }

    pub fn opt_text(&self, column: &str) -> Result<Option<String>, SqlError> {
        match self.value(column)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            Value::Int(i) => Ok(Some(i.to_string())),
            Value::Real(r) => Ok(Some(r.to_string())),
        }
    }

    pub fn text(&self, column: &str) -> Result<String, SqlError> {
        self.opt_text(column)?
            .ok_or_else(|| SqlError::column(column, "is NULL"))
    }

    pub fn opt_int(&self, column: &str) -> Result<Option<i64>, SqlError> {
        match self.value(column)? {
            Value::Null => Ok(None),
            Value::Int(i) => Ok(Some(*i)),
            Value::Real(r) => Ok(Some(*r as i64)),
            Value::Text(s) => s
                .parse()
                .map(Some)
                .map_err(|_| SqlError::column(column, format!("{s:?} is not an integer"))),
        }
    }

    pub fn int(&self, column: &str) -> Result<i64, SqlError> {
        self.opt_int(column)?
            .ok_or_else(|| SqlError::column(column, "is NULL"))
    }

    pub fn opt_real(&self, column: &str) -> Result<Option<f64>, SqlError> {
        match self.value(column)? {
            Value::Null => Ok(None),
            Value::Int(i) => Ok(Some(*i as f64)),
            Value::Real(r) => Ok(Some(*r)),
            Value::Text(s) => s
                .parse()
                .map(Some)
                .map_err(|_| SqlError::column(column, format!("{s:?} is not a number"))),
        }
    }

    pub fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, SqlError> {
        self.opt_text(column)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| SqlError::column(column, format!("{s:?}: {e}")))
            })
            .transpose()
    }

    pub fn time(&self, column: &str) -> Result<DateTime<Utc>, SqlError> {
        self.opt_time(column)?
            .ok_or_else(|| SqlError::column(column, "is NULL"))
    }

    pub fn parsed<T: std::str::FromStr<Err = String>>(&self, column: &str) -> Result<T, SqlError> {
        let s = self.text(column)?;
        s.parse().map_err(|e: String| SqlError::column(column, e))
    }
}

/// Which server a statement goes to, for the few places their SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What the store's statements run on: a connection, or a transaction of one.
pub trait Sql {
    fn backend(&self) -> Backend;
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, SqlError>;
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, SqlError>;
    /// Several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), SqlError>;

    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, SqlError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// A SQLite connection (a transaction of it derefs to it).
pub struct Lite<'a>(pub &'a rusqlite::Connection);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

impl Sql for Lite<'_> {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, SqlError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, SqlError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let names: Arc<[String]> = stmt.column_names().map(|s| s.to_string()).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                use rusqlite::types::ValueRef;
                values.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(Row {
                names: names.clone(),
                values,
            });
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        Ok(self.0.execute_batch(sql)?)
    }
}

/// `?N` placeholders as PostgreSQL's `$N` (the store's statements hold no `?` elsewhere).
pub fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                    i.to_string().to_sql(ty, out)
                }
                _ => i.to_sql(ty, out),
            },
            Value::Real(r) => match *ty {
                Type::FLOAT4 => (*r as f32).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => r.to_string().to_sql(ty, out),
                _ => r.to_sql(ty, out),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// The column names of a result, shared by all its rows.
pub fn pg_names(r: &postgres::Row) -> Arc<[String]> {
    r.columns().iter().map(|c| c.name().to_string()).collect()
}

pub fn pg_row(r: &postgres::Row, names: &Arc<[String]>) -> Result<Row, SqlError> {
    use postgres::types::Type;
    let names = names.clone();
    let mut values = Vec::with_capacity(names.len());
    for (i, c) in r.columns().iter().enumerate() {
        let v = match *c.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Value::Real),
            Type::FLOAT4 => r
                .try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(v.into())),
            _ => r.try_get::<_, Option<String>>(i)?.map(Value::Text),
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row { names, values })
}

/// A PostgreSQL client or transaction.
pub struct Pg<'a, C: postgres::GenericClient>(pub &'a mut C);

impl<C: postgres::GenericClient> Sql for Pg<'_, C> {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, SqlError> {
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as _).collect();
        Ok(self.0.execute(&postgres_placeholders(sql), &refs)?)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, SqlError> {
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as _).collect();
        let rows = self.0.query(&postgres_placeholders(sql), &refs)?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let names = pg_names(first);
        rows.iter().map(|r| pg_row(r, &names)).collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        Ok(self.0.batch_execute(sql)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            postgres_placeholders("UPDATE s SET a = ?2 WHERE id = ?1 AND b = '?'"),
            "UPDATE s SET a = $2 WHERE id = $1 AND b = '?'"
        );
    }
}
