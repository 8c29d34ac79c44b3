//! Postgres `numeric`, exactly: the arbitrary-precision decimal a where clause compares, adds,
//! subtracts, multiplies and casts to `float4`/`float8`/`int2`/`int4`/`int8`.
//!
//! Owns: the text input function (`numeric_in`, PG 15 syntax: no `_` separators, no hex), the
//! output function (`numeric_out`), display scale (`dscale`) bookkeeping, PG's total order (NaN
//! equal to itself and above `Infinity`), a `Hash` consistent with that order's equality, the
//! special-value rules of `+ - *`, the `value overflows numeric format` limits, and the casts to
//! integers (round half away from zero) and floats (through the text and a correctly rounded
//! parse, as PG's `float8in`/`float4in` do).
//!
//! Never: division, modulo, power, rounding functions or type modifiers (`numeric(p, s)`); it
//! does no I/O and knows nothing about where clauses.
//!
//! Representation: sign, base-10 digits without leading or trailing zeros, the power of ten of
//! the first digit (`weight`), and the display scale. Zero is always positive with weight 0, so
//! equal values have equal digits and weight whatever their scale.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// Largest display scale PG can store (`NUMERIC_DSCALE_MAX`).
const NUMERIC_DSCALE_MAX: i64 = 0x3FFF;
/// Largest weight PG can store, in base-`NBASE` digits (`int16` field).
const NUMERIC_WEIGHT_MAX: i64 = i16::MAX as i64;
/// Decimal digits per base-`NBASE` (10000) digit.
const DEC_DIGITS: i64 = 4;
/// `set_var_from_str` refuses exponents at or beyond `INT_MAX / 2` in magnitude.
const EXPONENT_LIMIT: i64 = (i32::MAX / 2) as i64;

/// An error of a numeric operation, displayed exactly as Postgres words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumericError {
    /// `numeric_in` rejected the text (which is the whole input, whitespace included).
    #[error("invalid input syntax for type numeric: \"{0}\"")]
    InvalidSyntax(String),
    /// The value's weight or display scale does not fit PG's storage format.
    #[error("value overflows numeric format")]
    Overflow,
    /// `NaN` cast to an integer type.
    #[error("cannot convert NaN to {}", .0.name())]
    NaNToInteger(IntType),
    /// `±Infinity` cast to an integer type.
    #[error("cannot convert infinity to {}", .0.name())]
    InfinityToInteger(IntType),
    /// The rounded value does not fit the integer type.
    #[error("{} out of range", .0.name())]
    IntegerOutOfRange(IntType),
    /// The value overflows the float type, or is nonzero but rounds to zero; `text` is the
    /// value's `numeric_out` text, which PG quotes in the message.
    #[error("\"{text}\" is out of range for type {}", .float.name())]
    FloatOutOfRange {
        /// The numeric's output text.
        text: String,
        /// The target float type.
        float: FloatType,
    },
}

/// A Postgres integer type, the target of [`Numeric::to_int_checked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntType {
    /// `int2` / `smallint`.
    Int2,
    /// `int4` / `integer`.
    Int4,
    /// `int8` / `bigint`.
    Int8,
}

impl IntType {
    /// The SQL name PG uses in error messages (`smallint`, `integer`, `bigint`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Int2 => "smallint",
            Self::Int4 => "integer",
            Self::Int8 => "bigint",
        }
    }

    /// The inclusive range of the type.
    const fn bounds(self) -> (i64, i64) {
        match self {
            Self::Int2 => (i16::MIN as i64, i16::MAX as i64),
            Self::Int4 => (i32::MIN as i64, i32::MAX as i64),
            Self::Int8 => (i64::MIN, i64::MAX),
        }
    }
}

/// A Postgres float type, named in [`NumericError::FloatOutOfRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatType {
    /// `float4` / `real`.
    Float4,
    /// `float8` / `double precision`.
    Float8,
}

impl FloatType {
    /// The SQL name PG uses in error messages (`real`, `double precision`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Float4 => "real",
            Self::Float8 => "double precision",
        }
    }
}

/// A Postgres `numeric` value: finite with a display scale, `NaN`, `Infinity` or `-Infinity`.
///
/// Equality, order and hash are PG's: `1.0 = 1.00 = 1`, `-0 = 0`, `NaN = NaN`, and `NaN` sorts
/// above `Infinity`.
#[derive(Clone)]
pub struct Numeric(Kind);

/// The variants of a numeric, declared in PG's sort order.
#[derive(Clone)]
enum Kind {
    NegInfinity,
    Finite(Finite),
    Infinity,
    NaN,
}

/// A finite value: `(-1)^negative × Σ digits[i] × 10^(weight - i)`, shown with `dscale`
/// fraction digits.
#[derive(Clone)]
struct Finite {
    /// Never true for zero.
    negative: bool,
    /// Decimal digits 0..=9, no leading or trailing zeros; empty for zero.
    digits: Vec<u8>,
    /// Power of ten of `digits[0]`; 0 for zero.
    weight: i32,
    /// Display scale: fraction digits shown by `numeric_out`; at most `NUMERIC_DSCALE_MAX`.
    dscale: u16,
}

impl Numeric {
    /// `NaN`.
    pub const NAN: Self = Self(Kind::NaN);
    /// `Infinity`.
    pub const INFINITY: Self = Self(Kind::Infinity);
    /// `-Infinity`.
    pub const NEG_INFINITY: Self = Self(Kind::NegInfinity);

