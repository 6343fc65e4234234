//! Pieces of one file shared out over several connections, for
//! [`download_parallel`](crate::download_parallel) and
//! [`upload_parallel`](crate::upload_parallel): each connection takes the
//! next piece not yet taken (so a slow one takes fewer). A connection whose
//! piece fails transiently (after its own retries) hands the piece back and
//! stops; the others take it. A permanent failure ends the whole transfer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::resume::is_transient;
use crate::{Error, Result};

/// The pieces left, and how many are being worked on.
struct Queue {
    todo: VecDeque<usize>,
    in_flight: usize,
}

/// Works pieces `0..count` over `workers` at once, each worker one piece at
/// a time (`work(piece)` → the piece's bytes). `done(piece, bytes)` is called
/// for each finished piece, under one lock, so that a running total it keeps
/// never goes back. Returns once every piece is done, or with the error that
/// ended the transfer.
pub(crate) async fn share<W, Fut>(
    workers: Vec<W>,
    count: usize,
    done: impl Fn(usize, u64) + Send + Sync + 'static,
) -> Result<()>
where
    W: FnMut(usize) -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64>> + Send,
{
    // A connection that gives up puts its piece back; none stops while a
    // piece is still in flight elsewhere (it may come back).
    let queue = Arc::new(Mutex::new(Queue { todo: (0..count).collect(), in_flight: 0 }));
    let changed = Arc::new(Notify::new());
    let gave_up: Arc<Mutex<Option<Error>>> = Arc::default();
    let done = Arc::new(done);
    let mut tasks = tokio::task::JoinSet::new();
    for mut work in workers {
        let (queue, changed, gave_up, done) = (queue.clone(), changed.clone(), gave_up.clone(), done.clone());
        tasks.spawn(async move {
            while let Some(piece) = next_piece(&queue, &changed).await {
                let outcome = work(piece).await;
                let mut state = lock(&queue);
                state.in_flight -= 1;
                let result = match outcome {
                    Ok(bytes) => {
                        done(piece, bytes);
                        Ok(())
                    }
                    Err(e) if is_transient(&e) => {
                        state.todo.push_back(piece);
                        *lock(&gave_up) = Some(e);
                        Err(None)
                    }
                    Err(e) => Err(Some(e)),
                };
                drop(state);
                changed.notify_waiters();
                match result {
                    Ok(()) => {}
                    Err(None) => return Ok(()),
                    Err(Some(e)) => return Err(e),
                }
            }
            Ok(())
        });
    }
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.unwrap_or_else(|e| Err(Error::Protocol(format!("transfer task failed: {e}"))));
        if let Err(e) = outcome {
            // A piece failed for good: the file cannot be completed.
            tasks.abort_all();
            failure.get_or_insert(e);
        }
    }
    if failure.is_none() && !lock(&queue).todo.is_empty() {
        // Every connection gave up with pieces left.
        failure = lock(&gave_up).take();
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The next piece; `None` once all are done (waits while the queue is empty
/// but a piece may still come back from another connection).
async fn next_piece(queue: &Mutex<Queue>, changed: &Notify) -> Option<usize> {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut state = lock(queue);
            if let Some(piece) = state.todo.pop_front() {
                state.in_flight += 1;
                return Some(piece);
            }
            if state.in_flight == 0 {
                return None;
            }
        }
        notified.await;
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
