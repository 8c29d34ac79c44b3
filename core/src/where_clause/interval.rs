//! Postgres's `interval` type and the date/time arithmetic around it, exactly as Postgres 15
//! computes it with `IntervalStyle=iso_8601`, `TimeZone=UTC` and `DateStyle=ISO`.
//!
//! [`Interval`] keeps Postgres's own representation (months, days, microseconds). Reading a text
//! follows `interval_in` step for step: the postgres-style words and clock fields a user writes
//! (`1 day`, `-1 day +02:00`, `@ 1 hour ago`, `1.5 days`, `1-2`, `10:00`, every unit spelling
//! Postgres knows), then, when that reading fails on syntax, ISO 8601 with designators
//! (`P1Y2M3DT4H5M6.5S`) or in the alternative format (`P0001-02-03T04:05:06`). Fractional units
//! cascade down and round the way Postgres's C code does, and every refusal carries Postgres's own
//! message. Printing is Postgres's `iso_8601` output, which reads back to the same value.
//!
//! Comparison, equality and hashing use Postgres's `interval_cmp_value` (months count 30 days, days
//! 24 hours), so `1 month` equals `30 days`. The arithmetic functions carry Postgres's names
//! (`timestamp_pl_interval`, `interval_mul`, `interval_justify_hours`, ...) and reproduce its
//! rounding, month-end clamping, overflow checks and error messages, including the 32-bit and
//! 64-bit wrap-arounds Postgres (built with `-fwrapv`) performs silently in a few corners.
//!
//! Postgres 17 added `infinity` and `-infinity` intervals, stored as the field triples at the
//! very ends of the range ([`Interval::NOEND`], [`Interval::NOBEGIN`]), and changed the
//! arithmetic around them; [`pg17`] holds its versions of the functions, chosen by
//! [`Dialect`]. The plain functions are Postgres 15's (also 14's and 16's).
//!
//! This module never reads a clock, a time zone database or a session setting: the session time
//! zone is UTC, so `timestamptz` arithmetic is `timestamp` arithmetic on the same microseconds.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use super::datetime::{
    date2j, days_in_month, is_space, is_valid_julian, j2date, Date, Time, Timestamp, Timestamptz,
    DATE_END_JULIAN, END_TIMESTAMP, MIN_TIMESTAMP, POSTGRES_EPOCH_JDATE, USECS_PER_DAY,
    USECS_PER_SEC,
};
use super::types::Dialect;

const USECS_PER_MINUTE: i64 = 60_000_000;
const USECS_PER_HOUR: i64 = 3_600_000_000;
const MONTHS_PER_YEAR: i32 = 12;
const DAYS_PER_MONTH: i32 = 30;
const SECS_PER_DAY: f64 = 86_400.0;
/// Size of `interval_in`'s field buffer (`workbuf`), terminators included.
const WORKBUF_LEN: usize = 256;
/// `MAXDATEFIELDS`: most fields `ParseDateTime` splits a text into.
const MAX_DATE_FIELDS: usize = 25;
/// `TOKMAXLEN`: unit words are compared on their first ten letters.
const TOKMAXLEN: usize = 10;

/// A Postgres `interval`: months, days and microseconds, kept apart as Postgres keeps them.
///
/// Equality, ordering and hashing compare [`Interval::span`], as Postgres's `interval_cmp` does.
#[derive(Clone, Copy, Debug, Default)]
pub struct Interval {
    /// Whole months (a year is 12).
    pub months: i32,
    /// Whole days, independent of the months.
    pub days: i32,
    /// Microseconds, independent of the days.
    pub micros: i64,
}

/// Why an interval could not be read or computed. `Display` is Postgres's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntervalError {
    /// `invalid input syntax for type interval: "<text>"`.
    InvalidSyntax {
        /// The input text, verbatim.
        text: String,
    },
    /// `interval field value out of range: "<text>"` (a field overflows while reading).
    FieldOutOfRange {
        /// The input text, verbatim.
        text: String,
    },
    /// `interval out of range`.
    IntervalOutOfRange,
    /// `timestamp out of range`.
    TimestampOutOfRange,
    /// `date out of range`.
    DateOutOfRange,
    /// `date out of range for timestamp`.
    DateOutOfRangeForTimestamp,
    /// `division by zero`.
    DivisionByZero,
    /// `cannot subtract infinite timestamps`.
    InfiniteTimestamps,
    /// `cannot subtract infinite dates`.
    InfiniteDates,
    /// `cannot add infinite interval to time` (Postgres 17).
    InfiniteIntervalToTime,
    /// `cannot subtract infinite interval from time` (Postgres 17).
    InfiniteIntervalFromTime,
}

impl fmt::Display for IntervalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSyntax { text } => {
                write!(f, "invalid input syntax for type interval: \"{text}\"")
            }
            Self::FieldOutOfRange { text } => {
                write!(f, "interval field value out of range: \"{text}\"")
            }
            Self::IntervalOutOfRange => f.write_str("interval out of range"),
            Self::TimestampOutOfRange => f.write_str("timestamp out of range"),
            Self::DateOutOfRange => f.write_str("date out of range"),
            Self::DateOutOfRangeForTimestamp => f.write_str("date out of range for timestamp"),
            Self::DivisionByZero => f.write_str("division by zero"),
            Self::InfiniteTimestamps => f.write_str("cannot subtract infinite timestamps"),
            Self::InfiniteDates => f.write_str("cannot subtract infinite dates"),
            Self::InfiniteIntervalToTime => f.write_str("cannot add infinite interval to time"),
            Self::InfiniteIntervalFromTime => {
                f.write_str("cannot subtract infinite interval from time")
            }
        }
    }
}

impl std::error::Error for IntervalError {}

impl Interval {
    /// The zero interval (`PT0S`).
    pub const ZERO: Self = Self::new(0, 0, 0);

    /// The interval of `months` months, `days` days and `micros` microseconds.
    pub const fn new(months: i32, days: i32, micros: i64) -> Self {
        Self {
            months,
            days,
            micros,
        }
    }

    /// Postgres 17's `-infinity` (`INTERVAL_NOBEGIN`): every field at its minimum. Before 17,
    /// the same fields are an ordinary (finite) interval.
    pub const NOBEGIN: Self = Self::new(i32::MIN, i32::MIN, i64::MIN);
    /// Postgres 17's `infinity` (`INTERVAL_NOEND`): every field at its maximum.
    pub const NOEND: Self = Self::new(i32::MAX, i32::MAX, i64::MAX);

    /// `INTERVAL_IS_NOBEGIN`.
    pub const fn is_nobegin(self) -> bool {
        self.months == i32::MIN && self.days == i32::MIN && self.micros == i64::MIN
    }

    /// `INTERVAL_IS_NOEND`.
    pub const fn is_noend(self) -> bool {
        self.months == i32::MAX && self.days == i32::MAX && self.micros == i64::MAX
    }

    /// `!INTERVAL_NOT_FINITE` (in Postgres 17's terms).
    pub const fn is_finite(self) -> bool {
        !self.is_nobegin() && !self.is_noend()
    }

    /// Postgres 15's `interval_in` (no typmod): the interval `text` denotes, or Postgres's
    /// error; `infinity` is a syntax error.
    pub fn parse(text: &str) -> Result<Self, IntervalError> {
        Self::parse_in(text, Dialect::UpTo16)
    }

    /// `interval_in` of the Postgres of `dialect`: from 17, a text that is `infinity`,
    /// `+infinity` or `-infinity` (any case, after ignorable `@` and punctuation, and with
    /// nothing after it) is an infinite interval.
    pub fn parse_in(text: &str, dialect: Dialect) -> Result<Self, IntervalError> {
        let decoded = match parse_date_time(text.as_bytes()) {
            Ok(fields) => match infinite_interval(&fields) {
                Some(infinite) if dialect.has_infinite_intervals() => return Ok(infinite),
                _ => decode_interval(&fields),
            },
            Err(e) => Err(e),
        };
        let decoded = match decoded {
            Err(Dterr::BadFormat) => decode_iso8601_interval(text.as_bytes()),
            other => other,
        };
        match decoded {
            Ok(itm) => itm.to_interval(),
            Err(Dterr::BadFormat) => Err(IntervalError::InvalidSyntax { text: text.into() }),
            Err(Dterr::FieldOverflow) => Err(IntervalError::FieldOutOfRange { text: text.into() }),
        }
    }

    /// Postgres's `interval_cmp_value`: the length counting a month as 30 days and a day as 24
    /// hours, in microseconds; this is what comparison, equality and hashing use.
    pub const fn span(self) -> i128 {
        let days = self.months as i128 * DAYS_PER_MONTH as i128 + self.days as i128;
        days * USECS_PER_DAY as i128 + self.micros as i128
    }

    /// Postgres's `interval_pl` (`+`): field-wise sum; `interval out of range` on overflow.
    pub fn checked_add(self, other: Self) -> Result<Self, IntervalError> {
        Ok(Self {
            months: self
                .months
                .checked_add(other.months)
                .ok_or(INTERVAL_RANGE)?,
            days: self.days.checked_add(other.days).ok_or(INTERVAL_RANGE)?,
            micros: self
                .micros
                .checked_add(other.micros)
                .ok_or(INTERVAL_RANGE)?,
        })
    }

    /// Postgres's `interval_mi` (`-`): field-wise difference; `interval out of range` on overflow.
    pub fn checked_sub(self, other: Self) -> Result<Self, IntervalError> {
        Ok(Self {
            months: self
                .months
                .checked_sub(other.months)
                .ok_or(INTERVAL_RANGE)?,
            days: self.days.checked_sub(other.days).ok_or(INTERVAL_RANGE)?,
            micros: self
                .micros
                .checked_sub(other.micros)
                .ok_or(INTERVAL_RANGE)?,
        })
    }

    /// Postgres's `interval_um` (unary `-`); `interval out of range` for a minimal field.
    pub fn checked_neg(self) -> Result<Self, IntervalError> {
        Ok(Self {
            months: self.months.checked_neg().ok_or(INTERVAL_RANGE)?,
            days: self.days.checked_neg().ok_or(INTERVAL_RANGE)?,
            micros: self.micros.checked_neg().ok_or(INTERVAL_RANGE)?,
        })
    }

    /// Postgres's `interval_mul` (`interval * float8`, also `float8 * interval`): each field
    /// scaled, the fractions of months and days cascaded down to days and microseconds.
    pub fn checked_mul(self, factor: f64) -> Result<Self, IntervalError> {
        let months = whole_field(f64::from(self.months) * factor)?;
        let days = whole_field(f64::from(self.days) * factor)?;
        let (days, sec_remainder) = cascade(
            (f64::from(self.months) * factor, months),
            (f64::from(self.days) * factor, days),
        );
        // `span->time * factor` in C converts the int64 to double first.
        let micros =
            (self.micros as f64 * factor + sec_remainder * USECS_PER_SEC as f64).round_ties_even();
        Ok(Self {
            months,
            days,
            micros: micros_field(micros)?,
        })
    }

    /// Postgres's `interval_div` (`interval / float8`): like [`Interval::checked_mul`] by `1 / factor`
    /// but dividing each field; `division by zero` when `factor` is zero.
    pub fn checked_div(self, factor: f64) -> Result<Self, IntervalError> {
        if factor == 0.0 {
            return Err(IntervalError::DivisionByZero);
        }
        let months = whole_field(f64::from(self.months) / factor)?;
        let days = whole_field(f64::from(self.days) / factor)?;
        let (days, sec_remainder) = cascade(
            (f64::from(self.months) / factor, months),
            (f64::from(self.days) / factor, days),
        );
        let micros =
            (self.micros as f64 / factor + sec_remainder * USECS_PER_SEC as f64).round_ties_even();
        Ok(Self {
            months,
            days,
            micros: micros_field(micros)?,
        })
    }