    /// PG's `numeric_in`: `[ws][+|-]digits[.digits][e[+|-]digits][ws]` (also `.5`, `5.`), or
    /// `NaN`, `[+|-]Infinity`, `[+|-]inf` in any case, keeping the display scale.
    ///
    /// # Errors
    /// [`NumericError::InvalidSyntax`] for malformed text, [`NumericError::Overflow`] beyond
    /// PG's storage limits (exponent magnitude ≥ 2^30, 131072 integer digits or scale 16383).
    pub fn parse(text: &str) -> Result<Self, NumericError> {
        let bytes = text.as_bytes();
        let start = skip_spaces(bytes, 0);
        if let Some((special, len)) = special_prefix(&bytes[start..]) {
            expect_only_spaces(text, start + len)?;
            return Ok(special);
        }
        let (scanned, end) = scan_decimal(text, start)?;
        expect_only_spaces(text, end)?;
        scanned.into_numeric()
    }

    /// The integer `value` with display scale 0 (PG's `int8::numeric`, `int4::numeric`, …).
    #[must_use]
    pub fn from_i64(value: i64) -> Self {
        let digits: Vec<u8> = value
            .unsigned_abs()
            .to_string()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        let weight = i64::from(digit_count(&digits)) - 1;
        Self::finite(value < 0, digits, weight, 0)
    }

    /// Whether this is `NaN`.
    #[must_use]
    pub const fn is_nan(&self) -> bool {
        matches!(self.0, Kind::NaN)
    }

    /// Whether this is neither `NaN` nor an infinity.
    #[must_use]
    pub const fn is_finite(&self) -> bool {
        matches!(self.0, Kind::Finite(_))
    }

    /// Unary minus (`numeric_uminus`): zero and `NaN` stay as they are.
    #[must_use]
    pub fn neg(&self) -> Self {
        match &self.0 {
            Kind::NaN => Self::NAN,
            Kind::Infinity => Self::NEG_INFINITY,
            Kind::NegInfinity => Self::INFINITY,
            Kind::Finite(f) => {
                let mut f = f.clone();
                f.negative = !f.negative && !f.digits.is_empty();
                Self(Kind::Finite(f))
            }
        }
    }

    /// Absolute value (`numeric_abs`, the `@` operator), keeping the scale.
    #[must_use]
    pub fn abs(&self) -> Self {
        match &self.0 {
            Kind::NaN => Self::NAN,
            Kind::Infinity | Kind::NegInfinity => Self::INFINITY,
            Kind::Finite(f) => {
                let mut f = f.clone();
                f.negative = false;
                Self(Kind::Finite(f))
            }
        }
    }

    /// `self + other` (`numeric_add`): exact, scale = max of the scales;
    /// `Infinity + -Infinity = NaN`, anything with `NaN` is `NaN`.
    ///
    /// # Errors
    /// [`NumericError::Overflow`] if the sum needs 131072 or more integer digits.
    pub fn add(&self, other: &Self) -> Result<Self, NumericError> {
        let (a, b) = match (&self.0, &other.0) {
            (Kind::Finite(a), Kind::Finite(b)) => (a, b),
            (Kind::NaN, _) | (_, Kind::NaN) => return Ok(Self::NAN),
            (Kind::Infinity, Kind::NegInfinity) | (Kind::NegInfinity, Kind::Infinity) => {
                return Ok(Self::NAN)
            }
            (Kind::Infinity, _) | (_, Kind::Infinity) => return Ok(Self::INFINITY),
            (Kind::NegInfinity, _) | (_, Kind::NegInfinity) => return Ok(Self::NEG_INFINITY),
        };
        let dscale = a.dscale.max(b.dscale);
        let sum = if a.negative == b.negative {
            let (digits, weight) = add_magnitudes(a, b);
            Self::finite(a.negative, digits, weight.into(), dscale.into())
        } else {
            // Signs differ: subtract the smaller magnitude from the larger, keep its sign.
            let (big, small) = if cmp_magnitudes(a, b) == Ordering::Less {
                (b, a)
            } else {
                (a, b)
            };
            let (digits, weight) = sub_magnitudes(big, small);
            Self::finite(big.negative, digits, weight.into(), dscale.into())
        };
        sum.check_representable()
    }

    /// `self - other` (`numeric_sub`): `self + (-other)`, with the same scale and special rules
    /// (`Infinity - Infinity = NaN`).
    ///
    /// # Errors
    /// [`NumericError::Overflow`] as for [`Numeric::add`].
    pub fn sub(&self, other: &Self) -> Result<Self, NumericError> {
        self.add(&other.neg())
    }

    /// `self * other` (`numeric_mul`): exact with scale = sum of the scales, rounded (half away
    /// from zero) to scale 16383 if larger; an infinity times zero is `NaN`, otherwise the
    /// product of signs decides the infinity's sign.
    ///
    /// # Errors
    /// [`NumericError::Overflow`] if the product needs 131072 or more integer digits.
    pub fn mul(&self, other: &Self) -> Result<Self, NumericError> {
        let (a, b) = match (&self.0, &other.0) {
            (Kind::Finite(a), Kind::Finite(b)) => (a, b),
            (Kind::NaN, _) | (_, Kind::NaN) => return Ok(Self::NAN),
            _ => return Ok(mul_special(self.signum() * other.signum())),
        };
        let (digits, weight) = mul_magnitudes(a, b);
        let dscale = i64::from(a.dscale) + i64::from(b.dscale);
        let product = Self::finite(a.negative != b.negative, digits, weight, dscale);
        match product.0 {
            Kind::Finite(f) if dscale > NUMERIC_DSCALE_MAX => {
                Self(Kind::Finite(f.round(NUMERIC_DSCALE_MAX))).check_representable()
            }
            kind => Self(kind).check_representable(),
        }
    }

    /// PG's `numeric::float8` cast: `numeric_out` then `float8in` (correctly rounded);
    /// `NaN` → NaN, `±Infinity` → ±∞.
    ///
    /// # Errors
    /// [`NumericError::FloatOutOfRange`] when the value overflows `double precision` or is
    /// nonzero but rounds to zero.
    pub fn to_f64(&self) -> Result<f64, NumericError> {
        match &self.0 {
            Kind::NaN => Ok(f64::NAN),
            Kind::Infinity => Ok(f64::INFINITY),
            Kind::NegInfinity => Ok(f64::NEG_INFINITY),
            Kind::Finite(f) => {
                let text = self.to_string();
                // numeric_out text `-?digits(.digits)?` always parses; were it not to, the NaN
                // would surface as an out-of-range error, not a panic.
                let value: f64 = text.parse().unwrap_or(f64::NAN);
                if value.is_finite() && (value != 0.0 || f.digits.is_empty()) {
                    Ok(value)
                } else {
                    Err(NumericError::FloatOutOfRange {
                        text,
                        float: FloatType::Float8,
                    })
                }
            }
        }
    }

