//! Postgres's `date`, `time`, `timestamp` and `timestamptz` values as text, exactly as Postgres 15
//! reads and prints them with `DateStyle=ISO` and `TimeZone=UTC`.
//!
//! Each type keeps Postgres's own internal representation, so comparing two values is comparing two
//! integers, as in Postgres: [`Date`] counts days and [`Timestamp`] / [`Timestamptz`] count
//! microseconds from 2000-01-01 (UTC for `timestamptz`), with `-infinity` / `infinity` at the
//! integer's minimum / maximum; [`Time`] counts microseconds since midnight (`24:00:00` included).
//!
//! Parsing accepts everything Postgres prints in ISO style and the common ISO input forms of a
//! literal (`T` or space between date and time, `Z` or a numeric offset such as `-08`, `+0530`,
//! `+05:30:15`, a date alone for a timestamp, `BC`/`AD`, `epoch`, `infinity`, `-infinity`). For every
//! text it accepts it computes exactly the value Postgres computes from the same text: fractional
//! seconds are rounded to microseconds the way Postgres does (`rint` of the double), `24:00:00` and
//! second `60` roll over, a `timestamp` ignores a zone offset, a `timestamptz` without one is UTC,
//! and the range limits are Postgres's. Every other text is an error carrying Postgres's own
//! message. Texts Postgres accepts but this module refuses (named time zones, `today`, `now`,
//! `allballs`, DMY/MDY and other non-ISO orders, compact `yyyymmdd`, `AM`/`PM`) are errors too.
//!
//! This module never consults a time zone database, a clock or a session setting: the session time
//! zone is UTC by construction of ampere's replication connection. Intervals live elsewhere.

use std::fmt;
use std::str::FromStr;

pub(super) const USECS_PER_SEC: i64 = 1_000_000;
pub(super) const USECS_PER_DAY: i64 = 86_400_000_000;
/// Julian day number of 2000-01-01, Postgres's epoch.
pub(super) const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
/// 1970-01-01 (`epoch`) as days since 2000-01-01.
pub(super) const UNIX_EPOCH_DAYS: i32 = -10_957;
/// First Julian day a `date` cannot hold (5874898-01-01).
pub(super) const DATE_END_JULIAN: i64 = 2_147_483_494;
/// First Julian day a timestamp cannot hold (294277-01-01).
const TIMESTAMP_END_JULIAN: i64 = 109_203_528;
/// 4714-11-24 00:00:00 BC (Julian day 0) in microseconds since 2000-01-01.
pub(super) const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// 294277-01-01 00:00:00 in microseconds since 2000-01-01 (exclusive limit).
pub(super) const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;
/// Largest hour of a numeric zone offset Postgres accepts.
const MAX_TZDISP_HOUR: i64 = 15;

/// A Postgres `date`: days since 2000-01-01; `-infinity` / `infinity` are `i32::MIN` / `i32::MAX`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Date(pub i32);

/// A Postgres `time` (without time zone): microseconds since midnight, `0..=86_400_000_000`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Time(pub i64);

/// A Postgres `timestamp` (without time zone): microseconds since 2000-01-01 00:00:00;
/// `-infinity` / `infinity` are `i64::MIN` / `i64::MAX`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(pub i64);

/// A Postgres `timestamptz`: microseconds since 2000-01-01 00:00:00 UTC;
/// `-infinity` / `infinity` are `i64::MIN` / `i64::MAX`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamptz(pub i64);

/// Why a text is not a date/time value, or a conversion failed. `Display` is Postgres's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateTimeError {
    /// `invalid input syntax for type <type>: "<text>"`.
    InvalidSyntax {
        /// Postgres's name of the type: `date`, `time`, `timestamp`, `timestamp with time zone`.
        type_name: &'static str,
        /// The input text, verbatim.
        text: String,
    },
    /// `date/time field value out of range: "<text>"` (e.g. `2023-02-29`, `25:00:00`).
    FieldOutOfRange {
        /// The input text, verbatim.
        text: String,
    },
    /// `time zone displacement out of range: "<text>"` (an offset beyond ±15:59:59).
    TimeZoneOutOfRange {
        /// The input text, verbatim.
        text: String,
    },
    /// `date out of range: "<text>"` (a valid calendar date outside 4713 BC .. 5874897 AD).
    DateOutOfRange {
        /// The input text, verbatim.
        text: String,
    },
    /// `timestamp out of range: "<text>"` (outside 4713 BC .. 294276 AD, after the offset).
    TimestampOutOfRange {
        /// The input text, verbatim.
        text: String,
    },
    /// `date out of range for timestamp`: casting a date beyond 294276 AD to a timestamp.
    DateOutOfRangeForTimestamp,
}

impl fmt::Display for DateTimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSyntax { type_name, text } => {
                write!(f, "invalid input syntax for type {type_name}: \"{text}\"")
            }
            Self::FieldOutOfRange { text } => {
                write!(f, "date/time field value out of range: \"{text}\"")
            }
            Self::TimeZoneOutOfRange { text } => {
                write!(f, "time zone displacement out of range: \"{text}\"")
            }
            Self::DateOutOfRange { text } => write!(f, "date out of range: \"{text}\""),
            Self::TimestampOutOfRange { text } => write!(f, "timestamp out of range: \"{text}\""),
            Self::DateOutOfRangeForTimestamp => f.write_str("date out of range for timestamp"),
        }
    }
}

impl std::error::Error for DateTimeError {}

impl Date {
    /// `-infinity`.
    pub const NEG_INFINITY: Self = Self(i32::MIN);
    /// `infinity`.
    pub const INFINITY: Self = Self(i32::MAX);

    /// Postgres's `date_in`: the date `text` denotes, or Postgres's error for it.
    ///
    /// A time and zone offset after the date are validated and then ignored, as Postgres does.
    pub fn parse(text: &str) -> Result<Self, DateTimeError> {
        let kind = Kind::Date;
        match special(text, kind)? {
            Some(Special::Epoch) => return Ok(Self(UNIX_EPOCH_DAYS)),
            Some(Special::Infinity) => return Ok(Self::INFINITY),
            Some(Special::NegInfinity) => return Ok(Self::NEG_INFINITY),
            None => {}
        }
        let fields = decode(text, kind)?;
        fields
            .days()
            .ok_or_else(|| Fail::DateRange.error(kind, text))
    }

