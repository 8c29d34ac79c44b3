//! Runtime values: reading Postgres's text output of a column, input functions for literals,
//! Postgres's comparison order, and SQL literals rendered back for the snapshot query.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::Arc;

use super::array_text::{self, PgArray};
use super::datetime::{Date, Time, Timestamp, Timestamptz};
use super::interval::Interval;
use super::numeric::Numeric;
use super::types::{Dialect, Scalar};

/// A value of a where-clause expression, borrowing text from the row it was read from.
#[derive(Clone, Debug)]
pub enum Value<'r> {
    /// SQL `NULL`.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`, `int4` or `int8` (the expression's type says which; always in its range).
    Int(i64),
    /// `float8`, or `float4` held exactly as its `f32`.
    Float(f64),
    /// `numeric`.
    Numeric(Numeric),
    /// `text`.
    Text(Cow<'r, str>),
    /// `bpchar`, with its trailing blanks (comparisons ignore them).
    Bpchar(Cow<'r, str>),
    /// `uuid`, as its 128 bits.
    Uuid(u128),
    /// `date`.
    Date(Date),
    /// `time`.
    Time(Time),
    /// `timestamp`.
    Timestamp(Timestamp),
    /// `timestamptz`.
    Timestamptz(Timestamptz),
    /// `interval`.
    Interval(Interval),
    /// An array; elements are owned so that a parsed column can be shared.
    Array(Arc<PgArray<Value<'static>>>),
}

/// A value that could not be read as its type: Postgres's own message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct InvalidInput(pub String);

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Value<'_> {
    /// Whether this is `NULL`.
    pub const fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// A copy that borrows nothing.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(b),
            Self::Int(i) => Value::Int(i),
            Self::Float(f) => Value::Float(f),
            Self::Numeric(n) => Value::Numeric(n),
            Self::Text(t) => Value::Text(Cow::Owned(t.into_owned())),
            Self::Bpchar(t) => Value::Bpchar(Cow::Owned(t.into_owned())),
            Self::Uuid(u) => Value::Uuid(u),
            Self::Date(d) => Value::Date(d),
            Self::Time(t) => Value::Time(t),
            Self::Timestamp(t) => Value::Timestamp(t),
            Self::Timestamptz(t) => Value::Timestamptz(t),
            Self::Interval(i) => Value::Interval(i),
            Self::Array(a) => Value::Array(a),
        }
    }

    /// The same value borrowed for a shorter lifetime (constants into an evaluation).
    pub fn reborrow(&self) -> Value<'_> {
        match self {
            Self::Text(t) => Value::Text(Cow::Borrowed(t.as_ref())),
            Self::Bpchar(t) => Value::Bpchar(Cow::Borrowed(t.as_ref())),
            other => other.shallow_clone(),
        }
    }

    fn shallow_clone(&self) -> Value<'static> {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Int(i) => Value::Int(*i),
            Self::Float(f) => Value::Float(*f),
            Self::Numeric(n) => Value::Numeric(n.clone()),
            Self::Text(t) => Value::Text(Cow::Owned(t.to_string())),
            Self::Bpchar(t) => Value::Bpchar(Cow::Owned(t.to_string())),
            Self::Uuid(u) => Value::Uuid(*u),
            Self::Date(d) => Value::Date(*d),
            Self::Time(t) => Value::Time(*t),
            Self::Timestamp(t) => Value::Timestamp(*t),
            Self::Timestamptz(t) => Value::Timestamptz(*t),
            Self::Interval(i) => Value::Interval(*i),
            Self::Array(a) => Value::Array(Arc::clone(a)),
        }
    }

    /// Postgres's ordering of two non-NULL values of the same type (`btree` comparison):
    /// floats put NaN above everything and equal to itself, text compares bytes (C collation).
    pub fn pg_cmp(&self, other: &Value<'_>) -> Ordering {
        match (self, other) {
            (Self::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Self::Int(a), Value::Int(b)) => a.cmp(b),
            (Self::Float(a), Value::Float(b)) => float_cmp(*a, *b),
            (Self::Numeric(a), Value::Numeric(b)) => a.cmp(b),
            (Self::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Self::Bpchar(a), Value::Bpchar(b)) => a
                .trim_end_matches(' ')
                .as_bytes()
                .cmp(b.trim_end_matches(' ').as_bytes()),
            (Self::Uuid(a), Value::Uuid(b)) => a.cmp(b),
            (Self::Date(a), Value::Date(b)) => a.cmp(b),
            (Self::Time(a), Value::Time(b)) => a.cmp(b),
            (Self::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            (Self::Timestamptz(a), Value::Timestamptz(b)) => a.cmp(b),
            (Self::Interval(a), Value::Interval(b)) => a.cmp(b),
            (Self::Array(a), Value::Array(b)) => array_cmp(a, b),
            (a, b) => unreachable!("type checking compares like with like: {a:?} vs {b:?}"),
        }
    }
}

