//! Admission control (`ELECTRIC_MAX_CONCURRENT_REQUESTS`, protocol.md §3.7, §6.9): at most so
//! many shape requests of each kind are handled at once, and one more is answered at once with
//! a 503 the client retries, instead of queueing behind the others until every request is slow.
//!
//! Two kinds are counted apart, as in Electric: *initial* requests, which have no handle to
//! use yet (`offset=-1` or `now`, or no `handle`) and are the expensive ones (a catalog lookup,
//! perhaps a snapshot, chunk 0 of a log), and *existing* ones, which page through or wait on a
//! shape the client holds (live long-polls included, for as long as they wait). A request is
//! counted from the moment its secret is checked until its handler returns, that is until its
//! response head is ready; an SSE stream's body, streamed after that, is not counted.

use std::sync::atomic::{AtomicU32, Ordering};

use ampere_core::offset::RequestOffset;
use ampere_core::LogOffset;

use super::params::Query;

/// `ELECTRIC_MAX_CONCURRENT_REQUESTS`: how many shape requests of each kind may be handled at
/// once. Electric's JSON: `{"initial": 300, "existing": 10000}` (its default); a key left out
/// keeps its default.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AdmissionLimits {
    /// Requests without a handle to use (`offset=-1`, `now`, or no `handle`).
    pub initial: u32,
    /// Every other shape request, live long-polls included.
    pub existing: u32,
}

impl Default for AdmissionLimits {
    /// Electric's defaults.
    fn default() -> Self {
        Self {
            initial: 300,
            existing: 10_000,
        }
    }
}

/// Why an `ELECTRIC_MAX_CONCURRENT_REQUESTS` value is refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AdmissionLimitsError {
    /// Not JSON, or JSON but not an object.
    #[error("it is not a JSON object")]
    NotAnObject,
    /// A limit that is not a whole number from 1 to 4294967295.
    #[error("\"{key}\" must be a whole number above 0")]
    NotPositive {
        /// `initial` or `existing`.
        key: &'static str,
    },
}

impl AdmissionLimits {
    /// Parses Electric's JSON object; keys left out keep [`AdmissionLimits::default`], and
    /// other keys are ignored, as Electric ignores them (a value Electric runs with must not
    /// stop ampere; [`AdmissionLimits::unknown_keys`] lets startup warn about them).
    pub fn parse(text: &str) -> Result<Self, AdmissionLimitsError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| AdmissionLimitsError::NotAnObject)?;
        let object = value.as_object().ok_or(AdmissionLimitsError::NotAnObject)?;
        let limit = |key: &'static str, default: u32| match object.get(key) {
            None => Ok(default),
            Some(value) => value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or(AdmissionLimitsError::NotPositive { key }),
        };
        let defaults = Self::default();
        Ok(Self {
            initial: limit("initial", defaults.initial)?,
            existing: limit("existing", defaults.existing)?,
        })
    }
}

impl AdmissionLimits {
    /// The keys of `text` (an `ELECTRIC_MAX_CONCURRENT_REQUESTS` value) that are neither
    /// `initial` nor `existing`: ignored, most likely misspelt.
    pub fn unknown_keys(text: &str) -> Vec<String> {
        let Ok(serde_json::Value::Object(object)) = serde_json::from_str(text.trim()) else {
            return Vec::new();
        };
        object
            .keys()
            .filter(|key| !["initial", "existing"].contains(&key.as_str()))
            .cloned()
            .collect()
    }
}

/// Which limit a shape request counts against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RequestKind {
    /// No handle to use yet.
    Initial,
    /// A handle and an offset after `-1`.
    Existing,
}

impl RequestKind {
    /// The kind of a shape request with this query. A request whose handle the protocol
    /// ignores (`offset=-1` or `now`) is initial; so is one with no usable offset, which
    /// validation refuses anyway.
    pub(crate) fn of(query: &Query) -> Self {
        let has_handle = query.get("handle").is_some_and(|h| !h.trim().is_empty());
        let offset = query
            .get("offset")
            .map(|o| o.trim().parse::<RequestOffset>());
        match offset {
            Some(Ok(RequestOffset::Log(offset)))
                if has_handle && offset != LogOffset::BEFORE_ALL =>
            {
                Self::Existing
            }
            _ => Self::Initial,
        }
    }

    /// The word Electric's 503 message uses.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Existing => "existing",
        }
    }
}

/// The requests in flight of each kind, against their limits.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    initial: AtomicU32,
    existing: AtomicU32,
}

/// A request refused for its kind's limit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Refused {
    /// The kind.
    pub(crate) kind: RequestKind,
    /// Its limit.
    pub(crate) limit: u32,
}

/// One admitted request; dropping it lets the next one in.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    in_flight: &'a AtomicU32,
}

