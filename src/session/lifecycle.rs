//! The one lifecycle every session goes through.
//!
//! There is exactly one state type; anything that wants to know whether a session is open asks
//! it. Transitions are checked: `Closed` is terminal, so a session is ended (and counted as
//! ended) exactly once.

use std::fmt;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created; the `initialize` exchange has not completed.
    Initializing,
    /// Initialized and carrying traffic.
    Active,
    /// Shutting down: no new requests are forwarded.
    Closing,
    /// Over, for the given reason.
    Closed(EndReason),
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// A peer closed it (EOF, DELETE, graceful shutdown).
    Closed,
    /// Idle longer than `--session-idle-timeout`, or older than the maximum age.
    Expired,
    /// Made room for a new session at `--max-sessions`.
    Evicted,
    /// Ended by a signal (SIGINT/SIGTERM) or an operator.
    Killed,
    /// Ended by a failure (the server crashed, a transport broke).
    Error,
}

impl EndReason {
    /// Every reason, in table order.
    pub const ALL: [Self; 5] = [
        Self::Closed,
        Self::Expired,
        Self::Evicted,
        Self::Killed,
        Self::Error,
    ];

    /// Stable lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Expired => "expired",
            Self::Evicted => "evicted",
            Self::Killed => "killed",
            Self::Error => "error",
        }
    }

    /// The reason named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Index into per-reason counters.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a session cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// The state it was in.
    pub from: State,
    /// The state asked for.
    pub to: State,
}

impl State {
    /// Whether the session is over.
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Closed(_))
    }

    /// The state after moving to `to`, if that move is legal.
    pub fn advance(self, to: State) -> Result<State, IllegalTransition> {
        let legal = matches!(
            (self, to),
            (
                Self::Initializing,
                Self::Active | Self::Closing | Self::Closed(_)
            ) | (Self::Active, Self::Closing | Self::Closed(_))
                | (Self::Closing, Self::Closed(_))
        );
        if legal {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initializing => "initializing",
            Self::Active => "active",
            Self::Closing => "closing",
            Self::Closed(_) => "closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed(reason) => write!(f, "closed ({})", reason.as_str()),
            other => f.write_str(other.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forward_moves_are_legal_and_closed_is_terminal() {
        use State::*;
        let closed = Closed(EndReason::Closed);
        assert_eq!(Initializing.advance(Active), Ok(Active));
        assert_eq!(Active.advance(Closing), Ok(Closing));
        assert_eq!(Closing.advance(closed), Ok(closed));
        assert!(Active.advance(Initializing).is_err());
        assert!(Closing.advance(Active).is_err());
        assert!(closed.advance(Closed(EndReason::Error)).is_err());
        assert!(closed.advance(Active).is_err());
        assert!(Active.advance(Active).is_err());
    }

    #[test]
    fn reasons_round_trip_by_name() {
        for reason in EndReason::ALL {
            assert_eq!(EndReason::from_name(reason.as_str()), Some(reason));
            assert_eq!(EndReason::ALL[reason.index()], reason);
        }
    }
}