/// `float8` ordering as Postgres's `float8_cmp_internal`: NaN equals NaN and sorts last,
/// `-0 = 0`.
pub fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Postgres's `array_cmp`: element by element (NULL above every value), then the number of
/// elements, then the dimensions and lower bounds.
fn array_cmp(a: &PgArray<Value<'static>>, b: &PgArray<Value<'static>>) -> Ordering {
    for (x, y) in a.elements.iter().zip(&b.elements) {
        let order = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => x.pg_cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.elements
        .len()
        .cmp(&b.elements.len())
        .then_with(|| a.dims.len().cmp(&b.dims.len()))
        .then_with(|| {
            let key = |arr: &PgArray<Value<'static>>| -> Vec<(u32, i32)> {
                arr.dims.iter().map(|d| (d.len, d.lower)).collect()
            };
            key(a).cmp(&key(b))
        })
}

/// Reads Postgres's text output (or a literal's text) as a value of `scalar`, as the type's
/// input function does.
pub fn parse_scalar<'r>(text: Cow<'r, str>, scalar: Scalar) -> Result<Value<'r>, InvalidInput> {
    let invalid = || {
        InvalidInput(format!(
            "invalid input syntax for type {}: \"{}\"",
            scalar.sql_name(),
            text
        ))
    };
    Ok(match scalar {
        Scalar::Text | Scalar::Varchar => Value::Text(text),
        Scalar::Bpchar => Value::Bpchar(text),
        Scalar::Bool => Value::Bool(parse_bool(&text).ok_or_else(invalid)?),
        Scalar::Int2 => Value::Int(parse_int(
            &text,
            i64::from(i16::MIN),
            i64::from(i16::MAX),
            scalar,
        )?),
        Scalar::Int4 => Value::Int(parse_int(
            &text,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            scalar,
        )?),
        Scalar::Int8 => Value::Int(parse_int(&text, i64::MIN, i64::MAX, scalar)?),
        Scalar::Float8 => Value::Float(parse_float(&text).ok_or_else(invalid)?),
        Scalar::Float4 => Value::Float(parse_float4(&text, scalar)?),
        Scalar::Numeric => {
            Value::Numeric(Numeric::parse(&text).map_err(|e| InvalidInput(e.to_string()))?)
        }
        Scalar::Uuid => Value::Uuid(parse_uuid(&text).ok_or_else(invalid)?),
        Scalar::Date => Value::Date(Date::parse(&text).map_err(|e| InvalidInput(e.to_string()))?),
        Scalar::Time => Value::Time(Time::parse(&text).map_err(|e| InvalidInput(e.to_string()))?),
        Scalar::Timestamp => {
            Value::Timestamp(Timestamp::parse(&text).map_err(|e| InvalidInput(e.to_string()))?)
        }
        Scalar::Timestamptz => {
            Value::Timestamptz(Timestamptz::parse(&text).map_err(|e| InvalidInput(e.to_string()))?)
        }
        Scalar::Interval => {
            // Postgres 17's input: a server before 17 never sends `infinity`, and the binder
            // refuses it in constants there.
            Value::Interval(
                Interval::parse_in(&text, Dialect::From17)
                    .map_err(|e| InvalidInput(e.to_string()))?,
            )
        }
    })
}

/// Reads an array's text form with elements of `scalar`.
pub fn parse_array(text: &str, scalar: Scalar) -> Result<Value<'static>, InvalidInput> {
    array_text::parse_array(text, |element| {
        parse_scalar(Cow::Owned(element.to_owned()), scalar).map(Value::into_owned)
    })
    .map(|array| Value::Array(Arc::new(array)))
    .map_err(|e| match e {
        array_text::ArrayTextError::Element(inner) => inner,
        other => InvalidInput(other.to_string()),
    })
}

