//! One file per phase command, named as the command is. Each declares its
//! [`Transition`](super::Transition), its gate (if any) and its `apply` step; the
//! [`runner`](super::runner) does the rest.
//!
//! | command | file |
//! |---------|------|
//! | `prepare` | [`prepare`] |
//! | `dual-write start` / `stop` | [`dual_write_start`], [`dual_write_stop`] |
//! | `backfill` | [`backfill`] |
//! | `backfill --from --to` | [`backfill_window`] |
//! | `import-history` | [`import_history`] |
//! | `validate` | [`validate`] |
//! | `repair` | [`repair`] |
//! | `cutover` | [`cutover`] |
//! | `reverse` | [`reverse`] |
//! | `retire-flush` | [`retire_flush`] |
//! | `optimize` | [`optimize`] |
//! | `complete` | [`complete`] |
//! | `abort` | [`abort`] |
//! | `shadow on` / `off` | [`shadow`] |

pub mod abort;
pub mod backfill;
pub mod backfill_window;
pub mod complete;
pub mod cutover;
pub mod dual_write_start;
pub mod dual_write_stop;
pub mod import_history;
pub mod optimize;
pub mod prepare;
pub mod repair;
pub mod retire_flush;
pub mod reverse;
pub mod shadow;
pub mod validate;
