//! The memory allocator and how it gives memory back: mimalloc, no transparent huge pages,
//! and freed memory kept for reuse while the process is small, given back sooner the larger
//! it grows.

use std::cell::Cell;
use std::time::{Duration, Instant};

use kinesis_exporter::ingress::memory::REQUEST_ADMITTED;

/// Every request is decoded, cut into per-trace records and encoded again: allocation-heavy
/// work that glibc's allocator made a third of the CPU at full load (make bench-e2e, perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process. mimalloc asks for them on its arenas, and each
/// page a collection gave back then came back as a 2 MiB page zeroed whole on the next fault:
/// a quarter of the CPU at 5k spans/s (perf), and twice the RSS, for no gain at full speed
/// (make bench-e2e). mimalloc's own option is read when it starts, before main; the process
/// flag covers the arenas it already has.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// While the resident set is below this, freed pages are kept [`PURGE_DELAY_SMALL`] before they
/// are given back; above it, [`PURGE_DELAY_LARGE`].
const SMALL_RESIDENT_SET: u64 = 64 << 20;
/// Above this, freed pages are given back almost at once. At full speed the resident set saws
/// between about 60 and 180 MiB as freed memory piles up between purges; giving it back at once
/// only past this point cut the peak to about 130 MiB at no measurable cost in CPU, where doing so
/// from 96 MiB cost a tenth more CPU per span (perf harness, full speed, 3 runs each).
const LARGE_RESIDENT_SET: u64 = 128 << 20;
/// At a few thousand spans a second a request's buffers are freed and needed again about every
/// 100 ms: given back sooner, each page was faulted in and zeroed again (a fifth of the CPU at
/// 5k spans/s, perf). A second of reuse costs at most the small resident set.
const PURGE_DELAY_SMALL: Duration = Duration::from_millis(1000);
/// At full speed, memory is given back 100 ms after it is freed (mimalloc's default: 10 ms, but
/// only while the thread that freed it allocates again, so a busy worker kept it): peak RSS
/// 140 -> 109 MiB for 13% more CPU per span; 0 ms gave 86 MiB for 35% more (make bench-e2e).
const PURGE_DELAY_LARGE: Duration = Duration::from_millis(100);
/// Past [`LARGE_RESIDENT_SET`]: the shortest delay, not none. With a delay of 0 mimalloc purges
/// what is freed from then on, but stops purging what it had scheduled while the delay was
/// longer, so a resident set above the threshold after one large request stayed there for good
/// (134-240 MiB, minutes after the request; mimalloc v3 `mi_arenas_try_purge`).
const PURGE_DELAY_LARGEST: Duration = Duration::from_millis(1);
/// How often the resident set is looked at (a read of /proc/self/statm) while the exporter is
/// busy: at full speed it grows by about 60 MiB in half a second.
const RESIDENT_SET_CHECK: Duration = Duration::from_millis(100);

/// `mi_option_purge_delay` in mimalloc v2's option enum (libmimalloc-sys names no constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn set_purge_delay(delay: Duration) {
    let millis = delay.as_millis() as std::ffi::c_long;
    // SAFETY: sets a process-wide option, read at each purge decision.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, millis) };
}

/// The purge delay for a resident set of `bytes`.
fn purge_delay_for(bytes: u64) -> Duration {
    if bytes < SMALL_RESIDENT_SET {
        PURGE_DELAY_SMALL
    } else if bytes < LARGE_RESIDENT_SET {
        PURGE_DELAY_LARGE
    } else {
        PURGE_DELAY_LARGEST
    }
}

/// Reads the process's resident set (Linux). The file stays open: opening it anew each time
/// (the path lookup) was 3% of the CPU at 5k spans/s (perf).
struct ResidentSet {
    statm: std::fs::File,
    page_size: u64,
}

impl ResidentSet {
    fn open() -> Option<Self> {
        // SAFETY: sysconf reads a constant of the system.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        let statm = std::fs::File::open("/proc/self/statm").ok()?;
        Some(ResidentSet { statm, page_size })
    }

    /// In bytes; None where it cannot be read.
    fn bytes(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let len = self.statm.read_at(&mut buf, 0).ok()?;
        let statm = std::str::from_utf8(&buf[..len]).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * self.page_size)
    }
}

/// Keeps the purge delay matched to the resident set, for as long as the runtime runs. Where
/// the resident set cannot be read, memory is given back soon. Looks every
/// [`RESIDENT_SET_CHECK`] while requests that can move it come (large ones, or many at once:
/// `NOTABLE_BYTES`), while it moves (one large request is seconds of work) or while it is
/// large (the wake-ups let idle workers collect what they freed). Once it is small and still
/// and no such request comes, nothing runs until the next one: ten wake-ups a second of an
/// idle exporter were a third of what it cost at rest (perf).
pub async fn match_purge_delay_to_resident_set() {
    use futures::FutureExt;
    let resident_set = ResidentSet::open();
    let mut current = None;
    let mut last_look = None;
    loop {
        let bytes = resident_set.as_ref().and_then(ResidentSet::bytes);
        let delay = bytes.map_or(PURGE_DELAY_LARGE, purge_delay_for);
        if current != Some(delay) {
            set_purge_delay(delay);
            current = Some(delay);
        }
        // A permit stored since the last look means notable requests came.
        let requests_came = REQUEST_ADMITTED.notified().now_or_never().is_some();
        let still = bytes == std::mem::replace(&mut last_look, bytes);
        if !requests_came && still && bytes.is_some_and(|b| b < SMALL_RESIDENT_SET) {
            REQUEST_ADMITTED.notified().await;
        }
        tokio::time::sleep(RESIDENT_SET_CHECK).await;
    }
}

/// A worker thread's freed memory is collected at most this often.
const COLLECTION_INTERVAL: Duration = Duration::from_secs(1);

/// Gives back freed memory whose purge delay has passed once a worker thread goes idle, at most
/// once a second per thread: mimalloc purges only while the thread that freed the memory
/// allocates again, so an exporter gone idle after one huge request kept its peak RSS.
/// Memory freed moments ago stays for reuse (a forced collection gave it all back, and a
/// worker at a few thousand spans a second parks between requests: a third of its page
/// faults). `tests/test_memory.py` checks that RSS comes back down.
pub fn collect_freed_memory_when_idle() {
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let due = LAST.with(|last| match last.get() {
        Some(at) if at.elapsed() < COLLECTION_INTERVAL => false,
        _ => {
            last.set(Some(Instant::now()));
            true
        }
    });
    if due {
        // SAFETY: collects this thread's heap; callable from any thread at any time.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_process_keeps_freed_memory_longer() {
        assert_eq!(purge_delay_for(20 << 20), PURGE_DELAY_SMALL);
        assert_eq!(purge_delay_for(SMALL_RESIDENT_SET), PURGE_DELAY_LARGE);
        assert_eq!(purge_delay_for(LARGE_RESIDENT_SET), PURGE_DELAY_LARGEST);
        assert!(
            !PURGE_DELAY_LARGEST.is_zero(),
            "0 would strand what was scheduled"
        );
        assert!(PURGE_DELAY_SMALL > PURGE_DELAY_LARGE);
    }

    #[test]
    fn the_resident_set_of_this_process_is_read() {
        let resident_set = ResidentSet::open().expect("/proc/self/statm");
        let before = resident_set.bytes().expect("a first read");
        assert!(before > 1 << 20, "{before} bytes resident");
        // Read again from the same open file, it sees the process as it is now.
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = resident_set.bytes().expect("a second read");
        assert!(after >= before + (60 << 20), "{before} -> {after} bytes");
        drop(touched);
    }
}