    /// PG's `numeric::float4` cast: `numeric_out` then `float4in` (correctly rounded to `f32`
    /// directly, not through `f64`); `NaN` → NaN, `±Infinity` → ±∞.
    ///
    /// # Errors
    /// [`NumericError::FloatOutOfRange`] when the value overflows `real` or is nonzero but
    /// rounds to zero.
    pub fn to_f32(&self) -> Result<f32, NumericError> {
        match &self.0 {
            Kind::NaN => Ok(f32::NAN),
            Kind::Infinity => Ok(f32::INFINITY),
            Kind::NegInfinity => Ok(f32::NEG_INFINITY),
            Kind::Finite(f) => {
                let text = self.to_string();
                // numeric_out text `-?digits(.digits)?` always parses; were it not to, the NaN
                // would surface as an out-of-range error, not a panic.
                let value: f32 = text.parse().unwrap_or(f32::NAN);
                if value.is_finite() && (value != 0.0 || f.digits.is_empty()) {
                    Ok(value)
                } else {
                    Err(NumericError::FloatOutOfRange {
                        text,
                        float: FloatType::Float4,
                    })
                }
            }
        }
    }

    /// PG's `numeric::int2/int4/int8` casts: round half away from zero, then range-check
    /// against `ty`. The result fits `ty`.
    ///
    /// # Errors
    /// `cannot convert NaN to <ty>`, `cannot convert infinity to <ty>`, `<ty> out of range`.
    pub fn to_int_checked(&self, ty: IntType) -> Result<i64, NumericError> {
        let f = match &self.0 {
            Kind::Finite(f) => f.round(0),
            Kind::NaN => return Err(NumericError::NaNToInteger(ty)),
            Kind::Infinity | Kind::NegInfinity => return Err(NumericError::InfinityToInteger(ty)),
        };
        let out_of_range = NumericError::IntegerOutOfRange(ty);
        if f.weight >= 19 {
            return Err(out_of_range);
        }
        let magnitude = (0..=f.weight)
            .rev()
            .fold(0_i128, |acc, pos| acc * 10 + i128::from(f.digit_at(pos)));
        let value = if f.negative { -magnitude } else { magnitude };
        let (min, max) = ty.bounds();
        if value < i128::from(min) || value > i128::from(max) {
            return Err(out_of_range);
        }
        i64::try_from(value).map_err(|_| out_of_range)
    }

    /// `numeric::int8` ([`Numeric::to_int_checked`] with [`IntType::Int8`]).
    ///
    /// # Errors
    /// As [`Numeric::to_int_checked`].
    pub fn to_i64_checked(&self) -> Result<i64, NumericError> {
        self.to_int_checked(IntType::Int8)
    }

    /// `numeric::int4` ([`Numeric::to_int_checked`] with [`IntType::Int4`]).
    ///
    /// # Errors
    /// As [`Numeric::to_int_checked`].
    pub fn to_i32_checked(&self) -> Result<i32, NumericError> {
        let value = self.to_int_checked(IntType::Int4)?;
        i32::try_from(value).map_err(|_| NumericError::IntegerOutOfRange(IntType::Int4))
    }

    /// `numeric::int2` ([`Numeric::to_int_checked`] with [`IntType::Int2`]).
    ///
    /// # Errors
    /// As [`Numeric::to_int_checked`].
    pub fn to_i16_checked(&self) -> Result<i16, NumericError> {
        let value = self.to_int_checked(IntType::Int2)?;
        i16::try_from(value).map_err(|_| NumericError::IntegerOutOfRange(IntType::Int2))
    }

    /// A finite numeric from unnormalised digits (leading/trailing zeros allowed) whose first
    /// digit has power of ten `weight`. The caller keeps `weight` and `dscale` within what
    /// [`Numeric::check_representable`] accepts, or calls it.
    fn finite(negative: bool, digits: Vec<u8>, weight: i64, dscale: i64) -> Self {
        Self(Kind::Finite(Finite::normalized(
            negative, digits, weight, dscale,
        )))
    }

    /// PG's `make_result` overflow check: weight in base-10000 digits must fit `int16`, the
    /// display scale 14 bits.
    fn check_representable(self) -> Result<Self, NumericError> {
        if let Kind::Finite(f) = &self.0 {
            if i64::from(f.dscale) > NUMERIC_DSCALE_MAX {
                return Err(NumericError::Overflow);
            }
            let nbase_weight = i64::from(f.weight).div_euclid(DEC_DIGITS);
            if !f.digits.is_empty() && nbase_weight > NUMERIC_WEIGHT_MAX {
                return Err(NumericError::Overflow);
            }
        }
        Ok(self)
    }

    /// PG's `numeric_sign` as an integer: -1, 0 or 1 (`NaN` never reaches here).
    fn signum(&self) -> i8 {
        match &self.0 {
            Kind::NegInfinity => -1,
            Kind::Infinity => 1,
            Kind::NaN => 0,
            Kind::Finite(f) if f.digits.is_empty() => 0,
            Kind::Finite(f) if f.negative => -1,
            Kind::Finite(_) => 1,
        }
    }
}

/// The product involving an infinity, given the product of the operands' signs.
const fn mul_special(sign: i8) -> Numeric {
    match sign {
        0 => Numeric::NAN,
        s if s > 0 => Numeric::INFINITY,
        _ => Numeric::NEG_INFINITY,
    }
}

