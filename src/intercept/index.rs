//! Which rules can apply to a message, by its direction, kind and method (for a response, the
//! method of the request it answers). Worked out once per method and kept, so that rules on
//! other methods, directions or kinds cost nothing per message.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::Rule;
use crate::protocol::{Direction, Kind, Method};

/// At most this many methods are kept. Past it (a peer inventing method names), the
/// candidates are worked out for each message instead: memory stays bounded.
const MAX_METHODS: usize = 256;

/// The candidate rules of a rule set, by method.
#[derive(Debug, Default)]
pub struct Index {
    /// For each method seen (and none), the candidates for each direction and kind, by
    /// position in the rule set (so in the order the rules run).
    seen: RwLock<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Messages without a method (a response to no known request).
    none: Slots,
    by_method: HashMap<Method, Slots>,
}

impl Seen {
    fn slots(&self, method: Option<&Method>) -> Option<&Slots> {
        match method {
            None => Some(&self.none),
            Some(method) => self.by_method.get(method),
        }
    }
}

/// Candidates by direction and kind; `None` until asked.
type Slots = [Option<Arc<[u32]>>; 8];

impl Index {
    /// The positions, in `rules`, of the rules whose envelope conditions hold for a message
    /// of `kind` travelling `direction` with `method`: the only ones that can match it.
    pub fn candidates(
        &self,
        rules: &[Rule],
        direction: Direction,
        kind: Kind,
        method: Option<&Method>,
    ) -> Arc<[u32]> {
        let slot = slot(direction, kind);
        if let Some(found) = read(&self.seen)
            .slots(method)
            .and_then(|slots| slots[slot].clone())
        {
            return found;
        }
        let found: Arc<[u32]> = rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| {
                rule.when.may_match(direction, kind, method) && rule.action.may_apply(kind, method)
            })
            .map(|(i, _)| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        let mut seen = self
            .seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slots = match method {
            None => Some(&mut seen.none),
            Some(method) if seen.by_method.len() < MAX_METHODS => {
                Some(seen.by_method.entry(method.clone()).or_default())
            }
            Some(method) => seen.by_method.get_mut(method),
        };
        if let Some(slots) = slots {
            slots[slot] = Some(found.clone());
        }
        found
    }

    /// How many methods are kept.
    #[cfg(test)]
    pub fn methods(&self) -> usize {
        read(&self.seen).by_method.len()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn slot(direction: Direction, kind: Kind) -> usize {
    let d = match direction {
        Direction::ClientToServer => 0,
        Direction::ServerToClient => 4,
    };
    d + match kind {
        Kind::Request => 0,
        Kind::Notification => 1,
        Kind::Response => 2,
        Kind::Error => 3,
    }
}
