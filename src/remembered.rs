//! A value read from a server and trusted for a while (a flag, the read source, a horizon),
//! so hot paths do not ask the server on every request.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

pub struct Remembered<T> {
    ttl: Duration,
    /// Held while fetching, so concurrent callers wait for one fetch instead of each asking.
    cached: Mutex<Option<(T, Instant)>>,
    /// A background refresh ([`Remembered::get_refreshing_behind`]) is under way.
    refreshing: AtomicBool,
}

impl<T: Clone> Remembered<T> {
    pub fn new(ttl: Duration) -> Self {
        Remembered { ttl, cached: Mutex::new(None), refreshing: AtomicBool::new(false) }
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

impl<T: Clone + Send + 'static> Remembered<T> {
    /// Like [`Remembered::get`], but a value past its `ttl` and younger than `max_age` is
    /// returned at once while one background task fetches its successor: no caller waits
    /// for a refresh, only for the first fetch and for a value so old (the refreshes kept
    /// failing) that it is no longer trusted. For values that may be a little late without
    /// harm (a horizon that moves once a day), not for ones a promise rests on.
    pub async fn get_refreshing_behind<E, Fut>(self: &Arc<Self>, max_age: Duration, fetch: impl FnOnce() -> Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + 'static,
    {
        let mut cached = self.cached.lock().await;
        if let Some((value, at)) = &*cached {
            let age = at.elapsed();
            if age < self.ttl {
                return Ok(value.clone());
            }
            if age < max_age {
                if !self.refreshing.swap(true, Ordering::AcqRel) {
                    let this = Arc::clone(self);
                    let refresh = fetch();
                    tokio::spawn(async move {
                        // Cleared however the refresh ends (a panic included), so a later
                        // caller can start the next one.
                        let refreshing = RefreshUnderWay(Arc::clone(&this));
                        if let Ok(value) = refresh.await {
                            *this.cached.lock().await = Some((value, Instant::now()));
                        }
                        drop(refreshing);
                    });
                }
                return Ok(value.clone());
            }
        }
        let value = fetch().await?;
        *cached = Some((value.clone(), Instant::now()));
        Ok(value)
    }
}

/// Marks a background refresh as under way until it is dropped.
struct RefreshUnderWay<T>(Arc<Remembered<T>>);

impl<T> Drop for RefreshUnderWay<T> {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
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

    /// The value served once it is no longer `old` (a background refresh landed; later
    /// refreshes fetch `next`), asking for up to about ten seconds.
    async fn served_once_changed(r: &Arc<Remembered<i32>>, old: i32, next: i32) -> i32 {
        for _ in 0..2000 {
            let seen = r.get_refreshing_behind(Duration::from_secs(3600), || async move { Ok::<_, ()>(next) }).await.unwrap();
            if seen != old {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        old
    }

    #[tokio::test]
    async fn a_stale_value_is_served_while_one_refresh_runs_behind() {
        let r = Arc::new(Remembered::new(Duration::from_millis(50)));
        let far = Duration::from_secs(3600);
        assert_eq!(r.get_refreshing_behind(far, || async { Ok::<_, ()>(1) }).await, Ok(1), "the first fetch is waited for");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let slow = || async move {
            released.await.unwrap();
            Ok::<_, ()>(2)
        };
        assert_eq!(r.get_refreshing_behind(far, slow).await, Ok(1), "stale: served at once, refreshed behind");
        assert_eq!(r.get_refreshing_behind(far, || async { Ok::<_, ()>(3) }).await, Ok(1), "one refresh at a time");
        release.send(()).unwrap();
        assert_eq!(served_once_changed(&r, 1, 4).await, 2, "the refreshed value replaces the stale one");

        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(r.get_refreshing_behind(far, || async { Err::<i32, _>(()) }).await, Ok(2), "a failing refresh keeps serving the value");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            r.get_refreshing_behind(Duration::from_millis(50), || async { Err::<i32, _>("down") }).await,
            Err("down"),
            "a value past max_age is fetched inline, and its failure returned"
        );
    }

    #[tokio::test]
    async fn a_refresh_that_panics_does_not_stop_the_next_one() {
        let r = Arc::new(Remembered::new(Duration::ZERO));
        let far = Duration::from_secs(3600);
        assert_eq!(r.get_refreshing_behind(far, || async { Ok::<_, ()>(1) }).await, Ok(1));
        let panicking = || async {
            panic!("a refresh that panics");
            #[allow(unreachable_code)]
            Ok::<_, ()>(0)
        };
        assert_eq!(r.get_refreshing_behind(far, panicking).await, Ok(1));
        assert_eq!(served_once_changed(&r, 1, 2).await, 2, "a refresh ran after the one that panicked");
    }
}
