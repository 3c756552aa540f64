//! The context's CPU worker threads: a rayon pool whose threads are joined when the last
//! user drops it, so freeing a context leaves no thread running (an embedding program may
//! unload the library next, and leak checkers see no thread-local memory left behind).

use crate::{Error, Result};
use parking_lot::Mutex;
use std::sync::Arc;
use std::thread::JoinHandle;

pub struct Pool {
    pool: Option<rayon::ThreadPool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Pool {
    /// `threads` workers; 0 = one per core.
    pub fn new(threads: usize) -> Result<Arc<Pool>> {
        let n = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let handles = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let keep = handles.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .spawn_handler(move |t| {
                let name = format!("llorch-cpu-{}", t.index());
                let h = std::thread::Builder::new()
                    .name(name)
                    .spawn(move || t.run())?;
                keep.lock().push(h);
                Ok(())
            })
            .build()
            .map_err(|e| Error::Internal(format!("cannot start {n} CPU threads: {e}")))?;
        Ok(Arc::new(Pool {
            pool: Some(pool),
            threads: handles,
        }))
    }
}

impl std::ops::Deref for Pool {
    type Target = rayon::ThreadPool;
    fn deref(&self) -> &rayon::ThreadPool {
        self.pool.as_ref().expect("the pool lives until drop")
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Dropping the rayon pool asks its workers to stop; then wait for them.
        drop(self.pool.take());
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}