/// `boolin`: `t`, `true`, `yes`, `on`, `1` and their negations, any case, any unique prefix of
/// the words, surrounding blanks ignored.
fn parse_bool(text: &str) -> Option<bool> {
    let word = text
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .to_ascii_lowercase();
    let is_prefix = |full: &str| !word.is_empty() && full.starts_with(word.as_str());
    match word.as_str() {
        "1" => Some(true),
        "0" => Some(false),
        "o" => None,
        _ if is_prefix("true") || is_prefix("yes") || (word.len() >= 2 && is_prefix("on")) => {
            Some(true)
        }
        _ if is_prefix("false") || is_prefix("no") || (word.len() >= 2 && is_prefix("off")) => {
            Some(false)
        }
        _ => None,
    }
}

/// `int2in`/`int4in`/`int8in`: optional blanks and sign, decimal digits (PG 15 takes no
/// underscores or other bases), range-checked.
fn parse_int(text: &str, min: i64, max: i64, scalar: Scalar) -> Result<i64, InvalidInput> {
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidInput(format!(
            "invalid input syntax for type {}: \"{text}\"",
            scalar.sql_name()
        )));
    }
    let out_of_range = || {
        InvalidInput(format!(
            "value \"{text}\" is out of range for type {}",
            scalar.sql_name()
        ))
    };
    let value: i64 = trimmed.parse().map_err(|_| out_of_range())?;
    if value < min || value > max {
        return Err(out_of_range());
    }
    Ok(value)
}

/// `float8in`: a decimal number, `NaN`, `Infinity`/`inf` with sign, any case.
fn parse_float(text: &str) -> Option<f64> {
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let unsigned = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    let is_word = unsigned.eq_ignore_ascii_case("nan")
        || unsigned.eq_ignore_ascii_case("infinity")
        || unsigned.eq_ignore_ascii_case("inf");
    let is_decimal = !unsigned.is_empty()
        && unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && unsigned.bytes().any(|b| b.is_ascii_digit());
    if !(is_word || is_decimal) {
        return None;
    }
    if unsigned.eq_ignore_ascii_case("nan") && unsigned.len() != trimmed.len() {
        return None;
    }
    let value: f64 = trimmed.parse().ok()?;
    // Postgres refuses a finite spelling that overflows ("out of range").
    (value.is_finite() || is_word).then_some(value)
}

fn parse_float4(text: &str, scalar: Scalar) -> Result<f64, InvalidInput> {
    let value = parse_float(text).ok_or_else(|| {
        InvalidInput(format!(
            "invalid input syntax for type {}: \"{text}\"",
            scalar.sql_name()
        ))
    })?;
    // `float4in` parses with strtof: one rounding, straight to single precision.
    let trimmed = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let single: f32 = trimmed.parse().unwrap_or(value as f32);
    if single.is_infinite() && value.is_finite() {
        return Err(InvalidInput(format!(
            "\"{trimmed}\" is out of range for type real"
        )));
    }
    Ok(f64::from(single))
}

/// `uuid_in`: 32 hex digits, optionally in braces, with a `-` allowed after any group of
/// four digits.
fn parse_uuid(text: &str) -> Option<u128> {
    let inner = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let mut value: u128 = 0;
    let mut digits = 0;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        let d = c.to_digit(16)?;
        value = (value << 4) | u128::from(d);
        digits += 1;
        if digits % 4 == 0 && digits < 32 && chars.peek() == Some(&'-') {
            chars.next();
        }
    }
    (digits == 32).then_some(value)
}