    /// Postgres's `justify_hours`: whole 24-hour periods of the microseconds become days, and
    /// days and time end up with the same sign.
    pub fn justify_hours(self) -> Result<Self, IntervalError> {
        let mut result = self;
        let whole_days = result.micros / USECS_PER_DAY;
        result.micros -= whole_days * USECS_PER_DAY;
        // |whole_days| <= i64::MAX / USECS_PER_DAY < 1.1e8.
        result.days = result
            .days
            .checked_add(whole_days as i32)
            .ok_or(INTERVAL_RANGE)?;
        Ok(result.same_sign_days_and_time())
    }

    /// Postgres's `justify_days`: whole 30-day periods become months, and months and days end up
    /// with the same sign.
    pub fn justify_days(self) -> Result<Self, IntervalError> {
        let mut result = self.days_to_months()?;
        if result.months > 0 && result.days < 0 {
            result.days += DAYS_PER_MONTH;
            result.months -= 1;
        } else if result.months < 0 && result.days > 0 {
            result.days -= DAYS_PER_MONTH;
            result.months += 1;
        }
        Ok(result)
    }

    /// Postgres's `justify_interval`: `justify_hours` then `justify_days`, with all three fields
    /// ending up with the same sign.
    pub fn justify_interval(self) -> Result<Self, IntervalError> {
        let mut result = self;
        if (result.days > 0 && result.micros > 0) || (result.days < 0 && result.micros < 0) {
            result = result.days_to_months()?;
        }
        let whole_days = result.micros / USECS_PER_DAY;
        result.micros -= whole_days * USECS_PER_DAY;
        // Either |days| < 30 now or days and time had opposite signs: no overflow.
        result.days = result.days.wrapping_add(whole_days as i32);
        result = result.days_to_months()?;
        if result.months > 0 && (result.days < 0 || (result.days == 0 && result.micros < 0)) {
            result.days += DAYS_PER_MONTH;
            result.months -= 1;
        } else if result.months < 0 && (result.days > 0 || (result.days == 0 && result.micros > 0))
        {
            result.days -= DAYS_PER_MONTH;
            result.months += 1;
        }
        Ok(result.same_sign_days_and_time())
    }

    /// Moves whole 30-day periods of the days into the months.
    fn days_to_months(self) -> Result<Self, IntervalError> {
        let whole_months = self.days / DAYS_PER_MONTH;
        Ok(Self {
            months: self
                .months
                .checked_add(whole_months)
                .ok_or(INTERVAL_RANGE)?,
            days: self.days - whole_months * DAYS_PER_MONTH,
            micros: self.micros,
        })
    }

    /// Borrows one day so that days and microseconds do not have opposite signs.
    const fn same_sign_days_and_time(mut self) -> Self {
        if self.days > 0 && self.micros < 0 {
            self.micros += USECS_PER_DAY;
            self.days -= 1;
        } else if self.days < 0 && self.micros > 0 {
            self.micros -= USECS_PER_DAY;
            self.days += 1;
        }
        self
    }

    /// The same interval with every field negated as C negates with `-fwrapv` (the minimum stays
    /// the minimum), as `timestamp_mi_interval` does before adding.
    const fn wrapping_neg(self) -> Self {
        Self {
            months: self.months.wrapping_neg(),
            days: self.days.wrapping_neg(),
            micros: self.micros.wrapping_neg(),
        }
    }
}

const INTERVAL_RANGE: IntervalError = IntervalError::IntervalOutOfRange;

/// `interval_mul`'s check of a scaled month or day count (`FLOAT8_FITS_IN_INT32`: up to `2^31`
/// exclusive, so `2147483647.5` truncates to `i32::MAX`), then C's truncation to `int32`.
fn whole_field(value: f64) -> Result<i32, IntervalError> {
    if value.is_nan() || value < f64::from(i32::MIN) || value >= -f64::from(i32::MIN) {
        return Err(INTERVAL_RANGE);
    }
    // In range and not NaN, so the truncating cast is exact C semantics.
    Ok(value as i32)
}

/// `FLOAT8_FITS_IN_INT64` then the cast, for the rounded microseconds of `interval_mul`.
fn micros_field(value: f64) -> Result<i64, IntervalError> {
    let limit = -(i64::MIN as f64);
    if value.is_nan() || value < i64::MIN as f64 || value >= limit {
        return Err(INTERVAL_RANGE);
    }
    Ok(value as i64)
}

/// `TSROUND`: rounds to the nearest millionth, as Postgres does before cascading fractions.
fn tsround(value: f64) -> f64 {
    (value * 1_000_000.0).round_ties_even() / 1_000_000.0
}

/// The fraction cascade of `interval_mul` / `interval_div`: given each scaled month and day count
/// with its truncation, the days (whole part plus cascaded days) and the seconds left over.
fn cascade(months: (f64, i32), days: (f64, i32)) -> (i32, f64) {
    let month_remainder_days = tsround((months.0 - f64::from(months.1)) * 30.0);
    let month_whole_days = month_remainder_days as i32;
    let mut sec_remainder = tsround(
        (days.0 - f64::from(days.1) + month_remainder_days - f64::from(month_whole_days))
            * SECS_PER_DAY,
    );
    let mut result_days = days.1;
    if sec_remainder.abs() >= SECS_PER_DAY {
        let extra = (sec_remainder / SECS_PER_DAY) as i32;
        result_days = result_days.wrapping_add(extra);
        sec_remainder -= f64::from(extra) * SECS_PER_DAY;
    }
    (result_days.wrapping_add(month_whole_days), sec_remainder)
}

impl PartialEq for Interval {
    fn eq(&self, other: &Self) -> bool {
        self.span() == other.span()
    }
}

impl Eq for Interval {}

impl PartialOrd for Interval {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Interval {
    fn cmp(&self, other: &Self) -> Ordering {
        self.span().cmp(&other.span())
    }
}

impl Hash for Interval {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.span().hash(state);
    }
}

impl FromStr for Interval {
    type Err = IntervalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Output: EncodeInterval in INTSTYLE_ISO_8601.

impl fmt::Display for Interval {
    /// `interval_out`: `infinity` / `-infinity` for the infinite intervals (Postgres 17's
    /// `EncodeSpecialInterval`; before 17 these field triples printed as very long finite
    /// intervals, which no where clause in the differential corpus reaches), else ISO 8601.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_nobegin() {
            return f.write_str("-infinity");
        }
        if self.is_noend() {
            return f.write_str("infinity");
        }
        let years = self.months / MONTHS_PER_YEAR;
        let months = self.months % MONTHS_PER_YEAR;
        let hours = self.micros / USECS_PER_HOUR;
        let minutes = self.micros % USECS_PER_HOUR / USECS_PER_MINUTE;
        let seconds = self.micros % USECS_PER_MINUTE / USECS_PER_SEC;
        let fraction = self.micros % USECS_PER_SEC;
        let has_time = self.micros != 0;
        if self.months == 0 && self.days == 0 && !has_time {
            return f.write_str("PT0S");
        }
        f.write_str("P")?;
        write_part(f, i64::from(years), 'Y')?;
        write_part(f, i64::from(months), 'M')?;
        write_part(f, i64::from(self.days), 'D')?;
        if has_time {
            f.write_str("T")?;
        }
        write_part(f, hours, 'H')?;
        write_part(f, minutes, 'M')?;
        if seconds != 0 || fraction != 0 {
            if seconds < 0 || fraction < 0 {
                f.write_str("-")?;
            }
            write!(f, "{}", seconds.unsigned_abs())?;
            if fraction != 0 {
                let digits = format!("{:06}", fraction.unsigned_abs());
                write!(f, ".{}", digits.trim_end_matches('0'))?;
            }
            f.write_str("S")?;
        }
        Ok(())
    }
}

