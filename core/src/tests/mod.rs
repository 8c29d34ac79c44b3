//! Scenario tests of the core on a scripted harness.

pub(crate) mod harness;

/// Polls a future that never waits (a script or in-memory writer answers at once).
pub(crate) fn poll_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the future waited: nothing here ever does"),
    }
}

mod deletion;
mod durability;
mod entries;
mod lifecycle;
mod recovery;
mod relations;
mod replication;
mod shapes;
mod snapshot;
mod state_machine;