    /// Neither `infinity` nor `-infinity`.
    pub const fn is_finite(self) -> bool {
        self.0 != i32::MIN && self.0 != i32::MAX
    }

    /// Postgres's `date::timestamp`: midnight of the date; beyond 294276 AD it is an error.
    pub fn to_timestamp(self) -> Result<Timestamp, DateTimeError> {
        match self {
            Self::NEG_INFINITY => Ok(Timestamp::NEG_INFINITY),
            Self::INFINITY => Ok(Timestamp::INFINITY),
            Self(days) if i64::from(days) >= TIMESTAMP_END_JULIAN - POSTGRES_EPOCH_JDATE => {
                Err(DateTimeError::DateOutOfRangeForTimestamp)
            }
            Self(days) => Ok(Timestamp(i64::from(days) * USECS_PER_DAY)),
        }
    }

    /// Postgres's `date::timestamptz` with the session in UTC: midnight UTC of the date.
    pub fn to_timestamptz(self) -> Result<Timestamptz, DateTimeError> {
        self.to_timestamp().map(Timestamp::to_timestamptz)
    }
}

impl Time {
    /// Postgres's `time_in`: the time of day `text` denotes, or Postgres's error for it.
    ///
    /// A zone offset after the time is validated and then ignored, as Postgres does.
    pub fn parse(text: &str) -> Result<Self, DateTimeError> {
        let kind = Kind::Time;
        if special(text, kind)?.is_some() {
            return Err(Fail::Syntax.error(kind, text));
        }
        let fields = decode(text, kind)?;
        Ok(Self(fields.clock.usecs()))
    }
}

impl Timestamp {
    /// `-infinity`.
    pub const NEG_INFINITY: Self = Self(i64::MIN);
    /// `infinity`.
    pub const INFINITY: Self = Self(i64::MAX);

    /// Postgres's `timestamp_in`: the timestamp `text` denotes, or Postgres's error for it.
    ///
    /// A date alone is midnight; a zone offset is validated and then ignored, as Postgres does.
    pub fn parse(text: &str) -> Result<Self, DateTimeError> {
        parse_timestamp(text, Kind::Timestamp).map(Self)
    }

    /// Neither `infinity` nor `-infinity`.
    pub const fn is_finite(self) -> bool {
        self.0 != i64::MIN && self.0 != i64::MAX
    }

    /// Postgres's `timestamp::timestamptz` with the session in UTC: the same instant's micros.
    pub const fn to_timestamptz(self) -> Timestamptz {
        Timestamptz(self.0)
    }

    /// Postgres's `timestamp::date`: the date part (infinities stay infinite).
    pub const fn to_date(self) -> Date {
        date_of(self.0)
    }

    /// Postgres's `timestamp::time`: the time of day; `None` (SQL NULL) for the infinities.
    pub const fn to_time(self) -> Option<Time> {
        time_of(self.0)
    }
}

impl Timestamptz {
    /// `-infinity`.
    pub const NEG_INFINITY: Self = Self(i64::MIN);
    /// `infinity`.
    pub const INFINITY: Self = Self(i64::MAX);

    /// Postgres's `timestamptz_in` with the session in UTC: the instant `text` denotes, or
    /// Postgres's error for it. Without a zone offset the text is read as UTC.
    pub fn parse(text: &str) -> Result<Self, DateTimeError> {
        parse_timestamp(text, Kind::Timestamptz).map(Self)
    }

    /// Neither `infinity` nor `-infinity`.
    pub const fn is_finite(self) -> bool {
        self.0 != i64::MIN && self.0 != i64::MAX
    }

    /// Postgres's `timestamptz::timestamp` with the session in UTC: the same micros.
    pub const fn to_timestamp(self) -> Timestamp {
        Timestamp(self.0)
    }

    /// Postgres's `timestamptz::date` with the session in UTC (infinities stay infinite).
    pub const fn to_date(self) -> Date {
        date_of(self.0)
    }

    /// Postgres's `timestamptz::time` with the session in UTC; `None` (SQL NULL) for infinities.
    pub const fn to_time(self) -> Option<Time> {
        time_of(self.0)
    }
}

/// `timestamp_date` / `timestamptz_date`: the day holding `usecs`, rounding toward -infinity.
const fn date_of(usecs: i64) -> Date {
    match usecs {
        i64::MIN => Date::NEG_INFINITY,
        i64::MAX => Date::INFINITY,
        // |i64| / USECS_PER_DAY < 1.1e8, well inside i32.
        _ => Date(usecs.div_euclid(USECS_PER_DAY) as i32),
    }
}

/// `timestamp_time` / `timestamptz_time`: the time of day of `usecs`; NULL for infinities.
const fn time_of(usecs: i64) -> Option<Time> {
    match usecs {
        i64::MIN | i64::MAX => None,
        _ => Some(Time(usecs.rem_euclid(USECS_PER_DAY))),
    }
}

/// `timestamp_in` / `timestamptz_in`: the microseconds `text` denotes.
fn parse_timestamp(text: &str, kind: Kind) -> Result<i64, DateTimeError> {
    match special(text, kind)? {
        Some(Special::Epoch) => return Ok(i64::from(UNIX_EPOCH_DAYS) * USECS_PER_DAY),
        Some(Special::Infinity) => return Ok(i64::MAX),
        Some(Special::NegInfinity) => return Ok(i64::MIN),
        None => {}
    }
    let fields = decode(text, kind)?;
    fields
        .usecs()
        .ok_or_else(|| Fail::TimestampRange.error(kind, text))
}