/// `AddISO8601IntPart`: `<value><unit>` unless the value is zero.
fn write_part(f: &mut fmt::Formatter<'_>, value: i64, unit: char) -> fmt::Result {
    if value != 0 {
        write!(f, "{value}{unit}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Input, part 1: ParseDateTime, splitting the text into typed fields.

/// Postgres's internal `DTERR_*` codes that `interval_in` distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dterr {
    /// `DTERR_BAD_FORMAT`: a syntax error (and, from the postgres-style reader, "try ISO 8601").
    BadFormat,
    /// `DTERR_FIELD_OVERFLOW`: reported as `interval field value out of range`.
    FieldOverflow,
}

/// `ParseDateTime`'s field types (`DTK_NUMBER`, `DTK_STRING`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ftype {
    Number,
    String,
    Date,
    Time,
    Tz,
    Special,
}

/// One field of the text, lowercased where Postgres lowercases it.
#[derive(Debug)]
struct Field {
    ftype: Ftype,
    text: Vec<u8>,
}

/// `ParseDateTime`'s output buffer: fields plus the byte budget of `workbuf`.
struct Splitter {
    fields: Vec<Field>,
    used: usize,
}

impl Splitter {
    /// `APPEND_CHAR`: a field byte, refused when `workbuf` (with a terminator) would overflow.
    fn push(&mut self, byte: u8) -> Result<(), Dterr> {
        if self.used + 1 >= WORKBUF_LEN {
            return Err(Dterr::BadFormat);
        }
        self.used += 1;
        if let Some(field) = self.fields.last_mut() {
            field.text.push(byte);
        }
        Ok(())
    }

    /// Starts a field (`MAXDATEFIELDS` of them at most).
    fn start(&mut self, ftype: Ftype) -> Result<(), Dterr> {
        if self.fields.len() >= MAX_DATE_FIELDS {
            return Err(Dterr::BadFormat);
        }
        self.fields.push(Field {
            ftype,
            text: Vec::new(),
        });
        Ok(())
    }

    fn set_type(&mut self, ftype: Ftype) {
        if let Some(field) = self.fields.last_mut() {
            field.ftype = ftype;
        }
    }

    /// The field's terminating NUL, which takes a byte of `workbuf` unchecked.
    fn finish(&mut self) {
        self.used += 1;
    }
}

/// Postgres's `ParseDateTime`: the text's fields, or `BadFormat`.
fn parse_date_time(text: &[u8]) -> Result<Vec<Field>, Dterr> {
    let mut out = Splitter {
        fields: Vec::new(),
        used: 0,
    };
    let mut pos = 0;
    while let Some(&b) = text.get(pos) {
        if is_space(b) || (b.is_ascii_punctuation() && !matches!(b, b'.' | b'+' | b'-')) {
            pos += 1;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-')) {
            return Err(Dterr::BadFormat);
        }
        out.start(Ftype::Number)?;
        pos = if b.is_ascii_digit() {
            split_numeric(text, pos, &mut out)?
        } else if b == b'.' {
            split_fraction(text, pos, &mut out)?
        } else if b.is_ascii_alphabetic() {
            split_word(text, pos, &mut out)?
        } else {
            split_signed(text, pos, &mut out)?
        };
        out.finish();
    }
    Ok(out.fields)
}

/// Pushes bytes from `pos` while `keep` holds (lowercased when `lower`); returns the new position.
fn push_while(
    text: &[u8],
    mut pos: usize,
    out: &mut Splitter,
    lower: bool,
    keep: impl Fn(u8) -> bool,
) -> Result<usize, Dterr> {
    while let Some(&b) = text.get(pos).filter(|&&b| keep(b)) {
        out.push(if lower { b.to_ascii_lowercase() } else { b })?;
        pos += 1;
    }
    Ok(pos)
}

/// A field starting with a digit: a number, a time (`hh:mm...`) or a date-like `1-2`, `1.5`.
fn split_numeric(text: &[u8], pos: usize, out: &mut Splitter) -> Result<usize, Dterr> {
    let pos = push_while(text, pos, out, false, |b| b.is_ascii_digit())?;
    match text.get(pos).copied() {
        Some(b':') => {
            out.set_type(Ftype::Time);
            push_while(text, pos, out, false, |b| {
                b.is_ascii_digit() || b == b':' || b == b'.'
            })
        }
        Some(delim @ (b'-' | b'/' | b'.')) => split_delimited(text, pos, out, delim),
        _ => Ok(pos),
    }
}

/// The rest of a digit field after its first `-`, `/` or `.` delimiter.
fn split_delimited(text: &[u8], pos: usize, out: &mut Splitter, delim: u8) -> Result<usize, Dterr> {
    out.push(delim)?;
    let pos = pos + 1;
    if !text.get(pos).is_some_and(u8::is_ascii_digit) {
        out.set_type(Ftype::Date);
        return push_while(text, pos, out, true, |b| {
            b.is_ascii_alphanumeric() || b == delim
        });
    }
    out.set_type(if delim == b'.' {
        Ftype::Number
    } else {
        Ftype::Date
    });
    let pos = push_while(text, pos, out, false, |b| b.is_ascii_digit())?;
    if text.get(pos) != Some(&delim) {
        return Ok(pos);
    }
    out.set_type(Ftype::Date);
    push_while(text, pos, out, false, |b| b.is_ascii_digit() || b == delim)
}

/// A field starting with `.`: fractional digits.
fn split_fraction(text: &[u8], pos: usize, out: &mut Splitter) -> Result<usize, Dterr> {
    out.push(b'.')?;
    push_while(text, pos + 1, out, false, |b| b.is_ascii_digit())
}

/// A field starting with a letter: a word, or a date-like / zone-like token.
fn split_word(text: &[u8], pos: usize, out: &mut Splitter) -> Result<usize, Dterr> {
    out.set_type(Ftype::String);
    let start = pos;
    let pos = push_while(text, pos, out, true, |b| b.is_ascii_alphabetic())?;
    let is_date = match text.get(pos).copied() {
        Some(b'-' | b'/' | b'.') => true,
        Some(b) if b == b'+' || b.is_ascii_digit() => {
            !is_date_keyword(&text[start..pos].to_ascii_lowercase())
        }
        _ => false,
    };
    if !is_date {
        return Ok(pos);
    }
    out.set_type(Ftype::Date);
    out.push(text[pos].to_ascii_lowercase())?;
    push_while(text, pos + 1, out, true, |b| {
        matches!(b, b'+' | b'-' | b'/' | b'_' | b'.' | b':') || b.is_ascii_alphanumeric()
    })
}

/// A field starting with `+` or `-`: a signed number / time (`DTK_TZ`) or a signed word.
fn split_signed(text: &[u8], pos: usize, out: &mut Splitter) -> Result<usize, Dterr> {
    out.push(text[pos])?;
    let mut pos = pos + 1;
    while text.get(pos).copied().is_some_and(is_space) {
        pos += 1;
    }
    match text.get(pos).copied() {
        Some(b) if b.is_ascii_digit() => {
            out.set_type(Ftype::Tz);
            out.push(b)?;
            push_while(text, pos + 1, out, false, |b| {
                b.is_ascii_digit() || matches!(b, b':' | b'.' | b'-')
            })
        }
        Some(b) if b.is_ascii_alphabetic() => {
            out.set_type(Ftype::Special);
            push_while(text, pos, out, true, |b| b.is_ascii_alphabetic())
        }
        _ => Err(Dterr::BadFormat),
    }
}

/// Postgres's `datetktbl` words (date keywords), compared on their first ten letters.
#[rustfmt::skip]
const DATETKTBL: &[&str] = &[
    "-infinity", "ad", "allballs", "am", "apr", "april", "at", "aug", "august", "bc", "d", "dec",
    "december", "dow", "doy", "dst", "epoch", "feb", "february", "fri", "friday", "h", "infinity",
    "isodow", "isoyear", "j", "jan", "january", "jd", "jul", "julian", "july", "jun", "june", "m",
    "mar", "march", "may", "mm", "mon", "monday", "nov", "november", "now", "oct", "october",
    "on", "pm", "s", "sat", "saturday", "sep", "sept", "september", "sun", "sunday", "t", "thu",
    "thur", "thurs", "thursday", "today", "tomorrow", "tue", "tues", "tuesday", "wed",
    "wednesday", "weds", "y", "yesterday", "z", "zulu",
];

/// Whether a word is in Postgres's `datetktbl` (compared on its first ten letters), which keeps
/// `ParseDateTime` from gluing a following digit or `+` onto it.
fn is_date_keyword(word: &[u8]) -> bool {
    let key = &word[..word.len().min(TOKMAXLEN)];
    DATETKTBL.iter().any(|t| t.as_bytes() == key)
}

// ---------------------------------------------------------------------------------------------
// Input, part 2: DecodeInterval, reading the fields right to left.

/// Postgres's `pg_itm_in`: the fields accumulated while reading an interval.
#[derive(Debug, Default, Clone, Copy)]
struct ItmIn {
    usec: i64,
    mday: i32,
    mon: i32,
    year: i32,
}

impl ItmIn {
    /// `itmin2interval`: years and months folded into months; `interval out of range`.
    fn to_interval(self) -> Result<Interval, IntervalError> {
        let total = i64::from(self.year) * i64::from(MONTHS_PER_YEAR) + i64::from(self.mon);
        Ok(Interval {
            months: i32::try_from(total).map_err(|_| INTERVAL_RANGE)?,
            days: self.mday,
            micros: self.usec,
        })
    }

    /// `AdjustFractMicroseconds`: `frac * scale` microseconds, rounded half away from zero.
    fn fract_micros(&mut self, frac: f64, scale: i64) -> Result<(), Dterr> {
        if frac == 0.0 {
            return Ok(());
        }
        let frac = frac * scale as f64;
        // C's (int64) cast; |frac| < 1 * scale, well in range.
        let mut usec = frac as i64;
        let rest = frac - usec as f64;
        if rest > 0.5 {
            usec += 1;
        } else if rest < -0.5 {
            usec -= 1;
        }
        self.usec = self.usec.checked_add(usec).ok_or(Dterr::FieldOverflow)?;
        Ok(())
    }

    /// `AdjustFractDays`: `frac * scale` days, the fraction of a day cascading to microseconds.
    fn fract_days(&mut self, frac: f64, scale: i32) -> Result<(), Dterr> {
        if frac == 0.0 {
            return Ok(());
        }
        let frac = frac * f64::from(scale);
        let extra = frac as i32;
        self.mday = self.mday.checked_add(extra).ok_or(Dterr::FieldOverflow)?;
        self.fract_micros(frac - f64::from(extra), USECS_PER_DAY)
    }

    /// `AdjustFractYears`: `frac * scale` years as whole months, rounded (`rint`).
    fn fract_years(&mut self, frac: f64, scale: i32) -> Result<(), Dterr> {
        let extra = (frac * f64::from(scale) * f64::from(MONTHS_PER_YEAR)).round_ties_even();
        self.mon = self
            .mon
            .checked_add(extra as i32)
            .ok_or(Dterr::FieldOverflow)?;
        Ok(())
    }

    /// `AdjustMicroseconds`: `(val + fval) * scale` microseconds.
    fn micros(&mut self, val: i64, fval: f64, scale: i64) -> Result<(), Dterr> {
        self.usec = val
            .checked_mul(scale)
            .and_then(|v| v.checked_add(self.usec))
            .ok_or(Dterr::FieldOverflow)?;
        self.fract_micros(fval, scale)
    }

    /// `AdjustDays`: `val * scale` days.
    fn days(&mut self, val: i64, scale: i32) -> Result<(), Dterr> {
        self.mday = i32::try_from(val)
            .ok()
            .and_then(|v| v.checked_mul(scale))
            .and_then(|v| v.checked_add(self.mday))
            .ok_or(Dterr::FieldOverflow)?;
        Ok(())
    }

    /// `AdjustMonths`: `val` months.
    fn months(&mut self, val: i64) -> Result<(), Dterr> {
        self.mon = i32::try_from(val)
            .ok()
            .and_then(|v| v.checked_add(self.mon))
            .ok_or(Dterr::FieldOverflow)?;
        Ok(())
    }

    /// `AdjustYears`: `val * scale` years.
    fn years(&mut self, val: i64, scale: i32) -> Result<(), Dterr> {
        self.year = i32::try_from(val)
            .ok()
            .and_then(|v| v.checked_mul(scale))
            .and_then(|v| v.checked_add(self.year))
            .ok_or(Dterr::FieldOverflow)?;
        Ok(())
    }
}

/// The units of `deltatktbl`, Postgres's table of interval words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
    Decade,
    Century,
    Millennium,
    /// Units Postgres knows as words but refuses in an interval (`quarter`, `timezone`, ...),
    /// and the "unit" `ago` leaves behind.
    Unusable,
}

/// What a word of the text is (`DecodeUnits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Units(Unit),
    Ago,
    Ignore,
    Unknown,
}

/// Postgres's `deltatktbl`: the interval unit words (besides `ago` and `@`).
#[rustfmt::skip]
const DELTATKTBL: &[(&str, Unit)] = &[
    ("c", Unit::Century), ("cent", Unit::Century), ("centuries", Unit::Century),
    ("century", Unit::Century), ("d", Unit::Day), ("day", Unit::Day), ("days", Unit::Day),
    ("dec", Unit::Decade), ("decade", Unit::Decade), ("decades", Unit::Decade),
    ("decs", Unit::Decade), ("h", Unit::Hour), ("hour", Unit::Hour), ("hours", Unit::Hour),
    ("hr", Unit::Hour), ("hrs", Unit::Hour), ("m", Unit::Minute),
    ("microsecon", Unit::Microsecond), ("mil", Unit::Millennium), ("millennia", Unit::Millennium),
    ("millennium", Unit::Millennium), ("millisecon", Unit::Millisecond),
    ("mils", Unit::Millennium), ("min", Unit::Minute), ("mins", Unit::Minute),
    ("minute", Unit::Minute), ("minutes", Unit::Minute), ("mon", Unit::Month),
    ("mons", Unit::Month), ("month", Unit::Month), ("months", Unit::Month),
    ("ms", Unit::Millisecond), ("msec", Unit::Millisecond), ("msecond", Unit::Millisecond),
    ("mseconds", Unit::Millisecond), ("msecs", Unit::Millisecond), ("qtr", Unit::Unusable),
    ("quarter", Unit::Unusable), ("s", Unit::Second), ("sec", Unit::Second),
    ("second", Unit::Second), ("seconds", Unit::Second), ("secs", Unit::Second),
    ("timezone", Unit::Unusable), ("timezone_h", Unit::Unusable), ("timezone_m", Unit::Unusable),
    ("us", Unit::Microsecond), ("usec", Unit::Microsecond), ("usecond", Unit::Microsecond),
    ("useconds", Unit::Microsecond), ("usecs", Unit::Microsecond), ("w", Unit::Week),
    ("week", Unit::Week), ("weeks", Unit::Week), ("y", Unit::Year), ("year", Unit::Year),
    ("years", Unit::Year), ("yr", Unit::Year), ("yrs", Unit::Year),
];

/// `DecodeUnits`: looks a lowercased word up in `deltatktbl` on its first ten letters.
fn decode_units(word: &[u8]) -> Token {
    let key = &word[..word.len().min(TOKMAXLEN)];
    match key {
        b"ago" => Token::Ago,
        b"@" => Token::Ignore,
        _ => DELTATKTBL
            .iter()
            .find(|(t, _)| t.as_bytes() == key)
            .map_or(Token::Unknown, |&(_, u)| Token::Units(u)),
    }
}