impl Finite {
    /// Power of ten of the last digit (the weight itself for zero).
    fn low(&self) -> i32 {
        self.weight - digit_count(&self.digits) + 1
    }

    /// The digit at power of ten `pos` (0 outside the stored digits).
    fn digit_at(&self, pos: i32) -> u8 {
        if pos > self.weight || pos < self.low() {
            return 0;
        }
        let index = usize::try_from(self.weight - pos).unwrap_or(usize::MAX);
        self.digits.get(index).copied().unwrap_or(0)
    }

    /// PG's `round_var`: round half away from zero to `scale` fraction digits (`scale` ≥ 0);
    /// the display scale becomes `scale`.
    fn round(&self, scale: i64) -> Self {
        let low = i64::from(self.low());
        let weight = i64::from(self.weight);
        if self.digits.is_empty() || low >= -scale {
            let mut same = self.clone();
            same.dscale = u16::try_from(scale).unwrap_or(u16::MAX);
            return same;
        }
        // Digits at powers ≥ -scale are kept; the first dropped one (power -scale-1) decides.
        let keep = usize::try_from(weight + scale + 1).unwrap_or(0);
        let round_digit = if weight + scale + 1 >= 0 {
            self.digits.get(keep).copied().unwrap_or(0)
        } else {
            0
        };
        let mut digits = self.digits[..keep].to_vec();
        let mut new_weight = weight;
        if round_digit >= 5 {
            if keep == 0 {
                digits.push(0);
                new_weight = -scale;
            }
            new_weight += increment_last(&mut digits);
        }
        Self::normalized(self.negative, digits, new_weight, scale)
    }

    /// A finite value from unnormalised digits (leading/trailing zeros allowed) whose first
    /// digit has power of ten `weight`. Out-of-range weights and scales saturate, to be
    /// refused by [`Numeric::check_representable`].
    fn normalized(negative: bool, digits: Vec<u8>, weight: i64, dscale: i64) -> Self {
        let (digits, weight) = strip_zeros(digits, weight);
        let negative = negative && !digits.is_empty();
        let weight = i32::try_from(weight).unwrap_or(if weight < 0 { i32::MIN } else { i32::MAX });
        let dscale = u16::try_from(dscale.clamp(0, i64::from(u16::MAX))).unwrap_or(u16::MAX);
        Self {
            negative,
            digits,
            weight,
            dscale,
        }
    }
}

/// Adds 1 to the last digit of `digits`, propagating the carry; returns 1 if a digit was
/// prepended (the weight grows by one), else 0.
fn increment_last(digits: &mut Vec<u8>) -> i64 {
    for digit in digits.iter_mut().rev() {
        if *digit == 9 {
            *digit = 0;
        } else {
            *digit += 1;
            return 0;
        }
    }
    digits.insert(0, 1);
    1
}

/// The digit count as a weight offset (digit vectors are far shorter than `i32::MAX`).
fn digit_count(digits: &[u8]) -> i32 {
    i32::try_from(digits.len()).unwrap_or(i32::MAX)
}

/// Removes leading zeros (lowering `weight`) and trailing zeros; zero gets weight 0.
fn strip_zeros(mut digits: Vec<u8>, weight: i64) -> (Vec<u8>, i64) {
    let Some(first) = digits.iter().position(|&d| d != 0) else {
        return (Vec::new(), 0);
    };
    let last = digits.iter().rposition(|&d| d != 0).unwrap_or(first);
    digits.truncate(last + 1);
    digits.drain(..first);
    (digits, weight - i64::try_from(first).unwrap_or(0))
}

/// Compares |a| and |b|.
fn cmp_magnitudes(a: &Finite, b: &Finite) -> Ordering {
    match (a.digits.is_empty(), b.digits.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // Normalised digits: higher weight is larger; at equal weight a proper prefix is smaller.
        (false, false) => a
            .weight
            .cmp(&b.weight)
            .then_with(|| a.digits.cmp(&b.digits)),
    }
}

/// |a| + |b| as unnormalised digits and the weight of the first digit.
fn add_magnitudes(a: &Finite, b: &Finite) -> (Vec<u8>, i32) {
    let top = a.weight.max(b.weight) + 1;
    let bottom = a.low().min(b.low());
    let mut out = Vec::with_capacity(usize::try_from(top - bottom + 1).unwrap_or(0));
    let mut carry = 0;
    for pos in bottom..=top {
        let sum = a.digit_at(pos) + b.digit_at(pos) + carry;
        out.push(sum % 10);
        carry = sum / 10;
    }
    out.reverse();
    (out, top)
}

/// |big| - |small| (requires |big| ≥ |small|) as unnormalised digits and the first weight.
fn sub_magnitudes(big: &Finite, small: &Finite) -> (Vec<u8>, i32) {
    let top = big.weight.max(small.weight);
    let bottom = big.low().min(small.low());
    let mut out = Vec::with_capacity(usize::try_from(top - bottom + 1).unwrap_or(0));
    let mut borrow = 0;
    for pos in bottom..=top {
        let minuend = big.digit_at(pos);
        let subtrahend = small.digit_at(pos) + borrow;
        if minuend >= subtrahend {
            out.push(minuend - subtrahend);
            borrow = 0;
        } else {
            out.push(minuend + 10 - subtrahend);
            borrow = 1;
        }
    }
    out.reverse();
    (out, top)
}

/// |a| × |b| exactly, as unnormalised digits and the weight of the first digit.
fn mul_magnitudes(a: &Finite, b: &Finite) -> (Vec<u8>, i64) {
    if a.digits.is_empty() || b.digits.is_empty() {
        return (Vec::new(), 0);
    }
    // Column sums of the schoolbook product, least significant first; each column holds at
    // most min(len) × 81, far below u64::MAX.
    let mut columns = vec![0_u64; a.digits.len() + b.digits.len()];
    for (i, &x) in a.digits.iter().rev().enumerate() {
        for (j, &y) in b.digits.iter().rev().enumerate() {
            columns[i + j] += u64::from(x) * u64::from(y);
        }
    }
    let mut carry = 0;
    let mut digits: Vec<u8> = columns
        .into_iter()
        .map(|column| {
            let total = column + carry;
            carry = total / 10;
            // `total % 10` is below 10, so the narrowing is exact.
            (total % 10) as u8
        })
        .collect();
    digits.reverse();
    (digits, i64::from(a.weight) + i64::from(b.weight) + 1)
}

