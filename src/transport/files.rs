//! Files Shadowcat writes that may hold what only their owner should read: tapes (recorded
//! messages), the session history (`sessions.db`, with live session ids) and log files. They are
//! created `0600` and their directories `0700`, whatever the umask lets others have: on a shared
//! machine another user must not read a session id (the one credential the gateway checks) or a
//! recorded message. An existing file or directory keeps its mode: it is the operator's.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Mode of the files created.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories created.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents, each `0700`.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates `path`, `0600`, for writing; fails if it exists.
pub fn create_private_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Opens `path` for appending, creating it `0600` if it does not exist.
pub fn open_private_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_the_owners_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_private_dir_all(&dir).unwrap();
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("t.jsonl");
        drop(create_private_new(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert!(create_private_new(&file).is_err(), "never overwrites");
        let log = dir.join("log");
        drop(open_private_append(&log).unwrap());
        assert_eq!(mode(&log), 0o600);
        // An existing file keeps the mode its owner gave it.
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640)).unwrap();
        drop(open_private_append(&log).unwrap());
        assert_eq!(mode(&log), 0o640);
    }
}