/// Bits of `fmask` / `tmask`, Postgres's record of which units a text has already given.
mod mask {
    pub(super) const YEAR: u32 = 1 << 0;
    pub(super) const MONTH: u32 = 1 << 1;
    pub(super) const DAY: u32 = 1 << 2;
    pub(super) const HOUR: u32 = 1 << 3;
    pub(super) const MINUTE: u32 = 1 << 4;
    pub(super) const SECOND: u32 = 1 << 5;
    pub(super) const MILLISECOND: u32 = 1 << 6;
    pub(super) const MICROSECOND: u32 = 1 << 7;
    pub(super) const WEEK: u32 = 1 << 8;
    pub(super) const DECADE: u32 = 1 << 9;
    pub(super) const CENTURY: u32 = 1 << 10;
    pub(super) const MILLENNIUM: u32 = 1 << 11;
    pub(super) const ALL_SECS: u32 = SECOND | MILLISECOND | MICROSECOND;
    pub(super) const TIME: u32 = HOUR | MINUTE | ALL_SECS;
}

/// `DecodeInterval`'s running state.
struct Decoder {
    itm: ItmIn,
    /// The unit the next number (to the left) is in; `None` until one is known (`IGNORE_DTF`).
    unit: Option<Unit>,
    is_before: bool,
    fmask: u32,
}

/// Postgres 17's `DecodeInterval` for a reserved word: `infinity`, `+infinity` or `-infinity`
/// as the last field, with only ignorable fields (`@`) before it (any other field either sets
/// a unit bit the word's `DTK_DATE_M | DTK_TIME_M` conflicts with, or leaves a unit or `ago`
/// dangling: a syntax error either way).
fn infinite_interval(fields: &[Field]) -> Option<Interval> {
    let (last, before) = fields.split_last()?;
    if !matches!(last.ftype, Ftype::String | Ftype::Special) {
        return None;
    }
    if !before.iter().all(|f| {
        matches!(f.ftype, Ftype::String | Ftype::Special) && decode_units(&f.text) == Token::Ignore
    }) {
        return None;
    }
    match last.text.as_slice() {
        b"infinity" | b"+infinity" => Some(Interval::NOEND),
        b"-infinity" => Some(Interval::NOBEGIN),
        _ => None,
    }
}

/// Postgres's `DecodeInterval` with the full range (no typmod), right to left.
fn decode_interval(fields: &[Field]) -> Result<ItmIn, Dterr> {
    let mut dec = Decoder {
        itm: ItmIn::default(),
        unit: None,
        is_before: false,
        fmask: 0,
    };
    for field in fields.iter().rev() {
        let tmask = match field.ftype {
            Ftype::Time => dec.decode_time_field(&field.text)?,
            Ftype::Tz => dec.decode_signed_field(&field.text)?,
            Ftype::Date | Ftype::Number => dec.decode_number(&field.text)?,
            Ftype::String | Ftype::Special => match decode_units(&field.text) {
                Token::Ignore => continue,
                Token::Units(unit) => {
                    dec.unit = Some(unit);
                    0
                }
                Token::Ago => {
                    dec.is_before = true;
                    dec.unit = Some(Unit::Unusable);
                    0
                }
                Token::Unknown => return Err(Dterr::BadFormat),
            },
        };
        if tmask & dec.fmask != 0 {
            return Err(Dterr::BadFormat);
        }
        dec.fmask |= tmask;
    }
    if dec.fmask == 0 {
        return Err(Dterr::BadFormat);
    }
    if dec.is_before {
        dec.itm = ItmIn {
            usec: dec.itm.usec.checked_neg().ok_or(Dterr::FieldOverflow)?,
            mday: dec.itm.mday.checked_neg().ok_or(Dterr::FieldOverflow)?,
            mon: dec.itm.mon.checked_neg().ok_or(Dterr::FieldOverflow)?,
            year: dec.itm.year.checked_neg().ok_or(Dterr::FieldOverflow)?,
        };
    }
    Ok(dec.itm)
}

impl Decoder {
    /// A `DTK_TIME` field (`hh:mm[:ss[.f]]`, `mm:ss.f`): replaces the microseconds read so far.
    fn decode_time_field(&mut self, text: &[u8]) -> Result<u32, Dterr> {
        self.itm.usec = decode_time_for_interval(text)?;
        self.unit = Some(Unit::Day);
        Ok(mask::TIME)
    }

    /// A `DTK_TZ` field: a signed time when it has a `:` and reads as one, else a signed number.
    fn decode_signed_field(&mut self, text: &[u8]) -> Result<u32, Dterr> {
        let unsigned = &text[1..];
        if unsigned.contains(&b':') {
            if let Ok(usec) = decode_time_for_interval(unsigned) {
                self.itm.usec = if text[0] == b'-' {
                    usec.checked_neg().ok_or(Dterr::FieldOverflow)?
                } else {
                    usec
                };
                self.unit = Some(Unit::Day);
                return Ok(mask::TIME);
            }
        }
        self.decode_number(text)
    }

    /// A number field (`DTK_NUMBER`, `DTK_DATE`, or a `DTK_TZ` that is no time): `n`, `n.f`,
    /// `-n.f` or years-months `y-m`, in the unit to its right (seconds when none).
    fn decode_number(&mut self, text: &[u8]) -> Result<u32, Dterr> {
        let unit = *self.unit.get_or_insert(Unit::Second);
        let (val, end) = strtol(text).map_err(|()| Dterr::FieldOverflow)?;
        let negative = text.first() == Some(&b'-');
        let rest = &text[end..];
        let (val, fval, unit) = match rest.first() {
            Some(b'-') => (years_months(val, &rest[1..], negative)?, 0.0, Unit::Month),
            Some(b'.') => {
                let frac = parse_fraction(rest)?;
                (val, if negative { -frac } else { frac }, unit)
            }
            None => (val, 0.0, unit),
            Some(_) => return Err(Dterr::BadFormat),
        };
        self.unit = Some(unit);
        self.apply(unit, val, fval)
    }

    /// Adds `val + fval` of `unit` to the fields; the `tmask` bit of the unit.
    fn apply(&mut self, unit: Unit, val: i64, fval: f64) -> Result<u32, Dterr> {
        let itm = &mut self.itm;
        Ok(match unit {
            Unit::Microsecond => itm.micros(val, fval, 1).map(|()| mask::MICROSECOND)?,
            Unit::Millisecond => itm.micros(val, fval, 1000).map(|()| mask::MILLISECOND)?,
            Unit::Second => {
                itm.micros(val, fval, USECS_PER_SEC)?;
                if fval == 0.0 {
                    mask::SECOND
                } else {
                    mask::ALL_SECS
                }
            }
            Unit::Minute => itm
                .micros(val, fval, USECS_PER_MINUTE)
                .map(|()| mask::MINUTE)?,
            Unit::Hour => {
                itm.micros(val, fval, USECS_PER_HOUR)?;
                self.unit = Some(Unit::Day);
                mask::HOUR
            }
            Unit::Day => {
                itm.days(val, 1)?;
                itm.fract_micros(fval, USECS_PER_DAY).map(|()| mask::DAY)?
            }
            Unit::Week => {
                itm.days(val, 7)?;
                itm.fract_days(fval, 7).map(|()| mask::WEEK)?
            }
            Unit::Month => {
                itm.months(val)?;
                itm.fract_days(fval, DAYS_PER_MONTH).map(|()| mask::MONTH)?
            }
            Unit::Year => years(itm, val, fval, 1).map(|()| mask::YEAR)?,
            Unit::Decade => years(itm, val, fval, 10).map(|()| mask::DECADE)?,
            Unit::Century => years(itm, val, fval, 100).map(|()| mask::CENTURY)?,
            Unit::Millennium => years(itm, val, fval, 1000).map(|()| mask::MILLENNIUM)?,
            Unit::Unusable => return Err(Dterr::BadFormat),
        })
    }
}

/// `AdjustYears` then `AdjustFractYears`.
fn years(itm: &mut ItmIn, val: i64, fval: f64, scale: i32) -> Result<(), Dterr> {
    itm.years(val, scale)?;
    itm.fract_years(fval, scale)
}

/// SQL's `years-months` syntax (`1-2`): the total months, the months part in `0..12`.
fn years_months(years: i64, months_text: &[u8], negative: bool) -> Result<i64, Dterr> {
    let (months, end) = strtol(months_text).map_err(|()| Dterr::FieldOverflow)?;
    let months = i32::try_from(months).map_err(|_| Dterr::FieldOverflow)?;
    if !(0..MONTHS_PER_YEAR).contains(&months) {
        return Err(Dterr::FieldOverflow);
    }
    if end != months_text.len() {
        return Err(Dterr::BadFormat);
    }
    let months = if negative { -months } else { months };
    years
        .checked_mul(i64::from(MONTHS_PER_YEAR))
        .and_then(|v| v.checked_add(i64::from(months)))
        .ok_or(Dterr::FieldOverflow)
}

/// C's `strtol` (64-bit `long`) on a field: the value and where it stopped; `Err` on `ERANGE`.
/// With no digits it reads 0 and stops at the start, sign included, as C does.
fn strtol(text: &[u8]) -> Result<(i64, usize), ()> {
    let mut pos = 0;
    while text.get(pos).copied().is_some_and(is_space) {
        pos += 1;
    }
    let negative = text.get(pos) == Some(&b'-');
    if matches!(text.get(pos), Some(b'-' | b'+')) {
        pos += 1;
    }
    let digits_start = pos;
    let mut value: i64 = 0;
    let mut overflow = false;
    while let Some(d) = text.get(pos).filter(|b| b.is_ascii_digit()) {
        let digit = i64::from(d - b'0');
        let next = value.checked_mul(10).and_then(|v| {
            if negative {
                v.checked_sub(digit)
            } else {
                v.checked_add(digit)
            }
        });
        match next {
            Some(v) => value = v,
            None => overflow = true,
        }
        pos += 1;
    }
    if pos == digits_start {
        return Ok((0, 0));
    }
    if overflow {
        return Err(());
    }
    Ok((value, pos))
}

/// `ParseFraction`: the value of `.digits` (`.` alone is zero); anything else is `BadFormat`.
fn parse_fraction(text: &[u8]) -> Result<f64, Dterr> {
    let digits = &text[1..];
    if digits.is_empty() {
        return Ok(0.0);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(Dterr::BadFormat);
    }
    let mut decimal = String::from("0.");
    decimal.extend(digits.iter().map(|&b| char::from(b)));
    decimal.parse::<f64>().map_err(|_| Dterr::BadFormat)
}

/// `DecodeTime` then `DecodeTimeForInterval`: the microseconds of `h:m[:s[.f]]` or `m:s.f`.
fn decode_time_for_interval(text: &[u8]) -> Result<i64, Dterr> {
    let (hour, end) = strtol(text).map_err(|()| Dterr::FieldOverflow)?;
    if text.get(end) != Some(&b':') {
        return Err(Dterr::BadFormat);
    }
    let rest = &text[end + 1..];
    let (minute, end) = strtoint(rest)?;
    let rest = &rest[end..];
    let (hour, minute, second, fsec) = match rest.first() {
        None => (hour, minute, 0, 0),
        Some(b'.') => {
            // `mm:ss.f`: the first number was minutes.
            let fsec = parse_fractional_second(rest)?;
            let minutes = i32::try_from(hour).map_err(|_| Dterr::FieldOverflow)?;
            (0, minutes, minute, fsec)
        }
        Some(b':') => {
            let rest = &rest[1..];
            let (second, end) = strtoint(rest)?;
            match rest.get(end) {
                Some(b'.') => (hour, minute, second, parse_fractional_second(&rest[end..])?),
                None => (hour, minute, second, 0),
                Some(_) => return Err(Dterr::BadFormat),
            }
        }
        Some(_) => return Err(Dterr::BadFormat),
    };
    let in_range = hour >= 0
        && (0..=59).contains(&minute)
        && (0..=60).contains(&second)
        && (0..=USECS_PER_SEC).contains(&fsec);
    if !in_range {
        return Err(Dterr::FieldOverflow);
    }
    hour.checked_mul(USECS_PER_HOUR)
        .and_then(|v| v.checked_add(fsec))
        .and_then(|v| v.checked_add(i64::from(minute) * USECS_PER_MINUTE))
        .and_then(|v| v.checked_add(i64::from(second) * USECS_PER_SEC))
        .ok_or(Dterr::FieldOverflow)
}