impl FromStr for Date {
    type Err = DateTimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for Time {
    type Err = DateTimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for Timestamp {
    type Err = DateTimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for Timestamptz {
    type Err = DateTimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Output (Postgres's EncodeDateOnly / EncodeTimeOnly / EncodeDateTime, ISO style, UTC).

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NEG_INFINITY => f.write_str("-infinity"),
            Self::INFINITY => f.write_str("infinity"),
            Self(days) => {
                let year = write_date(f, i64::from(days))?;
                write_era(f, year)
            }
        }
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_clock(f, self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_timestamp(f, self.0, "")
    }
}

impl fmt::Display for Timestamptz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_timestamp(f, self.0, "+00")
    }
}

/// `yyyy-mm-dd hh:mm:ss[.ffffff]<zone>[ BC]`, or an infinity.
fn write_timestamp(f: &mut fmt::Formatter<'_>, usecs: i64, zone: &str) -> fmt::Result {
    match usecs {
        i64::MIN => f.write_str("-infinity"),
        i64::MAX => f.write_str("infinity"),
        _ => {
            let year = write_date(f, usecs.div_euclid(USECS_PER_DAY))?;
            f.write_str(" ")?;
            write_clock(f, usecs.rem_euclid(USECS_PER_DAY))?;
            f.write_str(zone)?;
            write_era(f, year)
        }
    }
}

/// `yyyy-mm-dd` of a day counted from 2000-01-01 (the year as BC when not positive); returns the
/// astronomical year (1 BC is 0).
fn write_date(f: &mut fmt::Formatter<'_>, days: i64) -> Result<i64, fmt::Error> {
    let (year, month, day) = j2date(days + POSTGRES_EPOCH_JDATE);
    let shown = if year > 0 { year } else { 1 - year };
    write!(f, "{shown:04}-{month:02}-{day:02}")?;
    Ok(year)
}

/// ` BC` after a non-positive astronomical year.
fn write_era(f: &mut fmt::Formatter<'_>, year: i64) -> fmt::Result {
    if year <= 0 {
        f.write_str(" BC")?;
    }
    Ok(())
}

/// `hh:mm:ss`, then `.` and the microseconds without trailing zeros when there are any.
fn write_clock(f: &mut fmt::Formatter<'_>, usecs: i64) -> fmt::Result {
    let hour = usecs / (3600 * USECS_PER_SEC);
    let minute = usecs / (60 * USECS_PER_SEC) % 60;
    let second = usecs / USECS_PER_SEC % 60;
    write!(f, "{hour:02}:{minute:02}:{second:02}")?;
    let fraction = (usecs % USECS_PER_SEC).unsigned_abs();
    if fraction != 0 {
        let digits = format!("{fraction:06}");
        write!(f, ".{}", digits.trim_end_matches('0'))?;
    }
    Ok(())
}

/// Postgres's `date2j`: the Julian day number of a proleptic Gregorian date (astronomical year).
pub(super) const fn date2j(year: i64, month: i64, day: i64) -> i64 {
    let (y, m) = if month > 2 {
        (year + 4800, month + 1)
    } else {
        (year + 4799, month + 13)
    };
    let century = y / 100;
    y * 365 - 32167 + y / 4 - century + century / 4 + 7834 * m / 256 + day
}

/// Postgres's `j2date`: (astronomical year, month, day) of a Julian day number, in the same
/// wrapping 32-bit unsigned arithmetic so that even a corrupt value prints without panicking.
pub(super) const fn j2date(jd: i64) -> (i64, i64, i64) {
    let mut julian = (jd as u32).wrapping_add(32_044);
    let mut quad = julian / 146_097;
    let extra = (julian.wrapping_sub(quad.wrapping_mul(146_097)))
        .wrapping_mul(4)
        .wrapping_add(3);
    julian = julian.wrapping_add(60 + quad * 3 + extra / 146_097);
    quad = julian / 1461;
    julian -= quad * 1461;
    let y = julian * 4 / 1461;
    julian = if y != 0 {
        (julian + 305) % 365
    } else {
        (julian + 306) % 366
    } + 123;
    let year = y.wrapping_add(quad.wrapping_mul(4)) as i32 as i64 - 4800;
    let quad = julian * 2141 / 65_536;
    let day = julian - 7834 * quad / 256;
    let month = (quad + 10) % 12 + 1;
    (year, month as i64, day as i64)
}

// ---------------------------------------------------------------------------------------------
// Input: a strict ISO grammar, decoded with the checks of Postgres's DecodeDateTime /
// DecodeTimeOnly, in the order Postgres makes them.

/// Which input function is running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Date,
    Time,
    Timestamp,
    Timestamptz,
}

impl Kind {
    /// The type's name in Postgres's "invalid input syntax" message.
    const fn type_name(self) -> &'static str {
        match self {
            Self::Date => "date",
            Self::Time => "time",
            Self::Timestamp => "timestamp",
            Self::Timestamptz => "timestamp with time zone",
        }
    }

    /// Size of the input function's field buffer (`workbuf`): longer inputs are bad syntax.
    const fn workbuf_len(self) -> usize {
        match self {
            Self::Date | Self::Time => 129,             // MAXDATELEN + 1
            Self::Timestamp | Self::Timestamptz => 153, // MAXDATELEN + MAXDATEFIELDS
        }
    }
}

/// What went wrong, before the text and type are attached (Postgres's DTERR codes and range checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    Syntax,
    Field,
    Zone,
    DateRange,
    TimestampRange,
}

impl Fail {
    /// The error Postgres raises for this failure on `text` read as `kind`.
    fn error(self, kind: Kind, text: &str) -> DateTimeError {
        let text = text.to_owned();
        match self {
            Self::Syntax => DateTimeError::InvalidSyntax {
                type_name: kind.type_name(),
                text,
            },
            Self::Field => DateTimeError::FieldOutOfRange { text },
            Self::Zone => DateTimeError::TimeZoneOutOfRange { text },
            Self::DateRange => DateTimeError::DateOutOfRange { text },
            Self::TimestampRange => DateTimeError::TimestampOutOfRange { text },
        }
    }
}

/// The reserved words this module reads (`epoch`, `infinity`, `-infinity`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Special {
    Epoch,
    Infinity,
    NegInfinity,
}

/// The reserved word `text` is (case-insensitive, surrounded by blanks), if any.
fn special(text: &str, kind: Kind) -> Result<Option<Special>, DateTimeError> {
    let word = trim_space(text.as_bytes());
    let found = [
        (&b"epoch"[..], Special::Epoch),
        (b"infinity", Special::Infinity),
        (b"-infinity", Special::NegInfinity),
    ]
    .into_iter()
    .find(|(spelling, _)| word.eq_ignore_ascii_case(spelling))
    .map(|(_, special)| special);
    match found {
        Some(_) if kind == Kind::Time => Err(Fail::Syntax.error(kind, text)),
        found => Ok(found),
    }
}

