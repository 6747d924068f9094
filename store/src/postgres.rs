//! The PostgreSQL backend: one connection, owned by a thread of its own.
//!
//! The `postgres` client blocks on a runtime of its own, which must not run inside the
//! caller's (gpuctl's commands are async): every call is sent to the connection's thread
//! and its answer waited for, exactly as a SQLite call blocks on its file.

use std::sync::mpsc;

use crate::sql::{Pg, SqlError};

type Job = Box<dyn FnOnce(&mut postgres::Client) + Send>;

pub struct PgConn {
    jobs: mpsc::Sender<Job>,
}

/// A `postgres://` URL as it may be shown: the password, if the URL has one, replaced.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The password for a connection that names none: `PGPASSWORD`, else the first matching
/// line of `~/.pgpass` (or `PGPASSFILE`), as libpq reads it. Never printed.
fn password_for(config: &postgres::Config) -> Option<Vec<u8>> {
    if let Ok(p) = std::env::var("PGPASSWORD") {
        return Some(p.into_bytes());
    }
    let file = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let db = config.get_dbname().unwrap_or(&user).to_string();
    let wanted = [host.as_str(), port.as_str(), db.as_str(), user.as_str()];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = split_pgpass(line);
            let [h, p, d, u, pw] = fields.as_slice() else {
                return None;
            };
            let matches = [h, p, d, u]
                .iter()
                .zip(wanted)
                .all(|(f, w)| f.as_str() == "*" || f.as_str() == w);
            matches.then(|| pw.clone().into_bytes())
        })
}

