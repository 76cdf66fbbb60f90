//! Fixed byte strings searched for in every frame (`progressToken`, `"isError"`): a memmem
//! searcher costs more to set up than most searches of a small message, so each is built once,
//! the first time it is used, and shared.

use std::sync::OnceLock;

use memchr::memmem::Finder;

/// A byte string to search frames for, with its searcher built once.
#[derive(Debug)]
pub struct Needle {
    bytes: &'static [u8],
    finder: OnceLock<Finder<'static>>,
}

impl Needle {
    /// A needle for `bytes`, fit for a `static`.
    pub const fn new(bytes: &'static [u8]) -> Self {
        Self {
            bytes,
            finder: OnceLock::new(),
        }
    }

    /// Where `haystack` first holds the needle.
    pub fn find(&self, haystack: &[u8]) -> Option<usize> {
        self.finder
            .get_or_init(|| Finder::new(self.bytes))
            .find(haystack)
    }

    /// Whether `haystack` holds the needle.
    pub fn is_in(&self, haystack: &[u8]) -> bool {
        self.find(haystack).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_a_fresh_search_finds() {
        static NEEDLE: Needle = Needle::new(b"\"isError\"");
        for haystack in [
            &b""[..],
            b"isError",
            b"{\"isError\":true}",
            b"{\"a\":1,\"isError\":true,\"isError\":false}",
        ] {
            assert_eq!(
                NEEDLE.find(haystack),
                memchr::memmem::find(haystack, b"\"isError\"")
            );
            assert_eq!(NEEDLE.is_in(haystack), NEEDLE.find(haystack).is_some());
        }
    }
}
