//! Continuous batching: the sessions of one model that generate at the same time step
//! together, one forward pass for all of them (the products read each weight once for the
//! whole batch instead of once per session).
//!
//! Flat combining, no thread of its own: a session that needs a forward step queues it; the
//! caller that finds no step running becomes the combiner: it waits a moment for the model's
//! other generating sessions to queue theirs, runs the queued steps as one batched forward,
//! hands each session its result and goes back to its own. A long prompt is fed one chunk
//! per step between the others' decoding steps, so it never freezes their streams. New
//! sessions join at the next step; finished or cancelled ones simply stop queueing.
//!
//! Only backends whose states step together take part (`State::batchable`); the others'
//! sessions step alone as before.

use crate::backend::{BatchScratch, Logits, Out, State};
use crate::model::recipe::{forward, Recipe};
use crate::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most decoding sequences in one step.
const MAX_SEQS: usize = 128;
/// Longest wait for the model's other generating sessions to queue their next steps (also at
/// most a quarter of the last step's time, so a caller that stopped reading costs little).
const MAX_GATHER: Duration = Duration::from_millis(2);

/// The batcher of one model's sessions.
#[derive(Default)]
pub struct Batcher {
    queue: Mutex<Queue>,
    /// The combiner gathering a step waits here for the others' jobs. (A session waiting
    /// for its result waits on its job's own condvar: see `Job::wake`.)
    arrived: Condvar,
    /// The working buffers of multi-session steps (only the combiner uses them).
    scratch: Mutex<BatchScratch>,
    /// Sessions in a generation: the steps worth waiting for.
    members: Arc<AtomicUsize>,
    /// Steps run and the sequences they carried (their ratio: the mean batch size).
    steps: AtomicUsize,
    seqs: AtomicUsize,
    /// Nanoseconds spent in those steps (the rest of a run's time: gathering, the sessions'
    /// own work between their steps).
    step_ns: std::sync::atomic::AtomicU64,
}

/// What a model's batcher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Forward steps run through the batcher.
    pub steps: u64,
    /// Sequences those steps carried (each step at least one).
    pub seqs: u64,
    /// Sessions in a generation now.
    pub generating: u64,
    /// Nanoseconds spent in those steps.
    pub step_ns: u64,
}

/// What a feed hands back from its last forward step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Nothing,
    Argmax,
    Logits,
}

/// The result of a feed's last step.
#[derive(Debug)]
pub enum Produced {
    Nothing,
    Argmax(u32),
    Logits(Vec<f32>),
}

/// A session's tokens to run through the model, from position `pos0` of its cache.
pub struct Feed {
    pub state: Arc<Mutex<State>>,
    pub tokens: Vec<u32>,
    pub pos0: usize,
    /// Prompt chunks are cut at positions `chunk_origin + k * chunk` (at most `pos0`).
    pub chunk_origin: usize,
    /// The session's context length (the recipe may depend on it: LongRoPE).
    pub n_ctx: usize,
    pub want: Want,
    pub cancel: Arc<AtomicBool>,
}

/// How a feed went: the tokens whose keys and values are now in the cache, and the last
/// step's result or the error (or cancellation) that stopped the feed.
#[derive(Debug)]
pub struct Fed {
    pub fed: usize,
    pub result: Result<Produced>,
}

/// A session in a generation (counted while alive).
pub struct Member(Arc<AtomicUsize>);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Job {
    id: u64,
    feed: Feed,
    /// Tokens already run.
    fed: usize,
    /// Tokens per prompt step (the backend's prefill chunk: the same chunks as alone).
    chunk: usize,
    /// Whether its prompt chunks may share a step with decoding rows.
    mixes: bool,
    /// Its session waits here for the result (or for the combiner's role). One condvar a
    /// waiter, notified with the queue unlocked, so that the step's sessions wake at once:
    /// through one condvar notified under the lock they were handed the lock one after
    /// another, a thread's wake-up latency each, before the next step could gather them.
    wake: Arc<Condvar>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: bool,
    done: HashMap<u64, Fed>,
    next_id: u64,
    last_step: Duration,
}

/// One job's share of a step.
struct Part {
    job: Job,
    rows: usize,
}

impl Batcher {
    /// Count a session as generating until the guard drops.
    pub fn join(&self) -> Member {
        self.members.fetch_add(1, Ordering::SeqCst);
        Member(self.members.clone())
    }

    pub fn stats(&self) -> BatchStats {
        BatchStats {
            steps: self.steps.load(Ordering::Relaxed) as u64,
            seqs: self.seqs.load(Ordering::Relaxed) as u64,
            generating: self.members.load(Ordering::Relaxed) as u64,
            step_ns: self.step_ns.load(Ordering::Relaxed),
        }
    }

