//! ampere's typed expression tree and the SQL rendered from it.
//!
//! Every operator node holds operands of exactly the types it computes on: the binder inserts
//! each implicit coercion as an explicit [`Expr::Cast`]. The SQL renders those casts, so
//! Postgres resolves the very operator ampere evaluates — the two cannot pick different
//! overloads. Text comparisons that depend on a collation render `COLLATE "C"`: byte order and
//! ASCII case folding, which ampere computes exactly whatever the database's collation.

use std::fmt::Write as _;

use super::like::{LikeCase, LikeEscape, LikePattern};
use super::types::{Dialect, Scalar, Type};
use super::tz::Zone;
use super::value::{format_scalar, quote_literal, Value};
use crate::shape::quote_ident;

/// A comparison operator.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CmpOp {
    /// `=`.
    Eq,
    /// `<>`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
}

/// An arithmetic operator on numbers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArithOp {
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `&` (integers).
    BitAnd,
    /// `|` (integers).
    BitOr,
    /// `#` (integers).
    BitXor,
    /// `^` (`float8` only: `dpow`).
    Pow,
}

impl ArithOp {
    /// The operator's SQL spelling.
    pub const fn sql(self) -> &'static str {
        match self {
            Self::Add => "+",
            Self::Sub => "-",
            Self::Mul => "*",
            Self::Div => "/",
            Self::BitAnd => "&",
            Self::BitOr => "|",
            Self::BitXor => "#",
            Self::Pow => "^",
        }
    }
}

/// A prefix operator on a number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnaryOp {
    /// `@` (absolute value).
    Abs,
    /// `~` (bitwise not, integers).
    BitNot,
    /// `|/` (square root, `float8`).
    Sqrt,
}

impl UnaryOp {
    /// The operator's SQL spelling.
    pub const fn sql(self) -> &'static str {
        match self {
            Self::Abs => "@",
            Self::BitNot => "~",
            Self::Sqrt => "|/",
        }
    }
}

/// A date/time operator, by Postgres's function name: its operand types are exact (the binder
/// casts to them), so the rendered SQL resolves to the same operator.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DateTimeOp {
    /// `date + int4` (`date_pli`).
    DatePlInt,
    /// `int4 + date` (`integer_pl_date`).
    IntPlDate,
    /// `date - int4` (`date_mii`).
    DateMiInt,
    /// `date - date` (`date_mi`): int4.
    DateMi,
    /// `date + interval` (`date_pl_interval`): timestamp.
    DatePlInterval,
    /// `interval + date` (`interval_pl_date`): timestamp.
    IntervalPlDate,
    /// `date - interval` (`date_mi_interval`): timestamp.
    DateMiInterval,
    /// `date + time` (`datetime_pl`): timestamp.
    DatePlTime,
    /// `time + date` (`timedate_pl`): timestamp.
    TimePlDate,
    /// `timestamp + interval`.
    TimestampPlInterval,
    /// `interval + timestamp`.
    IntervalPlTimestamp,
    /// `timestamp - interval`.
    TimestampMiInterval,
    /// `timestamptz + interval`.
    TimestamptzPlInterval,
    /// `interval + timestamptz`.
    IntervalPlTimestamptz,
    /// `timestamptz - interval`.
    TimestamptzMiInterval,
    /// `time + interval`.
    TimePlInterval,
    /// `interval + time`.
    IntervalPlTime,
    /// `time - interval`.
    TimeMiInterval,
    /// `time - time`: interval.
    TimeMiTime,
    /// `timestamp - timestamp`: interval.
    TimestampMi,
    /// `timestamptz - timestamptz`: interval.
    TimestamptzMi,
    /// `interval + interval`.
    IntervalPl,
    /// `interval - interval`.
    IntervalMi,
    /// `interval * float8`.
    IntervalMul,
    /// `float8 * interval`.
    Float8MulInterval,
    /// `interval / float8`.
    IntervalDiv,
}

