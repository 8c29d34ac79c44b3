//! Compiling a typed [`Expr`] once into a tree of closures, and evaluating it on a row of
//! Postgres text values exactly as Postgres evaluates the rendered SQL.
//!
//! Three-valued logic throughout; a strict operator with a NULL operand is NULL. An error
//! (division by zero, an out-of-range result, a text that does not parse as its type) fails
//! the evaluation: the row is not in the shape (where Postgres would fail the statement).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use super::array_ops;
use super::array_text::{ArrayDim, PgArray};
use super::expr::{
    ArithOp, ArrayConcat, ArrayOp, BoolTest, CmpOp, DateTimeOp, Expr, IntervalFunc, MinMax,
    SliceBound, TextFunc, UnaryOp,
};
use super::interval::{self as iv, Interval, IntervalError};
use super::like::match_text;
use super::numeric::{IntType, Numeric};
use super::types::{Dialect, Scalar, Type};
use super::value::{format_scalar, parse_array, parse_scalar, Value};

/// Why an evaluation failed: Postgres's message for the same failure.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Outcome<'r> = Result<Value<'r>, EvalError>;

/// A compiled expression: a row's column texts in, a value out.
pub(crate) type Compiled = Box<dyn for<'r> Fn(&'r [Option<String>]) -> Outcome<'r> + Send + Sync>;

fn err<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(message.into()))
}

/// Evaluates an expression that reads no column.
pub(crate) fn evaluate_constant(expr: &Expr) -> Result<Value<'static>, EvalError> {
    compile(expr)(&[]).map(Value::into_owned)
}

