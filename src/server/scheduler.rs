//! Runs generation requests on one model: up to `max_parallel` at once, the rest waiting in
//! a first-come queue. Each of the `max_parallel` slots is a thread with its own session (KV
//! cache, allocated once); the model's batcher steps the slots' sessions together
//! (continuous batching, `session::batch`).
//!
//! The interface is what the HTTP layer needs and nothing of how sequences are run: `submit`
//! a job, read its updates (pieces, then the stats), cancel it (or drop the ticket).

use crate::model::Model;
use crate::session::{
    Event, GenerateParams, GenerateStats, KvType, Piece, Session, SessionOptions,
};
use crate::Error;
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// One generation request: a tokenized prompt (BOS included) and its parameters.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    pub seed: u64,
}

/// What a job reports, in order: pieces, then `Done` or `Failed` (the last update).
#[derive(Debug)]
pub enum Update {
    Piece(Piece),
    Done(GenerateStats),
    Failed(Error),
}

/// Stops a job: while it waits (it is then never started) or while it runs (within a token,
/// also during its prefill). Any thread.
#[derive(Clone)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A submitted job: its updates, and its cancellation. Dropping the ticket cancels the job
/// (nobody is listening any more).
pub struct Ticket {
    pub updates: UnboundedReceiver<Update>,
    cancel: CancelHandle,
}

impl Ticket {
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Queued {
    id: u64,
    job: Job,
    cancel: Arc<AtomicBool>,
    updates: UnboundedSender<Update>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Queued>,
    closed: bool,
    next_id: u64,
    /// The cancel flags of every job submitted and not finished (for `cancel_all`).
    live: HashMap<u64, Arc<AtomicBool>>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    running: AtomicUsize,
}

pub struct Scheduler {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    max_parallel: usize,
    model: Arc<Model>,
}

impl Scheduler {
    /// `max_parallel` sequences at once (at least 1), each with a context of `n_ctx` tokens
    /// (0: the model's, capped) and a KV cache of `kv_type`. Fails if their KV caches do not
    /// fit.
    pub fn new(
        model: Arc<Model>,
        max_parallel: usize,
        n_ctx: u32,
        kv_type: KvType,
    ) -> crate::Result<Scheduler> {
        let max_parallel = max_parallel.max(1);
        let sessions = (0..max_parallel)
            .map(|_| {
                Session::new(
                    model.clone(),
                    SessionOptions {
                        n_ctx,
                        seed: 0,
                        kv_type,
                    },
                )
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            running: AtomicUsize::new(0),
        });
        let workers = sessions
            .into_iter()
            .enumerate()
            .map(|(i, session)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("llorch-seq-{i}"))
                    .spawn(move || worker(&shared, session))
                    .map_err(|e| Error::Internal(format!("starting a sequence thread: {e}")))
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Scheduler {
            shared,
            workers,
            max_parallel,
            model,
        })
    }

    /// What the model's batcher has done: forward steps and the sequences they carried.
    pub fn batch_stats(&self) -> crate::session::batch::BatchStats {
        self.model.batch_stats()
    }

    /// Queues a job; its updates come through the ticket.
    pub fn submit(&self, job: Job) -> Ticket {
        let (tx, rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut q = self.shared.queue.lock();
        if q.closed {
            let _ = tx.send(Update::Failed(Error::Cancelled));
        } else {
            let id = q.next_id;
            q.next_id += 1;
            q.live.insert(id, cancel.clone());
            q.jobs.push_back(Queued {
                id,
                job,
                cancel: cancel.clone(),
                updates: tx,
            });
            self.shared.wake.notify_one();
        }
        Ticket {
            updates: rx,
            cancel: CancelHandle(cancel),
        }
    }

    /// Jobs waiting for a free sequence slot.
    pub fn queue_depth(&self) -> usize {
        self.shared.queue.lock().jobs.len()
    }

    /// Sequences generating now (the batch size).
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    pub fn max_parallel(&self) -> usize {
        self.max_parallel
    }

    /// Cancels every job, waiting or running.
    pub fn cancel_all(&self) {
        for flag in self.shared.queue.lock().live.values() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Scheduler {
    /// Refuses new jobs, lets the workers finish what is queued (cancel first for a quick
    /// end) and joins them.
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A sequence slot: one session (its KV cache allocated once), reused job after job.
fn worker(shared: &Shared, mut session: Session) {
    loop {
        let job = {
            let mut q = shared.queue.lock();
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                shared.wake.wait(&mut q);
            }
        };
        shared.running.fetch_add(1, Ordering::SeqCst);
        run(&mut session, &job);
        shared.running.fetch_sub(1, Ordering::SeqCst);
        shared.queue.lock().live.remove(&job.id);
    }
}

/// Sends a job's update; a job whose ticket is gone is cancelled.
fn send(q: &Queued, u: Update) {
    if q.updates.send(u).is_err() {
        q.cancel.store(true, Ordering::SeqCst);
    }
}

/// Runs one job to its end on `session`, from an empty conversation.
fn run(session: &mut Session, q: &Queued) {
    if q.cancel.load(Ordering::SeqCst) {
        // Cancelled while waiting: never started.
        return send(q, Update::Done(GenerateStats::cancelled()));
    }
    // Reset first: it clears the flag the session holds, and must not clear the job's.
    session.reset();
    session.set_seed(q.job.seed);
    session.set_cancel_flag(q.cancel.clone());
    if let Err(e) = session.begin_tokens(&q.job.prompt, &q.job.params) {
        return send(q, Update::Failed(e));
    }
    loop {
        match session.next_event() {
            Ok(Event::Piece(p)) => send(q, Update::Piece(p)),
            Ok(Event::Done(stats)) => return send(q, Update::Done(stats)),
            Err(e) => return send(q, Update::Failed(e)),
        }
    }
}