impl DateTimeOp {
    /// The operator's left and right operand types and its result type.
    pub const fn signature(self) -> (Scalar, Scalar, Scalar) {
        use Scalar::{Date, Float8, Int4, Interval, Time, Timestamp, Timestamptz};
        match self {
            Self::DatePlInt | Self::DateMiInt => (Date, Int4, Date),
            Self::IntPlDate => (Int4, Date, Date),
            Self::DateMi => (Date, Date, Int4),
            Self::DatePlInterval | Self::DateMiInterval => (Date, Interval, Timestamp),
            Self::IntervalPlDate => (Interval, Date, Timestamp),
            Self::DatePlTime => (Date, Time, Timestamp),
            Self::TimePlDate => (Time, Date, Timestamp),
            Self::TimestampPlInterval | Self::TimestampMiInterval => {
                (Timestamp, Interval, Timestamp)
            }
            Self::IntervalPlTimestamp => (Interval, Timestamp, Timestamp),
            Self::TimestamptzPlInterval | Self::TimestamptzMiInterval => {
                (Timestamptz, Interval, Timestamptz)
            }
            Self::IntervalPlTimestamptz => (Interval, Timestamptz, Timestamptz),
            Self::TimePlInterval | Self::TimeMiInterval => (Time, Interval, Time),
            Self::IntervalPlTime => (Interval, Time, Time),
            Self::TimeMiTime => (Time, Time, Interval),
            Self::TimestampMi => (Timestamp, Timestamp, Interval),
            Self::TimestamptzMi => (Timestamptz, Timestamptz, Interval),
            Self::IntervalPl | Self::IntervalMi => (Interval, Interval, Interval),
            Self::IntervalMul | Self::IntervalDiv => (Interval, Float8, Interval),
            Self::Float8MulInterval => (Float8, Interval, Interval),
        }
    }

    /// The operator's SQL spelling.
    pub const fn sql(self) -> &'static str {
        match self {
            Self::DatePlInt
            | Self::IntPlDate
            | Self::DatePlInterval
            | Self::IntervalPlDate
            | Self::DatePlTime
            | Self::TimePlDate
            | Self::TimestampPlInterval
            | Self::IntervalPlTimestamp
            | Self::TimestamptzPlInterval
            | Self::IntervalPlTimestamptz
            | Self::TimePlInterval
            | Self::IntervalPlTime
            | Self::IntervalPl => "+",
            Self::DateMiInt
            | Self::DateMi
            | Self::DateMiInterval
            | Self::TimestampMiInterval
            | Self::TimestamptzMiInterval
            | Self::TimeMiInterval
            | Self::TimeMiTime
            | Self::TimestampMi
            | Self::TimestamptzMi
            | Self::IntervalMi => "-",
            Self::IntervalMul | Self::Float8MulInterval => "*",
            Self::IntervalDiv => "/",
        }
    }
}

/// A function of one interval: unary minus and the `justify_*` functions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IntervalFunc {
    /// `- interval` (`interval_um`).
    Negate,
    /// `justify_days`.
    JustifyDays,
    /// `justify_hours`.
    JustifyHours,
    /// `justify_interval`.
    JustifyInterval,
}

/// `IS [NOT] TRUE | FALSE | UNKNOWN`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BoolTest {
    /// `IS TRUE`.
    IsTrue,
    /// `IS NOT TRUE`.
    IsNotTrue,
    /// `IS FALSE`.
    IsFalse,
    /// `IS NOT FALSE`.
    IsNotFalse,
    /// `IS UNKNOWN`.
    IsUnknown,
    /// `IS NOT UNKNOWN`.
    IsNotUnknown,
}

/// Array operators with set semantics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArrayOp {
    /// `@>`: every element of the right is in the left.
    Contains,
    /// `<@`: every element of the left is in the right.
    ContainedBy,
    /// `&&`: some element in both.
    Overlaps,
}

/// A function of one text argument.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TextFunc {
    /// `lower`, ASCII letters only (C collation).
    Lower,
    /// `upper`, ASCII letters only (C collation).
    Upper,
}

/// `array_cat`, `array_append` or `array_prepend` (also spelled `||`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArrayConcat {
    /// `array_cat(anycompatiblearray, anycompatiblearray)`.
    Cat,
    /// `array_append(anycompatiblearray, anycompatible)`.
    Append,
    /// `array_prepend(anycompatible, anycompatiblearray)`.
    Prepend,
}

