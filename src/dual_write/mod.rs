//! Dual-write: the outbox stream the ingest path appends to, the relay that drains it
//! into the target, and the tail mode for applications that write the sorted set themselves.

pub mod outbox;
pub mod relay;
pub mod tail;
