//! Hot reload: the rule file's directory is watched (editors and config maps replace files by
//! renaming, which a watch on the file itself would lose), and a change to the file reloads it.
//! A file that does not load is reported, with its line and column, and the running rules
//! stay.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::Watcher as _;

use super::{Rules, RulesError};

/// Events closer together than this are one change (an editor's truncate, write, rename).
const SETTLE: Duration = Duration::from_millis(100);

/// The watch on a rule file; it stops when dropped.
#[derive(Debug)]
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
}

impl Watcher {
    /// Starts watching `rules`' file. The watch holds no strong reference to the rules.
    pub fn start(rules: &Arc<Rules>) -> Result<Self, RulesError> {
        let path = rules.path().to_owned();
        let file_name = path.file_name().map(ToOwned::to_owned);
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let weak: Weak<Rules> = Arc::downgrade(rules);
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else {
                return;
            };
            if event.kind.is_access()
                || !event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == file_name.as_deref())
            {
                return;
            }
            let Some(rules) = weak.upgrade() else {
                return;
            };
            // Let the rest of the change land: a reload of the same text is skipped anyway.
            std::thread::sleep(SETTLE);
            match rules.reload() {
                Ok(true) => tracing::info!(
                    file = %rules.path().display(),
                    rules = rules.len(),
                    "rules reloaded"
                ),
                Ok(false) => {}
                Err(e) => tracing::error!("{e}; the previous rules stay in force"),
            }
        };
        let io = |e: notify::Error| RulesError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        let mut inner = notify::recommended_watcher(handler).map_err(io)?;
        inner
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(io)?;
        Ok(Self { _inner: inner })
    }
}
