//! The contract between the pipeline and its stages: what a stage sees besides the message
//! ([`Context`], with who sent it, [`Client`]) and what it decides ([`Verdict`]). Below every
//! stage (`ratelimit`, `intercept`) and the pipeline that runs them (`proxy::pipeline`), so
//! that neither imports the other for it.

use crate::protocol::{Direction, Message};
use crate::session::{Principal, Session};
use crate::tape::Wire;

/// What a stage sees besides the message.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Which way the message travels.
    pub direction: Direction,
    /// The session it belongs to.
    pub session: &'a Session,
    /// How the transport carried it (HTTP status, SSE event id, stream), for the tape.
    pub transport: &'a Wire,
    /// Who sent it, as far as the transport can tell (what per-client limits key on).
    pub client: Client<'a>,
    /// The W3C `traceparent` the transport carried beside the message (an HTTP header), if
    /// any: linked from the request's span (its parent comes from `params._meta`).
    pub header_trace: Option<&'a str>,
    /// Where stages note what they did to the message, when someone keeps it (the request's
    /// span, with tracing on).
    pub notes: Option<&'a Notes>,
}

impl Context<'_> {
    /// Notes that a stage did `what` to the message, with `details` (name, value pairs); costs
    /// nothing when no one keeps notes.
    pub fn note(&self, what: &'static str, details: impl FnOnce() -> Vec<(&'static str, String)>) {
        if let Some(notes) = self.notes {
            notes.push(Note {
                what,
                details: details(),
            });
        }
    }
}

/// What a stage did to a message, for its span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// What: `rule`, `delayed`, `rate_limited`.
    pub what: &'static str,
    /// Its details, as attribute names and values.
    pub details: Vec<(&'static str, String)>,
}

/// The notes stages made about one message.
#[derive(Debug, Default)]
pub struct Notes(std::sync::Mutex<Vec<Note>>);

impl Notes {
    fn push(&self, note: Note) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(note);
    }

    /// A copy of the notes so far, in the order they were made.
    pub fn peek(&self) -> Vec<Note> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The notes, in the order they were made.
    pub fn take(&self) -> Vec<Note> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Who a client is, as far as the transport can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client<'a> {
    /// The one local client of a stdio proxy (and the sender of any server→client message).
    Local,
    /// An HTTP client, by address: the socket's peer, or behind a `--trusted-proxy` the
    /// address `X-Forwarded-For` gives.
    Address(std::net::IpAddr),
    /// An authenticated principal (the gateway's `--auth-*` options).
    Subject(&'a Principal),
}

impl<'a> Client<'a> {
    /// The principal, if the client authenticated.
    pub fn principal(self) -> Option<&'a Principal> {
        match self {
            Self::Subject(principal) => Some(principal),
            Self::Local | Self::Address(_) => None,
        }
    }
}

/// What to do with a message.
#[derive(Debug)]
pub enum Verdict {
    /// Pass it on towards its receiver.
    Forward(Message),
    /// Don't pass it on; send this answer back to its sender instead.
    Respond(Message),
    /// Don't pass it on, and answer nothing.
    Drop,
}
