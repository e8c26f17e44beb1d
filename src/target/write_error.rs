//! Poison or outage? Every write path asks [`classify`] what a failed write means:
//!
//! * [`WriteErrorKind::Data`]: the server refused *these rows* (a NUL in text, a value
//!   out of range, an index row too large...). Writing them again will fail again, so the
//!   writer isolates the offending rows, stores them as dead letters and moves on.
//! * [`WriteErrorKind::Connection`]: the server, or the way to it, failed (I/O, TLS, pool
//!   timeout, shutdown, too many connections, a deadlock, a missing table...). The same
//!   write may succeed later: nothing is acknowledged and the path retries.
//!
//! Anything not known to be about the data is retried: stalling on an unknown error is
//! recoverable, dead-lettering good events because of an outage is not.

/// What a failed write means for the rows in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteErrorKind {
    /// These rows can never be stored as they are: dead-letter them.
    Data,
    /// Not about the rows: retry the same write later.
    Connection,
}

/// Classifies a failed write (pure; see the module documentation).
pub fn classify(error: &sqlx::Error) -> WriteErrorKind {
    match error {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref().unwrap_or_default()),
        // A value the driver could not encode for the server: a property of the row.
        sqlx::Error::Encode(_) => WriteErrorKind::Data,
        _ => WriteErrorKind::Connection,
    }
}

/// Classifies a PostgreSQL SQLSTATE.
///
/// * `22xxx` data exception: `22021` NUL / invalid byte sequence, `22P05` unsupported
///   Unicode escape in jsonb, `22001` value too long, `22003` out of range, ...
/// * `23xxx` integrity constraint: not-null, check (`23514`, also "no partition for this
///   row" in plain mode), foreign key. The unique conflict (`23505`) is absorbed by
///   `ON CONFLICT DO NOTHING` (and by the `COPY` fallback) before anything classifies it.
/// * `54xxx` program limit exceeded: `54000` index row larger than a btree page allows.
///
/// Everything else, `08xxx` connection exceptions, `57P01` admin shutdown, `53xxx`
/// resources, `40xxx` serialization and deadlock, `42xxx` missing objects, is a retry.
pub fn classify_sqlstate(code: &str) -> WriteErrorKind {
    match code.get(..2) {
        Some("22" | "23" | "54") => WriteErrorKind::Data,
        _ => WriteErrorKind::Connection,
    }
}

/// `(SQLSTATE, message)` of a database error, for the dead letter's reason.
pub fn server_message(error: &sqlx::Error) -> (String, String) {
    match error {
        sqlx::Error::Database(db) => (db.code().map(|c| c.into_owned()).unwrap_or_default(), db.message().to_string()),
        other => (String::new(), other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WriteErrorKind::{Connection, Data};

    #[test]
    fn data_exceptions_are_data_and_the_rest_is_retried() {
        let cases = [
            ("22021", Data),       // invalid byte sequence for encoding "UTF8": 0x00
            ("22P05", Data),       // unsupported Unicode escape sequence (\u0000 in jsonb)
            ("22001", Data),       // value too long
            ("22003", Data),       // numeric value out of range
            ("22P02", Data),       // invalid input syntax
            ("23502", Data),       // not-null violation
            ("23514", Data),       // check violation / no partition for the row
            ("54000", Data),       // index row size exceeds maximum
            ("08006", Connection), // connection failure
            ("08001", Connection), // cannot establish connection
            ("57P01", Connection), // admin shutdown
            ("57P03", Connection), // cannot connect now (starting up)
            ("57014", Connection), // statement timeout
            ("53300", Connection), // too many connections
            ("53100", Connection), // disk full
            ("40001", Connection), // serialization failure
            ("40P01", Connection), // deadlock
            ("42P01", Connection), // undefined table: a deployment problem, not the row's
            ("25P02", Connection), // in a failed transaction
            ("XX000", Connection), // internal error
            ("", Connection),
        ];
        for (code, kind) in cases {
            assert_eq!(classify_sqlstate(code), kind, "SQLSTATE {code:?}");
        }
    }

    #[test]
    fn driver_errors_are_connection_errors() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(classify(&io), Connection);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Connection);
        assert_eq!(classify(&sqlx::Error::PoolClosed), Connection);
        assert_eq!(classify(&sqlx::Error::Protocol("unexpected message".into())), Connection);
        assert_eq!(classify(&sqlx::Error::Encode("bad value".into())), Data);
    }
}