/// The canonical text of a `uuid` (`uuid_out`).
pub fn format_uuid(value: u128) -> String {
    let hex = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A `float8` as Postgres prints it with `extra_float_digits > 0` (shortest exact digits):
/// plain notation for decimal exponents in `-4..15`, else `d.ddde+NN`.
pub fn format_float(value: f64, scalar: Scalar) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's shortest round-trip form, as Postgres's (Ryu) shortest output: `-1.2345e3`.
    let sci = if scalar == Scalar::Float4 {
        #[allow(clippy::cast_possible_truncation)]
        let single = value as f32;
        format!("{single:e}")
    } else {
        format!("{value:e}")
    };
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    // Plain notation for decimal exponents in -4..DIG (FLT_DIG 6, DBL_DIG 15), as Postgres.
    let limit = if scalar == Scalar::Float4 { 6 } else { 15 };
    if exponent < -4 || exponent >= limit {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        );
    } else if exponent < 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat(usize::try_from(-exponent - 1).unwrap_or(0)));
        out.push_str(&digits);
    } else {
        let point = usize::try_from(exponent + 1).unwrap_or(0);
        if digits.len() <= point {
            out.push_str(&digits);
            out.push_str(&"0".repeat(point - digits.len()));
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

/// The text of a non-NULL value of `scalar`, as Postgres's output function prints it with
/// ampere's session settings (`DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=1`).
pub fn format_scalar(value: &Value<'_>, scalar: Scalar) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format_float(*f, scalar),
        Value::Numeric(n) => n.to_string(),
        Value::Text(t) | Value::Bpchar(t) => t.to_string(),
        Value::Uuid(u) => format_uuid(*u),
        Value::Date(d) => d.to_string(),
        Value::Time(t) => t.to_string(),
        Value::Timestamp(t) => t.to_string(),
        Value::Timestamptz(t) => t.to_string(),
        Value::Interval(i) => i.to_string(),
        Value::Array(a) => {
            let mut out = String::new();
            array_text::format_array(a, |v| format_scalar(v, scalar), &mut out);
            out
        }
    }
}

/// `text` quoted as an SQL string literal: `'it''s'`, or `E'…'` when it holds a backslash
/// (so the literal means the same whatever `standard_conforming_strings` is).
pub fn quote_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    if text.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str, scalar: Scalar) -> Result<Value<'_>, InvalidInput> {
        parse_scalar(Cow::Borrowed(text), scalar)
    }

    #[test]
    fn booleans_read_every_spelling_boolin_accepts() {
        for (text, expected) in [
            ("t", Some(true)),
            ("TRUE", Some(true)),
            (" yes ", Some(true)),
            ("on", Some(true)),
            ("1", Some(true)),
            ("f", Some(false)),
            ("No", Some(false)),
            ("off", Some(false)),
            ("0", Some(false)),
            ("o", None),
            ("", None),
            ("tr ue", None),
            ("2", None),
        ] {
            assert_eq!(parse_bool(text), expected, "{text:?}");
        }
    }

    #[test]
    fn integers_are_range_checked_per_width_with_postgres_messages() {
        assert!(matches!(
            parsed(" -32768 ", Scalar::Int2),
            Ok(Value::Int(-32768))
        ));
        assert_eq!(
            parsed("32768", Scalar::Int2).unwrap_err().0,
            "value \"32768\" is out of range for type smallint"
        );
        assert_eq!(
            parsed("1.5", Scalar::Int4).unwrap_err().0,
            "invalid input syntax for type integer: \"1.5\""
        );
        assert!(matches!(
            parsed("9223372036854775807", Scalar::Int8),
            Ok(Value::Int(i64::MAX))
        ));
    }

    #[test]
    fn floats_order_nan_last_and_equal_to_itself() {
        assert_eq!(float_cmp(f64::NAN, f64::NAN), Ordering::Equal);
        assert_eq!(float_cmp(f64::NAN, f64::INFINITY), Ordering::Greater);
        assert_eq!(float_cmp(-0.0, 0.0), Ordering::Equal);
    }

    #[test]
    fn floats_print_as_postgres_shortest_form() {
        for (value, text) in [
            (1.5, "1.5"),
            (100.0, "100"),
            (1e15, "1e+15"),
            (123_456_789_012_345.0, "123456789012345"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-10, "-2.5e-10"),
            (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(format_float(value, Scalar::Float8), text);
        }
        assert_eq!(format_float(f64::from(0.1_f32), Scalar::Float4), "0.1");
        assert_eq!(format_float(1e6, Scalar::Float4), "1e+06");
    }

    #[test]
    fn uuids_accept_postgres_spellings_and_print_canonically() {
        let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        for text in [
            canonical,
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(
                parse_uuid(text).map(format_uuid).as_deref(),
                Some(canonical),
                "{text}"
            );
        }
        assert_eq!(parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"), None);
        assert_eq!(parse_uuid("-a0eebc999c0b4ef8bb6d6bb9bd380a11"), None);
    }

    #[test]
    fn literals_are_quoted_so_no_text_escapes_them() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }
}
