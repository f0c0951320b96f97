//! The memory budget of OTLP requests being decoded and cut into records, shared by both
//! protocols: a request is admitted by its size before it is decoded, so that what requests
//! hold at once is bounded by `receivers.otlp.request_memory_limit_mib`, whatever clients send.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bytes held while a request is decoded and encoded, per byte of the request as decoded
/// (decompressed). The worst case measured (`tests/test_memory.py`): a 19.8 MB request of
/// 600k one-span traces of 33 bytes each raised peak RSS by 18 to 21 times its size: the
/// decoded spans (264 bytes each), then a record per trace, plus what the allocator had not
/// given back yet. 32 leaves a margin; typical spans of a few hundred bytes cost far less.
pub const BYTES_HELD_PER_REQUEST_BYTE: u64 = 32;

/// Notified as a request that can move the resident set is admitted ([`NOTABLE_BYTES`]): what
/// watches the process's memory sleeps until the next one once the process is small and still
/// (a permit stored meanwhile wakes it at once).
pub static REQUEST_ADMITTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A request is notable when it is counted at this much, or when the requests under way are,
/// with it: an eighth of the resident set below which memory is kept longer
/// (`allocator.rs`). Requests one at a time below it cannot move that far, and waking the
/// watcher after each of them (every 100 ms at 5k spans/s) was a fifth of the exporter's
/// wake-ups there.
pub const NOTABLE_BYTES: u64 = 8 << 20;

/// Counted in KiB, so that a `u32` of semaphore permits covers any limit the table allows.
const UNIT: u64 = 1024;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No room before the deadline: retry later.
    Full,
    /// More than the whole budget: it can never be admitted.
    LargerThanLimit { cost_mib: u64, limit_mib: u64 },
}

/// Requests at least this large (decompressed) are decoded and cut into records with the
/// worker thread handed over to the other requests meanwhile ([`MemoryPermit::run`]): a 1 MiB
/// request is milliseconds of work; the largest allowed, seconds.
const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// Room held for one request; dropping it gives the room back.
#[derive(Debug)]
pub struct MemoryPermit {
    room: OwnedSemaphorePermit,
    request_bytes: usize,
    in_use: Gauge,
}

impl Drop for MemoryPermit {
    fn drop(&mut self) {
        self.in_use.dec_by(self.counted_bytes());
    }
}

impl MemoryPermit {
    /// What the request is counted at, in bytes: its units of room.
    fn counted_bytes(&self) -> i64 {
        (self.room.num_permits() as u64 * UNIT) as i64
    }

    /// Runs `work`, CPU-bound work on this permit's request (decoding it, cutting it into
    /// records). On a large request, the worker thread's other tasks move to another thread
    /// first: with one worker (`service.worker_threads`), the health checks, the other requests
    /// and the producer would otherwise wait until the large request is cut up.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let on_workers = Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
        if self.request_bytes >= LARGE_REQUEST_BYTES && on_workers {
            tokio::task::block_in_place(work)
        } else {
            work()
        }
    }
}

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    limit_units: u64,
    /// Bytes the admitted requests are counted at, for `/metrics`.
    in_use: Gauge,
}

impl MemoryBudget {
    pub fn new(limit_mib: u64, in_use: Gauge) -> Self {
        let limit_units = limit_mib * 1024 * 1024 / UNIT;
        MemoryBudget {
            permits: Arc::new(Semaphore::new(limit_units as usize)),
            limit_units,
            in_use,
        }
    }

    /// What a request of `request_bytes` (decompressed) is counted at, in units.
    fn cost(request_bytes: usize) -> u64 {
        (request_bytes as u64 * BYTES_HELD_PER_REQUEST_BYTE)
            .div_ceil(UNIT)
            .max(1)
    }

    /// Whether a request counted at `cost` units, with those under way, reaches
    /// [`NOTABLE_BYTES`].
    fn notable(&self, cost: u64) -> bool {
        let in_use = self
            .limit_units
            .saturating_sub(self.permits.available_permits() as u64);
        (cost + in_use) * UNIT >= NOTABLE_BYTES
    }

