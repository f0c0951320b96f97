//! Credentials for the PutRecords path, cached until shortly before they expire.
//!
//! The SDK caches inside its per-call orchestrator, which PutRecords no longer goes through
//! (see [`super::put_records`]); this is that cache, kept as simple: one set of credentials,
//! refreshed by one caller at a time, a little before expiry. The SDK client, for ListShards,
//! takes its credentials from here too ([`CredentialsCache::as_provider`]), so both paths share
//! one STS session instead of assuming the role twice.

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Credentials are refreshed this long before they expire, so none is used in its last
/// minutes (a request signed just before expiry may arrive just after it).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// After a failed refresh, while the old credentials still work, the provider is asked again
/// no sooner than this: every PutRecords would otherwise call STS.
pub const RETRY_FAILED_REFRESH_AFTER: Duration = Duration::from_secs(10);

pub struct CredentialsCache {
    provider: SharedCredentialsProvider,
    cached: RwLock<Cached>,
    /// Held while the provider is asked, so concurrent callers wait for one answer.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cached {
    credentials: Option<Credentials>,
    /// Set when a refresh failed while the cached credentials were still good.
    retry_not_before: Option<Instant>,
}

impl CredentialsCache {
    pub fn new(provider: SharedCredentialsProvider) -> Self {
        CredentialsCache {
            provider,
            cached: RwLock::new(Cached::default()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Credentials to sign with now: the cached ones unless they are due for refresh.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        if let Some(credentials) = self.usable(SystemTime::now()) {
            return Ok(credentials);
        }
        let _refreshing = self.refreshing.lock().await;
        // Another caller may have refreshed while this one waited.
        if let Some(credentials) = self.usable(SystemTime::now()) {
            return Ok(credentials);
        }
        match self.provider.provide_credentials().await {
            Ok(credentials) => {
                let mut cached = self.cached.write().expect("credentials lock");
                *cached = Cached {
                    credentials: Some(credentials.clone()),
                    retry_not_before: None,
                };
                Ok(credentials)
            }
            Err(error) => {
                let now = SystemTime::now();
                let mut cached = self.cached.write().expect("credentials lock");
                match cached.credentials.clone().filter(|c| !expired(c, now)) {
                    Some(still_valid) => {
                        tracing::warn!(
                            error = %aws_sdk_kinesis::error::DisplayErrorContext(&error),
                            "refreshing AWS credentials failed; signing with the current ones \
                             until they expire"
                        );
                        cached.retry_not_before = Some(Instant::now() + RETRY_FAILED_REFRESH_AFTER);
                        Ok(still_valid)
                    }
                    None => Err(error),
                }
            }
        }
    }

    /// This cache as a credentials provider, for the SDK client.
    pub fn as_provider(self: &Arc<Self>) -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(Shared(self.clone()))
    }

    /// Forgets the cached credentials, after the service said they are expired or unknown.
    pub fn invalidate(&self) {
        *self.cached.write().expect("credentials lock") = Cached::default();
    }

    fn usable(&self, now: SystemTime) -> Option<Credentials> {
        let cached = self.cached.read().expect("credentials lock");
        let credentials = cached.credentials.as_ref()?;
        let due = match credentials.expiry() {
            Some(expiry) => now + REFRESH_BEFORE_EXPIRY >= expiry,
            None => false,
        };
        let waiting_after_failure = cached
            .retry_not_before
            .is_some_and(|not_before| Instant::now() < not_before);
        (!due || (waiting_after_failure && !expired(credentials, now))).then(|| credentials.clone())
    }
}

#[derive(Debug)]
struct Shared(Arc<CredentialsCache>);

impl ProvideCredentials for Shared {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(self.0.get())
    }
}

impl std::fmt::Debug for CredentialsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsCache").finish_non_exhaustive()
    }
}

fn expired(credentials: &Credentials, now: SystemTime) -> bool {
    credentials.expiry().is_some_and(|expiry| now >= expiry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::future::ProvideCredentials as ProvideFuture;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A provider that hands out credentials expiring `lifetime` from now, or fails once told
    /// to; its clones share the count and the switch, so a test keeps one to look at.
    #[derive(Debug, Clone)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        lifetime: Duration,
        fail: Arc<AtomicBool>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> ProvideFuture<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail.load(Ordering::SeqCst) {
                return ProvideFuture::ready(Err(CredentialsError::provider_error("STS is down")));
            }
            ProvideFuture::ready(Ok(Credentials::new(
                format!("AKID{n}"),
                "secret",
                Some("token".into()),
                Some(SystemTime::now() + self.lifetime),
                "test",
            )))
        }
    }

    fn cache(lifetime: Duration) -> (CredentialsCache, Counting) {
        let provider = Counting {
            calls: Arc::default(),
            lifetime,
            fail: Arc::default(),
        };
        let shared = SharedCredentialsProvider::new(provider.clone());
        (CredentialsCache::new(shared), provider)
    }

    #[tokio::test]
    async fn credentials_far_from_expiry_are_fetched_once() {
        let (cache, provider) = cache(Duration::from_secs(3600));
        for _ in 0..5 {
            assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
        }
        assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn credentials_inside_the_refresh_window_are_fetched_again() {
        let (cache, provider) = cache(REFRESH_BEFORE_EXPIRY - Duration::from_secs(1));
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID2");
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_valid_credentials_and_waits_before_asking_again() {
        let (cache, provider) = cache(REFRESH_BEFORE_EXPIRY - Duration::from_secs(1));
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
        provider.fail.store(true, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID1");
        assert_eq!(
            provider.calls.load(Ordering::SeqCst),
            2,
            "the provider is not asked again right after it failed"
        );
    }

    #[tokio::test]
    async fn a_failed_fetch_without_valid_credentials_is_an_error() {
        let (cache, provider) = cache(Duration::from_secs(3600));
        provider.fail.store(true, Ordering::SeqCst);
        assert!(cache.get().await.is_err());
        provider.fail.store(false, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID2");
    }

    #[tokio::test]
    async fn invalidated_credentials_are_fetched_again() {
        let (cache, provider) = cache(Duration::from_secs(3600));
        cache.get().await.unwrap();
        cache.invalidate();
        assert_eq!(cache.get().await.unwrap().access_key_id(), "AKID2");
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    }
}