/// C's `isspace` in the C locale.
const fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// The first index at or after `from` that is not a C space.
fn skip_spaces(bytes: &[u8], from: usize) -> usize {
    from + bytes.get(from..).map_or(0, |rest| {
        rest.iter().take_while(|&&b| is_c_space(b)).count()
    })
}

/// `numeric_in`'s trailing-junk check: only spaces may follow `from`.
fn expect_only_spaces(text: &str, from: usize) -> Result<(), NumericError> {
    if skip_spaces(text.as_bytes(), from) == text.len() {
        Ok(())
    } else {
        Err(NumericError::InvalidSyntax(text.to_owned()))
    }
}

/// `numeric_in`'s special values, matched case-insensitively as prefixes in PG's order; returns
/// the value and the matched length.
fn special_prefix(rest: &[u8]) -> Option<(Numeric, usize)> {
    const SPECIALS: [(&str, Numeric); 7] = [
        ("NaN", Numeric::NAN),
        ("Infinity", Numeric::INFINITY),
        ("+Infinity", Numeric::INFINITY),
        ("-Infinity", Numeric::NEG_INFINITY),
        ("inf", Numeric::INFINITY),
        ("+inf", Numeric::INFINITY),
        ("-inf", Numeric::NEG_INFINITY),
    ];
    SPECIALS.into_iter().find_map(|(word, value)| {
        let prefix = rest.get(..word.len())?;
        prefix
            .eq_ignore_ascii_case(word.as_bytes())
            .then_some((value, word.len()))
    })
}

/// A decimal scanned by [`scan_decimal`], not yet checked against PG's storage limits.
struct Scanned {
    negative: bool,
    digits: Vec<u8>,
    /// Power of ten of `digits[0]`.
    weight: i64,
    dscale: i64,
}

impl Scanned {
    /// PG's `make_result`: normalise, then refuse what the storage format cannot hold.
    fn into_numeric(self) -> Result<Numeric, NumericError> {
        Numeric::finite(self.negative, self.digits, self.weight, self.dscale).check_representable()
    }
}

/// PG's `set_var_from_str` from byte `start`: sign, digits with at most one `.` (at least one
/// digit, possibly after a leading `.`), optional exponent. Returns the scan and its end.
fn scan_decimal(text: &str, start: usize) -> Result<(Scanned, usize), NumericError> {
    let bytes = text.as_bytes();
    let syntax = || NumericError::InvalidSyntax(text.to_owned());
    let mut i = start;
    let negative = bytes.get(i) == Some(&b'-');
    if matches!(bytes.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    let mut have_dp = bytes.get(i) == Some(&b'.');
    if have_dp {
        i += 1;
    }
    if !bytes.get(i).is_some_and(u8::is_ascii_digit) {
        return Err(syntax());
    }
    let mut digits = Vec::new();
    let (mut int_digits, mut frac_digits) = (0_i64, 0_i64);
    while let Some(&byte) = bytes.get(i) {
        if byte.is_ascii_digit() {
            digits.push(byte - b'0');
            *(if have_dp {
                &mut frac_digits
            } else {
                &mut int_digits
            }) += 1;
        } else if byte == b'.' && !have_dp {
            have_dp = true;
        } else if byte == b'.' {
            return Err(syntax());
        } else {
            break;
        }
        i += 1;
    }
    let mut exponent = 0;
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let (value, end) = scan_strtol(bytes, i + 1).ok_or_else(syntax)?;
        if value >= EXPONENT_LIMIT || value <= -EXPONENT_LIMIT {
            return Err(NumericError::Overflow);
        }
        (exponent, i) = (value, end);
    }
    let weight = int_digits - 1 + exponent;
    let dscale = (frac_digits - exponent).max(0);
    Ok((
        Scanned {
            negative,
            digits,
            weight,
            dscale,
        },
        i,
    ))
}

/// C's `strtol(.., 10)` from `from`: spaces, optional sign, at least one digit; saturates like
/// `LONG_MAX`/`LONG_MIN` on overflow. `None` when no digits follow.
fn scan_strtol(bytes: &[u8], from: usize) -> Option<(i64, usize)> {
    let mut i = skip_spaces(bytes, from);
    let negative = bytes.get(i) == Some(&b'-');
    if matches!(bytes.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    let first_digit = i;
    let mut magnitude: i64 = 0;
    while let Some(&byte) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        magnitude = magnitude
            .saturating_mul(10)
            .saturating_add(i64::from(byte - b'0'));
        i += 1;
    }
    (i > first_digit).then_some((if negative { -magnitude } else { magnitude }, i))
}

impl FromStr for Numeric {
    type Err = NumericError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// PG's `numeric_out`: `NaN`, `Infinity`, `-Infinity`, or `-?int[.frac]` with exactly
/// `dscale` fraction digits.
impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let finite = match &self.0 {
            Kind::NaN => return f.write_str("NaN"),
            Kind::Infinity => return f.write_str("Infinity"),
            Kind::NegInfinity => return f.write_str("-Infinity"),
            Kind::Finite(finite) => finite,
        };
        let int_len = usize::try_from(finite.weight.max(0)).unwrap_or(0) + 1;
        let mut out = String::with_capacity(int_len + usize::from(finite.dscale) + 2);
        if finite.negative {
            out.push('-');
        }
        for pos in (0..=finite.weight.max(0)).rev() {
            out.push(char::from(b'0' + finite.digit_at(pos)));
        }
        if finite.dscale > 0 {
            out.push('.');
            for pos in 1..=i32::from(finite.dscale) {
                out.push(char::from(b'0' + finite.digit_at(-pos)));
            }
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Numeric({self})")
    }
}

