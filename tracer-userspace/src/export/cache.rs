//! A page of `--serve` kept for a while once made: building a report stops the event loop
//! (it owns the tables) and walks every descriptor, so a client that asks again and again
//! (a scraper gone wrong, a dashboard refreshed in a loop) would take the tracer's CPU away
//! from its events. A page is rebuilt at most once per [`MIN_AGE`], and never sooner than the
//! last build took, so that building pages takes at most half of the event loop's time
//! whatever the clients do. Requests that arrive while it is being built wait for it instead
//! of starting builds of their own.
//!
//! The cache is by time only: a report shows ages and what /proc says now, which change
//! whether events came or not, so "the data changed" is always true.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::Mutex;

/// How long a page is served as it was built, at least.
pub(super) const MIN_AGE: Duration = Duration::from_secs(1);

struct Built {
    /// When the build ended, and how long it took.
    at: Instant,
    took: Duration,
    bytes: Bytes,
}

/// One page's last build.
#[derive(Default)]
pub(super) struct Cached {
    last: Mutex<Option<Built>>,
}

impl Cached {
    /// The page as last built if it is fresh at `clock()`, else what `build` makes now
    /// (`None`: nothing to serve, nothing kept). `clock` is read once the page is ours, so
    /// that a request which waited for another's build finds it fresh.
    pub(super) async fn get<F, Fut>(&self, clock: impl Fn() -> Instant, build: F) -> Option<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<Bytes>>,
    {
        let mut last = self.last.lock().await;
        let started = clock();
        if let Some(built) = &*last
            && started.saturating_duration_since(built.at) < MIN_AGE.max(built.took)
        {
            return Some(built.bytes.clone());
        }
        let bytes = build().await?;
        let at = clock();
        *last = Some(Built {
            at,
            took: at.saturating_duration_since(started),
            bytes: bytes.clone(),
        });
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc};

    use tokio::sync::oneshot;

    use super::*;

    fn run<T>(test: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(test)
    }

    /// The page as `cache` has it at `now`, or a new build numbered from `builds`.
    async fn page(cache: &Cached, now: Instant, builds: &Cell<u32>) -> Bytes {
        cache
            .get(
                || now,
                || async {
                    builds.set(builds.get() + 1);
                    Some(Bytes::from(format!("build {}", builds.get())))
                },
            )
            .await
            .unwrap()
    }

    /// A hundred requests within the second get the first build; the first after it, a new
    /// one.
    #[test]
    fn rebuilds_at_most_once_per_second() {
        let start = Instant::now();
        let builds = Cell::new(0);
        let cache = Cached::default();
        let at = |ms| start + Duration::from_millis(ms);
        run(async {
            for ms in 0..100 {
                assert_eq!(page(&cache, at(ms * 9), &builds).await, "build 1");
            }
            assert_eq!(page(&cache, at(999), &builds).await, "build 1");
            assert_eq!(page(&cache, at(1000), &builds).await, "build 2");
            assert_eq!(page(&cache, at(1500), &builds).await, "build 2");
            assert_eq!(page(&cache, at(2100), &builds).await, "build 3");
        });
        assert_eq!(builds.get(), 3);
    }

    /// A build that took 3 s is kept 3 s: building never takes more than half the time.
    #[test]
    fn a_slow_build_is_kept_as_long_as_it_took() {
        let start = Instant::now();
        let now = Cell::new(start);
        let builds = Cell::new(0);
        let cache = Cached::default();
        run(async {
            let slow = || async {
                builds.set(builds.get() + 1);
                now.set(now.get() + Duration::from_secs(3));
                Some(Bytes::from_static(b"slow"))
            };
            cache.get(|| now.get(), slow).await.unwrap();
            // Ended at 3 s: fresh until 6 s.
            now.set(start + Duration::from_millis(5_999));
            cache.get(|| now.get(), slow).await.unwrap();
            assert_eq!(builds.get(), 1);
            now.set(start + Duration::from_secs(6));
            cache.get(|| now.get(), slow).await.unwrap();
            assert_eq!(builds.get(), 2);
        });
    }

    /// Requests that come while a build is under way wait for it, and get it.
    #[test]
    fn concurrent_requests_share_one_build() {
        let builds = Rc::new(Cell::new(0));
        let cache = Rc::new(Cached::default());
        let local = tokio::task::LocalSet::new();
        let (release, released) = oneshot::channel::<()>();
        let pages = local.block_on(
            &tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            async {
                let first = {
                    let (cache, builds) = (Rc::clone(&cache), Rc::clone(&builds));
                    tokio::task::spawn_local(async move {
                        cache
                            .get(Instant::now, || async move {
                                builds.set(builds.get() + 1);
                                released.await.ok()?;
                                Some(Bytes::from_static(b"shared"))
                            })
                            .await
                    })
                };
                // The first holds the page, waiting in its build.
                tokio::task::yield_now().await;
                let others: Vec<_> = (0..10)
                    .map(|_| {
                        let (cache, builds) = (Rc::clone(&cache), Rc::clone(&builds));
                        tokio::task::spawn_local(async move {
                            cache
                                .get(Instant::now, || async move {
                                    builds.set(builds.get() + 1);
                                    Some(Bytes::from_static(b"own"))
                                })
                                .await
                        })
                    })
                    .collect();
                tokio::task::yield_now().await;
                release.send(()).unwrap();
                let mut pages = vec![first.await.unwrap()];
                for other in others {
                    pages.push(other.await.unwrap());
                }
                pages
            },
        );
        assert_eq!(builds.get(), 1);
        assert!(pages.iter().all(|p| p.as_deref() == Some(&b"shared"[..])));
    }

    /// A build with nothing to serve (the session stopping) keeps nothing: the next request
    /// builds again.
    #[test]
    fn nothing_built_is_not_kept() {
        let cache = Cached::default();
        let now = Instant::now();
        run(async {
            assert_eq!(cache.get(|| now, || async { None }).await, None);
            let page = cache
                .get(|| now, || async { Some(Bytes::from_static(b"x")) })
                .await;
            assert_eq!(page.as_deref(), Some(&b"x"[..]));
        });
    }
}