/// Compiles `expr` into closures, once.
#[allow(clippy::too_many_lines)] // one arm per node kind
pub(crate) fn compile(expr: &Expr) -> Compiled {
    match expr {
        Expr::Const { value, .. } => {
            let value = value.clone();
            Box::new(move |_| Ok(value.clone()))
        }
        Expr::Column { index, ty, .. } => compile_column(*index, ty.clone()),
        Expr::Not(arg) => {
            let arg = compile(arg);
            Box::new(move |row| {
                Ok(match arg(row)? {
                    Value::Bool(b) => Value::Bool(!b),
                    _ => Value::Null,
                })
            })
        }
        Expr::And(args) => compile_junction(args, false),
        Expr::Or(args) => compile_junction(args, true),
        Expr::IsNull { arg, negated } => {
            let (arg, negated) = (compile(arg), *negated);
            Box::new(move |row| Ok(Value::Bool(arg(row)?.is_null() != negated)))
        }
        Expr::BoolTest { arg, test } => {
            let (arg, test) = (compile(arg), *test);
            Box::new(move |row| {
                let v = match arg(row)? {
                    Value::Bool(b) => Some(b),
                    _ => None,
                };
                Ok(Value::Bool(match test {
                    BoolTest::IsTrue => v == Some(true),
                    BoolTest::IsNotTrue => v != Some(true),
                    BoolTest::IsFalse => v == Some(false),
                    BoolTest::IsNotFalse => v != Some(false),
                    BoolTest::IsUnknown => v.is_none(),
                    BoolTest::IsNotUnknown => v.is_some(),
                }))
            })
        }
        Expr::Compare { op, left, right } => compile_compare(*op, left, right),
        Expr::Distinct {
            left,
            right,
            negated,
        } => {
            let (left, right, negated) = (compile(left), compile(right), *negated);
            Box::new(move |row| {
                let (l, r) = (left(row)?, right(row)?);
                let distinct = match (l.is_null(), r.is_null()) {
                    (true, true) => false,
                    (true, false) | (false, true) => true,
                    (false, false) => l.pg_cmp(&r) != Ordering::Equal,
                };
                Ok(Value::Bool(distinct != negated))
            })
        }
        Expr::Arith {
            op,
            left,
            right,
            ty,
        } => {
            let (left, right, op, ty) = (compile(left), compile(right), *op, *ty);
            Box::new(move |row| {
                let (l, r) = (left(row)?, right(row)?);
                if l.is_null() || r.is_null() {
                    return Ok(Value::Null);
                }
                arith(op, ty, &l, &r)
            })
        }
        Expr::Negate { arg, ty } => {
            let (arg, ty) = (compile(arg), *ty);
            Box::new(move |row| negate(arg(row)?, ty))
        }
        Expr::Unary { op, arg, ty } => {
            let (op, arg, ty) = (*op, compile(arg), *ty);
            Box::new(move |row| unary(op, arg(row)?, ty))
        }
        Expr::ArrayNdims(arg) => {
            let arg = compile(arg);
            Box::new(move |row| match arg(row)? {
                Value::Array(a) if !a.dims.is_empty() => Ok(Value::Int(
                    i64::try_from(a.dims.len()).expect("invariant: at most 6 dimensions"),
                )),
                _ => Ok(Value::Null),
            })
        }
        Expr::ConcatFunc { args } => {
            let args: Vec<(Compiled, Type)> = args.iter().map(|a| (compile(a), a.ty())).collect();
            Box::new(move |row| {
                let mut out = String::new();
                for (arg, ty) in &args {
                    match arg(row)? {
                        Value::Null => {}
                        value => out.push_str(&output_text(&value, ty)),
                    }
                }
                Ok(Value::Text(Cow::Owned(out)))
            })
        }
        Expr::DateTimeArith {
            op,
            left,
            right,
            dialect,
        } => {
            let (left, right, op, dialect) = (compile(left), compile(right), *op, *dialect);
            Box::new(move |row| {
                let (l, r) = (left(row)?, right(row)?);
                if l.is_null() || r.is_null() {
                    return Ok(Value::Null);
                }
                match dialect {
                    Dialect::UpTo16 => datetime_arith(op, &l, &r),
                    Dialect::From17 => datetime_arith_17(op, &l, &r),
                }
                .map_err(|e| EvalError(e.to_string()))
            })
        }
        Expr::IntervalFunc { func, arg, dialect } => {
            let (arg, func, dialect) = (compile(arg), *func, *dialect);
            Box::new(move |row| match arg(row)? {
                Value::Interval(i) => interval_func(func, i, dialect)
                    .map(Value::Interval)
                    .map_err(|e| EvalError(e.to_string())),
                _ => Ok(Value::Null),
            })
        }
        Expr::Concat { left, right } => {
            let (left, right) = (compile(left), compile(right));
            Box::new(move |row| match (left(row)?, right(row)?) {
                (Value::Text(l), Value::Text(r)) => {
                    Ok(Value::Text(Cow::Owned(l.into_owned() + &r)))
                }
                _ => Ok(Value::Null),
            })
        }
        Expr::Like {
            arg,
            pattern,
            escape,
            case,
            negated,
            compiled,
        } => {
            let (arg, negated) = (compile(arg), *negated);
            if let Some(matcher) = compiled.clone() {
                return Box::new(move |row| {
                    Ok(match arg(row)? {
                        Value::Text(t) | Value::Bpchar(t) => {
                            Value::Bool(matcher.matches(&t) != negated)
                        }
                        _ => Value::Null,
                    })
                });
            }
            let (pattern, escape, case) = (compile(pattern), *escape, *case);
            Box::new(move |row| match (arg(row)?, pattern(row)?) {
                (Value::Text(t) | Value::Bpchar(t), Value::Text(p)) => {
                    let matched =
                        match_text(&t, &p, escape, case).map_err(|e| EvalError(e.to_string()))?;
                    Ok(Value::Bool(matched != negated))
                }
                _ => Ok(Value::Null),
            })
        }
        Expr::Quantified {
            op,
            left,
            array,
            all,
        } => {
            let (left, array, op, all) = (compile(left), compile(array), *op, *all);
            Box::new(move |row| quantified(op, all, &left(row)?, &array(row)?))
        }
        Expr::ArrayOp { op, left, right } => {
            let (left, right, op) = (compile(left), compile(right), *op);
            Box::new(move |row| match (left(row)?, right(row)?) {
                (Value::Array(l), Value::Array(r)) => Ok(Value::Bool(array_op(op, &l, &r))),
                _ => Ok(Value::Null),
            })
        }
        Expr::ArrayLiteral { elements, .. } => {
            let elements: Vec<Compiled> = elements.iter().map(compile).collect();
            Box::new(move |row| {
                let mut values = Vec::with_capacity(elements.len());
                for element in &elements {
                    let v = element(row)?;
                    values.push((!v.is_null()).then(|| v.into_owned()));
                }
                let len = u32::try_from(values.len()).unwrap_or(u32::MAX);
                Ok(Value::Array(Arc::new(PgArray {
                    dims: vec![ArrayDim { lower: 1, len }],
                    elements: values,
                })))
            })
        }
        Expr::Subscript {
            arg, subscripts, ..
        } => {
            let arg = compile(arg);
            let subscripts: Vec<Compiled> = subscripts.iter().map(compile).collect();
            Box::new(move |row| {
                let Value::Array(array) = arg(row)? else {
                    return Ok(Value::Null);
                };
                let mut at = Vec::with_capacity(subscripts.len());
                for subscript in &subscripts {
                    at.push(int4_of(&subscript(row)?));
                }
                Ok(array_ops::subscript(&array, &at).unwrap_or(Value::Null))
            })
        }
        Expr::Slice { arg, bounds, .. } => {
            let arg = compile(arg);
            let compile_bound = |b: &Option<Expr>| b.as_ref().map(compile);
            let bounds: Vec<(Option<Compiled>, Option<Compiled>)> = bounds
                .iter()
                .map(|SliceBound { lower, upper }| (compile_bound(lower), compile_bound(upper)))
                .collect();
            Box::new(move |row| {
                let Value::Array(array) = arg(row)? else {
                    return Ok(Value::Null);
                };
                // Every bound is evaluated (its errors raised) before a NULL one makes the
                // slice NULL; an omitted bound is the array's own.
                let mut at = Vec::with_capacity(bounds.len());
                let mut null_bound = false;
                for (lower, upper) in &bounds {
                    let mut pair = [None, None];
                    for (slot, bound) in pair.iter_mut().zip([lower, upper]) {
                        if let Some(bound) = bound {
                            *slot = int4_of(&bound(row)?);
                            null_bound |= slot.is_none();
                        }
                    }
                    at.push(array_ops::SliceBounds {
                        lower: pair[0],
                        upper: pair[1],
                    });
                }
                if null_bound {
                    return Ok(Value::Null);
                }
                Ok(Value::Array(Arc::new(array_ops::slice(&array, &at))))
            })
        }
        Expr::ArrayConcat {
            func, left, right, ..
        } => {
            let (left, right, func) = (compile(left), compile(right), *func);
            Box::new(move |row| {
                let (l, r) = (left(row)?, right(row)?);
                array_concat(func, l, r)
            })
        }
        Expr::TimeZone { zone, arg, .. } => {
            let (zone, arg) = (zone.clone(), compile(arg));
            Box::new(move |row| match arg(row)? {
                Value::Timestamp(t) => zone
                    .instant_of(t)
                    .map(Value::Timestamptz)
                    .map_err(|e| EvalError(e.to_string())),
                Value::Timestamptz(t) => zone
                    .local_of(t)
                    .map(Value::Timestamp)
                    .map_err(|e| EvalError(e.to_string())),
                _ => Ok(Value::Null),
            })
        }
        Expr::Cast { arg, to } => {
            let from = arg.ty();
            let (arg, to) = (compile(arg), to.clone());
            Box::new(move |row| cast(arg(row)?, &from, &to))
        }
        Expr::TextFunc { func, arg } => {
            let (arg, func) = (compile(arg), *func);
            Box::new(move |row| {
                Ok(match arg(row)? {
                    Value::Text(t) => Value::Text(Cow::Owned(match func {
                        TextFunc::Lower => t.to_ascii_lowercase(),
                        TextFunc::Upper => t.to_ascii_uppercase(),
                    })),
                    _ => Value::Null,
                })
            })
        }
        Expr::Coalesce { args, .. } => {
            let args: Vec<Compiled> = args.iter().map(compile).collect();
            Box::new(move |row| {
                for arg in &args {
                    let v = arg(row)?;
                    if !v.is_null() {
                        return Ok(v);
                    }
                }
                Ok(Value::Null)
            })
        }
        Expr::MinMax { op, args, .. } => {
            let (args, op): (Vec<Compiled>, MinMax) = (args.iter().map(compile).collect(), *op);
            Box::new(move |row| {
                let mut best = Value::Null;
                for arg in &args {
                    let v = arg(row)?;
                    if v.is_null() {
                        continue;
                    }
                    let better = best.is_null()
                        || match op {
                            MinMax::Greatest => v.pg_cmp(&best) == Ordering::Greater,
                            MinMax::Least => v.pg_cmp(&best) == Ordering::Less,
                        };
                    if better {
                        best = v;
                    }
                }
                Ok(best)
            })
        }
    }
}

