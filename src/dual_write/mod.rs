//! Dual-write: the outbox stream the ingest path appends to, the relay that drains it
//! into the target, the tail mode for applications that write the sorted set themselves,
//! and the `dual-write start|stop` phase commands.

pub mod outbox;