impl Admission {
    /// Nothing in flight yet.
    pub(crate) fn new(limits: AdmissionLimits) -> Self {
        Self {
            limits,
            initial: AtomicU32::new(0),
            existing: AtomicU32::new(0),
        }
    }

    /// Admits a request of `kind` if fewer than its limit are in flight.
    pub(crate) fn try_admit(&self, kind: RequestKind) -> Result<Permit<'_>, Refused> {
        let (in_flight, limit) = match kind {
            RequestKind::Initial => (&self.initial, self.limits.initial),
            RequestKind::Existing => (&self.existing, self.limits.existing),
        };
        // One atomic step from "below the limit" to "counted": two requests racing for the
        // last place cannot both take it.
        in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|_| Permit { in_flight })
            .map_err(|_| Refused { kind, limit })
    }

    /// Requests of `kind` in flight now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, kind: RequestKind) -> u32 {
        match kind {
            RequestKind::Initial => self.initial.load(Ordering::Acquire),
            RequestKind::Existing => self.existing.load(Ordering::Acquire),
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "admission-balanced: a permit released twice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(query: &str) -> RequestKind {
        RequestKind::of(&Query::parse(Some(query)))
    }

    #[test]
    fn electrics_json_sets_either_limit_and_a_missing_key_keeps_its_default() {
        let both = AdmissionLimits::parse(r#"{"initial": 500, "existing": 30000}"#);
        assert_eq!(
            both,
            Ok(AdmissionLimits {
                initial: 500,
                existing: 30_000
            })
        );
        let initial = AdmissionLimits::parse(r#"{"initial":2}"#).expect("valid");
        assert_eq!((initial.initial, initial.existing), (2, 10_000));
        assert_eq!(AdmissionLimits::parse("{}"), Ok(AdmissionLimits::default()));
    }

    #[test]
    fn other_keys_are_ignored_as_electric_ignores_them_and_reported_for_a_warning() {
        let typo = r#"{"intial": 5, "existing": 7}"#;
        assert_eq!(
            AdmissionLimits::parse(typo),
            Ok(AdmissionLimits {
                initial: 300,
                existing: 7
            })
        );
        assert_eq!(AdmissionLimits::unknown_keys(typo), ["intial"]);
        assert!(AdmissionLimits::unknown_keys(r#"{"initial":1}"#).is_empty());
    }

    #[test]
    fn anything_but_an_object_of_positive_limits_is_refused_with_the_reason() {
        for text in ["", "300", "[1]", "{", r#""{}""#] {
            assert_eq!(
                AdmissionLimits::parse(text),
                Err(AdmissionLimitsError::NotAnObject),
                "{text:?}"
            );
        }
        for bad in ["0", "-1", "1.5", "\"5\"", "4294967296", "null"] {
            assert_eq!(
                AdmissionLimits::parse(&format!(r#"{{"existing": {bad}}}"#)),
                Err(AdmissionLimitsError::NotPositive { key: "existing" }),
                "{bad}"
            );
        }
    }

    #[test]
    fn requests_without_a_handle_to_use_are_initial_and_the_rest_existing() {
        assert_eq!(kind("table=items&offset=-1"), RequestKind::Initial);
        assert_eq!(kind("table=items&offset=-1&handle=h"), RequestKind::Initial);
        assert_eq!(
            kind("table=items&offset=now&handle=h"),
            RequestKind::Initial
        );
        assert_eq!(kind("table=items&offset=0_0"), RequestKind::Initial);
        assert_eq!(kind("table=items&offset=x&handle=h"), RequestKind::Initial);
        assert_eq!(kind("table=items"), RequestKind::Initial);
        assert_eq!(
            kind("table=items&offset=0_0&handle=h"),
            RequestKind::Existing
        );
        assert_eq!(
            kind("table=items&offset=5_2&handle=h&live=true"),
            RequestKind::Existing
        );
    }

    #[test]
    fn each_kind_admits_up_to_its_limit_and_a_dropped_permit_lets_the_next_in() {
        let admission = Admission::new(AdmissionLimits {
            initial: 2,
            existing: 1,
        });
        let first = admission.try_admit(RequestKind::Initial).expect("first");
        let second = admission.try_admit(RequestKind::Initial).expect("second");
        assert_eq!(
            admission.try_admit(RequestKind::Initial).map(|_| ()),
            Err(Refused {
                kind: RequestKind::Initial,
                limit: 2
            })
        );
        // The other kind has its own count.
        let existing = admission
            .try_admit(RequestKind::Existing)
            .expect("existing");
        assert!(admission.try_admit(RequestKind::Existing).is_err());
        drop(first);
        assert_eq!(admission.in_flight(RequestKind::Initial), 1);
        let third = admission
            .try_admit(RequestKind::Initial)
            .expect("a place is free");
        drop((second, third, existing));
        assert_eq!(admission.in_flight(RequestKind::Initial), 0);
        assert_eq!(admission.in_flight(RequestKind::Existing), 0);
    }
}
