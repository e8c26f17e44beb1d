//! Dual-write: the outbox stream the ingest path appends to, the relay that drains it
//! into the target, the tail mode for applications that write the sorted set themselves,
//! the flag that turns it on (a cache of the migration state), possible gaps when Redis
//! loses the outbox, and whether the Redis holding the outbox can keep it.

pub mod durability;
pub mod flag;
pub mod outbox;
pub mod relay;
pub mod tail;
