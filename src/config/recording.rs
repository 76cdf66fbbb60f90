//! `--record`, `--redact` and `record -o`: where tapes go and what is masked in them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ConfigError, UpstreamConfig, invalid};
use crate::tape::{Recording, Redactor};

/// Where a mode puts its tapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One session: a file, or a new file in a directory that exists (`forward stdio`).
    FileOrDir,
    /// One tape per session in a directory, created if missing (`reverse`, `record` without
    /// `-o`).
    Dir,
}

/// What `--record` asks for, as given.
#[derive(Debug)]
pub struct Ask<'a> {
    /// The tape or directory.
    pub path: PathBuf,
    /// What the path must be.
    pub target: Target,
    /// A name for the tapes.
    pub name: Option<String>,
    /// `--redact` paths.
    pub redact: &'a [String],
    /// The recording mode: `forward`, `reverse`, `record`.
    pub mode: &'static str,
}

impl<'a> Ask<'a> {
    /// What `--record` and `--redact` ask for, if `--record` is given.
    pub fn from_flags(
        flags: &'a crate::cli::RecordArgs,
        target: Target,
        mode: &'static str,
    ) -> Option<Self> {
        flags.record.clone().map(|path| Self {
            path,
            target,
            name: None,
            redact: &flags.redact,
            mode,
        })
    }
}

/// The recording `ask` describes, of an HTTP server (`http`) or a command, with `secrets` (the
/// server's credentials, [`secrets`]) masked wherever they appear.
pub fn build(ask: Ask<'_>, secrets: &[String], http: bool) -> Result<Recording, ConfigError> {
    let flag = if ask.mode == "record" {
        "--output"
    } else {
        "--record"
    };
    if ask.target == Target::Dir {
        if ask.path.exists() && !ask.path.is_dir() {
            return Err(invalid(
                flag,
                format!(
                    "{}: a file; {} records one tape per session, into a directory",
                    ask.path.display(),
                    ask.mode
                ),
            ));
        }
        crate::transport::files::create_private_dir_all(&ask.path).map_err(|e| {
            invalid(
                flag,
                format!("cannot create the directory {}: {e}", ask.path.display()),
            )
        })?;
    } else if let Some(parent) = parent_dir(&ask.path).filter(|p| !p.is_dir()) {
        return Err(invalid(
            flag,
            format!("{}: no such directory", parent.display()),
        ));
    }
    let redactor = redactor(ask.redact, secrets)?;
    let server_transport = if http { "http" } else { "stdio" };
    // Absolute: the session history names each tape, and is read from anywhere.
    let target = std::path::absolute(&ask.path)
        .map_err(|e| invalid(flag, format!("{}: {e}", ask.path.display())))?;
    Ok(Recording {
        target,
        name: ask.name,
        mode: ask.mode,
        server_transport,
        redactor: Arc::new(redactor),
    })
}

/// The masks of `--redact`'s `paths`, and `secrets` wherever they appear.
pub fn redactor(paths: &[String], secrets: &[String]) -> Result<Redactor, ConfigError> {
    Redactor::new(paths, secrets.to_vec()).map_err(|e| invalid("--redact", e.to_string()))
}

fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// The server's credentials, to be masked wherever they appear: an HTTP upstream's, or the
/// secret-looking arguments and environment values of a command's
/// ([`crate::tape::redact::command`]).
pub fn secrets(server: Server<'_>) -> Vec<String> {
    match server {
        Server::Http(upstream) => http_secrets(upstream),
        Server::Command(spec) => {
            crate::tape::redact::command::command(&spec.program, &spec.args, &spec.env).secrets
        }
    }
}

/// The server a mode reaches.
#[derive(Debug, Clone, Copy)]
pub enum Server<'a> {
    Http(&'a UpstreamConfig),
    Command(&'a crate::transport::child::ChildSpec),
}

/// The credentials in an HTTP upstream's configured headers: masked wherever they appear in a
/// recorded message (whole, and without their scheme: `Bearer <token>` and `<token>`).
fn http_secrets(upstream: &UpstreamConfig) -> Vec<String> {
    let mut secrets = Vec::new();
    for (name, value) in &upstream.headers {
        let credential = value.is_sensitive()
            || matches!(
                name.as_str(),
                "authorization" | "proxy-authorization" | "cookie"
            );
        let Ok(value) = value.to_str() else { continue };
        if !credential {
            continue;
        }
        if let Some((_, token)) = value.split_once(' ') {
            secrets.push(token.trim().to_owned());
        }
        secrets.push(value.to_owned());
    }
    // Longest first, so a whole value is masked before a part of it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}
