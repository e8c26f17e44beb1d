//! A value read from a server and trusted for a while (a flag, the read source, a horizon),
//! so hot paths do not ask the server on every request.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

pub struct Remembered<T> {
    ttl: Duration,
    /// Held while fetching, so concurrent callers wait for one fetch instead of each asking.
    cached: Mutex<Option<(T, Instant)>>,
}

impl<T: Clone> Remembered<T> {
    pub fn new(ttl: Duration) -> Self {
        Remembered { ttl, cached: Mutex::new(None) }
    }

    /// The value while it is fresh; otherwise `fetch`'s, which is given the last known value
    /// (to fall back on). A failed fetch is returned and changes nothing: the next call
    /// fetches again.
    pub async fn get<E, Fut>(&self, fetch: impl FnOnce(Option<T>) -> Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut cached = self.cached.lock().await;
        if let Some((value, at)) = &*cached {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        let value = fetch(cached.as_ref().map(|(v, _)| v.clone())).await?;
        *cached = Some((value.clone(), Instant::now()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fresh_values_are_reused_and_failures_not_remembered() {
        let r = Remembered::new(Duration::from_secs(60));
        assert_eq!(r.get(|_| async { Ok::<_, ()>(1) }).await, Ok(1));
        assert_eq!(r.get(|_| async { Ok::<_, ()>(2) }).await, Ok(1), "still fresh");
        let stale = Remembered::new(Duration::ZERO);
        assert_eq!(stale.get(|last| async move { Ok::<_, ()>(last.unwrap_or(0) + 1) }).await, Ok(1));
        assert_eq!(stale.get(|last| async move { Ok::<_, ()>(last.unwrap_or(0) + 1) }).await, Ok(2), "the fetch sees the last value");
        assert_eq!(stale.get(|_| async { Err::<i32, _>("down") }).await, Err("down"));
        assert_eq!(stale.get(|last| async move { Ok::<_, ()>(last.unwrap_or(0)) }).await, Ok(2), "a failure keeps the last value to fall back on");
    }
}