fn compile_column(index: usize, ty: Type) -> Compiled {
    Box::new(move |row| {
        let Some(Some(text)) = row.get(index) else {
            return Ok(Value::Null);
        };
        let text = text.as_str();
        match &ty {
            Type::Scalar(s) => parse_scalar(Cow::Borrowed(text), *s).map_err(|e| EvalError(e.0)),
            Type::Array(s) => parse_array(text, *s).map_err(|e| EvalError(e.0)),
            Type::Unknown | Type::Opaque(_) | Type::Enum(_) => Ok(Value::Text(Cow::Borrowed(text))),
        }
    })
}

/// `AND` (`is_or` false) or `OR` in SQL's three-valued logic.
fn compile_junction(args: &[Expr], is_or: bool) -> Compiled {
    let args: Vec<Compiled> = args.iter().map(compile).collect();
    Box::new(move |row| {
        let mut saw_null = false;
        for arg in &args {
            match arg(row)? {
                Value::Bool(b) if b == is_or => return Ok(Value::Bool(is_or)),
                Value::Bool(_) => {}
                _ => saw_null = true,
            }
        }
        Ok(if saw_null {
            Value::Null
        } else {
            Value::Bool(!is_or)
        })
    })
}

/// A comparison; against a constant the constant is compared in place, never copied.
fn compile_compare(op: CmpOp, left: &Expr, right: &Expr) -> Compiled {
    let decide = move |order: Ordering| match op {
        CmpOp::Eq => order == Ordering::Equal,
        CmpOp::Ne => order != Ordering::Equal,
        CmpOp::Lt => order == Ordering::Less,
        CmpOp::Le => order != Ordering::Greater,
        CmpOp::Gt => order == Ordering::Greater,
        CmpOp::Ge => order != Ordering::Less,
    };
    if let Expr::Const { value, .. } = right {
        let (left, constant) = (compile(left), value.clone());
        if constant.is_null() {
            return Box::new(|_| Ok(Value::Null));
        }
        return Box::new(move |row| {
            let l = left(row)?;
            Ok(if l.is_null() {
                Value::Null
            } else {
                Value::Bool(decide(l.pg_cmp(&constant)))
            })
        });
    }
    let (left, right) = (compile(left), compile(right));
    Box::new(move |row| {
        let (l, r) = (left(row)?, right(row)?);
        Ok(if l.is_null() || r.is_null() {
            Value::Null
        } else {
            Value::Bool(decide(l.pg_cmp(&r)))
        })
    })
}

