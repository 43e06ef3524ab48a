//! A spawned task owned by whoever holds its handle: dropping the handle
//! aborts the task, so no task outlives the part of vipd that started it
//! (a cancelled leader's watch forwarder, the watch task after the daemon
//! stops). Tokio's own `JoinHandle` detaches on drop instead.

use std::future::Future;

use tokio::task::{JoinError, JoinHandle};

#[derive(Debug)]
pub struct Owned<T>(JoinHandle<T>);

impl<T: Send + 'static> Owned<T> {
    pub fn spawn(f: impl Future<Output = T> + Send + 'static) -> Self {
        Owned(tokio::spawn(f))
    }

    /// Waits for the task to end on its own. Borrowed, not consumed: a
    /// caller that gives up waiting (a timeout) still holds the handle,
    /// and the task ends with it.
    pub async fn join(&mut self) -> Result<T, JoinError> {
        (&mut self.0).await
    }
}

/// The next value a watch publishes, for a `select!` branch: never while
/// there is no watch, or once its sender is gone.
pub async fn next_value<T: Clone>(rx: Option<&mut tokio::sync::watch::Receiver<T>>) -> T {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return rx.borrow_and_update().clone();
        }
    }
    std::future::pending().await
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn dropping_the_handle_ends_the_task_and_joining_waits_for_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let ran_on = Arc::new(AtomicBool::new(false));
            let flag = ran_on.clone();
            let t = Owned::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                flag.store(true, Ordering::SeqCst);
            });
            drop(t);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert!(
                !ran_on.load(Ordering::SeqCst),
                "the task outlived its handle"
            );
            assert_eq!(Owned::spawn(async { 7 }).join().await.unwrap(), 7);
            // Given up on: the task ends with the handle, not detached.
            let flag = ran_on.clone();
            let mut slow = Owned::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                flag.store(true, Ordering::SeqCst);
            });
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(10), slow.join()).await;
            assert!(waited.is_err());
            drop(slow);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert!(
                !ran_on.load(Ordering::SeqCst),
                "the task outlived its handle"
            );
        });
    }
}
