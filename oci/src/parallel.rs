//! Runs a fallible job over many items on a couple of threads.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
};

use crate::error::Result;

/// Two threads: hashing one file per core keeps up with the disk, and a
/// checkpoint is taken beside a running workload that needs the rest of the
/// machine.
const MAX_THREADS: usize = 2;

/// Applies `job` to every item, at most [`MAX_THREADS`] at a time, and
/// returns the results in the items' order. The first error stops the
/// remaining items from starting and is returned.
pub(crate) fn map<T: Sync, R: Send>(items: &[T], job: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let threads = thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS).min(items.len());
    if threads <= 1 {
        return items.iter().map(job).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let mut done: Vec<(usize, R)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        match job(item) {
                            Ok(r) => out.push((i, r)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        // A panicking job is a bug in this crate: carry the panic on.
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    done.sort_unstable_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn keeps_order_and_stops_at_an_error() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(map(&items, |i| Ok(i * 2)).unwrap(), items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let err = map(&items, |i| if *i == 7 { Err(Error::InvalidId { id: i.to_string() }) } else { Ok(()) });
        assert!(matches!(err, Err(Error::InvalidId { id }) if id == "7"));
        assert!(map(&[] as &[u32], |_| Ok(())).unwrap().is_empty());
    }
}
