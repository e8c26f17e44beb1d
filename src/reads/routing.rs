//! Which source answers reads, and whether the other is compared (shadow mode): the
//! migration state's `read_source` and `shadow`, remembered for [`ROUTING_REFRESH`].

use std::time::Duration as StdDuration;

use sqlx::PgPool;

use super::control::load_routing;
use crate::remembered::Remembered;

/// How long the in-process copy of `read_source` / `shadow` is trusted.
pub const ROUTING_REFRESH: StdDuration = StdDuration::from_secs(1);

/// Where reads are answered from: the migration state's own type.
pub use crate::state::ReadSource;

/// Which source answers and whether the other is compared, as the migration state says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub source: ReadSource,
    pub shadow: bool,
}

impl Default for Routing {
    fn default() -> Self {
        Routing { source: ReadSource::Legacy, shadow: false }
    }
}

/// `read_source` and `shadow` from `tsmigrate.migration_state`, read at most once per
/// [`ROUTING_REFRESH`]. When the target cannot be asked, the last known value stays
/// (legacy before anything was known): reads must not fail because the control table did.
pub struct RoutingCache(Remembered<Routing>);

impl Default for RoutingCache {
    fn default() -> Self {
        RoutingCache(Remembered::new(ROUTING_REFRESH))
    }
}

impl RoutingCache {
    pub async fn current(&self, target: Option<&PgPool>) -> Routing {
        let fetch = |last: Option<Routing>| async move {
            let last = last.unwrap_or_default();
            let Some(pool) = target else {
                return Ok::<_, std::convert::Infallible>(Routing::default());
            };
            Ok(match tokio::time::timeout(StdDuration::from_millis(500), load_routing(pool)).await {
                Ok(Ok(Some(routing))) => routing,
                // No state row: nothing is prepared, reads stay legacy.
                Ok(Ok(None)) => Routing::default(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, source = last.source.as_str(), "cannot read the read source; keeping the last known one");
                    last
                }
                Err(_) => {
                    tracing::warn!(source = last.source.as_str(), "the target did not answer for the read source; keeping the last known one");
                    last
                }
            })
        };
        match self.0.get(fetch).await {
            Ok(routing) => routing,
            Err(never) => match never {},
        }
    }
}