/// C's `isspace` in the C locale (Rust's ASCII whitespace lacks the vertical tab).
pub(super) const fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// `bytes` without leading and trailing blanks.
fn trim_space(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// `year-month-day`, each a run of digits: the year at least three, so that no `DateStyle` reads it
/// as a day or month, and the month at most two, so that it is never read as a day of the year.
#[derive(Clone, Copy)]
struct DateToken<'a> {
    year: &'a [u8],
    month: &'a [u8],
    day: &'a [u8],
}

/// `hour:minute[:second[.fraction]]`.
#[derive(Clone, Copy)]
struct TimeToken<'a> {
    hour: &'a [u8],
    minute: &'a [u8],
    second: Option<&'a [u8]>,
    fraction: Option<&'a [u8]>,
}

/// `Z`, or `±hours[:minutes[:seconds]]` (`hours` may run minutes in: `+0530`).
#[derive(Clone, Copy)]
enum ZoneToken<'a> {
    Zulu,
    Offset {
        negative: bool,
        hours: &'a [u8],
        minutes: Option<&'a [u8]>,
        seconds: Option<&'a [u8]>,
    },
}

/// The fields of an accepted text, in the order they appear.
#[derive(Clone, Copy, Default)]
struct Tokens<'a> {
    date: Option<DateToken<'a>>,
    iso_t: bool,
    time: Option<TimeToken<'a>>,
    zone: Option<ZoneToken<'a>>,
    /// `Some(true)` for `BC`, `Some(false)` for `AD`.
    era: Option<bool>,
}

impl Tokens<'_> {
    /// Bytes Postgres's `ParseDateTime` needs in its field buffer: each field and its terminator.
    fn buffer_len(&self) -> usize {
        let date = self
            .date
            .map_or(0, |d| d.year.len() + d.month.len() + d.day.len() + 3);
        let iso_t = if self.iso_t { 2 } else { 0 };
        let time = self.time.map_or(0, |t| {
            let part = |p: Option<&[u8]>| p.map_or(0, |p| p.len() + 1);
            t.hour.len() + t.minute.len() + 2 + part(t.second) + part(t.fraction)
        });
        let zone = self.zone.map_or(0, |z| z.len() + 1);
        let era = if self.era.is_some() { 3 } else { 0 };
        date + iso_t + time + zone + era
    }
}

impl ZoneToken<'_> {
    /// Length of the zone field as written (sign included).
    fn len(&self) -> usize {
        match self {
            Self::Zulu => 1,
            Self::Offset {
                hours,
                minutes,
                seconds,
                ..
            } => {
                let part = |p: &Option<&[u8]>| p.map_or(0, |p| p.len() + 1);
                1 + hours.len() + part(minutes) + part(seconds)
            }
        }
    }
}

/// A position in the input bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `b` (ASCII case-insensitive) if it is next.
    fn eat(&mut self, b: u8) -> bool {
        let found = self
            .peek()
            .is_some_and(|next| next.eq_ignore_ascii_case(&b));
        self.pos += usize::from(found);
        found
    }

    /// Consumes a non-empty run of ASCII digits.
    fn digits(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.bytes[start..self.pos])
    }

    /// Consumes blanks; whether there were any.
    fn skip_space(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Runs `parse`, rewinding when it does not match.
    fn attempt<T>(&mut self, parse: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let mark = self.pos;
        let found = parse(self);
        if found.is_none() {
            self.pos = mark;
        }
        found
    }
}

/// The fields of `text` in the grammar `kind` accepts, or `None` for a syntax error.
fn tokenize(text: &str, kind: Kind) -> Option<Tokens<'_>> {
    let mut cursor = Cursor {
        bytes: trim_space(text.as_bytes()),
        pos: 0,
    };
    let tokens = if kind == Kind::Time {
        time_tokens(&mut cursor)?
    } else {
        datetime_tokens(&mut cursor)?
    };
    (cursor.pos == cursor.bytes.len() && tokens.buffer_len() <= kind.workbuf_len())
        .then_some(tokens)
}

/// `date [(T | blanks) time [blanks] [zone]] [blanks] [era]`.
fn datetime_tokens<'a>(c: &mut Cursor<'a>) -> Option<Tokens<'a>> {
    let mut tokens = Tokens {
        date: Some(date_token(c)?),
        ..Tokens::default()
    };
    if c.eat(b't') {
        tokens.iso_t = true;
        tokens.time = Some(time_token(c)?);
    } else {
        tokens.time = c.attempt(|c| {
            c.skip_space();
            time_token(c)
        });
    }
    if tokens.time.is_some() {
        tokens.zone = c.attempt(|c| {
            c.skip_space();
            zone_token(c)
        });
    }
    // A `Z` runs into letters after it (`zbc` is one unknown word); other fields end by themselves.
    let after_zulu = matches!(tokens.zone, Some(ZoneToken::Zulu));
    tokens.era = c.attempt(|c| era_token(c, after_zulu));
    Some(tokens)
}

/// `time [blanks] [zone]`.
fn time_tokens<'a>(c: &mut Cursor<'a>) -> Option<Tokens<'a>> {
    let mut tokens = Tokens {
        time: Some(time_token(c)?),
        ..Tokens::default()
    };
    tokens.zone = c.attempt(|c| {
        c.skip_space();
        zone_token(c)
    });
    Some(tokens)
}

fn date_token<'a>(c: &mut Cursor<'a>) -> Option<DateToken<'a>> {
    let year = c.digits().filter(|d| d.len() >= 3)?;
    let part = |c: &mut Cursor<'a>| c.eat(b'-').then(|| c.digits()).flatten();
    let month = part(c).filter(|d| d.len() <= 2)?;
    let day = part(c)?;
    Some(DateToken { year, month, day })
}

fn time_token<'a>(c: &mut Cursor<'a>) -> Option<TimeToken<'a>> {
    let hour = c.digits()?;
    let minute = c.eat(b':').then(|| c.digits()).flatten()?;
    let mut token = TimeToken {
        hour,
        minute,
        second: None,
        fraction: None,
    };
    if c.eat(b':') {
        token.second = Some(c.digits()?);
        if c.eat(b'.') {
            token.fraction = Some(c.digits()?);
        }
    }
    Some(token)
}