impl ArrayConcat {
    /// The function's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cat => "array_cat",
            Self::Append => "array_append",
            Self::Prepend => "array_prepend",
        }
    }
}

/// One dimension of a slice `[lower:upper]`; `None` is an omitted bound (the array's own).
#[derive(Clone, Debug)]
pub struct SliceBound {
    /// The first subscript taken, an `int4`.
    pub lower: Option<Expr>,
    /// The last subscript taken, an `int4`.
    pub upper: Option<Expr>,
}

/// `GREATEST` or `LEAST`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MinMax {
    /// `GREATEST`.
    Greatest,
    /// `LEAST`.
    Least,
}

/// A typed, resolved where-clause expression.
#[derive(Clone, Debug)]
pub enum Expr {
    /// A constant of a known type (`Value::Null` for a typed NULL).
    Const {
        /// The value.
        value: Value<'static>,
        /// Its type.
        ty: Type,
    },
    /// A column of the shape's table.
    Column {
        /// Index in the table's columns (pgoutput tuple order).
        index: usize,
        /// The column's name.
        name: String,
        /// Its type.
        ty: Type,
        /// Whether it renders `::text` (`name`, enums).
        as_text: bool,
    },
    /// `NOT`.
    Not(Box<Self>),
    /// `AND` of two or more.
    And(Vec<Self>),
    /// `OR` of two or more.
    Or(Vec<Self>),
    /// `IS [NOT] NULL`.
    IsNull {
        /// The operand.
        arg: Box<Self>,
        /// `IS NOT NULL`.
        negated: bool,
    },
    /// `IS [NOT] TRUE|FALSE|UNKNOWN`.
    BoolTest {
        /// The operand (bool).
        arg: Box<Self>,
        /// Which test.
        test: BoolTest,
    },
    /// A comparison of two operands of the same type.
    Compare {
        /// The operator.
        op: CmpOp,
        /// Left operand.
        left: Box<Self>,
        /// Right operand.
        right: Box<Self>,
    },
    /// `IS [NOT] DISTINCT FROM`.
    Distinct {
        /// Left operand.
        left: Box<Self>,
        /// Right operand.
        right: Box<Self>,
        /// `IS NOT DISTINCT FROM`.
        negated: bool,
    },
    /// Arithmetic on two numbers of type `ty`.
    Arith {
        /// The operator.
        op: ArithOp,
        /// Left operand.
        left: Box<Self>,
        /// Right operand.
        right: Box<Self>,
        /// Operand and result type.
        ty: Scalar,
    },
    /// `@`, `~` or `|/`.
    Unary {
        /// The operator.
        op: UnaryOp,
        /// The operand.
        arg: Box<Self>,
        /// Operand and result type.
        ty: Scalar,
    },
    /// `array_ndims(anyarray)`: the number of dimensions, NULL for an empty array.
    ArrayNdims(Box<Self>),
    /// `concat(…)`: the output text of each non-NULL argument.
    ConcatFunc {
        /// The arguments, each printable (see `eval`).
        args: Vec<Self>,
    },
    /// Unary minus.
    Negate {
        /// The operand.
        arg: Box<Self>,
        /// Operand and result type.
        ty: Scalar,
    },
    /// Date/time arithmetic; the operands are of exactly the operator's types.
    DateTimeArith {
        /// The operator.
        op: DateTimeOp,
        /// Left operand.
        left: Box<Self>,
        /// Right operand.
        right: Box<Self>,
        /// Whose arithmetic: infinite intervals exist from Postgres 17.
        dialect: Dialect,
    },
    /// A function of one interval (unary minus, `justify_*`).
    IntervalFunc {
        /// The function.
        func: IntervalFunc,
        /// The interval argument.
        arg: Box<Self>,
        /// Whose semantics: infinite intervals exist from Postgres 17.
        dialect: Dialect,
    },
    /// `text || text`.
    Concat {
        /// Left operand.
        left: Box<Self>,
        /// Right operand.
        right: Box<Self>,
    },
    /// `[NOT] LIKE` / `[NOT] ILIKE`.
    Like {
        /// The text matched.
        arg: Box<Self>,
        /// The pattern.
        pattern: Box<Self>,
        /// The escape character.
        escape: LikeEscape,
        /// LIKE or ILIKE.
        case: LikeCase,
        /// `NOT LIKE`.
        negated: bool,
        /// The pattern compiled once when it is a constant.
        compiled: Option<LikePattern>,
    },
    /// `left op ANY|ALL (array)`.
    Quantified {
        /// The comparison.
        op: CmpOp,
        /// The scalar operand.
        left: Box<Self>,
        /// The array operand.
        array: Box<Self>,
        /// `ALL` rather than `ANY`.
        all: bool,
    },
    /// `@>`, `<@`, `&&`.
    ArrayOp {
        /// The operator.
        op: ArrayOp,
        /// Left array.
        left: Box<Self>,
        /// Right array.
        right: Box<Self>,
    },
    /// `ARRAY[…]` with elements of `element`.
    ArrayLiteral {
        /// The elements.
        elements: Vec<Self>,
        /// Their type.
        element: Scalar,
    },
    /// `array[i][j]…`: the element at those subscripts (one per dimension), or NULL.
    Subscript {
        /// The array.
        arg: Box<Self>,
        /// The subscripts, `int4`s.
        subscripts: Vec<Self>,
        /// The element type.
        element: Scalar,
    },
    /// `array[l:u]…`: the sub-array at those bounds, with lower bounds 1.
    Slice {
        /// The array.
        arg: Box<Self>,
        /// One per dimension given.
        bounds: Vec<SliceBound>,
        /// The element type.
        element: Scalar,
    },
    /// `array_cat`, `array_append`, `array_prepend` (non-strict).
    ArrayConcat {
        /// Which.
        func: ArrayConcat,
        /// First argument (an array, or the element of `array_prepend`).
        left: Box<Self>,
        /// Second argument (an array, or the element of `array_append`).
        right: Box<Self>,
        /// The element type of the arrays.
        element: Scalar,
    },
    /// `timezone(zone, arg)` (`arg AT TIME ZONE zone`) with a constant zone.
    TimeZone {
        /// The resolved zone.
        zone: Zone,
        /// The zone's name as the clause gives it (Postgres resolves it alike).
        name: String,
        /// A `timestamp` (read in the zone) or a `timestamptz` (shown in it).
        arg: Box<Self>,
        /// `timestamptz` or `timestamp`: the other one.
        output: Scalar,
    },
    /// A cast to `to`.
    Cast {
        /// The operand.
        arg: Box<Self>,
        /// The target type.
        to: Type,
    },
    /// `lower`/`upper`.
    TextFunc {
        /// The function.
        func: TextFunc,
        /// The text argument.
        arg: Box<Self>,
    },
    /// `COALESCE(…)`.
    Coalesce {
        /// The arguments, all of type `ty`.
        args: Vec<Self>,
        /// Their type.
        ty: Type,
    },
    /// `GREATEST(…)`/`LEAST(…)`.
    MinMax {
        /// Which.
        op: MinMax,
        /// The arguments, all of type `ty`.
        args: Vec<Self>,
        /// Their type.
        ty: Type,
    },
}

