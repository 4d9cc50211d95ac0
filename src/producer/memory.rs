//! `buffer.memory` accounting with `max.block.ms` back-pressure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::record::ProduceError;

/// Bytes of records accepted and not yet completed, bounded by `buffer.memory`. `send` reserves
/// (blocking up to `max.block.ms` when full); the network thread releases when records complete.
pub(crate) struct BufferPool {
    total: usize,
    used: AtomicUsize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
}

impl BufferPool {
    pub(crate) fn new(total: usize) -> Self {
        BufferPool {
            total,
            used: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    fn try_reserve(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.total {
                return false;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Reserves `n` bytes, waiting at most `max_block`.
    ///
    /// # Errors
    /// [`ProduceError::RecordTooLarge`] when `n` exceeds the whole pool;
    /// [`ProduceError::BufferExhausted`] when the wait ran out.
    pub(crate) fn reserve(&self, n: usize, max_block: Duration) -> Result<(), ProduceError> {
        if n > self.total {
            return Err(ProduceError::RecordTooLarge {
                size: n,
                limit: self.total,
            });
        }
        if self.try_reserve(n) {
            return Ok(());
        }
        let deadline = Instant::now() + max_block;
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let result = loop {
            if self.try_reserve(n) {
                break Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(ProduceError::BufferExhausted);
            }
            guard = self
                .freed
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Returns `n` bytes to the pool and wakes blocked senders.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, Ordering::AcqRel);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.freed.notify_all();
        }
    }

    /// Bytes in use.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn blocks_then_fails_after_max_block() {
        let p = BufferPool::new(100);
        p.reserve(80, Duration::ZERO).unwrap();
        let t = Instant::now();
        assert_eq!(
            p.reserve(30, Duration::from_millis(50)),
            Err(ProduceError::BufferExhausted)
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(matches!(
            p.reserve(101, Duration::ZERO),
            Err(ProduceError::RecordTooLarge { .. })
        ));
    }

    #[test]
    fn release_wakes_a_blocked_reserver() {
        let p = Arc::new(BufferPool::new(100));
        p.reserve(100, Duration::ZERO).unwrap();
        let q = p.clone();
        let h = std::thread::spawn(move || q.reserve(50, Duration::from_secs(30)));
        // The reserver either is already waiting or will find the space free: both end in Ok.
        p.release(60);
        assert_eq!(h.join().unwrap(), Ok(()));
        assert_eq!(p.used(), 90);
    }
}
