//! A limit as written: `--rate-limit client=10/s,burst=20`, the config file's `rate_limit`, and a
//! rule's `rate_limit:` action.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::pattern::Glob;

/// Most keys one keyed limit remembers, unless `keys=` says otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// What a limit counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    /// One bucket for all traffic.
    Global,
    /// One per session.
    Session,
    /// One per client: the authenticated subject, else the client's IP address (stdio: the one
    /// local client). Also written `subject`.
    #[serde(alias = "subject")]
    Client,
    /// One per method.
    Method,
    /// One per tool name (only `tools/call` requests count).
    Tool,
}

impl Per {
    /// Every kind, as written.
    pub const ALL: [Self; 5] = [
        Self::Global,
        Self::Session,
        Self::Client,
        Self::Method,
        Self::Tool,
    ];

    /// As written, and in metrics' `key` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Session => "session",
            Self::Client => "client",
            Self::Method => "method",
            Self::Tool => "tool",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        if text == "subject" {
            return Some(Self::Client);
        }
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Narrowest first: the order limits are checked in, so that a message refused by a narrow
    /// limit has not used up a broad one's capacity.
    pub(super) fn narrowness(self) -> u8 {
        match self {
            Self::Tool => 0,
            Self::Method => 1,
            Self::Session => 2,
            Self::Client => 3,
            Self::Global => 4,
        }
    }
}

/// A rate: `count` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many.
    pub count: NonZeroU32,
    /// In how long.
    pub period: Duration,
}

impl Rate {
    /// Reads `10/s`, `100/min`, `5/30s`, `1000/h`, `20/day`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("{text:?} is not a rate: expected COUNT/PERIOD, e.g. 10/s, 100/min, 5/30s");
        let (count, period) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let count = NonZeroU32::new(count)
            .ok_or_else(|| format!("{text:?}: the count must be at least 1"))?;
        let period = period.trim();
        let period = match period {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if period.is_zero() || period > Duration::from_secs(366 * 86_400) {
            return Err(format!(
                "{text:?}: the period must be more than 0 and at most a year"
            ));
        }
        if period / count.get() < Duration::from_nanos(1) {
            return Err(format!("{text:?}: more than one per nanosecond"));
        }
        Ok(Self { count, period })
    }