impl Expr {
    /// The expression's type.
    pub fn ty(&self) -> Type {
        match self {
            Self::Const { ty, .. }
            | Self::Column { ty, .. }
            | Self::Cast { to: ty, .. }
            | Self::Coalesce { ty, .. }
            | Self::MinMax { ty, .. } => ty.clone(),
            Self::Arith { ty, .. } | Self::Negate { ty, .. } | Self::Unary { ty, .. } => {
                Type::Scalar(*ty)
            }
            Self::Concat { .. } | Self::ConcatFunc { .. } | Self::TextFunc { .. } => {
                Type::Scalar(Scalar::Text)
            }
            Self::DateTimeArith { op, .. } => Type::Scalar(op.signature().2),
            Self::ArrayNdims(_) => Type::Scalar(Scalar::Int4),
            Self::IntervalFunc { .. } => Type::Scalar(Scalar::Interval),
            Self::ArrayLiteral { element, .. }
            | Self::Slice { element, .. }
            | Self::ArrayConcat { element, .. } => Type::Array(*element),
            Self::Subscript { element, .. }
            | Self::TimeZone {
                output: element, ..
            } => Type::Scalar(*element),
            Self::Not(_)
            | Self::And(_)
            | Self::Or(_)
            | Self::IsNull { .. }
            | Self::BoolTest { .. }
            | Self::Compare { .. }
            | Self::Distinct { .. }
            | Self::Like { .. }
            | Self::Quantified { .. }
            | Self::ArrayOp { .. } => Type::Scalar(Scalar::Bool),
        }
    }