    /// Run `feed` through the model, batched with the other sessions' steps; returns when
    /// it is done (or failed, or was cancelled between steps). `recipe` is the model's.
    pub fn run(&self, feed: Feed, recipe: &Recipe) -> Fed {
        if feed.tokens.is_empty() {
            return Fed {
                fed: 0,
                result: Ok(Produced::Nothing),
            };
        }
        let (chunk, mixes) = {
            let st = feed.state.lock();
            (st.prefill_chunk().max(1), st.batch_mixes_prompts())
        };
        let wake = Arc::new(Condvar::new());
        let mut q = self.queue.lock();
        let id = q.next_id;
        q.next_id += 1;
        q.jobs.push_back(Job {
            id,
            feed,
            fed: 0,
            chunk,
            mixes,
            wake: wake.clone(),
        });
        // A combiner gathering a step may be waiting for this one: woken once all the
        // generating sessions are in (its deadline covers the ones that never come).
        if q.jobs.len() >= self.members.load(Ordering::SeqCst).min(MAX_SEQS) {
            self.arrived.notify_one();
        }
        loop {
            if let Some(done) = q.done.remove(&id) {
                return done;
            }
            if q.running {
                wake.wait(&mut q);
                continue;
            }
            q.running = true;
            self.gather(&mut q);
            // Who to wake once the step is over and the queue unlocked: the step's sessions,
            // the cancelled ones and whoever waits first in line (a job that did not fit
            // this step: the next combiner).
            let mut wakes = Vec::new();
            let parts = take_parts(&mut q, &mut wakes);
            if !parts.is_empty() {
                self.steps.fetch_add(1, Ordering::Relaxed);
                self.seqs.fetch_add(parts.len(), Ordering::Relaxed);
            }
            let started = Instant::now();
            // A panic in the step (a bug) must not leave `running` set: every waiter would
            // hang. It fails the step's parts instead.
            let results = parking_lot::MutexGuard::unlocked(&mut q, || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(&parts, recipe)))
                    .unwrap_or_else(|_| {
                        let msg = "a batched forward step panicked";
                        parts
                            .iter()
                            .map(|_| Err(Error::Internal(msg.into())))
                            .collect()
                    })
            });
            q.last_step = started.elapsed();
            let ns = u64::try_from(q.last_step.as_nanos()).unwrap_or(u64::MAX);
            self.step_ns.fetch_add(ns, Ordering::Relaxed);
            wakes.extend(parts.iter().map(|p| p.job.wake.clone()));
            for (part, result) in parts.into_iter().zip(results) {
                let Part { mut job, rows } = part;
                match result {
                    Err(e) => {
                        let fed = Fed {
                            fed: job.fed,
                            result: Err(e),
                        };
                        q.done.insert(job.id, fed);
                    }
                    Ok(produced) => {
                        job.fed += rows;
                        if job.fed == job.feed.tokens.len() {
                            let fed = Fed {
                                fed: job.fed,
                                result: Ok(produced),
                            };
                            q.done.insert(job.id, fed);
                        } else {
                            // The rest of a prompt: first in line for the next step.
                            q.jobs.push_front(job);
                        }
                    }
                }
            }
            q.running = false;
            wakes.extend(q.jobs.front().map(|j| j.wake.clone()));
            parking_lot::MutexGuard::unlocked(&mut q, || {
                for w in &wakes {
                    w.notify_one();
                }
            });
        }
    }

    /// Wait (the queue unlocked) until every generating session has queued a step, or a
    /// short while.
    fn gather(&self, q: &mut parking_lot::MutexGuard<'_, Queue>) {
        let wait = MAX_GATHER.min(q.last_step / 4);
        let deadline = Instant::now() + wait;
        while q.jobs.len() < self.members.load(Ordering::SeqCst).min(MAX_SEQS) {
            if self.arrived.wait_until(q, deadline).timed_out() {
                break;
            }
        }
    }

    /// One forward step over `parts`; each part's result in order. A step of one part runs
    /// as that session's step alone (polling its cancel flag within the step, the backend's
    /// fast paths); several run as one batched step.
    fn step(&self, parts: &[Part], recipe: &Recipe) -> Vec<Result<Produced>> {
        let Some(first) = parts.first() else {
            return Vec::new();
        };
        let n_ctx = first.job.feed.n_ctx;
        let tokens: Vec<&[u32]> = parts.iter().map(|p| p.slice()).collect();
        let pos0: Vec<usize> = parts.iter().map(|p| p.pos0()).collect();
        let mut picks: Vec<Option<u32>> = vec![None; parts.len()];
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); parts.len()];
        let wants: Vec<Want> = parts.iter().map(|p| p.want()).collect();
        let mut outs: Vec<Out> = picks
            .iter_mut()
            .zip(rows.iter_mut())
            .zip(&wants)
            .map(|((p, r), w)| match w {
                Want::Nothing => Out::Nothing,
                Want::Argmax => Out::Argmax(p),
                Want::Logits => Out::Logits(r),
            })
            .collect();
        let result = if parts.len() == 1 {
            let cancel = first.job.feed.cancel.clone();
            let cancelled = move || cancel.load(Ordering::Relaxed);
            let mut run = |ops: &mut dyn crate::backend::Ops| {
                forward(ops, recipe, Logits::Last, n_ctx, &cancelled)
            };
            let out = outs.pop().expect("one part, one output");
            let mut st = first.job.feed.state.lock();
            // A session generating alone may have its next greedy step run ahead (on the
            // GPU); with others, their steps come first.
            st.allow_ahead(self.members.load(Ordering::SeqCst) <= 1);
            st.step(tokens[0], pos0[0], Logits::Last, &mut run, out)
        } else {
            // Not cancellable within the step (it is others' step too): cancel flags are
            // looked at between steps.
            let never = || false;
            let mut run = |ops: &mut dyn crate::backend::Ops| {
                forward(ops, recipe, Logits::Last, n_ctx, &never)
            };
            let mut guards: Vec<_> = parts.iter().map(|p| p.job.feed.state.lock()).collect();
            let mut states: Vec<&mut State> = guards.iter_mut().map(|g| &mut **g).collect();
            let mut scratch = self.scratch.lock();
            State::step_batch(
                &mut states,
                &tokens,
                &pos0,
                &mut scratch,
                &mut run,
                &mut outs,
            )
        };
        drop(outs);
        match result {
            Ok(()) => wants
                .iter()
                .zip(picks.into_iter().zip(rows))
                .map(|(w, (p, r))| {
                    Ok(match w {
                        Want::Nothing => Produced::Nothing,
                        Want::Argmax => Produced::Argmax(p.unwrap_or(0)),
                        Want::Logits => Produced::Logits(r),
                    })
                })
                .collect(),
            Err(e) => {
                let msg = e.to_string();
                let mut e = Some(e);
                // The first part gets the error itself, the others a copy of its text.
                (0..parts.len())
                    .map(|_| {
                        Err(e.take().unwrap_or_else(|| {
                            Error::Internal(format!("a batched step failed: {msg}"))
                        }))
                    })
                    .collect()
            }
        }
    }
}