/// A `.pgpass` line's five fields (`:` separated, `\:` and `\\` escaped).
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), fields.last_mut()) {
                    last.push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no trusted root certificates were found on this machine for the database's TLS (install ca-certificates)".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgConn {
    /// Connect (on the connection's own thread) and keep the connection there.
    pub fn connect(url: &str) -> Result<PgConn, String> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| format!("not a PostgreSQL URL ({e})"))?;
        if config.get_password().is_none() {
            if let Some(p) = password_for(&config) {
                config.password(p);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("gpuctl");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        // `sslmode=require` must get TLS; `prefer` (the default) takes it where the server
        // offers it; `disable` never asks.
        let mode = config.get_ssl_mode();
        let connector = match mode {
            postgres::config::SslMode::Disable => None,
            postgres::config::SslMode::Require => Some(tls()?),
            _ => tls().ok(),
        };
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name("gpuctl-postgres".into())
            .spawn(move || {
                let client = match connector {
                    Some(t) => config.connect(t),
                    None => config.connect(postgres::NoTls),
                }
                .map_err(|e| match e.as_db_error() {
                    Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                    None => e.to_string(),
                });
                let mut client = match client {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when the store is dropped (the sender with it).
                while let Ok(job) = rx.recv() {
                    job(&mut client);
                }
            })
            .map_err(|e| format!("cannot start the database thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "the database thread ended".to_string())??;
        Ok(PgConn { jobs })
    }

    /// Run `f` on the connection's thread and wait for its answer.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, SqlError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |client| {
            let _ = tx.send(f(client));
        });
        self.jobs.send(job).map_err(|_| SqlError::Closed)?;
        rx.recv().map_err(|_| SqlError::Closed)?
    }

    /// One query's rows, streamed from the connection's thread as the server sends them,
    /// each read by `map` straight from the driver's row (a million rows make by-name values
    /// the cost), handed over in batches (one wake-up per batch, not per row) through a
    /// bounded channel: memory stays flat however many rows there are.
    pub fn stream<T: Send + 'static>(
        &self,
        sql: String,
        params: Vec<crate::sql::Value>,
        map: fn(&postgres::Row) -> Result<T, SqlError>,
    ) -> Result<impl Iterator<Item = Result<T, SqlError>>, SqlError> {
        const BATCH: usize = 1024;
        let (tx, rx) = mpsc::sync_channel::<Vec<Result<T, SqlError>>>(8);
        let job: Job = Box::new(move |client| {
            use postgres::fallible_iterator::FallibleIterator;
            let sql = crate::sql::postgres_placeholders(&sql);
            // A read-only transaction of its own, so that its settings end with it: a
            // million-row sort in memory rather than on disk, and no JIT for a plain scan.
            let mut txn = match client.transaction().and_then(|mut t| {
                t.batch_execute(
                    "SET TRANSACTION READ ONLY; SET LOCAL work_mem = '256MB'; SET LOCAL jit = off",
                )?;
                Ok(t)
            }) {
                Ok(t) => t,
                Err(e) => {
                    let _ = tx.send(vec![Err(e.into())]);
                    return;
                }
            };
            let mut rows = match txn.query_raw(&sql, params.iter()) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(vec![Err(e.into())]);
                    return;
                }
            };
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let (item, last) = match rows.next() {
                    Ok(Some(r)) => {
                        let item = map(&r);
                        let failed = item.is_err();
                        (Some(item), failed)
                    }
                    Ok(None) => (None, true),
                    Err(e) => (Some(Err(e.into())), true),
                };
                batch.extend(item);
                if last || batch.len() == BATCH {
                    // The reader went away (its caller failed): stop reading.
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if tx.send(full).is_err() || last {
                        return;
                    }
                }
            }
        });
        self.jobs.send(job).map_err(|_| SqlError::Closed)?;
        Ok(rx.into_iter().flatten())
    }

    /// Run `f` as a plain statement sequence.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn crate::sql::Sql) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, SqlError> {
        self.call(move |client| f(&mut Pg(client)))
    }

    /// Run `f` in one transaction while holding a session-level advisory lock taken before
    /// it began (a lock taken inside a serializable transaction would come after its
    /// snapshot, and the next process to migrate would not see the first one's tables).
    pub fn locked<R: Send + 'static>(
        &self,
        key: i64,
        f: impl FnOnce(&mut dyn crate::sql::Sql) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, SqlError> {
        self.call(move |client| {
            client.execute("SELECT pg_advisory_lock($1)", &[&key])?;
            let result = (|| -> Result<R, SqlError> {
                let mut tx = client.transaction()?;
                let r = f(&mut Pg(&mut tx))?;
                tx.commit()?;
                Ok(r)
            })();
            let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&key]);
            let r = result?;
            unlocked?;
            Ok(r)
        })
    }

    /// Run `f` in one SERIALIZABLE transaction, again (bounded) when it loses a race with
    /// another: two daemons, or two `up`s checking the same budget, see one order.
    pub fn transaction<R: Send + 'static>(
        &self,
        f: impl Fn(&mut dyn crate::sql::Sql) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, SqlError> {
        self.call(move |client| {
            let mut attempt = 0u32;
            loop {
                let result = (|| -> Result<R, SqlError> {
                    let mut tx = client
                        .build_transaction()
                        .isolation_level(postgres::IsolationLevel::Serializable)
                        .start()?;
                    let r = f(&mut Pg(&mut tx))?;
                    tx.commit()?;
                    Ok(r)
                })();
                match result {
                    Err(e) if e.is_retryable() && attempt < 50 => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(
                            5 * u64::from(attempt.min(20)),
                        ));
                    }
                    other => return other,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(
            redact("postgres://gpuctl:s3cret@db.example:5432/gpuctl"),
            "postgres://gpuctl:***@db.example:5432/gpuctl"
        );
        assert_eq!(
            redact("postgres://gpuctl@db.example/gpuctl"),
            "postgres://gpuctl@db.example/gpuctl"
        );
    }

    #[test]
    fn pgpass_fields_are_unescaped() {
        assert_eq!(
            split_pgpass(r"db.example:5432:*:gpuctl:pa\:ss\\word"),
            vec!["db.example", "5432", "*", "gpuctl", r"pa:ss\word"]
        );
    }
}
