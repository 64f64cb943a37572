//! Who owns which pid, so that the one reaper loop can route an exit to its
//! process, including exits that arrive before the pid is known.
//!
//! `runc exec --detach` returns only after the process runs, and a short
//! process may already be reaped by then. While a start is under way the
//! loop keeps exits it cannot route; the starter claims its pid's exit when
//! it registers it. Once no start is under way those exits are dropped: they
//! belonged to runc itself or to a process nobody will ask about.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// A process the shim serves: the init process (`exec: None`) or an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessKey {
    pub container: String,
    pub exec: Option<String>,
}

#[derive(Default)]
pub struct Exits {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    owners: HashMap<u32, ProcessKey>,
    starting: usize,
    unrouted: HashMap<u32, i32>,
}

/// Held while a process is being started; see the module comment.
pub struct Starting(Arc<Exits>);

impl Drop for Starting {
    fn drop(&mut self) {
        let mut inner = self.0.inner.lock().unwrap();
        inner.starting -= 1;
        if inner.starting == 0 {
            inner.unrouted.clear();
        }
    }
}

impl Exits {
    pub fn begin_start(self: &Arc<Self>) -> Starting {
        self.inner.lock().unwrap().starting += 1;
        Starting(self.clone())
    }

    /// Records that `pid` belongs to `key`. Returns its exit status if the
    /// process already exited while it was being started.
    pub fn register(&self, pid: u32, key: ProcessKey, _start: &Starting) -> Option<i32> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(status) = inner.unrouted.remove(&pid) {
            return Some(status);
        }
        inner.owners.insert(pid, key);
        None
    }

    /// Called by the reaper loop: the owner of `pid`, which is forgotten.
    pub fn route(&self, pid: u32, status: i32) -> Option<ProcessKey> {
        let mut inner = self.inner.lock().unwrap();
        let owner = inner.owners.remove(&pid);
        if owner.is_none() && inner.starting > 0 {
            inner.unrouted.insert(pid, status);
        }
        owner
    }

    /// Forgets `pid` without an exit, e.g. when a container is deleted.
    pub fn forget(&self, pid: u32) {
        self.inner.lock().unwrap().owners.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(exec: &str) -> ProcessKey {
        ProcessKey { container: "c".into(), exec: Some(exec.into()) }
    }

    #[test]
    fn routes_a_registered_pid_once() {
        let exits = Arc::new(Exits::default());
        let start = exits.begin_start();
        assert_eq!(exits.register(10, key("e1"), &start), None);
        drop(start);
        assert_eq!(exits.route(10, 0), Some(key("e1")));
        assert_eq!(exits.route(10, 0), None);
    }

    #[test]
    fn an_exit_before_registration_is_handed_to_the_starter() {
        let exits = Arc::new(Exits::default());
        let start = exits.begin_start();
        assert_eq!(exits.route(11, 7), None);
        assert_eq!(exits.register(11, key("e1"), &start), Some(7));
    }

    #[test]
    fn strays_are_dropped_when_no_start_is_under_way() {
        let exits = Arc::new(Exits::default());
        assert_eq!(exits.route(12, 1), None);
        let start = exits.begin_start();
        assert_eq!(exits.register(12, key("e1"), &start), None);
        drop(start);
        // A stray kept during one start is gone after it.
        let start = exits.begin_start();
        exits.route(13, 1);
        drop(start);
        let start = exits.begin_start();
        assert_eq!(exits.register(13, key("e2"), &start), None);
    }
}