    /// Whether the expression reads no column.
    pub fn is_constant(&self) -> bool {
        let mut constant = true;
        self.visit(&mut |e| constant &= !matches!(e, Self::Column { .. }));
        constant
    }

    /// Calls `f` on this node and every node below it.
    pub fn visit(&self, f: &mut impl FnMut(&Self)) {
        f(self);
        for child in self.children() {
            child.visit(f);
        }
    }

    /// The direct operands.
    pub(crate) fn children(&self) -> Vec<&Self> {
        match self {
            Self::Subscript {
                arg, subscripts, ..
            } => {
                let mut children = vec![&**arg];
                children.extend(subscripts);
                children
            }
            Self::Slice { arg, bounds, .. } => {
                let mut children = vec![&**arg];
                for bound in bounds {
                    children.extend(bound.lower.iter().chain(&bound.upper));
                }
                children
            }
            Self::Const { .. } | Self::Column { .. } => vec![],
            Self::Not(a)
            | Self::IsNull { arg: a, .. }
            | Self::BoolTest { arg: a, .. }
            | Self::Negate { arg: a, .. }
            | Self::Unary { arg: a, .. }
            | Self::ArrayNdims(a)
            | Self::Cast { arg: a, .. }
            | Self::TimeZone { arg: a, .. }
            | Self::TextFunc { arg: a, .. }
            | Self::IntervalFunc { arg: a, .. } => vec![a],
            Self::And(args)
            | Self::Or(args)
            | Self::Coalesce { args, .. }
            | Self::MinMax { args, .. }
            | Self::ConcatFunc { args }
            | Self::ArrayLiteral { elements: args, .. } => args.iter().collect(),
            Self::Compare { left, right, .. }
            | Self::Distinct { left, right, .. }
            | Self::Arith { left, right, .. }
            | Self::DateTimeArith { left, right, .. }
            | Self::Concat { left, right }
            | Self::ArrayConcat { left, right, .. }
            | Self::ArrayOp { left, right, .. } => vec![left, right],
            Self::Like { arg, pattern, .. } => vec![arg, pattern],
            Self::Quantified { left, array, .. } => vec![left, array],
        }
    }

    /// The SQL Postgres runs for this expression (parenthesised, every constant typed).
    pub fn to_sql(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        out
    }

