//! MCP protocol versions: the ones Shadowcat knows, and what differs between them.

/// Every protocol version Shadowcat knows, oldest first.
pub const KNOWN: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// What a Streamable HTTP server assumes when a client sends no `MCP-Protocol-Version`.
pub const ASSUMED_WITHOUT_HEADER: &str = "2025-03-26";

/// Whether `version` is one Shadowcat knows.
pub fn is_known(version: &str) -> bool {
    KNOWN.contains(&version)
}

/// The first protocol version of the stateless era: no `initialize`, no sessions, the version in
/// every request's `_meta` and `MCP-Protocol-Version` header.
pub const FIRST_STATELESS: &str = "2026-07-28";

/// Whether `version` belongs to the stateless era (2026-07-28 and later).
pub fn is_stateless(version: &str) -> bool {
    // Versions are dates, so they order as strings.
    version >= FIRST_STATELESS
}

/// Whether JSON-RPC batches are allowed in `version` (only 2025-03-26 has them; 2024-11-05
/// inherited them from JSON-RPC and they were removed in 2025-06-18).
pub fn allows_batches(version: &str) -> bool {
    matches!(version, "2024-11-05" | "2025-03-26")
}

/// Whether a client of `version` takes SSE priming events (an event id with empty data, from
/// 2025-11-25): older clients may try to parse the empty data as a message. Only known versions
/// count, so an unknown string that sorts later does not turn priming on.
pub fn takes_priming_events(version: &str) -> bool {
    is_known(version) && version >= "2025-11-25"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_belong_to_the_old_versions_only() {
        assert!(allows_batches(ASSUMED_WITHOUT_HEADER));
        assert!(!allows_batches("2025-06-18"));
        assert!(is_known("2025-11-25") && !is_known("2025-13-01"));
        assert!(is_stateless("2026-07-28") && !is_stateless("2025-11-25"));
        assert!(takes_priming_events("2025-11-25") && takes_priming_events("2026-07-28"));
        assert!(!takes_priming_events("2025-06-18") && !takes_priming_events("2099-01-01"));
    }
}