/// PG's `cmp_numerics`: `-Infinity` < finite values < `Infinity` < `NaN`; finite values by
/// value, ignoring scale.
impl Ord for Numeric {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            (Kind::Finite(a), Kind::Finite(b)) => match (a.negative, b.negative) {
                (false, true) => Ordering::Greater,
                (true, false) => Ordering::Less,
                (false, false) => cmp_magnitudes(a, b),
                (true, true) => cmp_magnitudes(b, a),
            },
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }
}

impl Kind {
    /// Position in PG's sort order among the kinds.
    const fn rank(&self) -> u8 {
        match self {
            Self::NegInfinity => 0,
            Self::Finite(_) => 1,
            Self::Infinity => 2,
            Self::NaN => 3,
        }
    }
}

impl PartialOrd for Numeric {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Numeric {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Numeric {}

/// Hashes the value, not the scale, so `1.0` and `1.00` hash alike (as PG's `hash_numeric`).
impl Hash for Numeric {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.rank().hash(state);
        if let Kind::Finite(f) = &self.0 {
            f.negative.hash(state);
            f.weight.hash(state);
            f.digits.hash(state);
        }
    }
}

impl From<i64> for Numeric {
    fn from(value: i64) -> Self {
        Self::from_i64(value)
    }
}

#[cfg(test)]
mod tests {
    //! Expected values are Postgres 15's own answers (`SELECT '…'::numeric …`).

    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn num(text: &str) -> Numeric {
        Numeric::parse(text).expect("test literal is valid numeric input")
    }

    fn out(text: &str) -> String {
        num(text).to_string()
    }

    fn hash_of(value: &Numeric) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    fn syntax_error(text: &str) -> Result<Numeric, NumericError> {
        Err(NumericError::InvalidSyntax(text.to_owned()))
    }

    #[test]
    fn input_keeps_the_display_scale() {
        assert_eq!(out("1.50"), "1.50");
        assert_eq!(out("000123.4500"), "123.4500");
        assert_eq!(out("1e3"), "1000");
        assert_eq!(out("1.5e-2"), "0.015");
        assert_eq!(out("1.50e1"), "15.0");
        assert_eq!(out("+.5e1"), "5");
        assert_eq!(out(".5"), "0.5");
        assert_eq!(out("5."), "5");
        assert_eq!(out(".0"), "0.0");
        assert_eq!(out("-0"), "0");
        assert_eq!(out("-0.00"), "0.00");
        assert_eq!(out("-0.015"), "-0.015");
        assert_eq!(out("0e1073741822"), "0");
    }

    #[test]
    fn input_skips_c_whitespace_around_the_value() {
        assert_eq!(out(" 1.50 "), "1.50");
        assert_eq!(out("\u{b}1\u{c}"), "1");
        assert_eq!(out("\r\n\t1.5\r"), "1.5");
        assert_eq!(out("  NaN  "), "NaN");
    }

    #[test]
    fn the_exponent_is_read_like_strtol() {
        assert_eq!(out("1e 5"), "100000");
        assert_eq!(out("1e +5"), "100000");
        assert_eq!(out("1e\t-5"), "0.00001");
        assert_eq!(out("1.5e+02"), "150");
        assert_eq!(Numeric::parse("1e+ 5"), syntax_error("1e+ 5"));
        assert_eq!(Numeric::parse("1e"), syntax_error("1e"));
        assert_eq!(Numeric::parse("1e1.5"), syntax_error("1e1.5"));
    }

    #[test]
    fn special_values_are_case_insensitive_prefixes() {
        assert_eq!(out("nAn"), "NaN");
        assert_eq!(out("INFINITY"), "Infinity");
        assert_eq!(out("+inf"), "Infinity");
        assert_eq!(out("-INF"), "-Infinity");
        assert_eq!(out("+Infinity"), "Infinity");
        assert_eq!(Numeric::parse("infinit"), syntax_error("infinit"));
        assert_eq!(Numeric::parse("+NaN"), syntax_error("+NaN"));
        assert_eq!(Numeric::parse("-Infinityx"), syntax_error("-Infinityx"));
    }

    #[test]
    fn malformed_input_is_a_syntax_error_quoting_the_whole_text() {
        for text in [
            "", " ", ".", "-", ".e1", "e1", "+-1", "1-", "1.2.3", "1_000", "0x10", "1 2",
        ] {
            assert_eq!(Numeric::parse(text), syntax_error(text), "{text:?}");
        }
        assert_eq!(
            Numeric::parse("\t1x").map_err(|e| e.to_string()),
            Err("invalid input syntax for type numeric: \"\t1x\"".to_owned())
        );
        assert_eq!(Numeric::parse("1\u{a0}"), syntax_error("1\u{a0}"));
    }

    #[test]
    fn values_beyond_the_storage_format_overflow() {
        let overflow = Err(NumericError::Overflow);
        assert_eq!(Numeric::parse("1e131072"), overflow);
        assert_eq!(Numeric::parse("10e131071"), overflow);
        assert_eq!(Numeric::parse("1e-16384"), overflow);
        assert_eq!(Numeric::parse("0.0e-16383"), overflow);
        assert_eq!(Numeric::parse("1e1073741823"), overflow);
        assert_eq!(Numeric::parse("0e-1073741822"), overflow);
        // The exponent check runs before the trailing-junk check.
        assert_eq!(Numeric::parse("1e99999999999999999999x"), overflow);
        assert_eq!(num("1e131071").to_string().len(), 131_072);
        assert_eq!(num("1e-16383").to_string().len(), 16_385);
        assert_eq!(
            NumericError::Overflow.to_string(),
            "value overflows numeric format"
        );
    }