/// `left op ANY|ALL (array)` as Postgres's `ScalarArrayOpExpr`: an empty array decides
/// (`false` for ANY, `true` for ALL) even for a NULL left; otherwise a NULL element or left
/// makes an undecided result NULL.
fn quantified<'r>(op: CmpOp, all: bool, left: &Value<'r>, array: &Value<'r>) -> Outcome<'r> {
    let Value::Array(array) = array else {
        return Ok(Value::Null);
    };
    if array.elements.is_empty() {
        return Ok(Value::Bool(all));
    }
    if left.is_null() {
        return Ok(Value::Null);
    }
    let mut saw_null = false;
    for element in &array.elements {
        let Some(element) = element else {
            saw_null = true;
            continue;
        };
        let order = left.pg_cmp(element);
        let holds = match op {
            CmpOp::Eq => order == Ordering::Equal,
            CmpOp::Ne => order != Ordering::Equal,
            CmpOp::Lt => order == Ordering::Less,
            CmpOp::Le => order != Ordering::Greater,
            CmpOp::Gt => order == Ordering::Greater,
            CmpOp::Ge => order != Ordering::Less,
        };
        if holds != all {
            return Ok(Value::Bool(!all));
        }
    }
    Ok(if saw_null {
        Value::Null
    } else {
        Value::Bool(all)
    })
}

/// An `int4` operand's value; `None` for NULL.
fn int4_of(value: &Value<'_>) -> Option<i32> {
    match value {
        Value::Int(i) => i32::try_from(*i).ok(),
        _ => None,
    }
}

/// `array_cat`, `array_append`, `array_prepend`: non-strict, as Postgres's are.
fn array_concat(func: ArrayConcat, left: Value<'_>, right: Value<'_>) -> Outcome<'static> {
    let array = |v: Value<'_>| match v {
        Value::Array(a) => Some(a),
        _ => None,
    };
    let element = |v: Value<'_>| (!v.is_null()).then(|| v.into_owned());
    let result = match func {
        ArrayConcat::Cat => array_ops::array_cat(array(left).as_deref(), array(right).as_deref()),
        ArrayConcat::Append => array_ops::array_append(array(left).as_deref(), element(right)),
        ArrayConcat::Prepend => array_ops::array_prepend(element(left), array(right).as_deref()),
    };
    match result.map_err(|e| EvalError(e.to_string()))? {
        Some(array) => Ok(Value::Array(Arc::new(array))),
        None => Ok(Value::Null),
    }
}

/// Postgres's `array_contain_compare`: elements compared by equality, duplicates ignored.
fn array_op(op: ArrayOp, left: &PgArray<Value<'static>>, right: &PgArray<Value<'static>>) -> bool {
    match op {
        ArrayOp::Contains => contained(right, left, true),
        ArrayOp::ContainedBy => contained(left, right, true),
        ArrayOp::Overlaps => contained(left, right, false),
    }
}

/// With `match_all`, whether every element of `needles` is in `haystack` (a NULL needle
/// fails); without, whether some non-NULL needle is.
fn contained(
    needles: &PgArray<Value<'static>>,
    haystack: &PgArray<Value<'static>>,
    match_all: bool,
) -> bool {
    for needle in &needles.elements {
        let Some(needle) = needle else {
            if match_all {
                return false;
            }
            continue;
        };
        let found = haystack
            .elements
            .iter()
            .flatten()
            .any(|h| needle.pg_cmp(h) == Ordering::Equal);
        if found != match_all {
            return found;
        }
    }
    match_all
}

fn int_type(ty: Scalar) -> IntType {
    match ty {
        Scalar::Int2 => IntType::Int2,
        Scalar::Int4 => IntType::Int4,
        _ => IntType::Int8,
    }
}

fn int_in_range(value: Option<i64>, ty: Scalar) -> Outcome<'static> {
    let (min, max, name) = match ty {
        Scalar::Int2 => (i64::from(i16::MIN), i64::from(i16::MAX), "smallint"),
        Scalar::Int4 => (i64::from(i32::MIN), i64::from(i32::MAX), "integer"),
        _ => (i64::MIN, i64::MAX, "bigint"),
    };
    match value {
        Some(v) if (min..=max).contains(&v) => Ok(Value::Int(v)),
        _ => err(format!("{name} out of range")),
    }
}

fn arith(op: ArithOp, ty: Scalar, l: &Value<'_>, r: &Value<'_>) -> Outcome<'static> {
    match (l, r) {
        (Value::Int(a), Value::Int(b)) => {
            let result = match op {
                ArithOp::Add => a.checked_add(*b),
                ArithOp::Sub => a.checked_sub(*b),
                ArithOp::Mul => a.checked_mul(*b),
                ArithOp::Div if *b == 0 => return err("division by zero"),
                ArithOp::Div => a.checked_div(*b),
                ArithOp::BitAnd => Some(a & b),
                ArithOp::BitOr => Some(a | b),
                ArithOp::BitXor => Some(a ^ b),
                ArithOp::Pow => return err("integer ^ is resolved to float8"),
            };
            int_in_range(result, ty)
        }
        (Value::Float(a), Value::Float(b)) => float_arith(op, ty, *a, *b),
        (Value::Numeric(a), Value::Numeric(b)) => {
            let result = match op {
                ArithOp::Add => a.add(b),
                ArithOp::Sub => a.sub(b),
                ArithOp::Mul => a.mul(b),
                ArithOp::Div => a.div(b),
                ArithOp::Pow => return err("numeric ^ is not supported"),
                ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor => {
                    return err(format!("numeric {} is not defined", op.sql()))
                }
            };
            result
                .map(Value::Numeric)
                .map_err(|e| EvalError(e.to_string()))
        }
        _ => Ok(Value::Null),
    }
}