    #[allow(clippy::too_many_lines)] // one arm per node kind, each a line or two
    fn render(&self, out: &mut String) {
        match self {
            Self::Const { value, ty } => render_const(value, ty, out),
            Self::Column { name, as_text, .. } => {
                out.push_str(&quote_ident(name));
                if *as_text {
                    out.push_str("::text");
                }
            }
            Self::Not(arg) => {
                out.push_str("(NOT ");
                arg.render(out);
                out.push(')');
            }
            Self::And(args) => render_list(args, " AND ", out),
            Self::Or(args) => render_list(args, " OR ", out),
            Self::IsNull { arg, negated } => {
                out.push('(');
                arg.render(out);
                out.push_str(if *negated {
                    " IS NOT NULL)"
                } else {
                    " IS NULL)"
                });
            }
            Self::BoolTest { arg, test } => {
                out.push('(');
                arg.render(out);
                out.push_str(match test {
                    BoolTest::IsTrue => " IS TRUE)",
                    BoolTest::IsNotTrue => " IS NOT TRUE)",
                    BoolTest::IsFalse => " IS FALSE)",
                    BoolTest::IsNotFalse => " IS NOT FALSE)",
                    BoolTest::IsUnknown => " IS UNKNOWN)",
                    BoolTest::IsNotUnknown => " IS NOT UNKNOWN)",
                });
            }
            Self::Compare { op, left, right } => {
                let collate = !matches!(op, CmpOp::Eq | CmpOp::Ne) && needs_collation(left);
                render_binary(left, cmp_sql(*op), right, collate, out);
            }
            Self::Distinct {
                left,
                right,
                negated,
            } => {
                let op = if *negated {
                    "IS NOT DISTINCT FROM"
                } else {
                    "IS DISTINCT FROM"
                };
                render_binary(left, op, right, false, out);
            }
            Self::Arith {
                op, left, right, ..
            } => {
                render_binary(left, op.sql(), right, false, out);
            }
            Self::Unary { op, arg, .. } => {
                out.push('(');
                out.push_str(op.sql());
                out.push(' ');
                arg.render(out);
                out.push(')');
            }
            Self::ConcatFunc { args } => render_call("concat", args, false, out),
            Self::ArrayNdims(arg) => {
                out.push_str("array_ndims(");
                arg.render(out);
                out.push(')');
            }
            Self::Negate { arg, .. } => {
                out.push_str("(- ");
                arg.render(out);
                out.push(')');
            }
            Self::DateTimeArith {
                op, left, right, ..
            } => {
                render_binary(left, op.sql(), right, false, out);
            }
            Self::IntervalFunc { func, arg, .. } => {
                out.push_str(match func {
                    IntervalFunc::Negate => "(- ",
                    IntervalFunc::JustifyDays => "justify_days(",
                    IntervalFunc::JustifyHours => "justify_hours(",
                    IntervalFunc::JustifyInterval => "justify_interval(",
                });
                arg.render(out);
                out.push(')');
            }
            Self::Concat { left, right } => render_binary(left, "||", right, false, out),
            Self::Like {
                arg,
                pattern,
                escape,
                case,
                negated,
                ..
            } => render_like(arg, pattern, *escape, *case, *negated, out),
            Self::Quantified {
                op,
                left,
                array,
                all,
            } => {
                out.push('(');
                left.render(out);
                if !matches!(op, CmpOp::Eq | CmpOp::Ne) && needs_collation(left) {
                    out.push_str(" COLLATE \"C\"");
                }
                let _ = write!(
                    out,
                    " {} {} (",
                    cmp_sql(*op),
                    if *all { "ALL" } else { "ANY" }
                );
                array.render(out);
                out.push_str("))");
            }
            Self::ArrayOp { op, left, right } => {
                let sql = match op {
                    ArrayOp::Contains => "@>",
                    ArrayOp::ContainedBy => "<@",
                    ArrayOp::Overlaps => "&&",
                };
                render_binary(left, sql, right, false, out);
            }
            Self::ArrayLiteral { elements, element } => {
                out.push_str("ARRAY[");
                for (i, e) in elements.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    e.render(out);
                }
                let _ = write!(out, "]::{}[]", element.typname());
            }
            Self::Subscript {
                arg, subscripts, ..
            } => {
                out.push('(');
                arg.render(out);
                out.push(')');
                for subscript in subscripts {
                    out.push('[');
                    subscript.render(out);
                    out.push(']');
                }
            }
            Self::Slice { arg, bounds, .. } => {
                out.push('(');
                arg.render(out);
                out.push(')');
                for bound in bounds {
                    out.push('[');
                    if let Some(lower) = &bound.lower {
                        lower.render(out);
                    }
                    out.push(':');
                    if let Some(upper) = &bound.upper {
                        upper.render(out);
                    }
                    out.push(']');
                }
            }
            Self::ArrayConcat {
                func, left, right, ..
            } => {
                out.push_str("pg_catalog.");
                out.push_str(func.name());
                out.push('(');
                left.render(out);
                out.push_str(", ");
                right.render(out);
                out.push(')');
            }
            Self::TimeZone { name, arg, .. } => {
                let _ = write!(
                    out,
                    "pg_catalog.timezone({}::pg_catalog.text, ",
                    quote_literal(name)
                );
                arg.render(out);
                out.push(')');
            }
            Self::Cast { arg, to } => {
                out.push_str("CAST(");
                arg.render(out);
                let _ = write!(out, " AS {})", type_sql(to));
            }
            Self::TextFunc { func, arg } => {
                out.push_str(match func {
                    TextFunc::Lower => "lower(",
                    TextFunc::Upper => "upper(",
                });
                arg.render(out);
                out.push_str(" COLLATE \"C\")");
            }
            Self::Coalesce { args, .. } => render_call("COALESCE", args, false, out),
            Self::MinMax { op, args, ty } => {
                let name = match op {
                    MinMax::Greatest => "GREATEST",
                    MinMax::Least => "LEAST",
                };
                let collate = matches!(ty, Type::Scalar(s) | Type::Array(s) if s.is_string());
                render_call(name, args, collate, out);
            }
        }
    }
}