    #[test]
    fn equality_ignores_scale_and_the_sign_of_zero() {
        assert_eq!(num("1.0"), num("1.00"));
        assert_eq!(num("1"), num("1.000"));
        assert_eq!(num("-0"), num("0.00"));
        assert_eq!(num("NaN"), num("nan"));
        assert_ne!(num("1"), num("1.000000001"));
        assert_eq!(hash_of(&num("1.0")), hash_of(&num("1.00")));
        assert_eq!(hash_of(&num("-0.000")), hash_of(&num("0")));
        assert_eq!(hash_of(&num("120")), hash_of(&num("1.2e2")));
    }

    #[test]
    fn order_puts_nan_above_infinity() {
        let ascending = [
            "-Infinity",
            "-1e131071",
            "-1",
            "-0.999",
            "-0.1",
            "0",
            "0.0001",
            "0.09999",
            "0.1",
            "1",
            "1.000000001",
            "9999999999.9",
            "1e10",
            "9e131071",
            "Infinity",
            "NaN",
        ];
        for pair in ascending.windows(2) {
            assert!(num(pair[0]) < num(pair[1]), "{} < {}", pair[0], pair[1]);
            assert!(num(pair[1]) > num(pair[0]), "{} > {}", pair[1], pair[0]);
        }
        assert!(num("-1.000000001") < num("-1"));
    }

    #[test]
    fn addition_keeps_the_larger_scale() {
        let sum = |a: &str, b: &str| num(a).add(&num(b)).map(|n| n.to_string());
        assert_eq!(sum("1.50", "2.0"), Ok("3.50".to_owned()));
        assert_eq!(sum("-0.1", "0.1"), Ok("0.0".to_owned()));
        assert_eq!(
            sum("569.9E23", "4"),
            Ok("56990000000000000000000004".to_owned())
        );
        assert_eq!(sum("-5239929", "139.7610E+5"), Ok("8736171".to_owned()));
        assert_eq!(sum("9e131071", "1e131071"), Err(NumericError::Overflow));
        assert_eq!(sum("9e131071", "-9e131071"), Ok("0".to_owned()));
    }

    #[test]
    fn subtraction_keeps_the_larger_scale() {
        let diff = |a: &str, b: &str| num(a).sub(&num(b)).map(|n| n.to_string());
        assert_eq!(diff("5", "-7"), Ok("12".to_owned()));
        assert_eq!(diff("1.5", "1.5"), Ok("0.0".to_owned()));
        assert_eq!(
            diff("12345678901234567890.5", "0.75"),
            Ok("12345678901234567889.75".to_owned())
        );
        assert_eq!(diff("0.001", "1"), Ok("-0.999".to_owned()));
        assert_eq!(diff("-9e131071", "1e131071"), Err(NumericError::Overflow));
    }

    #[test]
    fn multiplication_is_exact_with_summed_scales() {
        let product = |a: &str, b: &str| num(a).mul(&num(b)).map(|n| n.to_string());
        assert_eq!(product("1.50", "2.0"), Ok("3.000".to_owned()));
        assert_eq!(product("-1.5", "0"), Ok("0.0".to_owned()));
        assert_eq!(product("-0.1", "0.1"), Ok("-0.01".to_owned()));
        assert_eq!(product("0.00", "0.000"), Ok("0.00000".to_owned()));
        assert_eq!(
            product("123456789.123456789", "-987654321.987654321"),
            Ok("-121932631356500531.347203169112635269".to_owned())
        );
        assert_eq!(product("1e70000", "1e70000"), Err(NumericError::Overflow));
    }

    #[test]
    fn a_product_beyond_scale_16383_is_rounded_half_away_from_zero() {
        let tail = |a: &str, b: &str| {
            let text = num(a).mul(&num(b)).expect("fits").to_string();
            assert_eq!(text.split('.').nth(1).map(str::len), Some(16_383));
            text.trim_start_matches('-')
                .trim_start_matches("0.")
                .trim_start_matches('0')
                .to_owned()
        };
        assert_eq!(tail("1.5e-8192", "1e-8191"), "2");
        assert_eq!(tail("1.4e-8192", "1e-8191"), "1");
        assert_eq!(tail("-1.5e-8192", "1e-8191"), "2");
        assert_eq!(tail("9.5e-8192", "1e-8191"), "10");
        // Rounded to zero: positive zero, scale 16383.
        let zero = num("-4e-8192")
            .mul(&num("1e-8192"))
            .expect("fits")
            .to_string();
        assert!(zero.starts_with("0.000"));
    }

    #[test]
    fn infinities_and_nan_follow_pg_arithmetic_rules() {
        let op = |f: fn(&Numeric, &Numeric) -> Result<Numeric, NumericError>, a: &str, b: &str| {
            f(&num(a), &num(b)).map(|n| n.to_string())
        };
        let ok = |s: &str| Ok(s.to_owned());
        assert_eq!(op(Numeric::add, "inf", "-inf"), ok("NaN"));
        assert_eq!(op(Numeric::add, "inf", "5"), ok("Infinity"));
        assert_eq!(op(Numeric::add, "5", "-inf"), ok("-Infinity"));
        assert_eq!(op(Numeric::add, "NaN", "inf"), ok("NaN"));
        assert_eq!(op(Numeric::sub, "inf", "inf"), ok("NaN"));
        assert_eq!(op(Numeric::sub, "inf", "-inf"), ok("Infinity"));
        assert_eq!(op(Numeric::sub, "5", "inf"), ok("-Infinity"));
        assert_eq!(op(Numeric::mul, "inf", "0.00"), ok("NaN"));
        assert_eq!(op(Numeric::mul, "0", "-inf"), ok("NaN"));
        assert_eq!(op(Numeric::mul, "inf", "-inf"), ok("-Infinity"));
        assert_eq!(op(Numeric::mul, "-inf", "-2"), ok("Infinity"));
        assert_eq!(op(Numeric::mul, "-5", "inf"), ok("-Infinity"));
        assert_eq!(op(Numeric::mul, "NaN", "0"), ok("NaN"));
    }

