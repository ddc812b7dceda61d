//! Futures side by side on one task (a handful of peer requests, a builder's agents), their
//! outputs in order: what `futures::future::join_all` does, without the dependency.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

pub async fn join_all<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => out[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn outputs_in_order() {
        let slow = |n: u64| async move {
            tokio::time::sleep(std::time::Duration::from_millis(30 - n * 10)).await;
            n
        };
        assert_eq!(super::join_all((0..3).map(slow)).await, vec![0, 1, 2]);
    }
}