    /// The time one message is worth (the period over the count), in µs, at least 1.
    pub fn interval_us(self) -> u64 {
        let nanos = self.period.as_nanos() / u128::from(self.count.get());
        u64::try_from(nanos.div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The period in whole seconds, at least 1 (for `RateLimit-Policy`'s `w`).
    pub fn window_secs(self) -> u64 {
        self.period.as_secs_f64().ceil().max(1.0) as u64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 if self.period.subsec_nanos() == 0 => "s",
            60 if self.period.subsec_nanos() == 0 => "min",
            3600 if self.period.subsec_nanos() == 0 => "h",
            86_400 if self.period.subsec_nanos() == 0 => "day",
            _ => {
                return write!(
                    f,
                    "{}/{}",
                    self.count,
                    humantime::format_duration(self.period)
                );
            }
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One limit.
#[derive(Debug, Clone)]
pub struct LimitSpec {
    /// Its name: in errors, `RateLimit-Policy` and metrics. [default: what it is per, made
    /// unique with `-2`, `-3`…]
    pub name: String,
    /// What it counts separately.
    pub per: Per,
    /// The sustained rate.
    pub rate: Rate,
    /// How many may come at once. [default: the rate's count]
    pub burst: NonZeroU32,
    /// Only messages whose method matches one of these count (none: every method).
    pub methods: Vec<Glob>,
    /// Only `tools/call` requests for a tool matching one of these count (none: no condition).
    pub tools: Vec<Glob>,
    /// Most keys remembered (the least recently used is forgotten past it).
    pub max_keys: usize,
}

impl LimitSpec {
    /// A limit per `per` at `rate`, with the default burst and no conditions.
    pub fn new(per: Per, rate: Rate) -> Self {
        Self {
            name: per.as_str().to_owned(),
            per,
            rate,
            burst: rate.count,
            methods: Vec::new(),
            tools: Vec::new(),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }

    /// Reads `PER=RATE[,burst=N][,method=GLOB]…[,tool=GLOB]…[,keys=N][,name=NAME]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut items = text.split(',').map(str::trim);
        let first = items.next().unwrap_or_default();
        let (per, rate) = first.split_once('=').ok_or_else(|| {
            format!("{text:?}: expected PER=RATE first, e.g. client=10/s (PER: global, session, client, method or tool)")
        })?;
        let per = Per::parse(per.trim()).ok_or_else(|| {
            format!("{text:?}: {per:?} is not what a limit can be per (global, session, client, method or tool)")
        })?;
        let rate = Rate::parse(rate).map_err(|e| format!("{text:?}: {e}"))?;
        let mut spec = Self::new(per, rate);
        for item in items {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("{text:?}: {item:?} is not KEY=VALUE"))?;
            match key {
                "burst" => {
                    spec.burst = value
                        .parse::<u32>()
                        .ok()
                        .and_then(NonZeroU32::new)
                        .ok_or_else(|| {
                            format!("{text:?}: burst must be a whole number of at least 1")
                        })?;
                }
                "method" => spec.methods.push(Glob::new(value)?),
                "tool" => spec.tools.push(Glob::new(value)?),
                "keys" => {
                    spec.max_keys = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=100_000_000).contains(n))
                        .ok_or_else(|| {
                            format!("{text:?}: keys must be a whole number from 1 to 100000000")
                        })?;
                }
                "name" if !value.is_empty() && value.len() <= 64 && !value.contains('"') => {
                    value.clone_into(&mut spec.name);
                }
                "name" => {
                    return Err(format!(
                        "{text:?}: a name is 1 to 64 characters, without '\"'"
                    ));
                }
                other => {
                    return Err(format!(
                        "{text:?}: unknown key {other:?} (burst, method, tool, keys, name)"
                    ));
                }
            }
        }
        Ok(spec)
    }

    /// The limit as written back (`--rate-limit` syntax, without conditions).
    pub fn describe(&self) -> String {
        format!("{}={},burst={}", self.per.as_str(), self.rate, self.burst)
    }
}

/// Gives limits that share a name `-2`, `-3`… in order, so each is told apart in errors and
/// metrics.
pub fn unique_names(specs: &mut [LimitSpec]) {
    let mut seen = std::collections::HashSet::new();
    for spec in specs {
        if seen.insert(spec.name.clone()) {
            continue;
        }
        let mut n = 2;
        while !seen.insert(format!("{}-{n}", spec.name)) {
            n += 1;
        }
        spec.name = format!("{}-{n}", spec.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_units_and_durations() {
        let r = |t| Rate::parse(t).unwrap();
        assert_eq!(r("10/s").period, Duration::from_secs(1));
        assert_eq!(r("100/min").period, Duration::from_secs(60));
        assert_eq!(r("5/30s").period, Duration::from_secs(30));
        assert_eq!(r("1000/h").period, Duration::from_secs(3600));
        assert_eq!(r("2/day").count.get(), 2);
        assert_eq!(r("3/500ms").period, Duration::from_millis(500));
        assert_eq!(r("10/s").to_string(), "10/s");
        assert_eq!(r("5/30s").to_string(), "5/30s");
        assert_eq!(r("100/min").window_secs(), 60);
        assert_eq!(r("3/500ms").window_secs(), 1);
        for bad in [
            "",
            "10",
            "0/s",
            "-1/s",
            "x/s",
            "10/",
            "10/fortnight",
            "10/0s",
            "10/400days",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn specs_read_every_key_and_refuse_the_rest() {
        let s = LimitSpec::parse("client=10/s").unwrap();
        assert_eq!(
            (s.per, s.burst.get(), s.name.as_str()),
            (Per::Client, 10, "client")
        );
        let s =
            LimitSpec::parse("tool=1/s, burst=3, tool=search*, method=tools/*, keys=50, name=slow")
                .unwrap();
        assert_eq!((s.per, s.burst.get(), s.max_keys), (Per::Tool, 3, 50));
        assert_eq!(s.name, "slow");
        assert!(s.tools[0].is_match("search_web") && s.methods[0].is_match("tools/call"));
        assert_eq!(
            LimitSpec::parse("method=5/s,method=ping").unwrap().name,
            "method"
        );
        assert_eq!(s.describe(), "tool=1/s,burst=3");
        for bad in [
            "",
            "10/s",
            "everyone=10/s",
            "client=10",
            "client=10/s,burst=0",
            "client=10/s,burst",
            "client=10/s,colour=red",
            "client=10/s,keys=0",
            "client=10/s,name=",
            "client=10/s,tool=[",
        ] {
            let e = LimitSpec::parse(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) || bad.contains('['),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn shared_names_are_numbered() {
        let mut specs: Vec<_> = ["client=10/s", "client=100/min", "global=1/s", "client=1/h"]
            .iter()
            .map(|t| LimitSpec::parse(t).unwrap())
            .collect();
        unique_names(&mut specs);
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["client", "client-2", "global", "client-3"]);
    }
}