fn zone_token<'a>(c: &mut Cursor<'a>) -> Option<ZoneToken<'a>> {
    if c.eat(b'z') {
        return Some(ZoneToken::Zulu);
    }
    let negative = match c.peek() {
        Some(b'+') => false,
        Some(b'-') => true,
        _ => return None,
    };
    c.pos += 1;
    let hours = c.digits()?;
    let (mut minutes, mut seconds) = (None, None);
    if c.eat(b':') {
        minutes = Some(c.digits()?);
        if c.eat(b':') {
            seconds = Some(c.digits()?);
        }
    }
    Some(ZoneToken::Offset {
        negative,
        hours,
        minutes,
        seconds,
    })
}

/// `[blanks] (BC | AD)` (blanks required after `Z`): whether the era is BC.
fn era_token(c: &mut Cursor<'_>, blank_required: bool) -> Option<bool> {
    if !c.skip_space() && blank_required {
        return None;
    }
    if c.eat(b'b') && c.eat(b'c') {
        Some(true)
    } else if c.eat(b'a') && c.eat(b'd') {
        Some(false)
    } else {
        None
    }
}

/// A time of day as Postgres's `pg_tm` holds it before adding up (second may be 60, fraction a
/// whole second).
#[derive(Clone, Copy, Default)]
struct Clock {
    hour: i64,
    minute: i64,
    second: i64,
    usec: i64,
}

impl Clock {
    /// Postgres's `time2t`: microseconds since midnight.
    const fn usecs(self) -> i64 {
        ((self.hour * 60 + self.minute) * 60 + self.second) * USECS_PER_SEC + self.usec
    }

    /// Postgres's `time_overflows`: beyond `24:00:00` or a field out of its range.
    const fn overflows(self) -> bool {
        self.hour > 24
            || self.minute > 59
            || self.second > 60
            || self.usec > USECS_PER_SEC
            || self.usecs() > USECS_PER_DAY
    }
}

/// A validated calendar date, astronomical year (1 BC is 0).
#[derive(Clone, Copy)]
struct Ymd {
    year: i64,
    month: i64,
    day: i64,
}

/// What a text decodes to, before the type's own range checks.
struct Fields {
    ymd: Ymd,
    clock: Clock,
    /// Zone offset in seconds east of UTC (0 when none was given: the session is UTC).
    zone_east: i64,
}

impl Fields {
    /// `date_in`'s range checks: days since 2000-01-01, or `None` when out of range.
    fn days(&self) -> Option<Date> {
        let Ymd { year, month, day } = self.ymd;
        if !is_valid_julian(year, month) {
            return None;
        }
        let jd = date2j(year, month, day);
        let valid = (0..DATE_END_JULIAN).contains(&jd);
        // A valid Julian day minus the epoch fits i32 by DATE_END_JULIAN's definition.
        valid.then(|| Date((jd - POSTGRES_EPOCH_JDATE) as i32))
    }

    /// `tm2timestamp`'s range checks: microseconds since 2000-01-01 UTC, or `None`.
    fn usecs(&self) -> Option<i64> {
        let Ymd { year, month, day } = self.ymd;
        if !is_valid_julian(year, month) {
            return None;
        }
        let days = i128::from(date2j(year, month, day) - POSTGRES_EPOCH_JDATE);
        let local = days * i128::from(USECS_PER_DAY) + i128::from(self.clock.usecs());
        let utc = local - i128::from(self.zone_east) * i128::from(USECS_PER_SEC);
        let utc = i64::try_from(utc).ok()?;
        (MIN_TIMESTAMP..END_TIMESTAMP).contains(&utc).then_some(utc)
    }
}

/// Postgres's `IS_VALID_JULIAN`: the date is within what its Julian-day routines handle.
pub(super) const fn is_valid_julian(year: i64, month: i64) -> bool {
    (year > -4713 || (year == -4713 && month >= 11))
        && (year < 5_874_898 || (year == 5_874_898 && month < 6))
}

/// Tokenizes and decodes `text` as `kind`, with Postgres's checks in Postgres's order.
fn decode(text: &str, kind: Kind) -> Result<Fields, DateTimeError> {
    let tokens = tokenize(text, kind).ok_or_else(|| Fail::Syntax.error(kind, text))?;
    decode_tokens(&tokens, kind).map_err(|fail| fail.error(kind, text))
}

/// DecodeDateTime / DecodeTimeOnly over the tokens: each field in turn, then the date as a whole.
fn decode_tokens(tokens: &Tokens<'_>, kind: Kind) -> Result<Fields, Fail> {
    let date = tokens.date.map(decode_date).transpose()?;
    let mut clock = Clock::default();
    if let Some(time) = tokens.time {
        clock = decode_clock(time)?;
        // DecodeDateTime checks the time as soon as it reads it; DecodeTimeOnly at the end.
        if kind != Kind::Time && clock.overflows() {
            return Err(Fail::Field);
        }
    }
    let zone = tokens.zone.map_or(Ok(0), decode_zone)?;
    // Only timestamptz_in applies the offset; the other input functions check it and drop it.
    let zone_east = if kind == Kind::Timestamptz { zone } else { 0 };
    let ymd = match date {
        Some((year, month, day)) => validate_date(year, month, day, tokens.era)?,
        // time_in has no date: a placeholder, never read.
        None => Ymd {
            year: 2000,
            month: 1,
            day: 1,
        },
    };
    if kind == Kind::Time && clock.overflows() {
        return Err(Fail::Field);
    }
    Ok(Fields {
        ymd,
        clock,
        zone_east,
    })
}

/// The value of a run of digits, saturating far beyond any field's range.
fn digits_value(digits: &[u8]) -> i64 {
    digits.iter().fold(0_i64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    })
}

/// A numeric field read by `strtoint`: beyond `int`, `fail`.
fn int_field(digits: &[u8], fail: Fail) -> Result<i64, Fail> {
    let value = digits_value(digits);
    if value > i64::from(i32::MAX) {
        return Err(fail);
    }
    Ok(value)
}

fn decode_date(token: DateToken<'_>) -> Result<(i64, i64, i64), Fail> {
    let year = int_field(token.year, Fail::Field)?;
    let day = int_field(token.day, Fail::Field)?;
    Ok((year, digits_value(token.month), day))
}

