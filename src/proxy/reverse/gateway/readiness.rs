//! Whether a command upstream can serve, for `/readyz`: the program can be run, and the last
//! server that failed (could not start, or exited before it said anything) has since been
//! followed by one that answered. A crashing server thus makes the gateway unready until a
//! newer one works, without `/readyz` starting a process of its own on every probe.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::protocol::Direction;

use super::{Gateway, SessionLink};

/// The latest server failure and when it happened.
#[derive(Debug, Default)]
pub(crate) struct ChildFailures(Mutex<Option<(Instant, String)>>);

impl ChildFailures {
    /// Notes that a session's server failed, and why.
    pub(crate) fn record(&self, why: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), why));
    }

    /// Why the upstream is not ready, if it is not: the latest failure, unless a session
    /// created after it has heard from its server (then the failure is forgotten).
    fn problem<'a>(&self, links: impl Iterator<Item = &'a Arc<SessionLink>>) -> Option<String> {
        let mut failure = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, why) = failure.as_ref()?;
        let mut links = links;
        if links.any(|link| {
            link.session.created() > *at && link.session.frames(Direction::ServerToClient) > 0
        }) {
            *failure = None;
            return None;
        }
        Some(why.clone())
    }
}

impl Gateway {
    /// Why a command upstream (`program`) cannot serve now, if it cannot.
    pub(crate) fn command_problem(&self, program: &OsStr) -> Option<String> {
        if find_program(program).is_none() {
            return Some(format!(
                "server command {program:?} not found (or not executable)"
            ));
        }
        let looping = self
            .metrics
            .children()
            .crash_looping
            .load(std::sync::atomic::Ordering::Relaxed);
        if looping > 0 {
            return Some(format!(
                "{looping} shared MCP server process(es) crashing in a loop (restarted at the longest interval until one lasts)"
            ));
        }
        let links: Vec<Arc<SessionLink>> = self.links.iter().map(|e| e.value().clone()).collect();
        self.child_failures
            .problem(links.iter())
            .map(|why| format!("{why} (and no server started since has answered)"))
    }
}

/// Where `program` would be found when spawned (a path as given, else on `PATH`), if it is an
/// executable file.
fn find_program(program: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = Path::new(program);
    if path.components().count() > 1 {
        return runnable(path).then(|| path.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| runnable(candidate))
    })
}