    #[test]
    fn negation_and_abs_keep_zero_and_nan() {
        assert_eq!(num("-0.00").neg().to_string(), "0.00");
        assert_eq!(num("1.50").neg().to_string(), "-1.50");
        assert_eq!(num("-1.50").abs().to_string(), "1.50");
        assert_eq!(num("NaN").neg().to_string(), "NaN");
        assert_eq!(num("Infinity").neg().to_string(), "-Infinity");
        assert_eq!(num("-Infinity").abs().to_string(), "Infinity");
    }

    #[test]
    fn from_i64_has_scale_zero() {
        assert_eq!(
            Numeric::from_i64(i64::MIN).to_string(),
            "-9223372036854775808"
        );
        assert_eq!(Numeric::from_i64(0).to_string(), "0");
        assert_eq!(Numeric::from(1200), num("1.2e3"));
        for value in [
            i64::MIN,
            -1_000_000,
            -10,
            -1,
            0,
            7,
            10,
            100,
            12_345_678,
            i64::MAX,
        ] {
            let parsed = num(&value.to_string());
            assert_eq!(Numeric::from_i64(value), parsed);
            assert_eq!(Numeric::from_i64(value).to_string(), parsed.to_string());
            assert_eq!(hash_of(&Numeric::from_i64(value)), hash_of(&parsed));
        }
    }

    #[test]
    fn integer_casts_round_half_away_from_zero() {
        assert_eq!(num("0.5").to_i64_checked(), Ok(1));
        assert_eq!(num("-0.5").to_i64_checked(), Ok(-1));
        assert_eq!(num("-0.49").to_i32_checked(), Ok(0));
        assert_eq!(
            num("9223372036854775807.4999").to_i64_checked(),
            Ok(i64::MAX)
        );
        assert_eq!(
            num("-9223372036854775808.4999").to_i64_checked(),
            Ok(i64::MIN)
        );
        assert_eq!(num("2147483647.49").to_i32_checked(), Ok(i32::MAX));
        assert_eq!(num("-32768.49").to_i16_checked(), Ok(i16::MIN));
        assert_eq!(num("9.5e-1").to_int_checked(IntType::Int2), Ok(1));
        assert_eq!(num("0.5e-1").to_int_checked(IntType::Int2), Ok(0));
    }

    #[test]
    fn integer_casts_report_pg_errors() {
        let err = |text: &str, ty: IntType| num(text).to_int_checked(ty).map_err(|e| e.to_string());
        let msg = |s: &str| Err(s.to_owned());
        assert_eq!(
            err("9223372036854775807.5", IntType::Int8),
            msg("bigint out of range")
        );
        assert_eq!(
            err("-9223372036854775808.5", IntType::Int8),
            msg("bigint out of range")
        );
        assert_eq!(err("1e19", IntType::Int8), msg("bigint out of range"));
        assert_eq!(
            err("2147483647.5", IntType::Int4),
            msg("integer out of range")
        );
        assert_eq!(err("32767.5", IntType::Int2), msg("smallint out of range"));
        assert_eq!(
            err("NaN", IntType::Int8),
            msg("cannot convert NaN to bigint")
        );
        assert_eq!(
            err("-inf", IntType::Int4),
            msg("cannot convert infinity to integer")
        );
        assert_eq!(
            err("inf", IntType::Int2),
            msg("cannot convert infinity to smallint")
        );
    }

    #[test]
    fn float8_cast_is_correctly_rounded() {
        let bits = |text: &str| num(text).to_f64().map(f64::to_bits);
        assert_eq!(bits("0.1"), Ok(0x3fb9_9999_9999_999a));
        assert_eq!(bits("1.7976931348623158e308"), Ok(0x7fef_ffff_ffff_ffff));
        assert_eq!(bits("1e-323"), Ok(2));
        assert_eq!(bits("16777217"), Ok(0x4170_0000_1000_0000));
        assert_eq!(bits("0"), Ok(0));
        assert!(num("NaN").to_f64().is_ok_and(f64::is_nan));
        assert_eq!(num("-inf").to_f64(), Ok(f64::NEG_INFINITY));
    }

    #[test]
    fn float4_cast_rounds_directly_to_single_precision() {
        let bits = |text: &str| num(text).to_f32().map(f32::to_bits);
        assert_eq!(bits("0.1"), Ok(0x3dcc_cccd));
        assert_eq!(bits("16777217"), Ok(0x4b80_0000));
        assert_eq!(bits("3.4028235677973366e38"), Ok(0x7f7f_ffff));
        assert_eq!(bits("7.006492321624086e-46"), Ok(1));
        assert_eq!(bits("1e-39"), Ok(0x000a_e398));
        assert_eq!(num("inf").to_f32(), Ok(f32::INFINITY));
    }

    #[test]
    fn float_casts_refuse_overflow_and_underflow_to_zero() {
        let f8 = |text: &str| num(text).to_f64().map_err(|e| e.to_string());
        let f4 = |text: &str| num(text).to_f32().map_err(|e| e.to_string());
        assert_eq!(
            f4("1e39"),
            Err(
                "\"1000000000000000000000000000000000000000\" is out of range for type real".into()
            )
        );
        assert_eq!(
            f4("1e-46"),
            Err("\"0.0000000000000000000000000000000000000000000001\" is out of range for type real"
                .into())
        );
        assert_eq!(
            f4("3.4028235677973367e38"),
            Err("\"340282356779733670000000000000000000000\" is out of range for type real".into())
        );
        assert!(
            f8("1e309").is_err_and(|e| e.ends_with("is out of range for type double precision"))
        );
        assert!(f8("-1e-400").is_err_and(|e| e.starts_with("\"-0.000")));
        assert!(f8("2e-324").is_err());
    }
}