/// `DecodeTime`: the fields, with the per-field checks (hours are checked by the caller).
fn decode_clock(token: TimeToken<'_>) -> Result<Clock, Fail> {
    let hour = int_field(token.hour, Fail::Field)?;
    let minute = int_field(token.minute, Fail::Field)?;
    let second = token.second.map_or(Ok(0), |s| int_field(s, Fail::Field))?;
    let usec = token.fraction.map_or(Ok(0), fraction_usecs)?;
    if minute > 59 || second > 60 || usec > USECS_PER_SEC {
        return Err(Fail::Field);
    }
    Ok(Clock {
        hour,
        minute,
        second,
        usec,
    })
}

/// `ParseFractionalSecond`: `rint(strtod(".digits") * 1000000)`, i.e. the correctly rounded
/// double, times a million, rounded half to even.
fn fraction_usecs(digits: &[u8]) -> Result<i64, Fail> {
    let text = std::str::from_utf8(digits).map_err(|_| Fail::Syntax)?;
    let fraction: f64 = format!("0.{text}").parse().map_err(|_| Fail::Syntax)?;
    // In 0.0 ..= 1_000_000.0, so the conversion is exact.
    Ok((fraction * 1_000_000.0).round_ties_even() as i64)
}

/// `DecodeTimezone`: seconds east of UTC.
fn decode_zone(token: ZoneToken<'_>) -> Result<i64, Fail> {
    let ZoneToken::Offset {
        negative,
        hours,
        minutes,
        seconds,
    } = token
    else {
        return Ok(0);
    };
    let mut hour = int_field(hours, Fail::Zone)?;
    let mut minute = minutes.map_or(Ok(0), |m| int_field(m, Fail::Zone))?;
    let second = seconds.map_or(Ok(0), |s| int_field(s, Fail::Zone))?;
    // Without a colon, more than two digits run hours and minutes together (`+0530`).
    if minutes.is_none() && hours.len() > 2 {
        minute = hour % 100;
        hour /= 100;
    }
    if hour > MAX_TZDISP_HOUR || minute > 59 || second > 59 {
        return Err(Fail::Zone);
    }
    let east = (hour * 60 + minute) * 60 + second;
    Ok(if negative { -east } else { east })
}

/// `ValidateDate`: the era applied (1 BC is year 0), month and day checked against the calendar.
fn validate_date(year: i64, month: i64, day: i64, era: Option<bool>) -> Result<Ymd, Fail> {
    if year <= 0 {
        return Err(Fail::Field); // there is no year zero in AD/BC notation
    }
    let year = if era == Some(true) { 1 - year } else { year };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(Fail::Field);
    }
    Ok(Ymd { year, month, day })
}

