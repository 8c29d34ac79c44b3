//! Postgres `numeric`, exactly: the arbitrary-precision decimal a where clause compares, adds,
//! subtracts, multiplies, divides, casts to `float4`/`float8`/`int2`/`int4`/`int8` and builds from
//! `float4`/`float8`.
//!
//! Owns: the text input function (`numeric_in`, PG 15 syntax: no `_` separators, no hex), the
//! output function (`numeric_out`), display scale (`dscale`) bookkeeping, PG's total order (NaN
//! equal to itself and above `Infinity`), a `Hash` consistent with that order's equality, the
//! special-value rules of `+ - * /`, the quotient's scale (`select_div_scale`, which reasons in
//! PG's base-10000 digits) and rounding, the `value overflows numeric format` limits, the casts
//! to integers (round half away from zero) and floats (through the text and a correctly rounded
//! parse, as PG's `float8in`/`float4in` do), and the casts from floats (C's `%.15g`/`%.6g` text
//! read back by `numeric_in`, as PG's `float8_numeric`/`float4_numeric` do).
//!
//! Never: modulo, power, rounding functions or type modifiers (`numeric(p, s)`); it does no I/O
//! and knows nothing about where clauses.
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
/// A quotient gets at least this many significant digits (`NUMERIC_MIN_SIG_DIGITS`).
const NUMERIC_MIN_SIG_DIGITS: i64 = 16;
/// Largest display scale a quotient gets (`NUMERIC_MAX_DISPLAY_SCALE`).
const NUMERIC_MAX_DISPLAY_SCALE: i64 = 1000;
/// Significant digits of `float8_numeric`'s `%.*g` (C's `DBL_DIG`).
const DBL_DIG: usize = 15;
/// Significant digits of `float4_numeric`'s `%.*g` (C's `FLT_DIG`).
const FLT_DIG: usize = 6;
/// Base of the limbs long division works in: nine decimal digits per `u64` limb.
const LIMB_BASE: u64 = 1_000_000_000;
/// Decimal digits per limb.
const LIMB_DIGITS: usize = 9;

