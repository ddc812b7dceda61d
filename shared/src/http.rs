//! The accept loop of kiln's small HTTP servers (the metrics endpoint, the web console): at
//! most `max_connections` at once, each answered within `timeout`, a failing accept (EMFILE
//! and the like) paused on rather than spun on.

use std::future::Future;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Serves `listener` until the task running it is dropped.
pub async fn accept_bounded<F, Fut>(listener: TcpListener, max_connections: usize, timeout: Duration, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let answer = handle(stream);
        conns.spawn(async move {
            let _ = tokio::time::timeout(timeout, answer).await;
            drop(permit);
        });
        while conns.try_join_next().is_some() {}
    }
}
