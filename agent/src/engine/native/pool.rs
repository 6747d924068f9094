//! One fixed pool of threads for the engine's parallel sections (a token's decode has ~120
//! of them, a few microseconds each). No thread per request, no thread per matmul.
//!
//! A section is split into `threads()` shares that whoever is free claims, the caller
//! included: on a CPU shared with other work (other agents, a test suite, a noisy
//! neighbour) a worker that is not running leaves its share to the caller instead of
//! stalling the section for a scheduler slice. Waiting threads spin briefly, then yield the
//! core (so that the thread they wait for can run on it), then park: an idle agent uses no
//! CPU, a busy machine is not made busier by spinning.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Busy-wait iterations (of a pause) before a waiting thread starts yielding its core.
const SPIN: u32 = 2_000;
/// How long an idle worker keeps yielding for the next section before it parks: a token's
/// sections follow each other within microseconds, the next token's within a millisecond.
const YIELD_FOR: Duration = Duration::from_millis(2);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per section, after its job and counters are set.
    generation: AtomicUsize,
    /// The current section's job, lifetime-erased: valid until `done` reaches the share
    /// count.
    job: Mutex<Option<JobPtr>>,
    /// The next share to claim; at or past the share count, none is left.
    next: AtomicUsize,
    /// Shares finished in the current section.
    done: AtomicUsize,
    shares: usize,
    /// A panic in a worker's share, handed to the caller of `run`.
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    park: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is Sync and outlives every use (`run` waits for every claimed share).
unsafe impl Send for JobPtr {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// `threads` in all, the caller included (1 means no workers).
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            // Nothing to claim until the first section.
            next: AtomicUsize::new(threads),
            done: AtomicUsize::new(threads),
            shares: threads,
            panicked: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .filter_map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("engine-{index}"))
                    .spawn(move || worker(&shared))
                    .ok()
            })
            .collect();
        Pool { shared, workers }
    }

    /// The number of shares a section is split into (each index in 0..threads() is run
    /// exactly once, on whichever thread claims it).
    pub fn threads(&self) -> usize {
        self.shared.shares
    }

    /// Run `job(i)` for every share index i in 0..threads(); returns when all have
    /// finished.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let s = &self.shared;
        if self.workers.is_empty() {
            (0..s.shares).for_each(job);
            return;
        }
        // SAFETY (lifetime erasure): the pointer is cleared before this function returns,
        // and it returns only after every claimed share has finished with it.
        let erased: *const Job = unsafe { std::mem::transmute(job) };
        if let Ok(mut slot) = s.job.lock() {
            *slot = Some(JobPtr(erased));
        }
        // The job is in place before any share can be claimed; `done` is reset before
        // `next`, so every share claimed from here counts toward this section.
        s.done.store(0, Ordering::SeqCst);
        s.next.store(0, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.park.lock();
            s.wake.notify_all();
        }
        // Claim shares like any worker; if one of ours panics, still wait for the shares
        // others claimed before the job's frame goes away, then let the panic continue.
        let ours = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while let Some(i) = claim(s) {
                job(i);
                s.done.fetch_add(1, Ordering::Release);
            }
        }));
        if ours.is_err() {
            // The share that panicked never counted itself; the shares left are claimed
            // here and dropped, so that no thread starts them.
            s.done.fetch_add(1, Ordering::Release);
            while let Some(_abandoned) = claim(s) {
                s.done.fetch_add(1, Ordering::Release);
            }
        }
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < s.shares {
            backoff(&mut spins);
        }
        if let Ok(mut slot) = s.job.lock() {
            *slot = None;
        }
        let theirs = s.panicked.lock().ok().and_then(|mut p| p.take());
        if let Some(panic) = ours.err().or(theirs) {
            std::panic::resume_unwind(panic);
        }
    }
}

/// The next unclaimed share of the current section, if any.
fn claim(s: &Shared) -> Option<usize> {
    let i = s.next.fetch_add(1, Ordering::AcqRel);
    (i < s.shares).then_some(i)
}

/// One step of waiting: a pause while `spins` is young, a yielded core after.
fn backoff(spins: &mut u32) {
    if *spins < SPIN {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        let mut yielding_since: Option<Instant> = None;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            // Spin, then yield for a while (timed from the first yield), then park.
            if spins < SPIN || yielding_since.get_or_insert_with(Instant::now).elapsed() < YIELD_FOR
            {
                backoff(&mut spins);
                continue;
            }
            // Park: announce it first, then re-check under the lock (see `run`).
            let Ok(guard) = s.park.lock() else { return };
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let guard = s
                .wake
                .wait_while(guard, |_| {
                    s.generation.load(Ordering::SeqCst) == seen
                        && !s.shutdown.load(Ordering::SeqCst)
                })
                .ok();
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            spins = 0;
            yielding_since = None;
        }
        seen = s.generation.load(Ordering::Acquire);
        while let Some(i) = claim(s) {
            // A claimed share keeps `run` waiting, so the job it reads is this section's.
            let job = s.job.lock().ok().and_then(|slot| *slot);
            if let Some(JobPtr(job)) = job {
                // SAFETY: `run` keeps the job alive until `done` counts this share, below.
                let job = unsafe { &*job };
                // A panic must not leave the caller waiting for ever: it is handed over.
                if let Err(panic) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(i)))
                {
                    if let Ok(mut slot) = s.panicked.lock() {
                        slot.get_or_insert(panic);
                    }
                }
            }
            s.done.fetch_add(1, Ordering::Release);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.park.lock();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The part of `0..n` that thread `index` of `threads` takes, in multiples of `align`.
pub fn share(n: usize, index: usize, threads: usize, align: usize) -> std::ops::Range<usize> {
    let units = n.div_ceil(align);
    let start = (units * index / threads * align).min(n);
    let end = (units * (index + 1) / threads * align).min(n);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_section_and_shares_cover_the_range() {
        let pool = Pool::new(3);
        let hits = AtomicUsize::new(0);
        for _ in 0..1000 {
            pool.run(&|i| {
                hits.fetch_add(1 << (8 * i), Ordering::Relaxed);
            });
        }
        assert_eq!(
            hits.load(Ordering::Relaxed),
            1000 * (1 + (1 << 8) + (1 << 16))
        );
        // After parking, the next section still runs everywhere.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 3);
        let mut covered = vec![0; 101];
        for t in 0..3 {
            for i in share(101, t, 3, 4) {
                covered[i] += 1;
            }
        }
        assert!(covered.iter().all(|c| *c == 1));
    }

    #[test]
    fn pools_oversubscribing_the_cpu_still_run_every_share_once() {
        // Eight pools of four threads at once: far more threads than this machine's cores,
        // so shares are claimed by whoever runs (often the caller).
        let handles: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    let pool = Pool::new(4);
                    let hits: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
                    for _ in 0..2000 {
                        pool.run(&|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    hits.iter()
                        .map(|h| h.load(Ordering::Relaxed))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("pool thread"), vec![2000; 4]);
        }
    }

    #[test]
    fn a_panicking_share_reaches_the_caller_and_the_pool_keeps_working() {
        let pool = Pool::new(3);
        for bad in 0..3 {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(&|i| {
                    if i == bad {
                        panic!("share {i}");
                    }
                })
            }));
            // Whichever thread ran the share, the panic reaches the caller.
            assert!(caught.is_err(), "share {bad}'s panic was lost");
            let n = AtomicUsize::new(0);
            pool.run(&|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 3);
        }
    }
}
