//! Shared bits of the test programs that run inside containers checkpointed
//! by containerd-migrate. std only: the binaries are linked statically into
//! the test image, which has no libc of its own.

use std::sync::atomic::{AtomicBool, Ordering};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

unsafe extern "C" {
    // glibc's signal() installs the handler with BSD semantics (SA_RESTART),
    // which is all these programs need; std has no signal API of its own.
    fn signal(signum: i32, handler: usize) -> usize;
    fn _exit(status: i32) -> !;
}

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_termination(_signum: i32) {
    TERMINATED.store(true, Ordering::SeqCst);
}

extern "C" fn exit_zero(_signum: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

/// Makes SIGTERM and SIGINT set a flag that [`terminated`] reports.
///
/// A handler is needed at all because a container's init is pid 1 in its pid
/// namespace, and the kernel drops signals that pid 1 has not asked for.
pub fn flag_on_termination() {
    install(note_termination as extern "C" fn(i32) as usize);
}

/// Makes SIGTERM and SIGINT end the process at once with exit status 0.
pub fn exit_zero_on_termination() {
    install(exit_zero as extern "C" fn(i32) as usize);
}

/// Whether SIGTERM or SIGINT arrived since [`flag_on_termination`].
pub fn terminated() -> bool {
    TERMINATED.load(Ordering::SeqCst)
}

fn install(handler: usize) {
    for signum in [SIGTERM, SIGINT] {
        // SAFETY: the handlers only touch an atomic or call _exit.
        unsafe { signal(signum, handler) };
    }
}

/// Finds `--name VALUE` in `args` and parses it; `None` when absent.
pub fn flag_value<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    let Some(pos) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    let raw = args.get(pos + 1).ok_or_else(|| format!("{name} needs a value"))?;
    raw.parse()
        .map(Some)
        .map_err(|_| format!("{name}: cannot parse '{raw}'"))
}

/// Fails on anything in `args` that is not one of `known` flags or its value.
pub fn reject_unknown(args: &[String], known: &[&str]) -> Result<(), String> {
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i].as_str()) {
            return Err(format!("unknown argument '{}'", args[i]));
        }
        i += 2;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flag_values_parse_or_say_why_not() {
        let a = args("--mib 64 --out /tmp/x");
        assert_eq!(flag_value::<u64>(&a, "--mib"), Ok(Some(64)));
        assert_eq!(flag_value::<String>(&a, "--out"), Ok(Some("/tmp/x".into())));
        assert_eq!(flag_value::<u64>(&a, "--interval-ms"), Ok(None));
        assert!(flag_value::<u64>(&args("--mib lots"), "--mib").is_err());
        assert!(flag_value::<u64>(&args("--mib"), "--mib").is_err());
    }

    #[test]
    fn unknown_arguments_are_refused() {
        assert!(reject_unknown(&args("--mib 1 --out f"), &["--mib", "--out"]).is_ok());
        assert!(reject_unknown(&args("--mib 1 --bogus 2"), &["--mib"]).is_err());
        assert!(reject_unknown(&args("stray"), &["--mib"]).is_err());
    }
}