/// `float4`/`float8` arithmetic with Postgres's overflow, underflow and zero-division errors.
fn float_arith(op: ArithOp, ty: Scalar, a: f64, b: f64) -> Outcome<'static> {
    match op {
        ArithOp::Pow => return dpow(a, b),
        ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor => {
            return err(format!("float {} is not defined", op.sql()))
        }
        ArithOp::Add | ArithOp::Sub | ArithOp::Mul | ArithOp::Div => {}
    }
    // `float8div`: NaN / 0 is NaN, anything else / 0 an error.
    if op == ArithOp::Div && b == 0.0 && !a.is_nan() {
        return err("division by zero");
    }
    #[allow(clippy::cast_possible_truncation)]
    let result = if ty == Scalar::Float4 {
        let (x, y) = (a as f32, b as f32);
        f64::from(match op {
            ArithOp::Add => x + y,
            ArithOp::Sub => x - y,
            ArithOp::Mul => x * y,
            ArithOp::Div => x / y,
            ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor | ArithOp::Pow => {
                unreachable!("returned above")
            }
        })
    } else {
        match op {
            ArithOp::Add => a + b,
            ArithOp::Sub => a - b,
            ArithOp::Mul => a * b,
            ArithOp::Div => a / b,
            ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor | ArithOp::Pow => {
                unreachable!("returned above")
            }
        }
    };
    if result.is_infinite() && !a.is_infinite() && !b.is_infinite() {
        return err("value out of range: overflow");
    }
    let underflow = match op {
        ArithOp::Mul => result == 0.0 && a != 0.0 && b != 0.0,
        ArithOp::Div => result == 0.0 && a != 0.0 && !b.is_infinite(),
        _ => false,
    };
    if underflow {
        return err("value out of range: underflow");
    }
    Ok(Value::Float(result))
}

/// `float8 ^ float8` as Postgres's `dpow`: POSIX's NaN and infinity cases spelt out, its
/// domain errors, then the platform's `pow` (glibc's, which Rust's `powf` calls) with
/// overflow and underflow errors.
fn dpow(x: f64, y: f64) -> Outcome<'static> {
    if x.is_nan() {
        return Ok(Value::Float(if y.is_nan() || y != 0.0 {
            f64::NAN
        } else {
            1.0
        }));
    }
    if y.is_nan() {
        return Ok(Value::Float(if x == 1.0 { 1.0 } else { f64::NAN }));
    }
    if x == 0.0 && y < 0.0 {
        return err("zero raised to a negative power is undefined");
    }
    if x < 0.0 && y.floor() != y {
        return err("a negative number raised to a non-integer power yields a complex result");
    }
    let result = if y.is_infinite() {
        let abs_x = x.abs();
        match (abs_x == 1.0, y > 0.0, abs_x > 1.0) {
            (true, _, _) => 1.0,
            (false, true, true) | (false, false, false) => f64::INFINITY,
            (false, true, false) | (false, false, true) => 0.0,
        }
    } else if x.is_infinite() {
        if y == 0.0 {
            1.0
        } else if x > 0.0 {
            if y > 0.0 {
                x
            } else {
                0.0
            }
        } else {
            let half_y = y / 2.0;
            let odd_integer = half_y.floor() != half_y;
            match (y > 0.0, odd_integer) {
                (true, true) => x,
                (true, false) => -x,
                (false, true) => -0.0,
                (false, false) => 0.0,
            }
        }
    } else {
        let result = x.powf(y);
        if result.is_nan() {
            // Only an old glibc's bug reaches here (Postgres handles it likewise).
            let abs_x = x.abs();
            if x == 0.0 {
                0.0
            } else if abs_x == 1.0 {
                1.0
            } else if (y >= 0.0) == (abs_x > 1.0) {
                return err("value out of range: overflow");
            } else {
                return err("value out of range: underflow");
            }
        } else if result.is_infinite() {
            return err("value out of range: overflow");
        } else if result == 0.0 && x != 0.0 {
            return err("value out of range: underflow");
        } else {
            result
        }
    };
    Ok(Value::Float(result))
}