    /// Waits until `deadline` at most for room for a request of `request_bytes`.
    pub async fn admit(
        &self,
        request_bytes: usize,
        deadline: Instant,
    ) -> Result<MemoryPermit, Refusal> {
        let cost = Self::cost(request_bytes);
        if self.notable(cost) {
            REQUEST_ADMITTED.notify_one();
        }
        if cost > self.limit_units {
            return Err(Refusal::LargerThanLimit {
                cost_mib: (cost * UNIT).div_ceil(1024 * 1024),
                limit_mib: self.limit_units * UNIT / (1024 * 1024),
            });
        }
        let acquire = self.permits.clone().acquire_many_owned(cost as u32);
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(room)) => {
                let permit = MemoryPermit {
                    room,
                    request_bytes,
                    in_use: self.in_use.clone(),
                };
                self.in_use.inc_by(permit.counted_bytes());
                Ok(permit)
            }
            Ok(Err(_)) | Err(_) => Err(Refusal::Full),
        }
    }

    /// Room not taken right now, in bytes (for tests and metrics).
    pub fn available_bytes(&self) -> u64 {
        self.permits.available_permits() as u64 * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn requests_wait_for_room_and_give_it_back() {
        let budget = MemoryBudget::new(32, Gauge::default());
        let soon = || Instant::now() + Duration::from_millis(20);
        // 32 MiB of budget: a 1 MiB request is counted at 32 MiB.
        let first = budget.admit(1024 * 1024, soon()).await.unwrap();
        assert_eq!(budget.available_bytes(), 0);
        assert_eq!(budget.in_use.get(), 32 * 1024 * 1024);
        assert_eq!(budget.admit(1, soon()).await.unwrap_err(), Refusal::Full);
        drop(first);
        assert_eq!(budget.available_bytes(), 32 * 1024 * 1024);
        assert_eq!(budget.in_use.get(), 0);
        let _small = budget.admit(1, soon()).await.unwrap();
        assert_eq!(budget.available_bytes(), 32 * 1024 * 1024 - 1024);
    }

    #[tokio::test]
    async fn only_requests_that_can_move_the_resident_set_are_notable() {
        let budget = MemoryBudget::new(64, Gauge::default());
        let soon = || Instant::now() + Duration::from_millis(20);
        let units = |bytes: usize| MemoryBudget::cost(bytes);
        // 100 KiB, a batch of 512 spans, is counted at 3.2 MiB: not notable alone.
        assert!(!budget.notable(units(100 * 1024)));
        assert!(budget.notable(units(256 * 1024)));
        // Two under way make a third notable.
        let _a = budget.admit(100 * 1024, soon()).await.unwrap();
        assert!(!budget.notable(units(100 * 1024)));
        let _b = budget.admit(100 * 1024, soon()).await.unwrap();
        assert!(budget.notable(units(100 * 1024)));
    }

    /// The documented factor is this one, and the default budget takes the largest request
    /// the default HTTP body limit lets in.
    #[test]
    fn the_settings_table_states_this_factor_and_a_default_that_fits_the_body_limit() {
        use crate::config::settings::{self, Group};
        let setting = settings::setting(Group::Receiver, "request_memory_limit_mib");
        let stated = format!("counted at {BYTES_HELD_PER_REQUEST_BYTE} times");
        assert!(
            setting.description.contains(&stated),
            "{}",
            setting.description
        );
        let limit_mib = settings::range(Group::Receiver, "request_memory_limit_mib").0;
        let body = settings::range(Group::Receiver, "protocols.http.max_request_body_size").0;
        assert!(body * BYTES_HELD_PER_REQUEST_BYTE <= limit_mib * 1024 * 1024);
    }

    #[tokio::test]
    async fn a_request_larger_than_the_whole_budget_is_refused_at_once() {
        let budget = MemoryBudget::new(16, Gauge::default());
        let refusal = budget
            .admit(2 * 1024 * 1024, Instant::now() + Duration::from_secs(3600))
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::LargerThanLimit {
                cost_mib: 64,
                limit_mib: 16
            }
        );
    }
}
