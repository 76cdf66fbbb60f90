//! Which rules can apply to a message, so that rules about other messages cost nothing:
//! - by direction, kind and method (for a response, the method of the request it answers),
//!   worked out once per method and kept;
//! - by the name a tool call, prompt get or resource read uses: every rule's top-level name
//!   condition in one `GlobSet`, matched once per message.
//!
//! Both only leave out rules whose conditions cannot hold; the walk still checks every
//! condition of the rules that are left.

use std::sync::{Arc, RwLock};

use super::Rule;
use super::matcher::{NameKind, Subject};
use crate::protocol::{Direction, Kind, Method};

/// At most this many methods are kept. Past it (a peer inventing method names), the
/// candidates are worked out for each message instead: memory stays bounded.
const MAX_METHODS: usize = 256;

/// The candidate rules of a rule set.
#[derive(Debug, Default)]
pub struct Index {
    /// For each method seen (and none), the candidates for each direction and kind, by
    /// position in the rule set (so in the order the rules run). A short list: a proxy sees
    /// a few methods, and comparing them beats hashing them.
    seen: RwLock<Vec<(Option<Method>, Slots)>>,
    /// The rules with a top-level condition on a tool, prompt or resource name.
    names: Vec<Names>,
}

/// Candidates by direction and kind; `None` until asked.
type Slots = [Option<Arc<[u32]>>; 8];

/// The name conditions on one kind of item.
#[derive(Debug)]
struct Names {
    kind: NameKind,
    /// For each rule, whether it has such a condition.
    gated: Vec<bool>,
    /// The conditions' globs; glob `i` is rule `rules[i]`'s.
    set: globset::GlobSet,
    rules: Vec<u32>,
}

impl Index {
    /// The index of `rules`.
    pub fn new(rules: &[Rule]) -> Self {
        let names = [NameKind::Tool, NameKind::Prompt, NameKind::Resource]
            .into_iter()
            .filter_map(|kind| Names::new(rules, kind))
            .collect();
        Self {
            seen: RwLock::default(),
            names,
        }
    }

    /// The positions, in `rules`, of the rules whose envelope conditions hold for a message
    /// of `kind` travelling `direction` with `method`.
    pub fn candidates(
        &self,
        rules: &[Rule],
        direction: Direction,
        kind: Kind,
        method: Option<&Method>,
    ) -> Arc<[u32]> {
        let slot = slot(direction, kind);
        let cached = read(&self.seen)
            .iter()
            .find(|(m, _)| m.as_ref() == method)
            .and_then(|(_, slots)| slots[slot].clone());
        if let Some(found) = cached {
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
        let at = match seen.iter().position(|(m, _)| m.as_ref() == method) {
            Some(at) => Some(at),
            None if seen.len() < MAX_METHODS => {
                seen.push((method.cloned(), Slots::default()));
                Some(seen.len() - 1)
            }
            None => None,
        };
        if let Some(at) = at {
            seen[at].1[slot] = Some(found.clone());
        }
        found
    }

    /// For a message that uses a named item (a tool call, ...) when some of `candidates`
    /// have conditions on such names: which rules' name conditions hold, as a filter over rule
    /// positions. The name is read only then.
    pub fn names(&self, s: &mut Subject<'_>, candidates: &[u32]) -> NameFilter<'_> {
        let Some(names) = self.names.iter().find(|n| {
            s.uses(n.kind)
                && candidates
                    .iter()
                    .any(|&i| n.gated.get(i as usize) == Some(&true))
        }) else {
            return NameFilter::default();
        };
        let passing = match s.name(names.kind) {
            Some(name) => names
                .set
                .matches(name)
                .into_iter()
                .filter_map(|i| names.rules.get(i).copied())
                .collect(),
            None => Vec::new(),
        };
        if s.take_missed().is_some() {
            // The name could not be read: no rule is passed over for it (each is checked in
            // full, and one that needs the name cannot be decided).
            return NameFilter::default();
        }
        NameFilter {
            gated: Some(&names.gated),
            passing,
        }
    }

    /// How many methods are kept.
    #[cfg(test)]
    pub fn methods(&self) -> usize {
        read(&self.seen).len()
    }
}

impl Names {
    fn new(rules: &[Rule], kind: NameKind) -> Option<Self> {
        let mut builder = globset::GlobSetBuilder::new();
        let mut gated = vec![false; rules.len()];
        let mut positions = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let Some(glob) = rule
                .when
                .name_condition()
                .filter(|(k, _)| *k == kind)
                // A glob the set cannot take leaves its rule ungated: the walk still checks it.
                .and_then(|(_, glob)| glob.to_globset())
            else {
                continue;
            };
            builder.add(glob);
            gated[i] = true;
            positions.push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        if positions.is_empty() {
            return None;
        }
        Some(Self {
            kind,
            gated,
            set: builder.build().ok()?,
            rules: positions,
        })
    }
}

/// Which rules the name a message uses leaves out.
#[derive(Debug, Default)]
pub struct NameFilter<'a> {
    /// The rules with a condition on that kind of name (none: nothing is left out).
    gated: Option<&'a [bool]>,
    /// Of those, the ones whose condition holds, in order.
    passing: Vec<u32>,
}

impl NameFilter<'_> {
    /// Whether rule `i`'s name condition cannot hold.
    pub fn excludes(&self, i: u32) -> bool {
        self.gated
            .is_some_and(|gated| gated.get(i as usize) == Some(&true))
            && self.passing.binary_search(&i).is_err()
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
