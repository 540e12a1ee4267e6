//! Keeps a bug in oomsnap from ending the watch.
//!
//! The release build unwinds on panic, so a panic ends the task it happens
//! in, not the process. Two places need more than that: the capture task,
//! whose end the pipeline waits for (a capture that never reports back
//! would hold the queue forever, and no capture would run again), and the
//! pipeline's own loop in `run` (a panic there would end `oomsnap run` and
//! crash-loop the pod NotReady). A closure or future enters; its value
//! leaves, or, if it panicked, the panic's message as an error that the
//! caller logs and reports like any other failure.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// What a panic said, when it said it with a string.
fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn bug(what: &str, payload: &(dyn Any + Send)) -> String {
    format!(
        "{what} panicked: {}; this is a bug in oomsnap {}, please report it",
        message(payload),
        crate::VERSION
    )
}

/// Runs `f`; a panic in it comes back as an error naming `what`.
///
/// `AssertUnwindSafe`: after a panic the caller carries on with state the
/// closure may have left half-updated. For the pipeline that is the right
/// trade: a quota or a queue slightly off is better than no sidecar.
pub(crate) fn call<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| bug(what, p.as_ref()))
}

/// Awaits `fut`; a panic in it comes back as an error naming `what`.
pub(crate) async fn future<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|p| bug(what, p.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_that_says_what_and_why() {
        assert_eq!(call("x", || 7), Ok(7));
        let e = call("the pipeline's event handler", || -> u8 {
            panic!("index out of range")
        })
        .unwrap_err();
        assert!(
            e.starts_with(
                "the pipeline's event handler panicked: index out of range; this is a bug"
            ),
            "{e}"
        );
        let e = call("y", || -> () { std::panic::panic_any(42u32) }).unwrap_err();
        assert!(e.contains("a panic without a message"), "{e}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_future_reports_back_instead_of_never_finishing() {
        assert_eq!(future("f", async { 1 }).await, Ok(1));
        let owned = String::from("decoder overflow");
        let e = future("the capture task", async move {
            if !owned.is_empty() {
                panic!("{owned}");
            }
        })
        .await
        .unwrap_err();
        assert!(
            e.starts_with("the capture task panicked: decoder overflow"),
            "{e}"
        );
    }
}