/// Postgres's date/time operator functions (interval.rs) on two non-NULL operands of the
/// operator's types.
fn datetime_arith(
    op: DateTimeOp,
    l: &Value<'_>,
    r: &Value<'_>,
) -> Result<Value<'static>, IntervalError> {
    use DateTimeOp as O;
    use Value as V;
    let days = |i: i64| i32::try_from(i).unwrap_or(0);
    Ok(match (op, l, r) {
        (O::DatePlInt, V::Date(d), V::Int(i)) | (O::IntPlDate, V::Int(i), V::Date(d)) => {
            V::Date(iv::date_pli(*d, days(*i))?)
        }
        (O::DateMiInt, V::Date(d), V::Int(i)) => V::Date(iv::date_mii(*d, days(*i))?),
        (O::DateMi, V::Date(a), V::Date(b)) => V::Int(i64::from(iv::date_mi(*a, *b)?)),
        (O::DatePlInterval, V::Date(d), V::Interval(s))
        | (O::IntervalPlDate, V::Interval(s), V::Date(d)) => {
            V::Timestamp(iv::date_pl_interval(*d, *s)?)
        }
        (O::DateMiInterval, V::Date(d), V::Interval(s)) => {
            V::Timestamp(iv::date_mi_interval(*d, *s)?)
        }
        (O::DatePlTime, V::Date(d), V::Time(t)) | (O::TimePlDate, V::Time(t), V::Date(d)) => {
            V::Timestamp(iv::datetime_pl(*d, *t)?)
        }
        (O::TimestampPlInterval, V::Timestamp(t), V::Interval(s))
        | (O::IntervalPlTimestamp, V::Interval(s), V::Timestamp(t)) => {
            V::Timestamp(iv::timestamp_pl_interval(*t, *s)?)
        }
        (O::TimestampMiInterval, V::Timestamp(t), V::Interval(s)) => {
            V::Timestamp(iv::timestamp_mi_interval(*t, *s)?)
        }
        (O::TimestamptzPlInterval, V::Timestamptz(t), V::Interval(s))
        | (O::IntervalPlTimestamptz, V::Interval(s), V::Timestamptz(t)) => {
            V::Timestamptz(iv::timestamptz_pl_interval(*t, *s)?)
        }
        (O::TimestamptzMiInterval, V::Timestamptz(t), V::Interval(s)) => {
            V::Timestamptz(iv::timestamptz_mi_interval(*t, *s)?)
        }
        (O::TimePlInterval, V::Time(t), V::Interval(s))
        | (O::IntervalPlTime, V::Interval(s), V::Time(t)) => V::Time(iv::time_pl_interval(*t, *s)),
        (O::TimeMiInterval, V::Time(t), V::Interval(s)) => V::Time(iv::time_mi_interval(*t, *s)),
        (O::TimeMiTime, V::Time(a), V::Time(b)) => V::Interval(iv::time_mi_time(*a, *b)),
        (O::TimestampMi, V::Timestamp(a), V::Timestamp(b)) => {
            V::Interval(iv::timestamp_mi(*a, *b)?)
        }
        (O::TimestamptzMi, V::Timestamptz(a), V::Timestamptz(b)) => {
            V::Interval(iv::timestamptz_mi(*a, *b)?)
        }
        (O::IntervalPl, V::Interval(a), V::Interval(b)) => V::Interval(a.checked_add(*b)?),
        (O::IntervalMi, V::Interval(a), V::Interval(b)) => V::Interval(a.checked_sub(*b)?),
        (O::IntervalMul, V::Interval(s), V::Float(f))
        | (O::Float8MulInterval, V::Float(f), V::Interval(s)) => V::Interval(s.checked_mul(*f)?),
        (O::IntervalDiv, V::Interval(s), V::Float(f)) => V::Interval(s.checked_div(*f)?),
        _ => V::Null,
    })
}

/// Postgres 17's date/time operator functions ([`iv::pg17`]), where infinite intervals
/// exist; the operators it left unchanged are 15's.
fn datetime_arith_17(
    op: DateTimeOp,
    l: &Value<'_>,
    r: &Value<'_>,
) -> Result<Value<'static>, IntervalError> {
    use iv::pg17;
    use DateTimeOp as O;
    use Value as V;
    Ok(match (op, l, r) {
        (O::DatePlInterval, V::Date(d), V::Interval(s))
        | (O::IntervalPlDate, V::Interval(s), V::Date(d)) => {
            V::Timestamp(pg17::date_pl_interval(*d, *s)?)
        }
        (O::DateMiInterval, V::Date(d), V::Interval(s)) => {
            V::Timestamp(pg17::date_mi_interval(*d, *s)?)
        }
        (O::TimestampPlInterval, V::Timestamp(t), V::Interval(s))
        | (O::IntervalPlTimestamp, V::Interval(s), V::Timestamp(t)) => {
            V::Timestamp(pg17::timestamp_pl_interval(*t, *s)?)
        }
        (O::TimestampMiInterval, V::Timestamp(t), V::Interval(s)) => {
            V::Timestamp(pg17::timestamp_mi_interval(*t, *s)?)
        }
        (O::TimestamptzPlInterval, V::Timestamptz(t), V::Interval(s))
        | (O::IntervalPlTimestamptz, V::Interval(s), V::Timestamptz(t)) => {
            V::Timestamptz(pg17::timestamptz_pl_interval(*t, *s)?)
        }
        (O::TimestamptzMiInterval, V::Timestamptz(t), V::Interval(s)) => {
            V::Timestamptz(pg17::timestamptz_mi_interval(*t, *s)?)
        }
        (O::TimePlInterval, V::Time(t), V::Interval(s))
        | (O::IntervalPlTime, V::Interval(s), V::Time(t)) => {
            V::Time(pg17::time_pl_interval(*t, *s)?)
        }
        (O::TimeMiInterval, V::Time(t), V::Interval(s)) => V::Time(pg17::time_mi_interval(*t, *s)?),
        (O::TimestampMi, V::Timestamp(a), V::Timestamp(b)) => {
            V::Interval(pg17::timestamp_mi(*a, *b)?)
        }
        (O::TimestamptzMi, V::Timestamptz(a), V::Timestamptz(b)) => {
            V::Interval(pg17::timestamptz_mi(*a, *b)?)
        }
        (O::IntervalPl, V::Interval(a), V::Interval(b)) => V::Interval(pg17::interval_pl(*a, *b)?),
        (O::IntervalMi, V::Interval(a), V::Interval(b)) => V::Interval(pg17::interval_mi(*a, *b)?),
        (O::IntervalMul, V::Interval(s), V::Float(f))
        | (O::Float8MulInterval, V::Float(f), V::Interval(s)) => {
            V::Interval(pg17::interval_mul(*s, *f)?)
        }
        (O::IntervalDiv, V::Interval(s), V::Float(f)) => V::Interval(pg17::interval_div(*s, *f)?),
        _ => return datetime_arith(op, l, r),
    })
}

