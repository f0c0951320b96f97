//! Acknowledgements: a caller that must know when its records are stored gives each one an
//! [`Ack`] from a [`Receipt`] and waits on the receipt. An ack is settled by the producer when
//! its record is stored or given up on; an ack dropped unsettled (a record lost with an
//! aborted task) counts as given up on, so a waiter never waits forever and never hears "stored"
//! for a record that was not.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    pending: AtomicUsize,
    /// Items (spans, data points, log records) in records refused for good.
    refused_items: AtomicU64,
    /// Items in records given up on for a reason that may pass (retries exhausted, shutdown).
    retry_items: AtomicU64,
    reason: Mutex<Option<String>>,
    settled: Notify,
}

impl Inner {
    fn settle(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    fn give_up(&self, items: u64, reason: &str, permanent: bool) {
        let counter = if permanent {
            &self.refused_items
        } else {
            &self.retry_items
        };
        counter.fetch_add(items, Ordering::AcqRel);
        self.reason
            .lock()
            .unwrap()
            .get_or_insert_with(|| reason.to_string());
        self.settle();
    }
}

/// What became of every record of a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every record is stored.
    Stored,
    /// Some records can never be stored (their items are refused for good); the rest are.
    Refused { items: u64, reason: String },
    /// Some records were given up on for a reason that may pass: the request should be sent
    /// again (what was stored of it is then stored twice).
    Retry { items: u64, reason: String },
}

/// The waiting side: hands out acks, then tells what became of them all.
#[derive(Default, Clone)]
pub struct Receipt {
    inner: Arc<Inner>,
}

impl Receipt {
    /// An ack for one record carrying `items` items.
    pub fn ack(&self, items: u64) -> Ack {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        Ack {
            inner: Some(self.inner.clone()),
            items,
        }
    }

    /// Waits until every ack handed out so far is settled.
    pub async fn settled(&self) -> Outcome {
        loop {
            let notified = self.inner.settled.notified();
            if self.inner.pending.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        let reason = || {
            self.inner
                .reason
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default()
        };
        let retry = self.inner.retry_items.load(Ordering::Acquire);
        let refused = self.inner.refused_items.load(Ordering::Acquire);
        if retry > 0 {
            Outcome::Retry {
                items: retry,
                reason: reason(),
            }
        } else if refused > 0 {
            Outcome::Refused {
                items: refused,
                reason: reason(),
            }
        } else {
            Outcome::Stored
        }
    }
}

/// One record's acknowledgement, settled exactly once.
pub struct Ack {
    inner: Option<Arc<Inner>>,
    items: u64,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack").field("items", &self.items).finish()
    }
}

impl Ack {
    /// The record is stored.
    pub fn stored(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.settle();
        }
    }

    /// The record is given up on; `permanent` when sending it again can never succeed.
    pub fn dropped(mut self, reason: &str, permanent: bool) {
        if let Some(inner) = self.inner.take() {
            inner.give_up(self.items, reason, permanent);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.give_up(
                self.items,
                "the record was lost before it was stored",
                false,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_receipt_settles_when_every_ack_is_settled() {
        let receipt = Receipt::default();
        let (a, b) = (receipt.ack(3), receipt.ack(2));
        let waiter = tokio::spawn({
            let receipt = receipt.clone();
            async move { receipt.settled().await }
        });
        a.stored();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one record is still pending");
        b.stored();
        assert_eq!(waiter.await.unwrap(), Outcome::Stored);
    }

    #[tokio::test]
    async fn refusals_count_items_and_a_retryable_drop_wins() {
        let receipt = Receipt::default();
        receipt.ack(4).dropped("permanent_error", true);
        receipt.ack(1).stored();
        assert_eq!(
            receipt.settled().await,
            Outcome::Refused {
                items: 4,
                reason: "permanent_error".into()
            }
        );
        receipt.ack(2).dropped("retries_exhausted", false);
        assert!(matches!(
            receipt.settled().await,
            Outcome::Retry { items: 2, .. }
        ));
    }

    #[tokio::test]
    async fn an_ack_lost_unsettled_is_a_retry_never_a_silent_success() {
        let receipt = Receipt::default();
        drop(receipt.ack(7));
        assert!(matches!(
            receipt.settled().await,
            Outcome::Retry { items: 7, .. }
        ));
        assert_eq!(Receipt::default().settled().await, Outcome::Stored);
    }
}