impl Part {
    fn slice(&self) -> &[u32] {
        &self.job.feed.tokens[self.job.fed..self.job.fed + self.rows]
    }

    fn pos0(&self) -> usize {
        self.job.feed.pos0 + self.job.fed
    }

    /// What the step hands back: the feed's wish on its last chunk, nothing before.
    fn want(&self) -> Want {
        if self.job.fed + self.rows == self.job.feed.tokens.len() {
            self.job.feed.want
        } else {
            Want::Nothing
        }
    }
}

/// The next step's parts, taken from the queue: the decoding sessions (one token each, up to
/// [`MAX_SEQS`]) first, then at most one prompt chunk; all of one context length (the
/// others wait for a later step). Cancelled jobs leave the queue as done (their waiters'
/// condvars added to `cancelled`, to be woken).
fn take_parts(q: &mut Queue, cancelled: &mut Vec<Arc<Condvar>>) -> Vec<Part> {
    let (mut decode, mut prompt) = (Vec::new(), None);
    let mut n_ctx = None;
    let mut mix_ok = true;
    let mut i = 0;
    while i < q.jobs.len() {
        let job = &q.jobs[i];
        if job.feed.cancel.load(Ordering::Relaxed) {
            let job = q.jobs.remove(i).expect("index in range");
            let fed = Fed {
                fed: job.fed,
                result: Err(Error::Cancelled),
            };
            q.done.insert(job.id, fed);
            cancelled.push(job.wake);
            continue;
        }
        let left = job.feed.tokens.len() - job.fed;
        // A prompt chunk joins decoding rows only where the backend mixes them; else it
        // is a step of its own.
        let fits = *n_ctx.get_or_insert(job.feed.n_ctx) == job.feed.n_ctx
            && if left == 1 {
                decode.len() < MAX_SEQS && (prompt.is_none() || mix_ok)
            } else {
                prompt.is_none() && (decode.is_empty() || job.mixes)
            };
        if !fits {
            i += 1;
            continue;
        }
        let job = q.jobs.remove(i).expect("index in range");
        let pos = job.feed.pos0 + job.fed;
        let rows = left.min(job.chunk - (pos - job.feed.chunk_origin.min(pos)) % job.chunk);
        let part = Part { job, rows };
        if left == 1 {
            decode.push(part);
        } else {
            mix_ok = part.job.mixes;
            prompt = Some(part);
        }
    }
    decode.extend(prompt);
    decode
}
