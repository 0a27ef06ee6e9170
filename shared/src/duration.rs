//! Prometheus duration syntax: `[0-9]+(ms|s|m|h|d|w|y)` units in decreasing order, e.g. `1m30s`.

use std::fmt;
use std::time::Duration;

/// A duration that (de)serializes in Prometheus syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PromDuration(pub Duration);

/// Why a duration string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid duration string: {input:?} (expected e.g. 15s, 1m30s, 500ms)")]
pub struct ParseDurationError {
    pub input: String,
}

const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

impl PromDuration {
    pub fn parse(s: &str) -> Result<Self, ParseDurationError> {
        let err = || ParseDurationError { input: s.into() };
        if s == "0" {
            return Ok(PromDuration(Duration::ZERO));
        }
        if s.is_empty() {
            return Err(err());
        }
        let mut rest = s;
        let mut total: u64 = 0;
        let mut last_unit = 0usize; // index into UNITS; units must strictly decrease
        let mut first = true;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            // "ms" must be tried before "m".
            let (idx, unit) = if rest.starts_with("ms") {
                (6, "ms")
            } else {
                let c = rest.get(..1).ok_or_else(err)?;
                let idx = UNITS.iter().position(|(u, _)| *u == c).ok_or_else(err)?;
                (idx, UNITS[idx].0)
            };
            if !first && idx <= last_unit {
                return Err(err());
            }
            first = false;
            last_unit = idx;
            total = n
                .checked_mul(UNITS[idx].1)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
            rest = &rest[unit.len()..];
        }
        Ok(PromDuration(Duration::from_millis(total)))
    }
}

impl fmt::Display for PromDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (i, (unit, size)) in UNITS.into_iter().enumerate() {
            // Years and weeks only when they divide the rest exactly (`8d`, not `1w1d`), as
            // Prometheus prints durations.
            if i < 2 && ms % size != 0 {
                continue;
            }
            if ms >= size {
                write!(f, "{}{}", ms / size, unit)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for PromDuration {
    type Err = ParseDurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PromDuration::parse(s)
    }
}

impl From<PromDuration> for Duration {
    fn from(d: PromDuration) -> Duration {
        d.0
    }
}

impl serde::Serialize for PromDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PromDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PromDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_syntax() {
        let ms = |s: &str| PromDuration::parse(s).map(|d| d.0.as_millis());
        assert_eq!(ms("15s"), Ok(15_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("1h1ms"), Ok(3_600_001));
        assert_eq!(ms("0"), Ok(0));
        for bad in ["", "15", "s", "1s1m", "1.5s", "-1s", "1x", "1s1s"] {
            assert!(ms(bad).is_err(), "{bad} should fail");
        }
        let show = |s: &str| PromDuration::parse(s).map(|d| d.to_string());
        for (input, shown) in [
            ("1m30s", "1m30s"),
            ("60s", "1m"),
            ("1500ms", "1s500ms"),
            ("25h", "1d1h"),
            ("7d", "1w"),
            ("8d", "8d"),
            ("52w", "52w"),
            ("365d", "1y"),
            ("730d", "2y"),
            ("1d1h1m1s1ms", "1d1h1m1s1ms"),
            ("0s", "0s"),
        ] {
            assert_eq!(show(input), Ok(shown.into()), "{input}");
        }
    }
}
