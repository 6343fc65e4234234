//! Who may write to a session, within this process.
//!
//! An ordinary resumable session is *claimed* by the one stream writing to
//! it: a resume (or abort) takes the claim over, and the older stream's next
//! call fails with [`Error::Preempted`](crate::Error::Preempted). A ranged
//! session is written by many range writers at once: each holds the
//! session's lock shared, and the ranges being written are tracked here so
//! that two writers never get overlapping ones. Abort takes the lock
//! exclusively (preempting the writers); commit and expiry take it only if
//! nobody is writing.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, watch};

use crate::UploadId;

/// Exclusive hold of a session: its one sequential stream, or an abort,
/// commit or expiry.
pub(super) type SessionGuard = OwnedRwLockWriteGuard<()>;
/// A range writer's shared hold of a ranged session.
pub(super) type RangeGuard = OwnedRwLockReadGuard<()>;

/// The sessions that a stream has claimed (or is waiting to).
#[derive(Debug, Default)]
pub(super) struct Sessions {
    slots: Mutex<HashMap<UploadId, Arc<Slot>>>,
}

#[derive(Debug)]
pub(super) struct Slot {
    lock: Arc<RwLock<()>>,
    /// Bumped by every claim: a stream whose generation is no longer current
    /// has been taken over.
    takeover: watch::Sender<u64>,
    /// Ranged sessions: the ranges being written now. Also held while a
    /// range is checked against the journal or recorded in it, so that the
    /// check and the claim are one step.
    writing: Mutex<Vec<Range<u64>>>,
}

impl Slot {
    /// The ranges being written (and the journal's turn).
    pub(super) fn writing(&self) -> MutexGuard<'_, Vec<Range<u64>>> {
        self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A claim on the session as it is now, without taking it over.
    pub(super) fn watch(&self) -> Claim {
        Claim { generation: *self.takeover.borrow(), takeover: self.takeover.subscribe() }
    }

    /// A shared hold, for a range writer (waits while an abort holds it).
    pub(super) async fn share(&self) -> RangeGuard {
        self.lock.clone().read_owned().await
    }

    /// The exclusive hold, if nobody writes now.
    pub(super) fn try_hold(&self) -> Option<SessionGuard> {
        self.lock.clone().try_write_owned().ok()
    }
}

/// A stream's claim on a session.
#[derive(Debug)]
pub(super) struct Claim {
    generation: u64,
    takeover: watch::Receiver<u64>,
}

impl Claim {
    pub(super) fn is_current(&self) -> bool {
        *self.takeover.borrow() == self.generation
    }

    /// Completes when another stream (or an abort) takes the session over.
    pub(super) async fn taken_over(&self) {
        let mut takeover = self.takeover.clone();
        if takeover.wait_for(|generation| *generation != self.generation).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Sessions {
    pub(super) fn slot(&self, id: &UploadId) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Slot { lock: Arc::default(), takeover: watch::Sender::new(0), writing: Mutex::default() })
            })
            .clone()
    }

    /// Takes the session over: signals the current owner(s), then waits
    /// until they have let go.
    pub(super) async fn claim(&self, id: &UploadId) -> (SessionGuard, Claim) {
        let slot = self.slot(id);
        let mut generation = 0;
        slot.takeover.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let guard = slot.lock.clone().write_owned().await;
        (guard, Claim { generation, takeover: slot.takeover.subscribe() })
    }

    /// The session's exclusive hold, if no stream writes to it now. A
    /// resume that arrives meanwhile waits for it.
    pub(super) fn hold_idle(&self, id: &UploadId) -> Option<SessionGuard> {
        self.slot(id).try_hold()
    }

    pub(super) fn forget(&self, id: &UploadId) {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.remove(id);
    }
}