/// Unary minus and the `justify_*` functions, as the Postgres of `dialect` computes them.
fn interval_func(
    func: IntervalFunc,
    i: Interval,
    dialect: Dialect,
) -> Result<Interval, IntervalError> {
    match (dialect, func) {
        (Dialect::UpTo16, IntervalFunc::Negate) => i.checked_neg(),
        (Dialect::UpTo16, IntervalFunc::JustifyDays) => i.justify_days(),
        (Dialect::UpTo16, IntervalFunc::JustifyHours) => i.justify_hours(),
        (Dialect::UpTo16, IntervalFunc::JustifyInterval) => i.justify_interval(),
        (Dialect::From17, IntervalFunc::Negate) => iv::pg17::interval_um(i),
        (Dialect::From17, IntervalFunc::JustifyDays) => iv::pg17::justify_days(i),
        (Dialect::From17, IntervalFunc::JustifyHours) => iv::pg17::justify_hours(i),
        (Dialect::From17, IntervalFunc::JustifyInterval) => iv::pg17::justify_interval(i),
    }
}

/// `@` (`int4abs`, `numeric_abs`, `float8abs`, …), `~` (`int4not`, …), `|/` (`dsqrt`).
fn unary(op: UnaryOp, value: Value<'_>, ty: Scalar) -> Outcome<'static> {
    match (op, value) {
        (_, Value::Null) => Ok(Value::Null),
        (UnaryOp::Abs, Value::Int(i)) => int_in_range(i.checked_abs(), ty),
        (UnaryOp::Abs, Value::Float(f)) => Ok(Value::Float(f.abs())),
        (UnaryOp::Abs, Value::Numeric(n)) => Ok(Value::Numeric(n.abs())),
        (UnaryOp::BitNot, Value::Int(i)) => int_in_range(Some(!i), ty),
        (UnaryOp::Sqrt, Value::Float(f)) if f < 0.0 => {
            err("cannot take square root of a negative number")
        }
        (UnaryOp::Sqrt, Value::Float(f)) => Ok(Value::Float(f.sqrt())),
        (op, value) => err(format!("{} is not defined for {value:?}", op.sql())),
    }
}

/// The text `concat` appends for a non-NULL value of `ty`: its type's output function
/// (`t`/`f` for booleans, a `char(n)` with its padding), unlike a cast to text.
fn output_text(value: &Value<'_>, ty: &Type) -> String {
    match ty {
        Type::Scalar(scalar) | Type::Array(scalar) => format_scalar(value, *scalar),
        Type::Enum(_) | Type::Unknown | Type::Opaque(_) => format_scalar(value, Scalar::Text),
    }
}

fn negate(value: Value<'_>, ty: Scalar) -> Outcome<'static> {
    match value {
        Value::Int(i) => int_in_range(i.checked_neg(), ty),
        Value::Float(f) => Ok(Value::Float(-f)),
        Value::Numeric(n) => Ok(Value::Numeric(n.neg())),
        _ => Ok(Value::Null),
    }
}

/// Whether ampere evaluates an explicit cast from `from` to `to` exactly.
pub(crate) fn can_cast(from: &Type, to: &Type) -> bool {
    match (from, to) {
        (Type::Scalar(a), Type::Scalar(b)) | (Type::Array(a), Type::Array(b)) => {
            can_cast_scalar(*a, *b)
        }
        (Type::Enum(_), Type::Scalar(Scalar::Text)) => true,
        // `array_out`: an array's text form.
        (Type::Array(_), Type::Scalar(to)) => matches!(to, Scalar::Text | Scalar::Varchar),
        _ => false,
    }
}

fn can_cast_scalar(from: Scalar, to: Scalar) -> bool {
    use Scalar as S;
    from == to
        || to.is_string()
        || (from.is_string() && runtime_input_is_exact(to))
        || (from.is_number() && to.is_number())
        || matches!(
            (from, to),
            (S::Bool, S::Int4)
                | (S::Int4, S::Bool)
                | (S::Date, S::Timestamp | S::Timestamptz)
                | (S::Timestamp, S::Timestamptz | S::Date | S::Time)
                | (S::Timestamptz, S::Timestamp | S::Date | S::Time)
                | (S::Time, S::Interval)
        )
}

/// Whether ampere reads every text Postgres's input function accepts for `to` exactly as it
/// does, so a cast of a column's text may run at replication time. Date/time input has
/// forms ampere does not parse (`367.038` is a date to Postgres) and float input goes through
/// C's `strtod` (hex floats): casting a constant to them is fine, a column's text is refused.
pub(crate) const fn runtime_input_is_exact(to: Scalar) -> bool {
    !matches!(
        to,
        Scalar::Date
            | Scalar::Time
            | Scalar::Timestamp
            | Scalar::Timestamptz
            | Scalar::Float4
            | Scalar::Float8
            | Scalar::Interval
    )
}

/// Casts a value from `from` to `to` (a pair [`can_cast`] allows).
pub(crate) fn cast<'r>(value: Value<'r>, from: &Type, to: &Type) -> Outcome<'r> {
    if value.is_null() || from == to {
        return Ok(value);
    }
    match (from, to) {
        (Type::Scalar(a), Type::Scalar(b)) => cast_scalar(value, *a, *b),
        // An enum's label is already its text.
        (Type::Enum(_), Type::Scalar(Scalar::Text)) => Ok(value),
        (Type::Array(element), Type::Scalar(Scalar::Text | Scalar::Varchar)) => {
            Ok(Value::Text(Cow::Owned(format_scalar(&value, *element))))
        }
        (Type::Array(a), Type::Array(b)) => {
            let Value::Array(array) = value else {
                return Ok(Value::Null);
            };
            let mut elements = Vec::with_capacity(array.elements.len());
            for element in &array.elements {
                elements.push(match element {
                    None => None,
                    Some(v) => Some(cast_scalar(v.clone(), *a, *b)?.into_owned()),
                });
            }
            Ok(Value::Array(Arc::new(PgArray {
                dims: array.dims.clone(),
                elements,
            })))
        }
        _ => err(format!("cannot cast type {from} to {to}")),
    }
}

