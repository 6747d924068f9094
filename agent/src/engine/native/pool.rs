//! One fixed pool of threads for the engine's parallel sections (a token's decode has ~120
//! of them, a few microseconds each). The caller runs a share itself, workers spin briefly
//! between sections (a token's matmuls follow each other closely) and park when idle, so
//! an idle agent uses no CPU. No thread per request, no thread per matmul.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// How long a worker spins for the next section before it parks (iterations of a pause).
const SPIN: u32 = 200_000;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per section; a worker runs each generation's job once.
    generation: AtomicUsize,
    /// The current section's job, lifetime-erased: valid until `pending` reaches 0.
    job: Mutex<Option<JobPtr>>,
    pending: AtomicUsize,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    park: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is Sync and outlives every use (`run` waits for all workers).
unsafe impl Send for JobPtr {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// `threads` in all, the caller included (1 means no workers).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads.max(1))
            .filter_map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("engine-{index}"))
                    .spawn(move || worker(&shared, index))
                    .ok()
            })
            .collect();
        Pool { shared, workers }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `job(i)` for every thread index i in 0..threads(), the caller taking 0; returns
    /// when all have finished.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            job(0);
            return;
        }
        let s = &self.shared;
        // SAFETY (lifetime erasure): the pointer is cleared before this function returns,
        // and it returns only after every worker has finished with it.
        let erased: *const Job = unsafe { std::mem::transmute(job) };
        if let Ok(mut slot) = s.job.lock() {
            *slot = Some(JobPtr(erased));
        }
        s.pending.store(self.workers.len(), Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.park.lock();
            s.wake.notify_all();
        }
        // The workers hold a pointer to `job`: even if our share panics, wait for them
        // before the job's frame goes away, then let the panic continue.
        let ours = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Ok(mut slot) = s.job.lock() {
            *slot = None;
        }
        if let Err(panic) = ours {
            std::panic::resume_unwind(panic);
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
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
        }
        seen = s.generation.load(Ordering::Acquire);
        let job = s.job.lock().ok().and_then(|slot| *slot);
        if let Some(JobPtr(job)) = job {
            // SAFETY: `run` keeps the job alive until `pending` reaches 0, below.
            let job = unsafe { &*job };
            // A panic must not leave the caller waiting forever.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index)));
        }
        s.pending.fetch_sub(1, Ordering::Release);
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
}
