//! The store's own thread: async code hands it closures over a channel and
//! awaits their answer, so SQLite and the fsync of every write transaction
//! never run on the async runtime's workers (Cloud Hypervisor's API-thread
//! shape). Owns the thread and the check that catches a blocking store call
//! made from an async worker; knows nothing about tables.

use std::cell::Cell;
use std::sync::mpsc;

use super::StoreError;

type Job = Box<dyn FnOnce() + Send>;

pub(super) struct Worker {
    tx: mpsc::Sender<Job>,
}

impl Worker {
    pub(super) fn start() -> Result<Worker, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                // Ends when the store, and so the sender, is dropped.
                for job in rx {
                    // A panicking job must not take the thread (and every
                    // later call) with it; its caller sees the store as gone.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Worker { tx })
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(move || {
            // The caller may have stopped waiting; the work is done anyway.
            let _ = reply.send(f());
        });
        answer.await.map_err(|_| StoreError::WorkerGone)?
    }

    pub(super) fn submit(&self, f: impl FnOnce() + Send + 'static) {
        // Fails only when the thread is gone; the job's reply channel is then
        // dropped and its caller told.
        let _ = self.tx.send(Box::new(f));
    }
}

thread_local! {
    static ASYNC_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one of the async runtime's workers, where a
/// blocking store call is a bug. For the runtime builder's
/// `on_thread_unpark`, which runs on worker threads only (the blocking pool
/// never parks there). A worker is marked from its first wake-up on, which
/// comes right after start, as a new worker has nothing to do and parks.
pub fn mark_async_worker() {
    ASYNC_WORKER.with(|w| w.set(true));
}

/// In debug builds, a store call on an async worker panics with the place it
/// came from: such a call stalls every task of that worker for as long as
/// SQLite and the disk take.
pub(super) fn check_not_async() {
    if cfg!(debug_assertions) && ASYNC_WORKER.with(Cell::get) {
        let trace = std::backtrace::Backtrace::force_capture();
        tracing::error!("state database used on an async worker thread:\n{trace}");
        panic!("state database used on an async worker thread (use Store::call)");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Store;

    #[tokio::test]
    async fn calls_run_on_the_store_thread_in_order() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let names: Vec<String> = futures::future::join_all((0..5).map(|i| {
            let store = store.clone();
            async move {
                store
                    .call(move |_| {
                        Ok(format!(
                            "{i}:{}",
                            std::thread::current().name().unwrap_or_default()
                        ))
                    })
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(
            names,
            ["0:store", "1:store", "2:store", "3:store", "4:store"]
        );
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_error_and_the_thread_lives_on() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let e = store
            .call(|_| -> Result<(), _> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(e, super::StoreError::WorkerGone), "{e}");
        let n = store.call(|_| Ok(7)).await.unwrap();
        assert_eq!(n, 7);
    }

    #[test]
    #[cfg(debug_assertions)]
    fn a_store_call_on_an_async_worker_panics_in_debug_builds() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_unpark(super::mark_async_worker)
            .build()
            .unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        // Marked at its first unpark: an idle new worker parks at once.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let on_worker = {
            let store = store.clone();
            rt.block_on(
                async move { tokio::spawn(async move { store.containers().map(|_| ()) }).await },
            )
        };
        assert!(on_worker.unwrap_err().is_panic());
        // The blocking pool and the store thread are fine.
        let blocking = {
            let store = store.clone();
            rt.block_on(async move {
                tokio::task::spawn_blocking(move || store.containers().map(|c| c.len())).await
            })
        };
        assert_eq!(blocking.unwrap().unwrap(), 0);
        let via_call = rt.block_on(async move {
            tokio::spawn(async move { store.call(|s| s.containers().map(|c| c.len())).await }).await
        });
        assert_eq!(via_call.unwrap().unwrap(), 0);
    }
}