/// Postgres's `strtoint`: `strtol` that must fit an `int`, else `FieldOverflow`.
fn strtoint(text: &[u8]) -> Result<(i32, usize), Dterr> {
    let (value, end) = strtol(text).map_err(|()| Dterr::FieldOverflow)?;
    let value = i32::try_from(value).map_err(|_| Dterr::FieldOverflow)?;
    Ok((value, end))
}

/// `ParseFractionalSecond`: `.digits` as whole microseconds (`rint`).
fn parse_fractional_second(text: &[u8]) -> Result<i64, Dterr> {
    let frac = parse_fraction(text)?;
    // 0 <= frac < 1, so the product is far inside i64.
    Ok((frac * 1_000_000.0).round_ties_even() as i64)
}

// ---------------------------------------------------------------------------------------------
// Input, part 3: DecodeISO8601Interval, on the raw text.

/// Postgres's `DecodeISO8601Interval`: `P[n]Y[n]M[n]W[n]DT[n]H[n]M[n]S` or the alternative
/// format `Pyyyy-mm-ddThh:mm:ss` / `PyyyymmddThhmmss`, uppercase designators only.
fn decode_iso8601_interval(text: &[u8]) -> Result<ItmIn, Dterr> {
    if text.len() < 2 || text[0] != b'P' {
        return Err(Dterr::BadFormat);
    }
    let mut iso = Iso {
        text,
        pos: 1,
        itm: ItmIn::default(),
        datepart: true,
        havefield: false,
    };
    while iso.pos < text.len() {
        if text[iso.pos] == b'T' {
            iso.enter_time_part();
            continue;
        }
        let fieldstart = iso.pos;
        let (val, fval) = iso.number()?;
        let unit = text.get(iso.pos).copied();
        iso.pos += 1;
        let done = if iso.datepart {
            iso.date_unit(unit, fieldstart, val, fval)?
        } else {
            iso.time_unit(unit, fieldstart, val, fval)?
        };
        if done {
            return Ok(iso.itm);
        }
    }
    Ok(iso.itm)
}

/// The reading state of `DecodeISO8601Interval`.
struct Iso<'a> {
    text: &'a [u8],
    pos: usize,
    itm: ItmIn,
    datepart: bool,
    havefield: bool,
}

/// What a designator step leaves: `true` ends the text successfully.
type Done = bool;

impl Iso<'_> {
    fn enter_time_part(&mut self) {
        self.datepart = false;
        self.havefield = false;
        self.pos += 1;
    }

    /// `ParseISO8601Number` at the current position.
    fn number(&mut self) -> Result<(i64, f64), Dterr> {
        let (val, fval, end) = parse_iso8601_number(&self.text[self.pos..])?;
        self.pos += end;
        Ok((val, fval))
    }

    /// The byte at the current position (`None` at the end).
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// A number before `T` followed by `unit` (`Y M W D`, or the alternative format).
    fn date_unit(
        &mut self,
        unit: Option<u8>,
        fieldstart: usize,
        val: i64,
        fval: f64,
    ) -> Result<Done, Dterr> {
        let itm = &mut self.itm;
        match unit {
            Some(b'Y') => years(itm, val, fval, 1)?,
            Some(b'M') => {
                itm.months(val)?;
                itm.fract_days(fval, DAYS_PER_MONTH)?;
            }
            Some(b'W') => {
                itm.days(val, 7)?;
                itm.fract_days(fval, 7)?;
            }
            Some(b'D') => {
                itm.days(val, 1)?;
                itm.fract_micros(fval, USECS_PER_DAY)?;
            }
            Some(b'T') | None
                if integer_width(&self.text[fieldstart..]) == 8 && !self.havefield =>
            {
                itm.years(val / 10000, 1)?;
                itm.months((val / 100) % 100)?;
                itm.days(val % 100, 1)?;
                itm.fract_micros(fval, USECS_PER_DAY)?;
                if unit.is_none() {
                    return Ok(true);
                }
                self.datepart = false;
                self.havefield = false;
                return Ok(false);
            }
            Some(b'T' | b'-') | None => return self.extended_date(unit, val, fval),
            Some(_) => return Err(Dterr::BadFormat),
        }
        self.havefield = true;
        Ok(false)
    }

    /// The extended alternative format `yyyy-mm-dd`, after its years.
    fn extended_date(&mut self, unit: Option<u8>, val: i64, fval: f64) -> Result<Done, Dterr> {
        if self.havefield {
            return Err(Dterr::BadFormat);
        }
        years(&mut self.itm, val, fval, 1)?;
        match unit {
            None => return Ok(true),
            Some(b'T') => return Ok(self.time_follows()),
            _ => {}
        }
        let (val, fval) = self.number()?;
        self.itm.months(val)?;
        self.itm.fract_days(fval, DAYS_PER_MONTH)?;
        match self.peek() {
            None => return Ok(true),
            Some(b'T') => return Ok(self.time_follows()),
            Some(b'-') => self.pos += 1,
            Some(_) => return Err(Dterr::BadFormat),
        }
        let (val, fval) = self.number()?;
        self.itm.days(val, 1)?;
        self.itm.fract_micros(fval, USECS_PER_DAY)?;
        match self.peek() {
            None => Ok(true),
            Some(b'T') => Ok(self.time_follows()),
            Some(_) => Err(Dterr::BadFormat),
        }
    }

    /// The time part starts (at a `T` consumed as the unit, or one the main loop will skip).
    fn time_follows(&mut self) -> Done {
        self.datepart = false;
        self.havefield = false;
        false
    }

    /// A number after `T` followed by `unit` (`H M S`, or the alternative format).
    fn time_unit(
        &mut self,
        unit: Option<u8>,
        fieldstart: usize,
        val: i64,
        fval: f64,
    ) -> Result<Done, Dterr> {
        let itm = &mut self.itm;
        match unit {
            Some(b'H') => itm.micros(val, fval, USECS_PER_HOUR)?,
            Some(b'M') => itm.micros(val, fval, USECS_PER_MINUTE)?,
            Some(b'S') => itm.micros(val, fval, USECS_PER_SEC)?,
            None if integer_width(&self.text[fieldstart..]) == 6 && !self.havefield => {
                itm.micros(val / 10000, 0.0, USECS_PER_HOUR)?;
                itm.micros((val / 100) % 100, 0.0, USECS_PER_MINUTE)?;
                itm.micros(val % 100, 0.0, USECS_PER_SEC)?;
                itm.fract_micros(fval, 1)?;
                return Ok(true);
            }
            Some(b':') | None => return self.extended_time(unit, val, fval),
            Some(_) => return Err(Dterr::BadFormat),
        }
        self.havefield = true;
        Ok(false)
    }

    /// The extended alternative format `hh:mm:ss`, after its hours.
    fn extended_time(&mut self, unit: Option<u8>, val: i64, fval: f64) -> Result<Done, Dterr> {
        if self.havefield {
            return Err(Dterr::BadFormat);
        }
        self.itm.micros(val, fval, USECS_PER_HOUR)?;
        if unit.is_none() {
            return Ok(true);
        }
        let (val, fval) = self.number()?;
        self.itm.micros(val, fval, USECS_PER_MINUTE)?;
        match self.peek() {
            None => return Ok(true),
            Some(b':') => self.pos += 1,
            Some(_) => return Err(Dterr::BadFormat),
        }
        let (val, fval) = self.number()?;
        self.itm.micros(val, fval, USECS_PER_SEC)?;
        match self.peek() {
            None => Ok(true),
            Some(_) => Err(Dterr::BadFormat),
        }
    }
}

/// `ISO8601IntegerWidth`: how many digits the field starts with (after an optional `-`).
fn integer_width(field: &[u8]) -> usize {
    let digits = field.strip_prefix(b"-").unwrap_or(field);
    digits.iter().take_while(|b| b.is_ascii_digit()).count()
}

/// `ParseISO8601Number`: a `strtod` number (digit, `-` or `.` first), at most 1e15 in magnitude;
/// its integer part (toward zero), fraction and length.
fn parse_iso8601_number(text: &[u8]) -> Result<(i64, f64, usize), Dterr> {
    match text.first() {
        Some(b) if b.is_ascii_digit() || *b == b'-' || *b == b'.' => {}
        _ => return Err(Dterr::BadFormat),
    }
    let (val, end) = strtod(text).ok_or(Dterr::BadFormat)?;
    if val.is_nan() || !(-1.0e15..=1.0e15).contains(&val) {
        return Err(Dterr::FieldOverflow);
    }
    let ipart = val.trunc();
    // |ipart| <= 1e15: exact in both f64 and i64.
    Ok((ipart as i64, val - ipart, end))
}

/// C's `strtod` (glibc, C locale): the value and its length; `None` when nothing converts or
/// `errno` would be `ERANGE` (overflow to infinity, underflow to zero or a subnormal).
fn strtod(text: &[u8]) -> Option<(f64, usize)> {
    let sign_len = usize::from(matches!(text.first(), Some(b'-' | b'+')));
    let negative = text.first() == Some(&b'-');
    let body = &text[sign_len..];
    let (magnitude, len) = if let Some(special) = strtod_special(body) {
        special
    } else if body.len() > 2 && body[..2].eq_ignore_ascii_case(b"0x") {
        strtod_hex(&body[2..]).map_or((0.0, 1), |(v, n)| (v, n + 2))
    } else {
        strtod_decimal(body)?
    };
    let value = if negative { -magnitude } else { magnitude };
    Some((value, sign_len + len))
}

