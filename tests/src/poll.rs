//! Waiting for a condition with a deadline instead of sleeping.

use std::time::{Duration, Instant};

/// Calls `probe` until it returns `Ok`, backing off from 10 ms to 250 ms
/// between calls. When `timeout` runs out, panics with `what` and the last
/// reason `probe` gave, so the message says what was seen instead.
#[track_caller]
pub fn until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(reason) => reason,
        };
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(250));
    }
}

/// Like [`until`] for a plain condition; `describe` explains the current
/// state in the timeout message.
#[track_caller]
pub fn until_true(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
    describe: impl Fn() -> String,
) {
    until(timeout, what, || {
        if condition() { Ok(()) } else { Err(describe()) }
    })
}
