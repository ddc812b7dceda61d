//! The one way kiln spawns a task: [`spawn`] names it, runs it in a tracing span of that name,
//! logs how it ended (returned, aborted, panicked) and returns a [`TaskHandle`] that aborts the
//! task when dropped, so that no task outlives whoever started it unless it says so with
//! [`TaskHandle::detach`].
//!
//! [`Gate`] is the other half of a clean stop: requests enter it while it is open; closing it
//! refuses new ones and waits, up to a deadline, for those inside to leave.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument as _;

/// A running task; dropping the handle aborts it. Awaiting it gives the task's output.
#[must_use = "dropping a TaskHandle aborts the task; call .detach() to let it run"]
pub struct TaskHandle<T> {
    name: Cow<'static, str>,
    inner: Option<JoinHandle<T>>,
}

/// Logs how a task ended, from inside the task: on completion, on abort (its future is
/// dropped unfinished) and on panic (dropped while unwinding).
struct Ending {
    name: Cow<'static, str>,
    done: bool,
}

impl Drop for Ending {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(task = %self.name, "task panicked");
        } else if self.done {
            tracing::debug!(task = %self.name, "task ended");
        } else {
            tracing::debug!(task = %self.name, "task aborted");
        }
    }
}

fn wrap<F>(name: Cow<'static, str>, fut: F) -> impl Future<Output = F::Output> + Send + 'static
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::info_span!("task", name = %name);
    async move {
        let mut ending = Ending { name, done: false };
        let out = fut.await;
        ending.done = true;
        out
    }
    .instrument(span)
}

/// Spawns `fut` on the current runtime as task `name`.
pub fn spawn<F>(name: impl Into<Cow<'static, str>>, fut: F) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let name = name.into();
    let inner = tokio::spawn(wrap(name.clone(), fut));
    TaskHandle { name, inner: Some(inner) }
}

/// [`spawn`] on a given runtime (for callers outside it, such as the CLI's main thread).
pub fn spawn_on<F>(runtime: &tokio::runtime::Handle, name: impl Into<Cow<'static, str>>, fut: F) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let name = name.into();
    let inner = runtime.spawn(wrap(name.clone(), fut));
    TaskHandle { name, inner: Some(inner) }
}

impl<T> TaskHandle<T> {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_finished(&self) -> bool {
        self.inner.as_ref().is_none_or(|h| h.is_finished())
    }

    pub fn abort(&self) {
        if let Some(h) = &self.inner {
            h.abort();
        }
    }

    /// Lets the task run on after the handle is gone. Only for tasks whose end is tied to
    /// something else (an endpoint they serve until it closes); say which at the call.
    pub fn detach(mut self) {
        self.inner.take();
    }
}

impl<T> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        self.abort();
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.inner.as_mut() {
            Some(h) => Pin::new(h).poll(cx),
            // Only `detach` empties it, and it consumes the handle.
            None => Poll::Pending,
        }
    }
}

/// Admission of requests, for a draining stop: [`Gate::enter`] while open, [`Gate::drain`]
/// to close it and wait for those inside.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Default)]
struct GateInner {
    closed: AtomicBool,
    inside: AtomicUsize,
    left: tokio::sync::Notify,
}

/// Held by a request while it runs; leaving the gate is dropping it.
pub struct Pass {
    inner: Arc<GateInner>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if self.inner.inside.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.left.notify_waiters();
        }
    }
}

impl Gate {
    /// A pass for one request; `None` once the gate is closed (the caller refuses the request).
    pub fn enter(&self) -> Option<Pass> {
        self.inner.inside.fetch_add(1, Ordering::AcqRel);
        let pass = Pass { inner: self.inner.clone() };
        // Checked after counting in: a drain that closed meanwhile either sees this request or
        // this request sees it closed.
        if self.inner.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(pass)
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Requests inside now.
    pub fn inside(&self) -> usize {
        self.inner.inside.load(Ordering::Acquire)
    }

    /// Closes the gate and waits up to `deadline` for the requests inside to finish; true when
    /// they all did.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.inner.closed.store(true, Ordering::Release);
        let wait = async {
            loop {
                let left = self.inner.left.notified();
                tokio::pin!(left);
                left.as_mut().enable();
                if self.inside() == 0 {
                    return;
                }
                left.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_aborts_and_detach_lets_it_run() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t = tx.clone();
        let h = spawn("sleeper", async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let _ = t.send("woke");
        });
        assert_eq!(h.name(), "sleeper");
        drop(h);
        let t = tx.clone();
        spawn("detached", async move {
            let _ = t.send("detached ran");
        })
        .detach();
        assert_eq!(rx.recv().await, Some("detached ran"));
        assert_eq!(spawn("answer", async { 42 }).await.unwrap(), 42);
        drop(tx);
        // The aborted task dropped its sender without sending.
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_panic_is_reported_to_whoever_awaits() {
        let h = spawn("panics", async { panic!("boom") });
        assert!(h.await.unwrap_err().is_panic());
    }

    /// A request in flight when the drain starts finishes; one that arrives during the drain is
    /// refused; the drain returns once the first has left.
    #[tokio::test]
    async fn a_request_in_flight_completes_during_drain_and_a_new_one_is_refused() {
        let gate = Gate::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let pass = gate.enter().expect("open");
        let inflight = spawn("in-flight request", async move {
            let _pass = pass;
            let _ = released.await;
            "answered"
        });
        let draining = {
            let gate = gate.clone();
            spawn("drain", async move { gate.drain(Duration::from_secs(10)).await })
        };
        while !gate.is_closed() {
            tokio::task::yield_now().await;
        }
        assert!(gate.enter().is_none(), "a request arriving during the drain is refused");
        assert!(!draining.is_finished(), "the drain waits for the request inside");
        release.send(()).unwrap();
        assert_eq!(inflight.await.unwrap(), "answered");
        assert!(draining.await.unwrap(), "every request inside finished before the deadline");
        // Past its deadline, a drain gives up on what is still inside.
        let gate = Gate::default();
        let _stuck = gate.enter().unwrap();
        assert!(!gate.drain(Duration::from_millis(20)).await);
    }
}