/// `inf`, `infinity` and `nan[(...)]`, case-insensitive.
fn strtod_special(body: &[u8]) -> Option<(f64, usize)> {
    let starts =
        |word: &[u8]| body.len() >= word.len() && body[..word.len()].eq_ignore_ascii_case(word);
    if starts(b"infinity") {
        return Some((f64::INFINITY, 8));
    }
    if starts(b"inf") {
        return Some((f64::INFINITY, 3));
    }
    if starts(b"nan") {
        let mut len = 3;
        if body.get(3) == Some(&b'(') {
            let inner = body[4..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
            if body.get(4 + inner) == Some(&b')') {
                len = 5 + inner;
            }
        }
        return Some((f64::NAN, len));
    }
    None
}

/// A decimal `strtod` body: digits, optional `.` and digits, optional exponent.
fn strtod_decimal(body: &[u8]) -> Option<(f64, usize)> {
    let int_digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut len = int_digits;
    let mut frac_digits = 0;
    if body.get(len) == Some(&b'.') {
        frac_digits = body[len + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        len += 1 + frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if matches!(body.get(len), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(body.get(len + 1), Some(b'+' | b'-')));
        let exp_digits = body[len + 1 + sign..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if exp_digits > 0 {
            len += 1 + sign + exp_digits;
        }
    }
    let literal = std::str::from_utf8(&body[..len]).ok()?;
    let value: f64 = literal.parse().ok()?;
    let nonzero_digits = body[..int_digits + frac_digits + usize::from(frac_digits > 0)]
        .iter()
        .any(|b| (b'1'..=b'9').contains(b));
    let underflow = (value == 0.0 && nonzero_digits) || value.is_subnormal();
    (value.is_finite() && !underflow).then_some((value, len))
}

/// A hexadecimal `strtod` body after `0x`: hex digits, optional `.` and hex digits, optional
/// binary exponent `p[+-]n`. `None` when no hex digit follows (then only the `0` converts).
fn strtod_hex(body: &[u8]) -> Option<(f64, usize)> {
    let int_digits = body.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let mut len = int_digits;
    let mut frac_digits = 0;
    if body.get(len) == Some(&b'.') {
        frac_digits = body[len + 1..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        len += 1 + frac_digits;
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    let mut mantissa: u128 = 0;
    let mut exponent: i64 = 0;
    let mut sticky = false;
    let digits = body[..len].iter().filter(|b| **b != b'.');
    for (i, b) in digits.enumerate() {
        let d = u128::from(char::from(*b).to_digit(16).unwrap_or(0));
        if mantissa >> 120 == 0 {
            mantissa = mantissa << 4 | d;
            if i >= int_digits {
                exponent -= 4;
            }
        } else {
            sticky |= d != 0;
            if i < int_digits {
                exponent += 4;
            }
        }
    }
    if matches!(body.get(len), Some(b'p' | b'P')) {
        if let Some((exp, exp_len)) = binary_exponent(&body[len + 1..]) {
            exponent = exponent.saturating_add(exp);
            len += 1 + exp_len;
        }
    }
    let value = scale_binary(mantissa, sticky, exponent);
    let underflow = (value == 0.0 && (mantissa != 0 || sticky)) || value.is_subnormal();
    (value.is_finite() && !underflow).then_some((value, len))
}

/// The `[+-]digits` after a hex float's `p`, saturated; `None` without digits.
fn binary_exponent(text: &[u8]) -> Option<(i64, usize)> {
    let sign = usize::from(matches!(text.first(), Some(b'+' | b'-')));
    let digits = text[sign..].iter().take_while(|b| b.is_ascii_digit());
    let (mut value, mut count) = (0i64, 0);
    for d in digits {
        value = value.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        count += 1;
    }
    let value = if text.first() == Some(&b'-') {
        -value
    } else {
        value
    };
    (count > 0).then_some((value, sign + count))
}

/// `mantissa * 2^exponent` (plus a nonzero tail when `sticky`) rounded to the nearest double.
fn scale_binary(mantissa: u128, sticky: bool, exponent: i64) -> f64 {
    if mantissa == 0 {
        return 0.0;
    }
    let bits = 128 - i64::from(mantissa.leading_zeros());
    let shift = (bits - 53).max(0);
    let mut top = mantissa >> shift;
    if shift > 0 {
        let rest = mantissa & ((1u128 << shift) - 1);
        let half = 1u128 << (shift - 1);
        let above = rest > half || (rest == half && (sticky || top & 1 == 1));
        if above {
            top += 1;
        }
    }
    // top <= 2^53, exact as f64; then exact power-of-two scaling in the normal range.
    let mut value = top as f64;
    let mut e = exponent.saturating_add(shift).clamp(-1200, 1200);
    while e > 0 {
        value *= 2.0;
        e -= 1;
    }
    while e < 0 {
        value /= 2.0;
        e += 1;
    }
    value
}

// ---------------------------------------------------------------------------------------------
// Arithmetic with dates, times and timestamps.

/// Postgres's `date_pli` (`date + integer`): `days` days later; infinities stay.
pub fn date_pli(date: Date, days: i32) -> Result<Date, IntervalError> {
    if !date.is_finite() {
        return Ok(date);
    }
    let result = date.0.wrapping_add(days);
    let wrapped = if days >= 0 {
        result < date.0
    } else {
        result > date.0
    };
    if wrapped || !is_valid_date(result) {
        return Err(IntervalError::DateOutOfRange);
    }
    Ok(Date(result))
}

/// Postgres's `date_mii` (`date - integer`): `days` days earlier; infinities stay.
pub fn date_mii(date: Date, days: i32) -> Result<Date, IntervalError> {
    if !date.is_finite() {
        return Ok(date);
    }
    let result = date.0.wrapping_sub(days);
    let wrapped = if days >= 0 {
        result > date.0
    } else {
        result < date.0
    };
    if wrapped || !is_valid_date(result) {
        return Err(IntervalError::DateOutOfRange);
    }
    Ok(Date(result))
}

/// Postgres's `date_mi` (`date - date`): the number of days between them.
pub fn date_mi(a: Date, b: Date) -> Result<i32, IntervalError> {
    if !a.is_finite() || !b.is_finite() {
        return Err(IntervalError::InfiniteDates);
    }
    // Both lie in 4713 BC .. 5874897 AD: the difference fits an i32.
    Ok(a.0.wrapping_sub(b.0))
}

/// `IS_VALID_DATE`: Julian day 0 (4714-11-24 BC) up to 5874897-12-31.
fn is_valid_date(days: i32) -> bool {
    (-POSTGRES_EPOCH_JDATE..DATE_END_JULIAN - POSTGRES_EPOCH_JDATE).contains(&i64::from(days))
}

/// Postgres's `datetime_pl` (`date + time`): the timestamp of that time on that date.
pub fn datetime_pl(date: Date, time: Time) -> Result<Timestamp, IntervalError> {
    let midnight = date_to_timestamp(date)?;
    if !midnight.is_finite() {
        return Ok(midnight);
    }
    let result = midnight.0 + time.0;
    if !is_valid_timestamp(result) {
        return Err(IntervalError::TimestampOutOfRange);
    }
    Ok(Timestamp(result))
}

/// `date2timestamp`: midnight of the date; `date out of range for timestamp` past 294276 AD.
fn date_to_timestamp(date: Date) -> Result<Timestamp, IntervalError> {
    date.to_timestamp()
        .map_err(|_| IntervalError::DateOutOfRangeForTimestamp)
}

/// Postgres's `date_pl_interval` (`date + interval`): a timestamp.
pub fn date_pl_interval(date: Date, span: Interval) -> Result<Timestamp, IntervalError> {
    timestamp_pl_interval(date_to_timestamp(date)?, span)
}

/// Postgres's `date_mi_interval` (`date - interval`): a timestamp.
pub fn date_mi_interval(date: Date, span: Interval) -> Result<Timestamp, IntervalError> {
    timestamp_mi_interval(date_to_timestamp(date)?, span)
}

/// Postgres's `time_pl_interval` (`time + interval`): the microseconds added, wrapped into one
/// day; months and days are ignored.
pub fn time_pl_interval(time: Time, span: Interval) -> Time {
    wrap_time(time.0.wrapping_add(span.micros))
}

/// Postgres's `time_mi_interval` (`time - interval`): the microseconds subtracted, wrapped into
/// one day; months and days are ignored.
pub fn time_mi_interval(time: Time, span: Interval) -> Time {
    wrap_time(time.0.wrapping_sub(span.micros))
}

/// `time_pl_interval`'s wrap: C's truncating remainder, then negative values moved up a day.
const fn wrap_time(usecs: i64) -> Time {
    let rem = usecs % USECS_PER_DAY;
    Time(if rem < 0 { rem + USECS_PER_DAY } else { rem })
}

/// Postgres's `time_mi_time` (`time - time`): the difference as microseconds only.
pub const fn time_mi_time(a: Time, b: Time) -> Interval {
    Interval::new(0, 0, a.0 - b.0)
}

/// Postgres's `timestamp_pl_interval` (`timestamp + interval`): months on the calendar (the day
/// clamped to the month's end), then days, then microseconds; infinities stay.
pub fn timestamp_pl_interval(ts: Timestamp, span: Interval) -> Result<Timestamp, IntervalError> {
    if !ts.is_finite() {
        return Ok(ts);
    }
    let mut usecs = ts.0;
    if span.months != 0 {
        usecs = add_months(usecs, span.months)?;
    }
    if span.days != 0 {
        usecs = add_days(usecs, span.days)?;
    }
    match usecs.checked_add(span.micros) {
        Some(result) if is_valid_timestamp(result) => Ok(Timestamp(result)),
        _ => Err(IntervalError::TimestampOutOfRange),
    }
}

/// Postgres's `timestamp_mi_interval` (`timestamp - interval`): adds the negated interval.
pub fn timestamp_mi_interval(ts: Timestamp, span: Interval) -> Result<Timestamp, IntervalError> {
    timestamp_pl_interval(ts, span.wrapping_neg())
}

/// Postgres's `timestamptz_pl_interval` with the session in UTC.
pub fn timestamptz_pl_interval(
    ts: Timestamptz,
    span: Interval,
) -> Result<Timestamptz, IntervalError> {
    timestamp_pl_interval(ts.to_timestamp(), span).map(Timestamp::to_timestamptz)
}

/// Postgres's `timestamptz_mi_interval` with the session in UTC.
pub fn timestamptz_mi_interval(
    ts: Timestamptz,
    span: Interval,
) -> Result<Timestamptz, IntervalError> {
    timestamp_mi_interval(ts.to_timestamp(), span).map(Timestamp::to_timestamptz)
}

/// Postgres's `timestamp_mi` (`timestamp - timestamp`): the microseconds between them, then
/// `justify_hours` (so whole days show as days, never months).
pub fn timestamp_mi(a: Timestamp, b: Timestamp) -> Result<Interval, IntervalError> {
    if !a.is_finite() || !b.is_finite() {
        return Err(IntervalError::InfiniteTimestamps);
    }
    Interval::new(0, 0, a.0.wrapping_sub(b.0)).justify_hours()
}

/// Postgres's `timestamptz - timestamptz` (also `timestamp_mi`).
pub fn timestamptz_mi(a: Timestamptz, b: Timestamptz) -> Result<Interval, IntervalError> {
    timestamp_mi(a.to_timestamp(), b.to_timestamp())
}

/// `IS_VALID_TIMESTAMP`.
fn is_valid_timestamp(usecs: i64) -> bool {
    (MIN_TIMESTAMP..END_TIMESTAMP).contains(&usecs)
}

/// A calendar date and a time of day, Postgres's `pg_tm` for a timestamp (astronomical year).
struct Tm {
    year: i64,
    month: i64,
    day: i64,
    time: i64,
}

/// `timestamp2tm` for a finite, valid timestamp.
fn timestamp2tm(usecs: i64) -> Tm {
    let date = usecs.div_euclid(USECS_PER_DAY) + POSTGRES_EPOCH_JDATE;
    let (year, month, day) = j2date(date);
    Tm {
        year,
        month,
        day,
        time: usecs.rem_euclid(USECS_PER_DAY),
    }
}

/// `tm2timestamp` with its range checks; `timestamp out of range` when they fail.
fn tm2timestamp(tm: &Tm) -> Result<i64, IntervalError> {
    if !is_valid_julian(tm.year, tm.month) {
        return Err(IntervalError::TimestampOutOfRange);
    }
    let date = date2j(tm.year, tm.month, tm.day) - POSTGRES_EPOCH_JDATE;
    let result = date
        .checked_mul(USECS_PER_DAY)
        .and_then(|v| v.checked_add(tm.time))
        .ok_or(IntervalError::TimestampOutOfRange)?;
    if (result < 0 && date > 0) || (result > 0 && date < -1) || !is_valid_timestamp(result) {
        return Err(IntervalError::TimestampOutOfRange);
    }
    Ok(result)
}

/// The months step of `timestamp_pl_interval`: calendar months, day clamped to the month's end.
fn add_months(usecs: i64, months: i32) -> Result<i64, IntervalError> {
    let mut tm = timestamp2tm(usecs);
    // Exact arithmetic: a sum Postgres would see overflow is out of range either way.
    let month = tm.month + i64::from(months);
    let months_per_year = i64::from(MONTHS_PER_YEAR);
    if month > months_per_year {
        tm.year += (month - 1) / months_per_year;
        tm.month = (month - 1) % months_per_year + 1;
    } else if month < 1 {
        tm.year += month / months_per_year - 1;
        tm.month = month % months_per_year + months_per_year;
    } else {
        tm.month = month;
    }
    tm.day = tm.day.min(days_in_month(tm.year, tm.month));
    tm2timestamp(&tm)
}

/// The days step of `timestamp_pl_interval`: through the Julian day number. A day before Julian
/// day 0 is out of range (Postgres 15.x checks the sum rather than wrap it).
fn add_days(usecs: i64, days: i32) -> Result<i64, IntervalError> {
    let mut tm = timestamp2tm(usecs);
    let julian = date2j(tm.year, tm.month, tm.day) + i64::from(days);
    if julian < 0 {
        return Err(IntervalError::TimestampOutOfRange);
    }
    (tm.year, tm.month, tm.day) = j2date(julian);
    tm2timestamp(&tm)
}

/// Postgres 17's interval arithmetic (`src/backend/utils/adt/timestamp.c` and `date.c` of
/// 17): the infinite intervals propagate, anything amounting to "infinity - infinity" is an
/// error (the interval type has no NaN), and a finite result that lands on an infinite
/// interval's fields is `interval out of range`. Finite operands otherwise compute as in 15,
/// except where 17 checks an overflow that 15 let wrap (noted per function).
pub mod pg17 {
    use super::{
        micros_field, tsround, whole_field, Date, Interval, IntervalError, Time, Timestamp,
        Timestamptz, DAYS_PER_MONTH, INTERVAL_RANGE, SECS_PER_DAY, USECS_PER_SEC,
    };

    /// A finite result on the infinite intervals' fields is out of range.
    fn finite(result: Interval) -> Result<Interval, IntervalError> {
        if result.is_finite() {
            Ok(result)
        } else {
            Err(INTERVAL_RANGE)
        }
    }

    /// `interval_um_internal` (unary `-`): the infinities swap; a finite field at its minimum
    /// is `interval out of range`.
    pub fn interval_um(span: Interval) -> Result<Interval, IntervalError> {
        if span.is_nobegin() {
            return Ok(Interval::NOEND);
        }
        if span.is_noend() {
            return Ok(Interval::NOBEGIN);
        }
        finite(span.checked_neg()?)
    }

    /// `interval_pl` (`+`): an infinity wins over a finite operand; opposite infinities are
    /// `interval out of range`.
    pub fn interval_pl(a: Interval, b: Interval) -> Result<Interval, IntervalError> {
        match (a.is_finite(), b.is_finite()) {
            (true, true) => finite(a.checked_add(b)?),
            (false, true) => Ok(a),
            (true, false) => Ok(b),
            (false, false) if a.is_noend() == b.is_noend() => Ok(a),
            (false, false) => Err(INTERVAL_RANGE),
        }
    }

    /// `interval_mi` (`-`): `a + (-b)` for infinities; equal infinities are `interval out of
    /// range`.
    pub fn interval_mi(a: Interval, b: Interval) -> Result<Interval, IntervalError> {
        match (a.is_finite(), b.is_finite()) {
            (true, true) => finite(a.checked_sub(b)?),
            (false, true) => Ok(a),
            (true, false) => interval_um(b),
            (false, false) if a.is_noend() != b.is_noend() => Ok(a),
            (false, false) => Err(INTERVAL_RANGE),
        }
    }

    /// `interval_mul` (`interval * float8`): an infinite interval keeps or flips its sign with
    /// the factor's (times zero or NaN is out of range); a finite non-zero interval times an
    /// infinite factor is infinite with the product's sign. Finite products are 15's, but the
    /// cascade's day sums are checked rather than wrapped.
    pub fn interval_mul(span: Interval, factor: f64) -> Result<Interval, IntervalError> {
        if factor.is_nan() {
            return Err(INTERVAL_RANGE);
        }
        if !span.is_finite() {
            if factor == 0.0 {
                return Err(INTERVAL_RANGE);
            }
            return if factor < 0.0 {
                interval_um(span)
            } else {
                Ok(span)
            };
        }
        if factor.is_infinite() {
            let sign = span.span().signum();
            if sign == 0 {
                return Err(INTERVAL_RANGE);
            }
            return Ok(if (sign < 0) == (factor < 0.0) {
                Interval::NOEND
            } else {
                Interval::NOBEGIN
            });
        }
        scale(span, |field| field * factor)
    }

    /// `interval_div` (`interval / float8`): `division by zero` first; an infinite interval
    /// keeps or flips its sign (divided by an infinity it is out of range); a finite one
    /// divided by an infinity is zero.
    pub fn interval_div(span: Interval, factor: f64) -> Result<Interval, IntervalError> {
        if factor == 0.0 {
            return Err(IntervalError::DivisionByZero);
        }
        if factor.is_nan() {
            return Err(INTERVAL_RANGE);
        }
        if !span.is_finite() {
            if factor.is_infinite() {
                return Err(INTERVAL_RANGE);
            }
            return if factor < 0.0 {
                interval_um(span)
            } else {
                Ok(span)
            };
        }
        scale(span, |field| field / factor)
    }

    /// The finite part of 17's `interval_mul` / `interval_div`, `apply` being `* factor` or
    /// `/ factor`.
    fn scale(span: Interval, apply: impl Fn(f64) -> f64) -> Result<Interval, IntervalError> {
        let months_scaled = apply(f64::from(span.months));
        let days_scaled = apply(f64::from(span.days));
        let months = whole_field(months_scaled)?;
        let mut days = whole_field(days_scaled)?;
        let month_remainder_days =
            tsround((months_scaled - f64::from(months)) * f64::from(DAYS_PER_MONTH));
        // `(int) month_remainder_days`: |remainder| < 30, the cast is C's truncation.
        let month_whole_days = month_remainder_days as i32;
        let mut sec_remainder = tsround(
            (days_scaled - f64::from(days) + month_remainder_days - f64::from(month_whole_days))
                * SECS_PER_DAY,
        );
        if sec_remainder.abs() >= SECS_PER_DAY {
            let extra = (sec_remainder / SECS_PER_DAY) as i32;
            days = days.checked_add(extra).ok_or(INTERVAL_RANGE)?;
            sec_remainder -= f64::from(extra) * SECS_PER_DAY;
        }
        days = days.checked_add(month_whole_days).ok_or(INTERVAL_RANGE)?;
        // `span->time * factor` in C converts the int64 to double first.
        let micros =
            (apply(span.micros as f64) + sec_remainder * USECS_PER_SEC as f64).round_ties_even();
        finite(Interval::new(months, days, micros_field(micros)?))
    }

    /// `justify` (15's) on a finite interval; infinite intervals stay, as 17's
    /// `interval_justify_*` keep them.
    fn finite_only(
        span: Interval,
        justify: fn(Interval) -> Result<Interval, IntervalError>,
    ) -> Result<Interval, IntervalError> {
        if span.is_finite() {
            justify(span)
        } else {
            Ok(span)
        }
    }

    /// `interval_justify_hours`: infinite intervals stay.
    pub fn justify_hours(span: Interval) -> Result<Interval, IntervalError> {
        finite_only(span, Interval::justify_hours)
    }

    /// `interval_justify_days`: infinite intervals stay.
    pub fn justify_days(span: Interval) -> Result<Interval, IntervalError> {
        finite_only(span, Interval::justify_days)
    }

    /// `interval_justify_interval`: infinite intervals stay.
    pub fn justify_interval(span: Interval) -> Result<Interval, IntervalError> {
        finite_only(span, Interval::justify_interval)
    }

    /// `timestamp_pl_interval`: an infinite interval makes the timestamp that infinity
    /// (`timestamp out of range` against the opposite infinite timestamp); an infinite
    /// timestamp stays; finite ones compute as in 15.
    pub fn timestamp_pl_interval(
        ts: Timestamp,
        span: Interval,
    ) -> Result<Timestamp, IntervalError> {
        if span.is_nobegin() {
            return if ts == Timestamp::INFINITY {
                Err(IntervalError::TimestampOutOfRange)
            } else {
                Ok(Timestamp::NEG_INFINITY)
            };
        }
        if span.is_noend() {
            return if ts == Timestamp::NEG_INFINITY {
                Err(IntervalError::TimestampOutOfRange)
            } else {
                Ok(Timestamp::INFINITY)
            };
        }
        super::timestamp_pl_interval(ts, span)
    }

    /// `timestamp_mi_interval`: adds `interval_um` of the interval (15 negated with wrap-around;
    /// 17 refuses a field at its minimum: `interval out of range`).
    pub fn timestamp_mi_interval(
        ts: Timestamp,
        span: Interval,
    ) -> Result<Timestamp, IntervalError> {
        timestamp_pl_interval(ts, interval_um(span)?)
    }

    /// `timestamptz_pl_interval` with the session in UTC.
    pub fn timestamptz_pl_interval(
        ts: Timestamptz,
        span: Interval,
    ) -> Result<Timestamptz, IntervalError> {
        timestamp_pl_interval(ts.to_timestamp(), span).map(Timestamp::to_timestamptz)
    }

    /// `timestamptz_mi_interval` with the session in UTC.
    pub fn timestamptz_mi_interval(
        ts: Timestamptz,
        span: Interval,
    ) -> Result<Timestamptz, IntervalError> {
        timestamp_mi_interval(ts.to_timestamp(), span).map(Timestamp::to_timestamptz)
    }

    /// `date_pl_interval`: the date's midnight plus the interval.
    pub fn date_pl_interval(date: Date, span: Interval) -> Result<Timestamp, IntervalError> {
        timestamp_pl_interval(super::date_to_timestamp(date)?, span)
    }

    /// `date_mi_interval`: the date's midnight minus the interval.
    pub fn date_mi_interval(date: Date, span: Interval) -> Result<Timestamp, IntervalError> {
        timestamp_mi_interval(super::date_to_timestamp(date)?, span)
    }

    /// `time_pl_interval`: an infinite interval cannot be added to a time of day.
    pub fn time_pl_interval(time: Time, span: Interval) -> Result<Time, IntervalError> {
        if !span.is_finite() {
            return Err(IntervalError::InfiniteIntervalToTime);
        }
        Ok(super::time_pl_interval(time, span))
    }

    /// `time_mi_interval`: an infinite interval cannot be subtracted from a time of day.
    pub fn time_mi_interval(time: Time, span: Interval) -> Result<Time, IntervalError> {
        if !span.is_finite() {
            return Err(IntervalError::InfiniteIntervalFromTime);
        }
        Ok(super::time_mi_interval(time, span))
    }

    /// `timestamp_mi` (`timestamp - timestamp`): an infinite operand gives an infinite
    /// interval (equal infinities are `interval out of range`, where 15 refused every
    /// infinite operand); a finite difference beyond 64 bits is `interval out of range`
    /// (15 wrapped), then `justify_hours`.
    pub fn timestamp_mi(a: Timestamp, b: Timestamp) -> Result<Interval, IntervalError> {
        if !a.is_finite() || !b.is_finite() {
            return if a == b {
                Err(INTERVAL_RANGE) // infinity - infinity
            } else if a == Timestamp::NEG_INFINITY || b == Timestamp::INFINITY {
                Ok(Interval::NOBEGIN)
            } else {
                Ok(Interval::NOEND)
            };
        }
        let micros = a.0.checked_sub(b.0).ok_or(INTERVAL_RANGE)?;
        Interval::new(0, 0, micros).justify_hours()
    }

    /// `timestamptz - timestamptz` (also `timestamp_mi`).
    pub fn timestamptz_mi(a: Timestamptz, b: Timestamptz) -> Result<Interval, IntervalError> {
        timestamp_mi(a.to_timestamp(), b.to_timestamp())
    }
}

#[cfg(test)]
mod tests {
    //! Every expected value below is Postgres 15's answer (`SET IntervalStyle = iso_8601`,
    //! `TimeZone = UTC`, `DateStyle = ISO`).

    use super::*;

    fn iv(text: &str) -> String {
        Interval::parse(text).map_or_else(|e| e.to_string(), |v| v.to_string())
    }

    fn val(text: &str) -> Interval {
        Interval::parse(text).unwrap()
    }

    fn show<T: fmt::Display>(r: Result<T, IntervalError>) -> String {
        r.map_or_else(|e| e.to_string(), |v| v.to_string())
    }

    fn ts(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    fn date(text: &str) -> Date {
        Date::parse(text).unwrap()
    }

    #[test]
    fn postgres_style_input_reads_as_postgres_reads_it() {
        let cases = [
            ("1 day", "P1D"),
            ("2 hours 30 minutes", "PT2H30M"),
            ("1 year 2 mons 3 days 04:05:06", "P1Y2M3DT4H5M6S"),
            ("-1 day +02:00", "P-1DT2H"),
            ("@ 1 hour ago", "PT-1H"),
            ("1 day -10:00 ago", "P-1DT10H"),
            ("1.5 days", "P1DT12H"),
            ("1.5 weeks", "P10DT12H"),
            ("-1.5 mons", "P-1M-15D"),
            ("1.5 years", "P1Y6M"),
            ("10:00", "PT10H"),
            ("12:34.5", "PT12M34.5S"),
            ("3 weeks", "P21D"),
            ("1 millisecond", "PT0.001S"),
            ("1 microsecondsxyz", "PT0.000001S"),
            ("1 decade 2 centuries", "P210Y"),
            ("  1 DAY  ", "P1D"),
            ("1day", "P1D"),
            ("1-2", "P1Y2M"),
            ("1-+2", "P1YT2S"),
            ("1 2 hours", "P1DT2H"),
            ("1 day day", "P1D"),
            ("1 day hour", "P1D"),
            ("10:00 1.5 days", "P1DT10H"),
            ("0.0000025 s", "PT0.000002S"),
        ];
        for (text, expected) in cases {
            assert_eq!(iv(text), expected, "{text}");
        }
    }

    #[test]
    fn iso_8601_input_reads_as_postgres_reads_it() {
        let cases = [
            ("P1Y2M3DT4H5M6.5S", "P1Y2M3DT4H5M6.5S"),
            ("PT0S", "PT0S"),
            ("P-1Y-2M", "P-1Y-2M"),
            ("PT-1.5S", "PT-1.5S"),
            ("P0001-02-03T04:05:06", "P1Y2M3DT4H5M6S"),
            ("P00010203T040506", "P1Y2M3DT4H5M6S"),
            ("P1.5Y", "P1Y6M"),
            ("P1.5W", "P10DT12H"),
            ("P1e2D", "P100D"),
            ("P0x10D", "P269Y"),
        ];
        for (text, expected) in cases {
            assert_eq!(iv(text), expected, "{text}");
        }
    }

    #[test]
    fn refusals_carry_postgres_messages() {
        let syntax = |t: &str| format!("invalid input syntax for type interval: \"{t}\"");
        for text in [
            "",
            "day",
            "1 ago",
            "1 qtr",
            "1 timezone",
            "10:00 1 hour",
            "1 day 2 days",
            " P1D",
            "p1d",
            "PT1H30",
            "P1e-400D",
            "1:2:3.4.5",
            "infinity",
            "1 dáy",
        ] {
            assert_eq!(iv(text), syntax(text), "{text}");
        }
        let field = |t: &str| format!("interval field value out of range: \"{t}\"");
        for text in [
            "1-12",
            "10:61",
            "2147483648 days",
            "9223372036854775808 us",
            "P-infD",
        ] {
            assert_eq!(iv(text), field(text), "{text}");
        }
        assert_eq!(iv("178956970 years 8 months"), "interval out of range");
        assert_eq!(iv("-178956971 years 4 months"), "P-178956970Y-8M");
    }

    #[test]
    fn a_field_buffer_overflow_is_a_syntax_error() {
        // 251 digits and "day", each with its terminator, fill the 256 bytes of `workbuf`.
        let fits = format!("{}1 day", "0".repeat(250));
        assert_eq!(iv(&fits), "P1D");
        let too_long = format!("{}1 day", "0".repeat(251));
        assert!(iv(&too_long).starts_with("invalid input syntax"));
        // At most 25 fields.
        let fields: Vec<String> = (1..=12).map(|i| format!("{i} d")).collect();
        assert!(iv(&fields.join(" ")).starts_with("invalid input syntax"));
    }

    #[test]
    fn output_is_iso_8601_and_reads_back() {
        for value in [
            Interval::new(i32::MAX, i32::MAX, i64::MAX - 1),
            Interval::new(i32::MIN, i32::MIN, i64::MIN + 1),
            Interval::new(-14, 3, -1_500_000),
            Interval::new(0, 0, -90_061_000_001),
            Interval::ZERO,
        ] {
            let back = val(&value.to_string());
            assert_eq!(
                (back.months, back.days, back.micros),
                (value.months, value.days, value.micros)
            );
        }
        assert_eq!(
            Interval::new(i32::MIN, 0, i64::MIN).to_string(),
            "P-178956970Y-8MT-2562047788H-54.775808S"
        );
        assert_eq!(Interval::new(0, 0, -1_500_000).to_string(), "PT-1.5S");
    }

    #[test]
    fn comparison_counts_a_month_as_thirty_days() {
        assert_eq!(val("1 mon"), val("30 days"));
        assert_eq!(val("1 day"), val("24 hours"));
        assert!(val("1 mon") > val("29 days 23:59:59.999999"));
        let hash = |v: Interval| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(val("1 mon")), hash(val("720 hours")));
        assert!(Interval::new(i32::MAX, i32::MAX, i64::MAX) > Interval::new(0, 0, i64::MAX));
    }

    #[test]
    fn interval_arithmetic_follows_postgres() {
        assert_eq!(show(val("1 mon").checked_mul(1.5)), "P1M15D");
        assert_eq!(show(val("1 mon 1 day").checked_mul(0.3)), "P9DT7H12M");
        assert_eq!(show(val("1 day").checked_div(3.0)), "PT8H");
        assert_eq!(show(val("1 mon").checked_div(7.0)), "P4DT6H51M25.6896S");
        assert_eq!(show(val("-1 mon").checked_mul(0.1)), "P-3D");
        assert_eq!(show(val("1 hour").checked_mul(1e-7)), "PT0.00036S");
        assert_eq!(
            show(val("2 mon").checked_div(1e-9)),
            "P166666666Y7M29DT23H59M59.3952S"
        );
        assert_eq!(
            show(val("1 day").checked_mul(f64::NAN)),
            "interval out of range"
        );
        assert_eq!(
            show(val("1 day").checked_div(f64::NAN)),
            "interval out of range"
        );
        assert_eq!(
            show(val("1 mon").checked_div(1e-10)),
            "interval out of range"
        );
        assert_eq!(show(val("1 day").checked_div(0.0)), "division by zero");
        assert_eq!(
            show(val("2147483647 days").checked_add(val("1 day"))),
            "interval out of range"
        );
        assert_eq!(show(val("1 day").checked_sub(val("2 hours"))), "P1DT-2H");
        assert_eq!(
            show(val("-178956970 years -8 months").checked_neg()),
            "interval out of range"
        );
    }

    #[test]
    fn justify_functions_follow_postgres() {
        assert_eq!(show(val("35 days -1 hour").justify_days()), "P1M5DT-1H");
        assert_eq!(show(val("-25 hours 1 day").justify_hours()), "PT-1H");
        assert_eq!(show(val("1 mon -1 hour").justify_interval()), "P29DT23H");
        assert_eq!(
            show(val("-1 mon 35 days 25 hours").justify_interval()),
            "P6DT1H"
        );
        assert_eq!(
            show(val("2147483647 days 24 hours").justify_hours()),
            "interval out of range"
        );
    }

    #[test]
    fn months_are_added_on_the_calendar_with_the_day_clamped() {
        let plus = |t: &str, i: &str| show(timestamp_pl_interval(ts(t), val(i)));
        assert_eq!(plus("2024-01-31", "1 month"), "2024-02-29 00:00:00");
        assert_eq!(plus("2023-01-31", "1 month"), "2023-02-28 00:00:00");
        assert_eq!(plus("2024-02-29", "1 year"), "2025-02-28 00:00:00");
        assert_eq!(
            show(timestamp_mi_interval(ts("2024-03-31"), val("1 month"))),
            "2024-02-29 00:00:00"
        );
        assert_eq!(
            show(timestamp_mi_interval(ts("0001-01-01"), val("1 day"))),
            "0001-12-31 00:00:00 BC"
        );
        assert_eq!(
            show(timestamp_mi_interval(ts("0001-03-01 BC"), val("1 day"))),
            "0001-02-29 00:00:00 BC"
        );
        assert_eq!(
            plus("294276-12-31 23:59:59.999999", "1 us"),
            "timestamp out of range"
        );
        assert_eq!(
            plus("0001-06-30 BC", "-1802748 days"),
            "timestamp out of range"
        );
        assert_eq!(
            plus("294276-01-01", "2147483647 days"),
            "timestamp out of range"
        );
        assert_eq!(plus("infinity", "1 day"), "infinity");
        let tz = Timestamptz::parse("-infinity").unwrap();
        assert_eq!(show(timestamptz_mi_interval(tz, val("1 day"))), "-infinity");
        assert_eq!(
            show(date_pl_interval(
                date("2024-01-31"),
                val("1 month 1 day 1 hour")
            )),
            "2024-03-01 01:00:00"
        );
        assert_eq!(
            show(date_pl_interval(date("-infinity"), val("1 mon"))),
            "-infinity"
        );
        assert_eq!(
            show(date_pl_interval(date("294277-01-01"), val("1 day"))),
            "date out of range for timestamp"
        );
    }

    #[test]
    fn timestamp_differences_are_justified_hours() {
        let mi = |a: &str, b: &str| show(timestamp_mi(ts(a), ts(b)));
        assert_eq!(mi("2024-03-01", "2024-01-01"), "P60D");
        assert_eq!(mi("2024-01-01", "2024-01-02 01:00"), "P-1DT-1H");
        assert_eq!(
            mi("infinity", "infinity"),
            "cannot subtract infinite timestamps"
        );
        let tz = |t: &str| Timestamptz::parse(t).unwrap();
        assert_eq!(
            show(timestamptz_mi(tz("2024-01-01 12:00"), tz("2023-12-01"))),
            "P31DT12H"
        );
    }

    #[test]
    fn date_and_time_arithmetic_follows_postgres() {
        let time = |t: &str| Time::parse(t).unwrap();
        assert_eq!(
            time_pl_interval(time("23:00"), val("2 hours")).to_string(),
            "01:00:00"
        );
        assert_eq!(
            time_mi_interval(time("01:00"), val("2 hours 3 days")).to_string(),
            "23:00:00"
        );
        assert_eq!(
            time_pl_interval(time("24:00"), Interval::ZERO).to_string(),
            "00:00:00"
        );
        assert_eq!(
            time_mi_time(time("01:00"), time("23:00")).to_string(),
            "PT-22H"
        );
        assert_eq!(
            show(datetime_pl(date("2024-02-29"), time("12:34"))),
            "2024-02-29 12:34:00"
        );
        assert_eq!(
            show(datetime_pl(date("294276-12-31"), time("24:00"))),
            "timestamp out of range"
        );
        assert_eq!(show(date_mi(date("2024-03-01"), date("2024-02-01"))), "29");
        assert_eq!(
            show(date_mi(date("infinity"), date("infinity"))),
            "cannot subtract infinite dates"
        );
        assert_eq!(show(date_pli(date("2024-02-28"), 1)), "2024-02-29");
        assert_eq!(
            show(date_pli(date("5874897-12-31"), 1)),
            "date out of range"
        );
        assert_eq!(
            show(date_mii(date("2024-01-01"), i32::MAX)),
            "date out of range"
        );
        assert_eq!(show(date_pli(date("infinity"), 5)), "infinity");
    }
}
