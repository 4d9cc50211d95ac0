//! Delivery results: a future with a blocking `wait`, or a callback.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::record::{ProduceError, RecordMetadata};

/// The result of producing one record.
pub type DeliveryResult = Result<RecordMetadata, ProduceError>;

/// A delivery callback, called once on the producer's network thread. Keep it short.
pub type DeliveryCallback = Box<dyn FnOnce(DeliveryResult) + Send>;

#[derive(Default)]
struct SlotState {
    result: Option<DeliveryResult>,
    waker: Option<Waker>,
}

/// Where the network thread puts a record's result.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl Slot {
    fn set(&self, r: DeliveryResult) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.result = Some(r);
            s.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Where a record's result goes.
enum Target {
    Slot(Arc<Slot>),
    Callback(DeliveryCallback),
}

/// How a record's result is handed back: exactly once. A completion dropped without
/// [`complete`](Completion::complete) (a bug, or the network thread unwinding from a panic)
/// completes with [`ProduceError::Closed`](super::ProduceError::Closed), so no future waits
/// forever; a callback is not called while the thread is panicking (it could panic again and
/// abort), it is dropped.
pub(crate) struct Completion(Option<Target>);

impl Completion {
    /// A completion that calls `cb`.
    pub(crate) fn callback(cb: DeliveryCallback) -> Self {
        Completion(Some(Target::Callback(cb)))
    }

    pub(crate) fn complete(mut self, r: DeliveryResult) {
        match self.0.take() {
            Some(Target::Slot(s)) => s.set(r),
            Some(Target::Callback(cb)) => cb(r),
            None => {}
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        match self.0.take() {
            Some(Target::Slot(s)) => s.set(Err(super::ProduceError::Closed)),
            Some(Target::Callback(cb)) if !std::thread::panicking() => {
                cb(Err(super::ProduceError::Closed))
            }
            _ => {}
        }
    }
}

/// The pending result of [`Producer::send`](super::Producer::send): a `Future`, or block on it
/// with [`wait`](DeliveryFuture::wait).
///
/// It resolves exactly once, to the record's partition and offset, or to a [`ProduceError`]
/// (at the latest when `delivery.timeout.ms` has passed since `send`). As a `Future` it works on
/// any executor: the network thread wakes the task's waker when the result is set (see
/// `tests/metrics_producer.rs`, which awaits deliveries and failures on a minimal executor).
pub struct DeliveryFuture {
    slot: Arc<Slot>,
}

impl DeliveryFuture {
    pub(crate) fn new() -> (Self, Completion) {
        let slot = Arc::new(Slot::default());
        (
            DeliveryFuture { slot: slot.clone() },
            Completion(Some(Target::Slot(slot))),
        )
    }

    /// Blocks until the record is delivered or has failed.
    ///
    /// # Errors
    /// The [`ProduceError`] the record failed with.
    pub fn wait(self) -> DeliveryResult {
        let mut s = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = s.result.take() {
                return r;
            }
            s = self
                .slot
                .ready
                .wait(s)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks for at most `timeout`; `None` if the result is not there by then. The future stays
    /// usable either way: the result is copied out, not taken.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<DeliveryResult> {
        let deadline = Instant::now() + timeout;
        let mut s = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = &s.result {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            s = self
                .slot
                .ready
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Future for DeliveryFuture {
    type Output = DeliveryResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self
            .slot
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::ProduceError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_dropped_completion_resolves_its_future_with_closed() {
        let (future, completion) = DeliveryFuture::new();
        drop(completion);
        assert_eq!(
            future.wait_timeout(Duration::ZERO),
            Some(Err(ProduceError::Closed))
        );
    }

    #[test]
    fn a_completion_completes_once() {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let c = Completion::callback(Box::new(|r| {
            assert!(r.is_ok());
            CALLS.fetch_add(1, Ordering::SeqCst);
        }));
        c.complete(Ok(RecordMetadata {
            partition: 0,
            offset: 7,
        }));
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        let (future, completion) = DeliveryFuture::new();
        completion.complete(Ok(RecordMetadata {
            partition: 1,
            offset: 2,
        }));
        assert_eq!(
            future.wait(),
            Ok(RecordMetadata {
                partition: 1,
                offset: 2
            })
        );
    }

    #[test]
    fn a_dropped_callback_completion_is_called_with_closed() {
        static CLOSED: AtomicUsize = AtomicUsize::new(0);
        drop(Completion::callback(Box::new(|r| {
            if r == Err(ProduceError::Closed) {
                CLOSED.fetch_add(1, Ordering::SeqCst);
            }
        })));
        assert_eq!(CLOSED.load(Ordering::SeqCst), 1);
    }
}