/// An error of a numeric operation, displayed exactly as Postgres words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumericError {
    /// `numeric_in` rejected the text (which is the whole input, whitespace included).
    #[error("invalid input syntax for type numeric: \"{0}\"")]
    InvalidSyntax(String),
    /// The value's weight or display scale does not fit PG's storage format.
    #[error("value overflows numeric format")]
    Overflow,
    /// A finite value or an infinity divided by zero.
    #[error("division by zero")]
    DivisionByZero,
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

    /// PG's `float8::numeric` cast (`float8_numeric`): `NaN` → `NaN`, ±∞ → `±Infinity`,
    /// otherwise C's `%.15g` text read by `numeric_in`, so 15 significant digits and the text's
    /// display scale (`1e20` → `100000000000000000000`, `1.5e-5` → `0.000015`, `-0.0` → `0`).
    #[must_use]
    pub fn from_f64(value: f64) -> Self {
        Self::from_float_text(value, DBL_DIG)
    }

    /// PG's `float4::numeric` cast (`float4_numeric`): as [`Numeric::from_f64`] with the value
    /// widened to `f64` and C's `%.6g` (`16777217f32` → `16777200`).
    #[must_use]
    pub fn from_f32(value: f32) -> Self {
        Self::from_float_text(f64::from(value), FLT_DIG)
    }

    /// The non-finite floats as their numerics, finite ones through their `%.<precision>g`
    /// text.
    fn from_float_text(value: f64, precision: usize) -> Self {
        if value.is_nan() {
            return Self::NAN;
        }
        if value.is_infinite() {
            return if value < 0.0 {
                Self::NEG_INFINITY
            } else {
                Self::INFINITY
            };
        }
        // `%g` text of a finite float always parses and is far inside the storage limits; were
        // it not to, the value would surface as NaN, not a panic.
        Self::parse(&format_g(value, precision)).unwrap_or(Self::NAN)
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

    /// `self / other` (`numeric_div`): the exact quotient rounded half away from zero to the
    /// scale PG's `select_div_scale` picks (at least 16 significant digits, at least either
    /// operand's scale, at most 1000), shown with that scale. `NaN` in gives `NaN`; an infinity
    /// divided by a nonzero finite value is an infinity signed by the product of the signs, by
    /// an infinity `NaN`; a finite value divided by an infinity is `0`.
    ///
    /// # Errors
    /// [`NumericError::DivisionByZero`] when `other` is zero and `self` is not `NaN`;
    /// [`NumericError::Overflow`] if the quotient needs 131072 or more integer digits.
    pub fn div(&self, other: &Self) -> Result<Self, NumericError> {
        let (a, b) = match (&self.0, &other.0) {
            (Kind::Finite(a), Kind::Finite(b)) => (a, b),
            (Kind::NaN, _) | (_, Kind::NaN) => return Ok(Self::NAN),
            (Kind::Finite(_), _) => return Ok(Self::from_i64(0)),
            (_, Kind::Finite(_)) => return div_special(self.signum() * other.signum()),
            _ => return Ok(Self::NAN),
        };
        if b.digits.is_empty() {
            return Err(NumericError::DivisionByZero);
        }
        let rscale = select_div_scale(a, b);
        // One digit beyond the scale, truncated, decides the rounding exactly as PG's
        // `div_var(.., round = true)` does with its extra digit.
        let (digits, weight) = div_magnitudes(a, b, rscale + 1);
        let truncated = Finite::normalized(a.negative != b.negative, digits, weight, rscale + 1);
        Self(Kind::Finite(truncated.round(rscale))).check_representable()
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

/// The quotient of an infinity by a finite value, given the product of the operands' signs.
const fn div_special(sign: i8) -> Result<Numeric, NumericError> {
    match sign {
        0 => Err(NumericError::DivisionByZero),
        s if s > 0 => Ok(Numeric::INFINITY),
        _ => Ok(Numeric::NEG_INFINITY),
    }
}

/// PG's `select_div_scale`: enough fraction digits for 16 significant digits of the quotient
/// (whose weight it estimates from the operands' first base-10000 digits, assuming the quotient
/// is below 1 when those digits tie), at least either operand's scale, within 0..=1000.
fn select_div_scale(a: &Finite, b: &Finite) -> i64 {
    let (weight1, first1) = a.first_nbase_digit();
    let (weight2, first2) = b.first_nbase_digit();
    let mut qweight = weight1 - weight2;
    if first1 <= first2 {
        qweight -= 1;
    }
    (NUMERIC_MIN_SIG_DIGITS - qweight * DEC_DIGITS)
        .max(i64::from(a.dscale))
        .max(i64::from(b.dscale))
        .clamp(0, NUMERIC_MAX_DISPLAY_SCALE)
}

impl Finite {
    /// Power of ten of the last digit (the weight itself for zero).
    fn low(&self) -> i32 {
        self.weight - digit_count(&self.digits) + 1
    }

    /// PG's view of the first digit: the base-10000 weight and value (0..=9999) of the first
    /// nonzero base-10000 digit, whose four decimal digits sit at powers `4w..4w+3`; `(0, 0)`
    /// for zero.
    fn first_nbase_digit(&self) -> (i64, u16) {
        if self.digits.is_empty() {
            return (0, 0);
        }
        let nbase_weight = self.weight.div_euclid(4);
        let low = nbase_weight * 4;
        let value = (0..4)
            .rev()
            .fold(0, |acc, k| acc * 10 + u16::from(self.digit_at(low + k)));
        (i64::from(nbase_weight), value)
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

/// |a| / |b| truncated to `scale` fraction digits (`b` nonzero), as unnormalised digits and the
/// weight of the first digit.
fn div_magnitudes(a: &Finite, b: &Finite, scale: i64) -> (Vec<u8>, i64) {
    if a.digits.is_empty() {
        return (Vec::new(), 0);
    }
    // |a| = A × 10^low(a) and |b| = B × 10^low(b) for the digit strings A and B, so the truncated
    // quotient is floor(A × 10^shift / B) × 10^-scale with shift = low(a) - low(b) + scale; a
    // negative shift scales B up instead.
    let shift = i64::from(a.low()) - i64::from(b.low()) + scale;
    let a_zeros = usize::try_from(shift.max(0)).unwrap_or(0);
    let b_zeros = usize::try_from(shift.min(0).unsigned_abs()).unwrap_or(0);
    if a.digits.len() + a_zeros < b.digits.len() + b_zeros {
        return (Vec::new(), 0);
    }
    let quotient = div_limbs(&to_limbs(&a.digits, a_zeros), &to_limbs(&b.digits, b_zeros));
    let digits = from_limbs(&quotient);
    let weight = i64::from(digit_count(&digits)) - 1 - scale;
    (digits, weight)
}

/// The integer written by `digits` (most significant first) followed by `zeros` zeros, as
/// base-10^9 limbs, least significant first.
fn to_limbs(digits: &[u8], zeros: usize) -> Vec<u64> {
    let mut all = digits.to_vec();
    all.resize(digits.len() + zeros, 0);
    all.rchunks(LIMB_DIGITS)
        .map(|chunk| chunk.iter().fold(0, |acc, &d| acc * 10 + u64::from(d)))
        .collect()
}

/// The decimal digits of base-10^9 limbs (least significant first), most significant first,
/// nine per limb (so with leading zeros).
fn from_limbs(limbs: &[u64]) -> Vec<u8> {
    let mut digits = Vec::with_capacity(limbs.len() * LIMB_DIGITS);
    for &limb in limbs.iter().rev() {
        let mut chunk = [0_u8; LIMB_DIGITS];
        let mut rest = limb;
        for slot in chunk.iter_mut().rev() {
            // `rest % 10` is below 10, so the narrowing is exact.
            *slot = (rest % 10) as u8;
            rest /= 10;
        }
        digits.extend_from_slice(&chunk);
    }
    digits
}

/// `floor(n / d)` on base-10^9 limbs, least significant first (`d`'s top limb nonzero): Knuth's
/// algorithm D (TAOCP 4.3.1), or short division by a one-limb divisor.
fn div_limbs(n: &[u64], d: &[u64]) -> Vec<u64> {
    let m = d.len();
    if m == 0 || n.len() < m {
        return Vec::new();
    }
    let top = d[m - 1];
    if m == 1 {
        return div_limbs_short(n, top);
    }
    // Normalise: scaling both by `factor` makes the divisor's top limb at least half the base,
    // so a quotient limb estimated from the top limbs is at most 2 too large (Knuth's theorem
    // B); the divisor keeps its length.
    let factor = LIMB_BASE / (top + 1);
    let mut v = mul_limbs_small(d, factor);
    v.truncate(m);
    let mut u = mul_limbs_small(n, factor);
    let mut quotient = vec![0; n.len() - m + 1];
    for j in (0..quotient.len()).rev() {
        let window = &mut u[j..=j + m];
        let estimate = estimate_quotient_limb(window, &v);
        quotient[j] = sub_multiple(window, &v, estimate);
    }
    quotient
}

/// `floor(n / d)` for a one-limb divisor `d`.
fn div_limbs_short(n: &[u64], d: u64) -> Vec<u64> {
    let mut quotient = vec![0; n.len()];
    let mut remainder = 0;
    for (q, &limb) in quotient.iter_mut().zip(n).rev() {
        let current = remainder * LIMB_BASE + limb;
        *q = current / d;
        remainder = current % d;
    }
    quotient
}

/// `x × factor` (`factor` below the base), one limb longer than `x`.
fn mul_limbs_small(x: &[u64], factor: u64) -> Vec<u64> {
    let mut carry = 0;
    let mut out: Vec<u64> = x
        .iter()
        .map(|&limb| {
            let product = limb * factor + carry;
            carry = product / LIMB_BASE;
            product % LIMB_BASE
        })
        .collect();
    out.push(carry);
    out
}

/// Knuth's step D3: the quotient limb of the `m + 1`-limb `window` by the normalised `m`-limb
/// divisor `v` (`m` ≥ 2), estimated from the top limbs; never too small, at most the base - 1.
fn estimate_quotient_limb(window: &[u64], v: &[u64]) -> u64 {
    let m = v.len();
    let (v1, v2) = (v[m - 1], v[m - 2]);
    let numerator = window[m] * LIMB_BASE + window[m - 1];
    let mut estimate = numerator / v1;
    let mut remainder = numerator % v1;
    while estimate >= LIMB_BASE || estimate * v2 > remainder * LIMB_BASE + window[m - 2] {
        estimate -= 1;
        remainder += v1;
        if remainder >= LIMB_BASE {
            break;
        }
    }
    estimate.min(LIMB_BASE - 1)
}

/// Knuth's steps D4–D6: `window -= estimate × v`, adding `v` back while that went negative;
/// returns the true quotient limb.
fn sub_multiple(window: &mut [u64], v: &[u64], estimate: u64) -> u64 {
    let padded = || v.iter().copied().chain(std::iter::once(0));
    let (mut carry, mut borrow) = (0, 0);
    for (slot, limb) in window.iter_mut().zip(padded()) {
        let product = estimate * limb + carry;
        carry = product / LIMB_BASE;
        let subtrahend = product % LIMB_BASE + borrow;
        borrow = u64::from(*slot < subtrahend);
        *slot = *slot + borrow * LIMB_BASE - subtrahend;
    }
    // A final borrow means the window holds its negative value plus base^(m+1).
    let mut quotient_limb = estimate;
    let mut negative = borrow == 1;
    while negative {
        quotient_limb -= 1;
        let mut carry = 0;
        for (slot, limb) in window.iter_mut().zip(padded()) {
            let sum = *slot + limb + carry;
            *slot = sum % LIMB_BASE;
            carry = sum / LIMB_BASE;
        }
        // A carry out of the top cancels the borrowed base^(m+1).
        negative = carry == 0;
    }
    quotient_limb
}

/// C's `printf("%.*g", precision, value)` for a finite `value` and `precision` ≥ 1, as glibc
/// prints it: the value correctly rounded (ties to even) to `precision` significant digits,
/// in `%e` style (`1.5e-05`, `1e+20`) when the rounded exponent is below -4 or at least
/// `precision`, else in `%f` style, trailing fraction zeros and a bare point dropped.
fn format_g(value: f64, precision: usize) -> String {
    // Rust's `{:e}` with a precision rounds the exact binary value ties-to-even, as glibc.
    let scientific = format!("{value:.*e}", precision.saturating_sub(1));
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(magnitude) => ("-", magnitude),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let e_style = exponent < -4 || usize::try_from(exponent).is_ok_and(|x| x >= precision);
    if e_style {
        let (int, frac) = digits.split_at(digits.len().min(1));
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        let exp = exponent.unsigned_abs();
        return format!("{sign}{int}{}e{exp_sign}{exp:02}", point_fraction(frac));
    }
    match usize::try_from(exponent) {
        Ok(int_len) => {
            let (int, frac) = digits.split_at((int_len + 1).min(digits.len()));
            format!("{sign}{int}{}", point_fraction(frac))
        }
        Err(_) => {
            let zeros = "0".repeat(usize::try_from(-exponent - 1).unwrap_or(0));
            format!("{sign}0{}", point_fraction(&format!("{zeros}{digits}")))
        }
    }
}

/// `.frac` without trailing zeros, or nothing when no nonzero digit remains (`%g` without `#`).
fn point_fraction(frac: &str) -> String {
    let kept = frac.trim_end_matches('0');
    if kept.is_empty() {
        String::new()
    } else {
        format!(".{kept}")
    }
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

    /// `a / b` as PG's output text or error message.
    fn quotient(a: &str, b: &str) -> Result<String, String> {
        num(a)
            .div(&num(b))
            .map(|n| n.to_string())
            .map_err(|e| e.to_string())
    }

    /// Asserts the representation invariants: no leading or trailing zero digits, zero positive
    /// with weight 0.
    fn assert_canonical(value: &Numeric) {
        if let Kind::Finite(f) = &value.0 {
            assert_ne!(f.digits.first(), Some(&0), "{value:?}");
            assert_ne!(f.digits.last(), Some(&0), "{value:?}");
            if f.digits.is_empty() {
                assert!(!f.negative && f.weight == 0, "{value:?}");
            }
        }
    }

    #[test]
    fn a_quotient_gets_at_least_sixteen_significant_digits() {
        let ok = |s: &str| Ok(s.to_owned());
        assert_eq!(quotient("1", "3"), ok("0.33333333333333333333"));
        assert_eq!(quotient("2", "3"), ok("0.66666666666666666667"));
        assert_eq!(quotient("1", "7"), ok("0.14285714285714285714"));
        assert_eq!(quotient("10", "2"), ok("5.0000000000000000"));
        assert_eq!(quotient("100000", "3"), ok("33333.333333333333"));
        assert_eq!(quotient("0.0001", "3"), ok("0.000033333333333333333333"));
        assert_eq!(
            quotient("1e-20", "3"),
            ok("0.0000000000000000000033333333333333333333")
        );
        assert_eq!(
            quotient("1", "3e-40"),
            ok("3333333333333333333333333333333333333333.3333333333333333333333333333333333333333")
        );
        assert_eq!(quotient("6945e1", "-9240e-7"), ok("-75162337.662337662338"));
        assert_eq!(
            quotient("18298592767050658e-14", "39091711e-14"),
            ok("468093933.44411704056648")
        );
        assert_eq!(
            quotient("45534e7", "-76072422894440895e-18"),
            ok("-5985611903433.598209482522384262")
        );
        assert_eq!(
            quotient("1993283594288046058891125047564794477047e-40", "4e22"),
            ok("0.0000000000000000000000049832089857201151")
        );
        assert_eq!(
            quotient(
                "-6840753406538431348002992e-11",
                "-7679848481772601145667161e15"
            ),
            ok("0.00000000000000000000000000890740673175299861")
        );
    }

    #[test]
    fn the_quotient_scale_is_estimated_from_base_10000_digits() {
        let ok = |s: &str| Ok(s.to_owned());
        // Same first base-10000 digit: the quotient is assumed below 1 (4 more digits).
        assert_eq!(quotient("9999", "9999"), ok("1.00000000000000000000"));
        assert_eq!(quotient("9999", "1"), ok("9999.0000000000000000"));
        assert_eq!(quotient("10000", "1"), ok("10000.0000000000000000"));
        assert_eq!(quotient("1", "9999"), ok("0.00010001000100010001"));
        assert_eq!(quotient("1", "10000"), ok("0.000100000000000000000000"));
        assert_eq!(quotient("12345", "2"), ok("6172.5000000000000000"));
        assert_eq!(quotient("2345", "2"), ok("1172.5000000000000000"));
        assert_eq!(quotient("0.5", "3"), ok("0.16666666666666666667"));
    }

    #[test]
    fn a_quotient_keeps_an_input_scale_above_sixteen_digits() {
        let ok = |s: &str| Ok(s.to_owned());
        assert_eq!(
            quotient("1.00000000000000000000000", "3"),
            ok("0.33333333333333333333333")
        );
        assert_eq!(
            quotient("-29450632e-8", "15650317293498524e-22"),
            ok("-188179.1368679433829784172538")
        );
        assert_eq!(
            quotient("8262459560539705672959482e-63", "-47493651228016251e-56"),
            ok("-17.396976957765935970110492128502766171709751570733532082003522843")
        );
        assert_eq!(
            quotient("123456789012345678901234567890", "0.000000000000000000001"),
            ok("123456789012345678901234567890000000000000000000000.000000000000000000000")
        );
        assert_eq!(
            quotient("2", "0.5e-20"),
            ok("400000000000000000000.000000000000000000000")
        );
    }

    #[test]
    fn the_quotient_sign_is_the_product_of_the_signs() {
        let ok = |s: &str| Ok(s.to_owned());
        assert_eq!(quotient("-1", "3"), ok("-0.33333333333333333333"));
        assert_eq!(quotient("1", "-3"), ok("-0.33333333333333333333"));
        assert_eq!(quotient("-2", "-3"), ok("0.66666666666666666667"));
    }

    #[test]
    fn a_quotient_is_rounded_half_away_from_zero() {
        let ok = |s: &str| Ok(s.to_owned());
        assert_eq!(
            quotient("123456789012345678901", "2"),
            ok("61728394506172839451")
        );
        assert_eq!(
            quotient("-123456789012345678901", "2"),
            ok("-61728394506172839451")
        );
        assert_eq!(
            quotient("123456789012345678903", "-2"),
            ok("-61728394506172839452")
        );
    }

    #[test]
    fn the_quotient_scale_is_capped_at_1000() {
        let fraction = |a: &str, b: &str| {
            let text = quotient(a, b).expect("fits");
            let (int, frac) = text.split_once('.').expect("has a fraction");
            assert_eq!(frac.len(), 1000, "{a} / {b}");
            (int.to_owned(), frac.trim_start_matches('0').to_owned())
        };
        let (int, tail) = fraction("1e-16383", "3");
        assert_eq!((int.as_str(), tail.as_str()), ("0", ""));
        assert_eq!(fraction("1e-1000", "3").1, "");
        assert_eq!(fraction("1.5e-1000", "1").1, "2");
        assert_eq!(fraction("5e-1001", "1").1, "1");
        assert_eq!(fraction("4.9e-1001", "1").1, "");
        assert_eq!(fraction("-5e-1001", "1"), ("-0".to_owned(), "1".to_owned()));
        // Rounded to zero: positive zero.
        assert_eq!(fraction("-4.9e-1001", "1").0, "0");
        assert_eq!(fraction("1", "1e131071").1, "");
    }

    #[test]
    fn zero_divided_by_a_number_is_zero_at_the_quotient_scale() {
        assert_eq!(quotient("0", "5"), Ok("0.00000000000000000000".to_owned()));
        assert_eq!(
            quotient("0.00", "3"),
            Ok("0.00000000000000000000".to_owned())
        );
        assert_eq!(
            quotient("-0", "-7"),
            Ok("0.00000000000000000000".to_owned())
        );
        let zero = num("0.000").div(&num("-2")).expect("finite");
        assert_canonical(&zero);
        assert_eq!(zero, Numeric::from_i64(0));
    }

    #[test]
    fn division_by_zero_is_an_error_unless_nan_is_involved() {
        let err = || Err("division by zero".to_owned());
        assert_eq!(quotient("1", "0"), err());
        assert_eq!(quotient("0", "0"), err());
        assert_eq!(quotient("-1.5", "0.000"), err());
        assert_eq!(quotient("Infinity", "0"), err());
        assert_eq!(quotient("-Infinity", "0"), err());
        assert_eq!(num("1").div(&num("0")), Err(NumericError::DivisionByZero));
        assert_eq!(quotient("NaN", "0"), Ok("NaN".to_owned()));
    }

    #[test]
    fn infinities_and_nan_follow_pg_division_rules() {
        let ok = |s: &str| Ok(s.to_owned());
        assert_eq!(quotient("Infinity", "-2"), ok("-Infinity"));
        assert_eq!(quotient("-Infinity", "-2"), ok("Infinity"));
        assert_eq!(quotient("-Infinity", "0.001"), ok("-Infinity"));
        assert_eq!(quotient("Infinity", "Infinity"), ok("NaN"));
        assert_eq!(quotient("-Infinity", "Infinity"), ok("NaN"));
        assert_eq!(quotient("5", "Infinity"), ok("0"));
        assert_eq!(quotient("-5", "-Infinity"), ok("0"));
        assert_eq!(quotient("1.5", "Infinity"), ok("0"));
        assert_eq!(quotient("NaN", "Infinity"), ok("NaN"));
        assert_eq!(quotient("Infinity", "NaN"), ok("NaN"));
        assert_eq!(quotient("NaN", "NaN"), ok("NaN"));
    }

    #[test]
    fn a_quotient_beyond_the_storage_format_overflows() {
        let overflow = || Err("value overflows numeric format".to_owned());
        assert_eq!(quotient("1e131071", "0.1"), overflow());
        assert_eq!(quotient("9e131071", "0.9"), overflow());
        assert_eq!(quotient("-9e131071", "0.9"), overflow());
        let big = quotient("1e131071", "1").expect("fits");
        assert_eq!(big.len(), 131_072);
        assert!(big.starts_with("10") && big.bytes().skip(1).all(|b| b == b'0'));
        let nine = quotient("9e131071", "10").expect("fits");
        assert_eq!(nine.len(), 131_071);
        assert!(nine.starts_with("90"));
    }

    #[test]
    fn long_division_of_limbs_matches_integer_division() {
        let limbs = |x: u128| {
            to_limbs(
                &x.to_string().bytes().map(|b| b - b'0').collect::<Vec<_>>(),
                0,
            )
        };
        let value = |limbs: &[u64]| {
            from_limbs(limbs)
                .iter()
                .fold(0_u128, |acc, &d| acc * 10 + u128::from(d))
        };
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let n = (u128::from(next()) << 64 | u128::from(next())) >> (next() % 128);
            let d = ((u128::from(next()) << 64 | u128::from(next())) >> (next() % 128)).max(1);
            assert_eq!(value(&div_limbs(&limbs(n), &limbs(d))), n / d, "{n} / {d}");
        }
        let n = 999_999_999_999_999_999_999_999_999_999_999_999_u128;
        let d = 999_999_999_000_000_001_u128;
        assert_eq!(value(&div_limbs(&limbs(n), &limbs(d))), n / d);
    }

    #[test]
    fn an_overestimated_quotient_limb_is_corrected_by_adding_back() {
        let as_u128 = |limbs: &[u64]| {
            limbs.iter().rev().fold(0_u128, |acc, &l| {
                acc * u128::from(LIMB_BASE) + u128::from(l)
            })
        };
        // A normalised divisor (top limb at least half the base) and a window below it × base.
        let v = [999_999_999, 500_000_000];
        let window = [123, 456_000_000, 400_000_000];
        let (w, d) = (as_u128(&window), as_u128(&v));
        let q = w / d;
        for estimate in q..=q + 2 {
            let mut work = window;
            let limb = sub_multiple(&mut work, &v, u64::try_from(estimate).expect("a limb"));
            assert_eq!(u128::from(limb), q, "estimate {estimate}");
            assert_eq!(as_u128(&work), w - q * d, "estimate {estimate}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_quotient_is_the_exact_quotient_correctly_rounded(
            a in "-?[1-9][0-9]{0,40}(\\.[0-9]{0,30})?e-?[0-9]{1,2}",
            b in "-?[1-9][0-9]{0,40}(\\.[0-9]{0,30})?e-?[0-9]{1,2}",
        ) {
            let (a, b) = (num(&a), num(&b));
            let q = a.div(&b).expect("no overflow at these sizes");
            assert_canonical(&q);
            let Kind::Finite(f) = &q.0 else { panic!("finite quotient expected") };
            // |a - q·b| ≤ |b| × half a unit in the last place, the tie only away from zero.
            let half_ulp = num(&format!("5e-{}", i64::from(f.dscale) + 1));
            let error = a.sub(&q.mul(&b).expect("fits")).expect("fits").abs();
            let bound = b.abs().mul(&half_ulp).expect("fits");
            proptest::prop_assert!(error <= bound, "{a:?} / {b:?} = {q:?}");
            if error == bound {
                proptest::prop_assert!(q.mul(&b).expect("fits").abs() > a.abs());
            }
        }
    }

    #[test]
    fn float8_to_numeric_reads_the_15_digit_g_text() {
        let cast = |v: f64| Numeric::from_f64(v).to_string();
        assert_eq!(cast(0.1), "0.1");
        assert_eq!(cast(1.0 / 3.0), "0.333333333333333");
        assert_eq!(cast(1e20), "100000000000000000000");
        assert_eq!(cast(123_456_789_012_345_678.0), "123456789012346000");
        assert_eq!(cast(1.5e-5), "0.000015");
        assert_eq!(cast(0.0001), "0.0001");
        assert_eq!(cast(0.00001), "0.00001");
        assert_eq!(cast(0.000_123_456_789_012_345_67), "0.000123456789012346");
        assert_eq!(cast(0.300_000_000_000_000_04), "0.3");
        assert_eq!(cast(-2.5), "-2.5");
        assert_eq!(cast(2.675), "2.675");
        assert_eq!(cast(100.0), "100");
        assert_eq!(cast(1e15), "1000000000000000");
        assert_eq!(cast(999_999_999_999_999.4), "999999999999999");
        assert_eq!(cast(999_999_999_999_999.5), "1000000000000000");
        assert_eq!(cast(12_345_678_901_234_567_890.0), "12345678901234600000");
        assert_eq!(cast(-748_552.0), "-748552");
        let max = cast(f64::MAX);
        assert!(max.starts_with("179769313486232") && max.len() == 309);
        let tiny = cast(5e-324);
        assert!(tiny.starts_with("0.000") && tiny.ends_with("000494065645841247"));
        assert_eq!(tiny.len(), 2 + 323 + 15);
    }

    #[test]
    fn float_to_numeric_rounds_ties_to_even_like_glibc() {
        assert_eq!(
            Numeric::from_f64(1_234_567_890_123_455.0).to_string(),
            "1234567890123460"
        );
        assert_eq!(
            Numeric::from_f64(1_234_567_890_123_445.0).to_string(),
            "1234567890123440"
        );
        assert_eq!(Numeric::from_f32(1_234_565.0).to_string(), "1234560");
        assert_eq!(Numeric::from_f32(1_234_575.0).to_string(), "1234580");
        assert_eq!(Numeric::from_f32(123_456.5).to_string(), "123456");
        assert_eq!(Numeric::from_f32(123_457.5).to_string(), "123458");
    }

    #[test]
    fn float_special_values_become_numeric_special_values() {
        assert!(Numeric::from_f64(f64::NAN).is_nan());
        assert_eq!(Numeric::from_f64(f64::INFINITY), Numeric::INFINITY);
        assert_eq!(Numeric::from_f64(f64::NEG_INFINITY), Numeric::NEG_INFINITY);
        assert!(Numeric::from_f32(f32::NAN).is_nan());
        assert_eq!(Numeric::from_f32(f32::INFINITY), Numeric::INFINITY);
        assert_eq!(Numeric::from_f32(f32::NEG_INFINITY), Numeric::NEG_INFINITY);
    }

    #[test]
    fn negative_float_zero_becomes_the_canonical_zero() {
        for zero in [
            Numeric::from_f64(-0.0),
            Numeric::from_f64(0.0),
            Numeric::from_f32(-0.0),
        ] {
            assert_eq!(zero.to_string(), "0");
            assert_canonical(&zero);
            assert_eq!(zero, Numeric::from_i64(0));
            assert_eq!(hash_of(&zero), hash_of(&Numeric::from_i64(0)));
        }
    }

    #[test]
    fn float4_to_numeric_reads_the_6_digit_g_text_of_the_widened_value() {
        let cast = |v: f32| Numeric::from_f32(v).to_string();
        assert_eq!(cast(0.1), "0.1");
        assert_eq!(cast(0.3), "0.3");
        assert_eq!(cast(1.0 / 3.0), "0.333333");
        assert_eq!(cast(16_777_217.0), "16777200");
        assert_eq!(cast(1.5e-5), "0.000015");
        assert_eq!(cast(0.0001), "0.0001");
        assert_eq!(cast(0.00001), "0.00001");
        assert_eq!(cast(1e10), "10000000000");
        assert_eq!(cast(9_999_995.0), "10000000");
        assert_eq!(cast(999_999.5), "1000000");
        assert_eq!(cast(f32::MAX), "340282000000000000000000000000000000000");
        assert_eq!(
            cast(f32::from_bits(1)),
            "0.0000000000000000000000000000000000000000000014013"
        );
        assert_eq!(
            cast(f32::MIN_POSITIVE),
            "0.0000000000000000000000000000000000000117549"
        );
    }

    #[test]
    fn format_g_prints_like_glibc() {
        let cases: [(f64, usize, &str); 21] = [
            (1e20, 15, "1e+20"),
            (1.5e-5, 15, "1.5e-05"),
            (1e-5, 15, "1e-05"),
            (-0.0, 15, "-0"),
            (0.0, 15, "0"),
            (0.5, 1, "0.5"),
            (2.5, 1, "2"),
            (0.125, 2, "0.12"),
            (0.375, 2, "0.38"),
            (123_456_789_012_345.5, 15, "123456789012346"),
            (1e100, 15, "1e+100"),
            (f64::MAX, 17, "1.7976931348623157e+308"),
            (5e-324, 15, "4.94065645841247e-324"),
            (0.0001, 15, "0.0001"),
            (100.0, 15, "100"),
            (1e15, 15, "1e+15"),
            (1e14, 15, "100000000000000"),
            (999_999_999_999_999.5, 15, "1e+15"),
            (-123.456, 6, "-123.456"),
            (9.999_999_6e-5, 6, "0.0001"),
            (16_777_217.0, 6, "1.67772e+07"),
        ];
        for (value, precision, text) in cases {
            assert_eq!(format_g(value, precision), text, "{value:e} %.{precision}g");
        }
        assert_eq!(format_g(0.1, 17), "0.10000000000000001");
    }
}