/// Whether an ordering comparison of `operand`'s type depends on the collation.
fn needs_collation(operand: &Expr) -> bool {
    matches!(operand.ty(), Type::Scalar(s) | Type::Array(s) if s.is_string())
}

fn cmp_sql(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq => "=",
        CmpOp::Ne => "<>",
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
    }
}

/// The SQL name of a type, as a cast target.
pub fn type_sql(ty: &Type) -> String {
    match ty {
        Type::Scalar(s) => format!("pg_catalog.{}", s.typname()),
        Type::Array(s) => format!("pg_catalog.{}[]", s.typname()),
        // Enum columns render `::text` and their constants as text: label comparison, and a
        // constant that is no label matches nothing instead of failing the snapshot.
        Type::Unknown | Type::Enum(_) => "pg_catalog.text".to_owned(),
        Type::Opaque(name) => quote_ident(name),
    }
}

fn render_const(value: &Value<'static>, ty: &Type, out: &mut String) {
    let type_name = type_sql(ty);
    match (value, ty) {
        (Value::Null, _) => {
            let _ = write!(out, "NULL::{type_name}");
        }
        (value, Type::Scalar(s)) => {
            let _ = write!(
                out,
                "{}::{type_name}",
                quote_literal(&format_scalar(value, *s))
            );
        }
        (value, Type::Array(s)) => {
            let _ = write!(
                out,
                "{}::{type_name}",
                quote_literal(&format_scalar(value, *s))
            );
        }
        (value, _) => {
            let text = match value {
                Value::Text(t) => t.to_string(),
                other => format!("{other:?}"),
            };
            let _ = write!(out, "{}::{type_name}", quote_literal(&text));
        }
    }
}

fn render_list(args: &[Expr], separator: &str, out: &mut String) {
    out.push('(');
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        arg.render(out);
    }
    out.push(')');
}

fn render_binary(left: &Expr, op: &str, right: &Expr, collate: bool, out: &mut String) {
    out.push('(');
    left.render(out);
    if collate {
        out.push_str(" COLLATE \"C\"");
    }
    let _ = write!(out, " {op} ");
    right.render(out);
    out.push(')');
}

fn render_call(name: &str, args: &[Expr], collate_first: bool, out: &mut String) {
    out.push_str(name);
    out.push('(');
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        arg.render(out);
        if i == 0 && collate_first {
            out.push_str(" COLLATE \"C\"");
        }
    }
    out.push(')');
}

fn render_like(
    arg: &Expr,
    pattern: &Expr,
    escape: LikeEscape,
    case: LikeCase,
    negated: bool,
    out: &mut String,
) {
    out.push('(');
    arg.render(out);
    out.push_str(" COLLATE \"C\"");
    out.push_str(match (negated, case) {
        (false, LikeCase::Sensitive) => " LIKE ",
        (true, LikeCase::Sensitive) => " NOT LIKE ",
        (false, LikeCase::AsciiInsensitive) => " ILIKE ",
        (true, LikeCase::AsciiInsensitive) => " NOT ILIKE ",
    });
    pattern.render(out);
    out.push_str(" ESCAPE ");
    out.push_str(&match escape {
        LikeEscape::Backslash => quote_literal("\\"),
        LikeEscape::Char(c) => quote_literal(&c.to_string()),
        LikeEscape::None => "''".to_owned(),
    });
    out.push(')');
}
