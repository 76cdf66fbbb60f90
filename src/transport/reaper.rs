//! The reaper: children's process groups do not outlive us, however we end.
//!
//! A graceful exit shuts every child down (`transport::child`), but a SIGKILL (the OOM killer, a
//! supervisor's `kill -9`, a crashing host) gives us no chance to. Linux's `PR_SET_PDEATHSIG`
//! would need code between `fork` and `exec`, which this crate does not run (no `unsafe`), and it
//! covers the leader only, not the rest of its group. So the binary starts one helper process,
//! the reaper (itself, run as `shadowcat __reaper`, in a process group of its own so a terminal's
//! Ctrl-C does not reach it). We tell it over a pipe which process groups we own (`+pgid`) and
//! which we are done with (`-pgid`). The write end of that pipe is ours alone (close-on-exec, so
//! no child inherits it); when we end, by any means, the reaper reads end-of-file, sends SIGTERM to
//! every group still listed, SIGKILL after [`super::KILL_GRACE`] to what is left, and exits.
//! After a clean exit the list is empty and it exits at once.
//!
//! The reaper is started the first time a child is, and only in the binary ([`enable`]): a library
//! user or a test harness has no `__reaper` mode, and its children are then shut down only by
//! `transport::child` itself (which calls [`register`] and [`release`]; this module does not
//! know it).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The argument that runs the binary as the reaper.
pub const REAPER_ARG: &str = "__reaper";

/// Whether this process may start a reaper (set by the binary, never by the library).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The pipe to the reaper; `None` when it could not be started (said once) or has gone.
static PIPE: OnceLock<Mutex<Option<std::process::ChildStdin>>> = OnceLock::new();

/// Lets this process start a reaper for its children. Called by `main` before anything runs.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Runs the reaper when the binary was started as one (`shadowcat __reaper`), and returns its exit
/// code; `None` when it was not.
pub fn run_if_asked() -> Option<u8> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(REAPER_ARG)) || args.next().is_some() {
        return None;
    }
    let stdin = std::io::stdin();
    let groups = watch(stdin.lock());
    reap(&groups);
    Some(0)
}

/// Tells the reaper that `pgid` is one of ours, starting the reaper if it is not running yet.
pub fn register(pgid: i32) {
    send('+', pgid);
}

/// Tells the reaper we are done with `pgid` (shut down, or killed).
pub fn release(pgid: i32) {
    send('-', pgid);
}

fn send(sign: char, pgid: i32) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let pipe = PIPE.get_or_init(|| Mutex::new(start()));
    // A poisoned lock only means a writer panicked mid-line; the pipe is still usable.
    let mut pipe = pipe.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(stdin) = pipe.as_mut() {
        // A few bytes into a pipe the reaper drains continuously: this does not block.
        if let Err(e) = writeln!(stdin, "{sign}{pgid}") {
            tracing::warn!(%e, "the reaper has gone: children may outlive a killed shadowcat");
            *pipe = None;
        }
    }
}

fn start() -> Option<std::process::ChildStdin> {
    let started = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg(REAPER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
    });
    match started {
        // The reaper is never waited for: it exits when we do.
        Ok(mut reaper) => reaper.stdin.take(),
        Err(e) => {
            tracing::warn!(%e, "cannot start the reaper: children may outlive a killed shadowcat");
            None
        }
    }
}

/// Reads `+pgid` / `-pgid` lines until end-of-file, and returns the groups still listed.
fn watch(input: impl BufRead) -> BTreeSet<i32> {
    let mut groups = BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (sign, number) = line.split_at(line.len().min(1));
        // Only positive ids: killpg(0) or a negative id would reach far more than one group.
        let Ok(pgid) = number.parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        match sign {
            "+" => groups.insert(pgid),
            "-" => groups.remove(&pgid),
            _ => continue,
        };
    }
    groups
}

/// How often the reaper looks whether the groups it signalled are gone.
const LOOK: Duration = Duration::from_millis(50);

/// SIGTERM to every group, SIGKILL after the grace period to those still there.
fn reap(groups: &BTreeSet<i32>) {
    let alive = |pgid: &i32| killpg(Pid::from_raw(*pgid), None).is_ok();
    for pgid in groups {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGTERM);
    }
    // No clock is needed for so coarse a wait (and this process runs no runtime): look every
    // 50 ms, as many times as fit in the grace period.
    for _ in 0..super::KILL_GRACE.as_millis() / LOOK.as_millis() {
        if !groups.iter().any(alive) {
            break;
        }
        std::thread::sleep(LOOK);
    }
    for pgid in groups.iter().filter(|pgid| alive(pgid)) {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_keeps_what_was_registered_and_not_released() {
        let input = "+100\n+200\n-100\n+300\n-300\n+400\n";
        let groups = watch(input.as_bytes());
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec![200, 400]);
    }

    #[test]
    fn nonsense_and_dangerous_ids_are_ignored() {
        // 0, 1 and negative numbers would signal our own group, init, or everything.
        let input = "+0\n+1\n+-5\n*7\n+\n\n+abc\n+42\n";
        let groups = watch(input.as_bytes());
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec![42]);
    }
}