/// Days in `month` of the astronomical `year` (proleptic Gregorian).
pub(super) const fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    //! Every expected value below is Postgres 15's answer (`SELECT '<text>'::<type>`, session in
    //! UTC with `DateStyle=ISO`), except the refusals of forms Postgres accepts but this module
    //! deliberately does not read (`today`, `allballs`, `24-02-29`, named zones).

    use super::*;

    fn date(text: &str) -> String {
        Date::parse(text).map_or_else(|e| e.to_string(), |v| v.to_string())
    }

    fn time(text: &str) -> String {
        Time::parse(text).map_or_else(|e| e.to_string(), |v| v.to_string())
    }

    fn timestamp(text: &str) -> String {
        Timestamp::parse(text).map_or_else(|e| e.to_string(), |v| v.to_string())
    }

    fn timestamptz(text: &str) -> String {
        Timestamptz::parse(text).map_or_else(|e| e.to_string(), |v| v.to_string())
    }

    #[test]
    fn postgres_iso_output_reads_back_to_itself() {
        for text in [
            "2024-02-29",
            "0044-03-15 BC",
            "12345-01-01",
            "infinity",
            "-infinity",
        ] {
            assert_eq!(date(text), text);
        }
        for text in ["12:34:56.789", "00:00:00", "24:00:00", "23:59:59.000001"] {
            assert_eq!(time(text), text);
        }
        for text in [
            "2024-02-29 12:34:56.123456",
            "0044-03-15 12:00:00 BC",
            "294276-12-31 23:59:59.999999",
        ] {
            assert_eq!(timestamp(text), text);
        }
        for text in [
            "2024-02-29 12:34:56+00",
            "0044-03-15 12:00:00+00 BC",
            "-infinity",
        ] {
            assert_eq!(timestamptz(text), text);
        }
    }

    #[test]
    fn internal_values_are_postgres_epoch_counts() {
        assert_eq!(Date::parse("2000-01-01"), Ok(Date(0)));
        assert_eq!(Date::parse("2024-02-29"), Ok(Date(8825)));
        assert_eq!(Date::parse("4714-11-24 BC"), Ok(Date(-2_451_545)));
        assert_eq!(
            Date::parse("0001-01-01 BC").map(|d| d.0 - Date::parse("0001-01-01").unwrap().0),
            Ok(-366)
        );
        assert_eq!(Date::parse(" Epoch "), Ok(Date(-10_957)));
        assert_eq!(Time::parse("24:00"), Ok(Time(86_400_000_000)));
        assert_eq!(
            Timestamp::parse("epoch"),
            Ok(Timestamp(-946_684_800_000_000))
        );
        assert_eq!(
            Timestamp::parse("4714-11-24 00:00:00 BC"),
            Ok(Timestamp(MIN_TIMESTAMP))
        );
        assert_eq!(
            Timestamptz::parse("2024-02-29 12:34:56.5+05:30"),
            Ok(Timestamptz(762_505_496_500_000))
        );
        assert_eq!(
            Timestamptz::parse(" -INFINITY "),
            Ok(Timestamptz::NEG_INFINITY)
        );
        assert_eq!(Date::parse("infinity"), Ok(Date::INFINITY));
    }

    #[test]
    fn iso_input_forms_read_as_postgres_reads_them() {
        assert_eq!(
            timestamptz("2024-02-29T12:34:56Z"),
            "2024-02-29 12:34:56+00"
        );
        assert_eq!(
            timestamptz("2024-02-29t12:34:56z"),
            "2024-02-29 12:34:56+00"
        );
        assert_eq!(timestamp("2024-02-29 12:34"), "2024-02-29 12:34:00");
        assert_eq!(timestamp("2024-02-29 1:2:3"), "2024-02-29 01:02:03");
        assert_eq!(
            timestamptz("2024-02-29 12:34:56.5 -08"),
            "2024-02-29 20:34:56.5+00"
        );
        assert_eq!(
            timestamptz("2024-02-29 12:34:56.5+05:30:15"),
            "2024-02-29 07:04:41.5+00"
        );
        assert_eq!(
            timestamptz("2024-01-01T12:00:00-15:59:59"),
            "2024-01-02 03:59:59+00"
        );
        assert_eq!(
            timestamptz("2024-02-29 12:00+0530"),
            "2024-02-29 06:30:00+00"
        );
        assert_eq!(timestamptz("2024-02-29"), "2024-02-29 00:00:00+00");
        assert_eq!(timestamptz("Epoch"), "1970-01-01 00:00:00+00");
        assert_eq!(date("2024-2-9"), "2024-02-09");
        assert_eq!(date("00044-03-15 BC"), "0044-03-15 BC");
        assert_eq!(date("2024-01-01bc"), "2024-01-01 BC");
        assert_eq!(timestamp("2024-01-01 12:00+05bc"), "2024-01-01 12:00:00 BC");
        assert_eq!(date("\x0b 2024-02-29\r\n"), "2024-02-29");
    }

    #[test]
    fn a_run_together_offset_of_three_digits_is_minutes() {
        // DecodeTimezone splits hours from minutes only after more than two digits: `+053` is 00:53.
        assert_eq!(
            timestamptz("2024-02-29 12:00+053"),
            "2024-02-29 11:07:00+00"
        );
        assert_eq!(
            timestamptz("2024-02-29 12:00+0000530"),
            "2024-02-29 06:30:00+00"
        );
    }

    #[test]
    fn timestamp_time_and_date_check_an_offset_then_ignore_it() {
        assert_eq!(timestamp("2024-02-29 12:34:56+05"), "2024-02-29 12:34:56");
        assert_eq!(time("12:34:56+05"), "12:34:56");
        assert_eq!(time("12:34:56 Z"), "12:34:56");
        assert_eq!(date("2024-02-29 12:00 -08"), "2024-02-29");
        assert_eq!(
            date("2024-02-29 12:00 +16"),
            "time zone displacement out of range: \"2024-02-29 12:00 +16\""
        );
    }

    #[test]
    fn fractional_seconds_round_half_to_even_on_the_double() {
        assert_eq!(time("12:34:56.0000005"), "12:34:56");
        assert_eq!(time("12:34:56.0000015"), "12:34:56.000002");
        assert_eq!(time("12:34:56.0000025"), "12:34:56.000002");
        assert_eq!(time("12:34:56.9999995"), "12:34:57");
        assert_eq!(
            timestamp("2024-02-29 12:34:56.123456789"),
            "2024-02-29 12:34:56.123457"
        );
        assert_eq!(
            timestamp("1999-12-31 23:59:59.9999995 BC"),
            "1998-01-01 00:00:00 BC"
        );
    }

    #[test]
    fn midnight_at_24_and_second_60_roll_over() {
        assert_eq!(time("24:00"), "24:00:00");
        assert_eq!(time("23:59:60"), "24:00:00");
        assert_eq!(time("23:59:59.9999999"), "24:00:00");
        assert_eq!(timestamp("2024-02-29 24:00"), "2024-03-01 00:00:00");
        assert_eq!(timestamp("2024-12-31 23:59:60"), "2025-01-01 00:00:00");
        assert_eq!(timestamp("1999-12-31 24:00:00"), "2000-01-01 00:00:00");
        assert_eq!(date("2024-02-29 24:00:00"), "2024-02-29");
    }

    #[test]
    fn a_time_past_24_hours_is_out_of_range() {
        let out = |t: &str| format!("date/time field value out of range: \"{t}\"");
        for text in [
            "25:00:00",
            "24:00:00.000001",
            "23:59:60.5",
            "12:60",
            "12:59:61",
        ] {
            assert_eq!(time(text), out(text));
        }
        let text = "2024-02-29 23:59:60.5";
        assert_eq!(date(text), out(text));
        let text = "2024-02-29 23:59:60.9999999";
        assert_eq!(timestamp(text), out(text));
    }

    #[test]
    fn calendar_errors_are_field_value_out_of_range() {
        let out = |t: &str| format!("date/time field value out of range: \"{t}\"");
        for text in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-01-00",
            "2024-01-32",
            "0000-01-01",
        ] {
            assert_eq!(date(text), out(text));
        }
        // 2024 BC is astronomical year -2023, not a leap year; 2025 BC is.
        assert_eq!(date("2024-02-29 BC"), out("2024-02-29 BC"));
        assert_eq!(date("2025-02-29 BC"), "2025-02-29 BC");
        assert_eq!(date("2147483648-01-01"), out("2147483648-01-01"));
    }

    #[test]
    fn errors_come_in_postgres_field_order() {
        // Fields are decoded left to right; the calendar is checked after all of them.
        assert_eq!(
            timestamptz("2024-02-30 12:00+16"),
            "time zone displacement out of range: \"2024-02-30 12:00+16\""
        );
        assert_eq!(
            timestamptz("2024-02-29 25:00 +16"),
            "date/time field value out of range: \"2024-02-29 25:00 +16\""
        );
        // time_in checks the whole time only at the end.
        assert_eq!(
            time("25:00:00+16"),
            "time zone displacement out of range: \"25:00:00+16\""
        );
    }

    #[test]
    fn range_limits_are_postgres_limits() {
        assert_eq!(date("4714-11-24 BC"), "4714-11-24 BC");
        assert_eq!(
            date("4714-11-23 BC"),
            "date out of range: \"4714-11-23 BC\""
        );
        assert_eq!(date("5874897-12-31"), "5874897-12-31");
        assert_eq!(
            date("5874898-01-01"),
            "date out of range: \"5874898-01-01\""
        );
        assert_eq!(
            date("2147483647-01-01"),
            "date out of range: \"2147483647-01-01\""
        );
        assert_eq!(
            timestamp("294276-12-31 23:59:59.999999"),
            "294276-12-31 23:59:59.999999"
        );
        let out = |t: &str| format!("timestamp out of range: \"{t}\"");
        for text in [
            "294277-01-01",
            "294276-12-31 23:59:59.9999995",
            "4714-11-23 23:59:59.999999 BC",
        ] {
            assert_eq!(timestamp(text), out(text));
        }
        // timestamptz checks the range after applying the offset.
        assert_eq!(
            timestamptz("4714-11-23 23:00:00-01 BC"),
            "4714-11-24 00:00:00+00 BC"
        );
        assert_eq!(
            timestamptz("4714-11-24 00:00:00+01 BC"),
            out("4714-11-24 00:00:00+01 BC")
        );
        assert_eq!(
            timestamptz("294276-12-31 23:59:59-01"),
            out("294276-12-31 23:59:59-01")
        );
    }

    #[test]
    fn offsets_beyond_fifteen_hours_fifty_nine_are_out_of_range() {
        let out = |t: &str| format!("time zone displacement out of range: \"{t}\"");
        for text in [
            "2024-02-29 12:00+16",
            "2024-02-29 12:00+15:60",
            "2024-02-29 12:00+05:30:60",
        ] {
            assert_eq!(timestamptz(text), out(text));
        }
        assert_eq!(
            timestamptz("2024-02-29 12:00+12345"),
            out("2024-02-29 12:00+12345")
        );
    }

    #[test]
    fn unsupported_forms_are_syntax_errors_with_the_type_name() {
        // Postgres reads `today`, `allballs`, `24-02-29` (DMY) and named zones; ampere refuses them.
        assert_eq!(
            date("today"),
            "invalid input syntax for type date: \"today\""
        );
        assert_eq!(
            date("24-02-29"),
            "invalid input syntax for type date: \"24-02-29\""
        );
        assert_eq!(
            time("epoch"),
            "invalid input syntax for type time: \"epoch\""
        );
        assert_eq!(
            time("allballs"),
            "invalid input syntax for type time: \"allballs\""
        );
        assert_eq!(
            time("12:34.5"),
            "invalid input syntax for type time: \"12:34.5\""
        );
        assert_eq!(
            timestamp("+infinity"),
            "invalid input syntax for type timestamp: \"+infinity\""
        );
        assert_eq!(
            timestamp("2024-01-01 12:00Zbc"),
            "invalid input syntax for type timestamp: \"2024-01-01 12:00Zbc\""
        );
        assert_eq!(
            timestamptz("2024-02-29 12:00 America/New_York"),
            "invalid input syntax for type timestamp with time zone: \"2024-02-29 12:00 America/New_York\""
        );
        assert_eq!(
            timestamptz(""),
            "invalid input syntax for type timestamp with time zone: \"\""
        );
    }

    #[test]
    fn input_longer_than_postgres_field_buffer_is_a_syntax_error() {
        // date_in and time_in hold 129 bytes of fields, timestamp_in and timestamptz_in 153.
        let longest_date = format!("{}2024-02-29", "0".repeat(118));
        assert_eq!(date(&longest_date), "2024-02-29");
        let too_long = format!("0{longest_date}");
        assert_eq!(
            date(&too_long),
            format!("invalid input syntax for type date: \"{too_long}\"")
        );
        let longest_timestamp = format!("{}2024-02-29", "0".repeat(142));
        assert_eq!(timestamp(&longest_timestamp), "2024-02-29 00:00:00");
        assert!(timestamp(&format!("0{longest_timestamp}")).starts_with("invalid input syntax"));
    }

    #[test]
    fn conversions_follow_postgres_casts() {
        let d = |t: &str| Date::parse(t).unwrap();
        let ts = |t: &str| Timestamp::parse(t).unwrap();
        let tz = |t: &str| Timestamptz::parse(t).unwrap();
        assert_eq!(
            d("294276-12-31").to_timestamp().unwrap().to_string(),
            "294276-12-31 00:00:00"
        );
        assert_eq!(
            d("294277-01-01").to_timestamp(),
            Err(DateTimeError::DateOutOfRangeForTimestamp)
        );
        assert_eq!(
            d("294277-01-01").to_timestamptz().unwrap_err().to_string(),
            "date out of range for timestamp"
        );
        assert_eq!(
            d("0044-03-15 BC").to_timestamptz().unwrap().to_string(),
            "0044-03-15 00:00:00+00 BC"
        );
        assert_eq!(d("-infinity").to_timestamp(), Ok(Timestamp::NEG_INFINITY));
        assert_eq!(
            ts("0044-03-15 23:59:59.5 BC").to_date().to_string(),
            "0044-03-15 BC"
        );
        assert_eq!(ts("infinity").to_date(), Date::INFINITY);
        assert_eq!(
            ts("1999-12-31 13:14:15.5").to_time().map(|t| t.to_string()),
            Some("13:14:15.5".into())
        );
        assert_eq!(ts("infinity").to_time(), None);
        assert_eq!(
            ts("2024-02-29 12:00").to_timestamptz().to_string(),
            "2024-02-29 12:00:00+00"
        );
        assert_eq!(
            tz("2024-02-29 01:00+05").to_date().to_string(),
            "2024-02-28"
        );
        assert_eq!(
            tz("2024-02-29 01:00+05").to_time(),
            Some(Time(20 * 3_600_000_000))
        );
        assert_eq!(
            tz("2024-02-29 01:00+05").to_timestamp().to_string(),
            "2024-02-28 20:00:00"
        );
        assert_eq!(tz("-infinity").to_time(), None);
    }

    #[test]
    fn ordering_is_integer_ordering_with_infinities_outermost() {
        let mut values: Vec<Timestamp> = [
            "infinity",
            "2024-01-01",
            "-infinity",
            "0001-01-01 BC",
            "1999-12-31 24:00",
        ]
        .iter()
        .map(|t| Timestamp::parse(t).unwrap())
        .collect();
        values.sort();
        let shown: Vec<String> = values.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "-infinity",
                "0001-01-01 00:00:00 BC",
                "2000-01-01 00:00:00",
                "2024-01-01 00:00:00",
                "infinity"
            ]
        );
    }
}