/// `float8_numeric` / `float4_numeric`: through C's `%.15g` (`%.6g`) text of the float.
#[allow(clippy::cast_possible_truncation)] // a float4's value is exactly an f32
fn float_numeric(value: f64, from: Scalar) -> Numeric {
    if from == Scalar::Float4 {
        Numeric::from_f32(value as f32)
    } else {
        Numeric::from_f64(value)
    }
}

#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
fn cast_scalar(value: Value<'_>, from: Scalar, to: Scalar) -> Outcome<'_> {
    use Scalar as S;
    if from == to {
        return Ok(value);
    }
    if let (Value::Bpchar(text), S::Text | S::Varchar) = (&value, to) {
        // `rtrim1`: bpchar's text is without its trailing blanks.
        return Ok(Value::Text(Cow::Owned(
            text.trim_end_matches(' ').to_owned(),
        )));
    }
    if matches!(to, S::Text | S::Varchar) {
        let text = match (&value, from) {
            (Value::Bool(b), _) => if *b { "true" } else { "false" }.to_owned(),
            (v, s) => format_scalar(v, s),
        };
        return Ok(Value::Text(Cow::Owned(text)));
    }
    if let Value::Text(text) | Value::Bpchar(text) = value {
        return parse_scalar(text, to).map_err(|e| EvalError(e.0));
    }
    let numeric_err = |e: super::numeric::NumericError| EvalError(e.to_string());
    match (value, to) {
        (Value::Int(i), t) if t.is_integer() => int_in_range(Some(i), t),
        (Value::Int(i), S::Float8) => Ok(Value::Float(i as f64)),
        (Value::Int(i), S::Float4) => Ok(Value::Float(f64::from(i as f32))),
        (Value::Int(i), S::Numeric) => Ok(Value::Numeric(Numeric::from_i64(i))),
        (Value::Int(i), S::Bool) => Ok(Value::Bool(i != 0)),
        (Value::Bool(b), S::Int4) => Ok(Value::Int(i64::from(b))),
        (Value::Numeric(n), t) if t.is_integer() => n
            .to_int_checked(int_type(t))
            .map(Value::Int)
            .map_err(numeric_err),
        (Value::Numeric(n), S::Float8) => n.to_f64().map(Value::Float).map_err(numeric_err),
        (Value::Numeric(n), S::Float4) => n
            .to_f32()
            .map(|f| Value::Float(f64::from(f)))
            .map_err(numeric_err),
        (Value::Float(f), t) if t.is_integer() => {
            let rounded = f.round_ties_even();
            let fits = (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&rounded);
            int_in_range(fits.then_some(rounded as i64), t)
        }
        (Value::Float(f), S::Numeric) => Ok(Value::Numeric(float_numeric(f, from))),
        (Value::Float(f), S::Float8) => Ok(Value::Float(f)),
        (Value::Float(f), S::Float4) => {
            let single = f as f32;
            if single.is_infinite() && !f.is_infinite() {
                return err("value out of range: overflow");
            }
            if single == 0.0 && f != 0.0 {
                return err("value out of range: underflow");
            }
            Ok(Value::Float(f64::from(single)))
        }
        (Value::Date(d), S::Timestamp) => d
            .to_timestamp()
            .map(Value::Timestamp)
            .map_err(|e| EvalError(e.to_string())),
        (Value::Date(d), S::Timestamptz) => d
            .to_timestamptz()
            .map(Value::Timestamptz)
            .map_err(|e| EvalError(e.to_string())),
        (Value::Timestamp(t), S::Timestamptz) => Ok(Value::Timestamptz(t.to_timestamptz())),
        (Value::Timestamp(t), S::Date) => Ok(Value::Date(t.to_date())),
        (Value::Timestamp(t), S::Time) => Ok(t.to_time().map_or(Value::Null, Value::Time)),
        (Value::Timestamptz(t), S::Timestamp) => Ok(Value::Timestamp(t.to_timestamp())),
        (Value::Timestamptz(t), S::Date) => Ok(Value::Date(t.to_date())),
        (Value::Timestamptz(t), S::Time) => Ok(t.to_time().map_or(Value::Null, Value::Time)),
        // `time_interval`: the time of day as microseconds.
        (Value::Time(t), S::Interval) => Ok(Value::Interval(Interval::new(0, 0, t.0))),
        (v, t) => err(format!("cannot cast {v:?} to {}", t.typname())),
    }
}
