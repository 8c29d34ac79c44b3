//! From Postgres's raw parse tree to ampere's typed [`Expr`]: column references checked
//! against the table, operators resolved, unknown literals and `$n` parameters typed by their
//! context, implicit coercions made explicit, constant sub-expressions folded.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use ampere_pg_parse::protobuf::{self, a_const, AExprKind, BoolExprType, BoolTestType};
use ampere_pg_parse::protobuf::{MinMaxOp, NullTestType};
use ampere_pg_parse::NodeEnum;

use super::array_ops;
use super::array_text;
use super::eval;
use super::expr::{ArithOp, ArrayConcat, ArrayOp, BoolTest, CmpOp, DateTimeOp, Expr};
use super::expr::{IntervalFunc, MinMax, SliceBound, TextFunc, UnaryOp};
use super::interval::Interval;
use super::like::{LikeCase, LikeEscape, LikePattern};
use super::numeric::Numeric;
use super::types::{Dialect, Scalar, Type};
use super::tz::Zone;
use super::value::{parse_array, parse_scalar, Value};
use crate::shape::TableSchema;

/// A refusal at a position of the wrapped statement `SELECT 1 WHERE …` (0-based).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct BindError {
    /// Byte offset in the wrapped statement.
    pub(crate) location: i32,
    /// What is wrong.
    pub(crate) message: String,
}

type Result<T> = std::result::Result<T, BindError>;

fn fail<T>(location: i32, message: impl Into<String>) -> Result<T> {
    Err(BindError {
        location,
        message: message.into(),
    })
}

/// A bound sub-expression and where it starts.
struct Bound {
    expr: Expr,
    location: i32,
    /// The `$n` this is, while it is still an untyped parameter.
    param: Option<u32>,
}

/// Binds one where clause.
pub(crate) struct Binder<'a> {
    table: &'a TableSchema,
    /// The semantics of the table's server.
    dialect: Dialect,
    params: &'a BTreeMap<u32, String>,
    param_types: BTreeMap<u32, Type>,
    /// Each named time zone the clause reads, once, with where it is first named (constant
    /// folding may leave no node naming it).
    zones: Vec<(Zone, i32)>,
}

impl<'a> Binder<'a> {
    pub(crate) fn new(table: &'a TableSchema, params: &'a BTreeMap<u32, String>) -> Self {
        Self {
            table,
            dialect: Dialect::of(table.server_version),
            params,
            param_types: BTreeMap::new(),
            zones: Vec::new(),
        }
    }

    /// The named time zones the bound clause reads, each with where it is first named.
    pub(crate) fn into_zones(self) -> Vec<(Zone, i32)> {
        self.zones
    }

    /// Binds the where clause's root node; it must be boolean.
    pub(crate) fn bind_root(&mut self, node: &protobuf::Node) -> Result<Expr> {
        let bound = self.bind(node)?;
        let location = bound.location;
        if bound.expr.ty() != Type::Scalar(Scalar::Bool) {
            return fail(location, "WHERE clause must return a boolean");
        }
        Ok(bound.expr)
    }

    fn bind(&mut self, node: &protobuf::Node) -> Result<Bound> {
        let Some(inner) = node.node.as_ref() else {
            return fail(0, "empty expression");
        };
        match inner {
            NodeEnum::AConst(c) => constant(c),
            NodeEnum::ParamRef(p) => self.param(p),
            NodeEnum::ColumnRef(c) => self.column(c),
            NodeEnum::BoolExpr(b) => self.bool_expr(b),
            NodeEnum::NullTest(t) => self.null_test(t),
            NodeEnum::BooleanTest(t) => self.boolean_test(t),
            NodeEnum::AExpr(e) => self.a_expr(e),
            NodeEnum::TypeCast(c) => self.type_cast(c),
            NodeEnum::FuncCall(f) => self.func_call(f),
            NodeEnum::CoalesceExpr(c) => self.coalesce(c),
            NodeEnum::MinMaxExpr(m) => self.min_max(m),
            NodeEnum::AArrayExpr(a) => self.array_literal(a),
            NodeEnum::AIndirection(a) => self.indirection(a),
            NodeEnum::SubLink(s) => fail(
                s.location,
                "subqueries are not supported by ampere yet (IN (SELECT …), EXISTS, scalar \
                 subqueries)",
            ),
            other => fail(
                location_of(other),
                format!("{} is not supported in this context", node_name(other)),
            ),
        }
    }

    fn param(&mut self, p: &protobuf::ParamRef) -> Result<Bound> {
        let number = u32::try_from(p.number).unwrap_or(0);
        let Some(value) = self.params.get(&number) else {
            return fail(
                p.location,
                format!("parameter ${} was not provided", p.number),
            );
        };
        Ok(Bound {
            expr: unknown(Some(value.clone())),
            location: p.location,
            param: Some(number),
        })
    }

    fn column(&mut self, c: &protobuf::ColumnRef) -> Result<Bound> {
        let names: Vec<&str> = c.fields.iter().map(node_str).collect();
        let found = match names.as_slice() {
            [name] => self.table.column_index(name).map(|i| (i, *name)),
            _ => None,
        };
        let Some((index, name)) = found else {
            let shown: Vec<String> = names.iter().map(|n| show_ident(n)).collect();
            return fail(c.location, format!("unknown reference {}", shown.join(".")));
        };
        let column = &self.table.columns[index];
        let ty = Type::of_column(column);
        Ok(Bound {
            expr: Expr::Column {
                index,
                name: name.to_owned(),
                as_text: column.type_oid == 19 || matches!(ty, Type::Enum(_)),
                ty,
            },
            location: c.location,
            param: None,
        })
    }

    fn bool_expr(&mut self, b: &protobuf::BoolExpr) -> Result<Bound> {
        let op = BoolExprType::try_from(b.boolop).unwrap_or(BoolExprType::Undefined);
        let name = match op {
            BoolExprType::AndExpr => "AND",
            BoolExprType::OrExpr => "OR",
            _ => "NOT",
        };
        let mut args = Vec::with_capacity(b.args.len());
        for arg in &b.args {
            let bound = self.bind(arg)?;
            args.push(self.coerce_bool(bound, name)?);
        }
        let expr = match op {
            BoolExprType::AndExpr => Expr::And(args),
            BoolExprType::OrExpr => Expr::Or(args),
            _ => Expr::Not(Box::new(args.into_iter().next().ok_or(BindError {
                location: b.location,
                message: "NOT without an argument".into(),
            })?)),
        };
        fold(expr, b.location)
    }

    fn coerce_bool(&mut self, bound: Bound, context: &str) -> Result<Expr> {
        let ty = bound.expr.ty();
        if ty == Type::Unknown || ty.is_bool() {
            return self.coerce(bound, &Type::Scalar(Scalar::Bool));
        }
        fail(
            bound.location,
            format!("argument of {context} must be type boolean, not type {ty}"),
        )
    }

    fn null_test(&mut self, t: &protobuf::NullTest) -> Result<Bound> {
        let arg = self.bind(required(t.arg.as_deref(), t.location)?)?;
        let arg = self.settle_unknown(arg)?;
        let negated = NullTestType::try_from(t.nulltesttype).unwrap_or(NullTestType::IsNull)
            == NullTestType::IsNotNull;
        fold(
            Expr::IsNull {
                arg: Box::new(arg),
                negated,
            },
            t.location,
        )
    }

    fn boolean_test(&mut self, t: &protobuf::BooleanTest) -> Result<Bound> {
        let test = match BoolTestType::try_from(t.booltesttype).unwrap_or(BoolTestType::IsTrue) {
            BoolTestType::IsNotTrue => BoolTest::IsNotTrue,
            BoolTestType::IsFalse => BoolTest::IsFalse,
            BoolTestType::IsNotFalse => BoolTest::IsNotFalse,
            BoolTestType::IsUnknown => BoolTest::IsUnknown,
            BoolTestType::IsNotUnknown => BoolTest::IsNotUnknown,
            _ => BoolTest::IsTrue,
        };
        let arg = self.bind(required(t.arg.as_deref(), t.location)?)?;
        let context = bool_test_name(test);
        let arg = self.coerce_bool(arg, context)?;
        fold(
            Expr::BoolTest {
                arg: Box::new(arg),
                test,
            },
            t.location,
        )
    }

    fn a_expr(&mut self, e: &protobuf::AExpr) -> Result<Bound> {
        let kind = AExprKind::try_from(e.kind).unwrap_or(AExprKind::Undefined);
        let name = e.name.last().map(node_str).unwrap_or_default().to_owned();
        match kind {
            AExprKind::AexprOp | AExprKind::AexprLike | AExprKind::AexprIlike => {
                match e.lexpr.as_deref() {
                    None => self.unary(e, &name),
                    Some(lexpr) => {
                        let rexpr = required(e.rexpr.as_deref(), e.location)?;
                        self.binary(&name, lexpr, rexpr, e.location)
                    }
                }
            }
            AExprKind::AexprDistinct | AExprKind::AexprNotDistinct => {
                let left = self.bind(required(e.lexpr.as_deref(), e.location)?)?;
                let right = self.bind(required(e.rexpr.as_deref(), e.location)?)?;
                let (left, right) = self.unify(left, right, e.location)?;
                fold(
                    Expr::Distinct {
                        left: Box::new(left),
                        right: Box::new(right),
                        negated: kind == AExprKind::AexprNotDistinct,
                    },
                    e.location,
                )
            }
            AExprKind::AexprIn => self.in_list(e, &name),
            AExprKind::AexprBetween
            | AExprKind::AexprNotBetween
            | AExprKind::AexprBetweenSym
            | AExprKind::AexprNotBetweenSym => self.between(e, kind),
            AExprKind::AexprOpAny | AExprKind::AexprOpAll => {
                self.quantified(e, &name, kind == AExprKind::AexprOpAll)
            }
            _ => fail(
                e.location,
                format!(
                    "expression {name} of {} is not currently supported",
                    kind.as_str_name()
                ),
            ),
        }
    }

    fn unary(&mut self, e: &protobuf::AExpr, name: &str) -> Result<Bound> {
        let arg = self.bind(required(e.rexpr.as_deref(), e.location)?)?;
        let ty = arg.expr.ty();
        if name == "-" && matches!(ty.scalar(), Some(Scalar::Interval | Scalar::Time)) {
            // `interval_um`; a time is negated as its implicit cast to interval.
            let arg = self.coerce(arg, &Type::Scalar(Scalar::Interval))?;
            return fold(
                Expr::IntervalFunc {
                    func: IntervalFunc::Negate,
                    arg: Box::new(arg),
                    dialect: self.dialect,
                },
                e.location,
            );
        }
        let op = match name {
            "+" | "-" => None,
            "@" => Some(UnaryOp::Abs),
            "~" => Some(UnaryOp::BitNot),
            "|/" => Some(UnaryOp::Sqrt),
            _ => return fail(e.location, format!("unknown unary operator {name}")),
        };
        let number = match ty.scalar() {
            Some(s) if s.is_number() => s,
            _ => return fail(e.location, "Could not select an operator overload"),
        };
        let number = match op {
            // `int2not`, `int4not`, `int8not` only.
            Some(UnaryOp::BitNot) if !number.is_integer() => {
                return fail(e.location, "Could not select an operator overload")
            }
            // `dsqrt` only: every number reaches float8 by an implicit cast.
            Some(UnaryOp::Sqrt) => Scalar::Float8,
            _ => number,
        };
        let arg = self.coerce(arg, &Type::Scalar(number))?;
        let expr = match (name, op) {
            ("+", _) => arg,
            (_, None) => Expr::Negate {
                arg: Box::new(arg),
                ty: number,
            },
            (_, Some(op)) => Expr::Unary {
                op,
                arg: Box::new(arg),
                ty: number,
            },
        };
        fold(expr, e.location)
    }

    fn binary(
        &mut self,
        name: &str,
        lexpr: &protobuf::Node,
        rexpr: &protobuf::Node,
        location: i32,
    ) -> Result<Bound> {
        if let Some(op) = cmp_op(name) {
            let left = self.bind(lexpr)?;
            let right = self.bind(rexpr)?;
            return self.compare(op, left, right, location);
        }
        match name {
            "+" | "-" | "*" | "/" | "&" | "|" | "#" | "^" => {
                self.arith(name, lexpr, rexpr, location)
            }
            "||" => {
                let left = self.bind(lexpr)?;
                let right = self.bind(rexpr)?;
                let array = |t: &Type| matches!(t, Type::Array(_));
                let (lt, rt) = (left.expr.ty(), right.expr.ty());
                if array(&lt) || array(&rt) {
                    // `anycompatiblearray || anycompatiblearray` (an unknown operand is read
                    // as an array), `anycompatiblearray || anycompatible`, or the reverse.
                    let func = match (array(&lt), array(&rt)) {
                        (true, false) if rt != Type::Unknown => ArrayConcat::Append,
                        (false, true) if lt != Type::Unknown => ArrayConcat::Prepend,
                        _ => ArrayConcat::Cat,
                    };
                    return self.array_concat(func, left, right, location);
                }
                let text = Type::Scalar(Scalar::Text);
                if !is_texty(&left.expr.ty()) || !is_texty(&right.expr.ty()) {
                    return fail(location, "Could not select an operator overload");
                }
                let (left, right) = (self.coerce(left, &text)?, self.coerce(right, &text)?);
                fold(
                    Expr::Concat {
                        left: Box::new(left),
                        right: Box::new(right),
                    },
                    location,
                )
            }
            "~~" | "!~~" | "~~*" | "!~~*" => self.like(name, lexpr, rexpr, location),
            "@>" | "<@" | "&&" => self.array_op(name, lexpr, rexpr, location),
            _ => fail(location, format!("unknown binary operator {name}")),
        }
    }

    fn compare(&mut self, op: CmpOp, left: Bound, right: Bound, location: i32) -> Result<Bound> {
        let (left, right) = self.unify(left, right, location)?;
        if matches!(left.ty(), Type::Opaque(_)) {
            return fail(location, "Could not select an operator overload");
        }
        if matches!(left.ty(), Type::Enum(_)) && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            return fail(
                location,
                "ampere compares enum values with = and <> only; cast to text to compare labels",
            );
        }
        fold(
            Expr::Compare {
                op,
                left: Box::new(left),
                right: Box::new(right),
            },
            location,
        )
    }

    /// `+ - * /`, `& | #` and `^` on numbers (date/time operands go to [`Self::datetime_arith`]).
    fn arith(
        &mut self,
        name: &str,
        lexpr: &protobuf::Node,
        rexpr: &protobuf::Node,
        location: i32,
    ) -> Result<Bound> {
        let left = self.bind(lexpr)?;
        let right = self.bind(rexpr)?;
        let (lt, rt) = (left.expr.ty(), right.expr.ty());
        let datetime = |t: &Type| t.scalar().is_some_and(Scalar::is_datetime);
        if datetime(&lt) || datetime(&rt) {
            return self.datetime_arith(name, left, right, location);
        }
        let number = |t: &Type| t.scalar().is_some_and(Scalar::is_number);
        if !(number(&lt) || number(&rt))
            || !(number(&lt) || lt == Type::Unknown)
            || !(number(&rt) || rt == Type::Unknown)
        {
            return fail(location, "Could not select an operator overload");
        }
        let op = match name {
            "+" => ArithOp::Add,
            "-" => ArithOp::Sub,
            "*" => ArithOp::Mul,
            "/" => ArithOp::Div,
            "&" => ArithOp::BitAnd,
            "|" => ArithOp::BitOr,
            "#" => ArithOp::BitXor,
            _ => ArithOp::Pow,
        };
        let numeric = Type::Scalar(Scalar::Numeric);
        let (left, right, ty) = if op == ArithOp::Pow {
            // `dpow(float8, float8)`, unless an operand is numeric: `numeric_power` (refused:
            // its result scale rules are not ampere's).
            if lt == numeric || rt == numeric {
                return fail(
                    location,
                    "ampere does not support numeric ^ yet; cast an operand to float8",
                );
            }
            let float8 = Type::Scalar(Scalar::Float8);
            let left = self.coerce(left, &float8)?;
            (left, self.coerce(right, &float8)?, Scalar::Float8)
        } else {
            let (left, right) = self.unify(left, right, location)?;
            let Some(ty) = left.ty().scalar() else {
                return fail(location, "Could not select an operator overload");
            };
            (left, right, ty)
        };
        let bitwise = matches!(op, ArithOp::BitAnd | ArithOp::BitOr | ArithOp::BitXor);
        if bitwise && !ty.is_integer() {
            // `int2and`, `int4or`, `int8xor`, …: integers of one type only.
            return fail(location, "Could not select an operator overload");
        }
        fold(
            Expr::Arith {
                op,
                left: Box::new(left),
                right: Box::new(right),
                ty,
            },
            location,
        )
    }

    /// Date/time arithmetic, resolved as Postgres resolves it (see [`datetime_op`]); refused
    /// where Postgres finds no operator or no unique one.
    fn datetime_arith(
        &mut self,
        name: &str,
        left: Bound,
        right: Bound,
        location: i32,
    ) -> Result<Bound> {
        let Some(op) = datetime_op(name, &left.expr.ty(), &right.expr.ty()) else {
            return fail(
                location,
                format!(
                    "Could not select an operator overload: {} {name} {}",
                    left.expr.ty(),
                    right.expr.ty()
                ),
            );
        };
        let (lt, rt, _) = op.signature();
        let left = self.coerce(left, &Type::Scalar(lt))?;
        let right = self.coerce(right, &Type::Scalar(rt))?;
        fold(
            Expr::DateTimeArith {
                op,
                left: Box::new(left),
                right: Box::new(right),
                dialect: self.dialect,
            },
            location,
        )
    }

    fn like(
        &mut self,
        name: &str,
        lexpr: &protobuf::Node,
        rexpr: &protobuf::Node,
        location: i32,
    ) -> Result<Bound> {
        let (pattern_node, escape_node) = like_parts(rexpr);
        let arg = self.bind(lexpr)?;
        let pattern = self.bind(pattern_node)?;
        let text = Type::Scalar(Scalar::Text);
        if !is_texty(&arg.expr.ty()) || !is_texty(&pattern.expr.ty()) {
            return fail(location, "Could not select an operator overload");
        }
        let escape = match escape_node {
            None => LikeEscape::Backslash,
            Some(node) => {
                let bound = self.bind(node)?;
                let escape_location = bound.location;
                let escape = self.coerce(bound, &text)?;
                match escape {
                    Expr::Const {
                        value: Value::Text(t),
                        ..
                    } => LikeEscape::from_escape_string(&t).map_err(|e| BindError {
                        location: escape_location,
                        message: e.to_string(),
                    })?,
                    _ => {
                        return fail(
                            escape_location,
                            "ampere supports only a constant ESCAPE string",
                        )
                    }
                }
            }
        };
        // `bpchar ~~ text` matches the padded value (Postgres's `bpcharlike`).
        let arg = if arg.expr.ty() == Type::Scalar(Scalar::Bpchar) {
            arg.expr
        } else {
            self.coerce(arg, &text)?
        };
        let pattern = self.coerce(pattern, &text)?;
        let case = if name.ends_with('*') {
            LikeCase::AsciiInsensitive
        } else {
            LikeCase::Sensitive
        };
        let compiled = match &pattern {
            Expr::Const {
                value: Value::Text(p),
                ..
            } => Some(
                LikePattern::compile(p, escape, case).map_err(|e| BindError {
                    location,
                    message: e.to_string(),
                })?,
            ),
            _ => None,
        };
        fold(
            Expr::Like {
                arg: Box::new(arg),
                pattern: Box::new(pattern),
                escape,
                case,
                negated: name.starts_with('!'),
                compiled,
            },
            location,
        )
    }

    fn array_op(
        &mut self,
        name: &str,
        lexpr: &protobuf::Node,
        rexpr: &protobuf::Node,
        location: i32,
    ) -> Result<Bound> {
        let left = self.bind(lexpr)?;
        let right = self.bind(rexpr)?;
        let is_array = |t: &Type| matches!(t, Type::Array(_) | Type::Unknown);
        if !is_array(&left.expr.ty()) || !is_array(&right.expr.ty()) {
            return fail(location, "Could not select an operator overload");
        }
        let (left, right) = self.unify(left, right, location)?;
        if !matches!(left.ty(), Type::Array(_)) {
            return fail(location, "Could not select an operator overload");
        }
        let op = match name {
            "@>" => ArrayOp::Contains,
            "<@" => ArrayOp::ContainedBy,
            _ => ArrayOp::Overlaps,
        };
        fold(
            Expr::ArrayOp {
                op,
                left: Box::new(left),
                right: Box::new(right),
            },
            location,
        )
    }

    fn in_list(&mut self, e: &protobuf::AExpr, name: &str) -> Result<Bound> {
        let items = match e.rexpr.as_deref().and_then(|n| n.node.as_ref()) {
            Some(NodeEnum::List(list)) => list.items.clone(),
            _ => return fail(e.location, "IN needs a list of values"),
        };
        let lexpr = required(e.lexpr.as_deref(), e.location)?;
        let mut rights = Vec::with_capacity(items.len());
        for item in &items {
            // Classified as Postgres does, on the expression as written (before folding).
            rights.push((self.bind(item)?, reads_column(item)));
        }
        // Postgres's transformAExprIn: with more than one constant item, the left side and
        // the constants resolve to one common type first (`bp IN ('a ', 'b')` compares as
        // bpchar, `f4 IN (0.1, 0.2)` as float4); items reading columns compare one by one.
        let common = if rights.iter().filter(|(_, reads)| !reads).count() > 1 {
            let left_ty = self.bind(lexpr)?.expr.ty();
            let types = rights
                .iter()
                .filter(|(_, reads)| !reads)
                .map(|(b, _)| b.expr.ty());
            in_list_type(std::iter::once(left_ty).chain(types))
        } else {
            None
        };
        let mut comparisons = Vec::with_capacity(rights.len());
        for (right, reads) in rights {
            let left = self.bind(lexpr)?;
            let right = match &common {
                Some(ty) if !reads => {
                    let location = right.location;
                    Bound {
                        expr: self.coerce(right, ty)?,
                        location,
                        param: None,
                    }
                }
                _ => right,
            };
            comparisons.push(self.compare(CmpOp::Eq, left, right, e.location)?.expr);
        }
        let any = if comparisons.len() == 1 {
            comparisons.pop().expect("invariant: one comparison")
        } else {
            simplify(Expr::Or(comparisons))
        };
        let expr = if name == "<>" {
            Expr::Not(Box::new(any))
        } else {
            any
        };
        fold(expr, e.location)
    }

    fn between(&mut self, e: &protobuf::AExpr, kind: AExprKind) -> Result<Bound> {
        let bounds = match e.rexpr.as_deref().and_then(|n| n.node.as_ref()) {
            Some(NodeEnum::List(list)) if list.items.len() == 2 => list.items.clone(),
            _ => return fail(e.location, "BETWEEN needs two bounds"),
        };
        let lexpr = required(e.lexpr.as_deref(), e.location)?;
        let mut within = |low: &protobuf::Node, high: &protobuf::Node| -> Result<Expr> {
            let (l, x) = (self.bind(low)?, self.bind(lexpr)?);
            let lower = self.compare(CmpOp::Le, l, x, e.location)?.expr;
            let (x, h) = (self.bind(lexpr)?, self.bind(high)?);
            let upper = self.compare(CmpOp::Le, x, h, e.location)?.expr;
            Ok(simplify(Expr::And(vec![lower, upper])))
        };
        let forward = within(&bounds[0], &bounds[1])?;
        let expr = match kind {
            AExprKind::AexprBetweenSym | AExprKind::AexprNotBetweenSym => {
                let backward = within(&bounds[1], &bounds[0])?;
                simplify(Expr::Or(vec![forward, backward]))
            }
            _ => forward,
        };
        let expr = match kind {
            AExprKind::AexprNotBetween | AExprKind::AexprNotBetweenSym => Expr::Not(Box::new(expr)),
            _ => expr,
        };
        fold(expr, e.location)
    }

    fn quantified(&mut self, e: &protobuf::AExpr, name: &str, all: bool) -> Result<Bound> {
        let Some(op) = cmp_op(name) else {
            return fail(
                e.location,
                format!("ampere supports only comparison operators with ANY/ALL, not {name}"),
            );
        };
        let left = self.bind(required(e.lexpr.as_deref(), e.location)?)?;
        let array = self.bind(required(e.rexpr.as_deref(), e.location)?)?;
        let element = match array.expr.ty() {
            Type::Array(s) => Type::Scalar(s),
            Type::Unknown => match left.expr.ty() {
                Type::Unknown => Type::Scalar(Scalar::Text),
                other => other,
            },
            _ => return fail(array.location, "argument of ANY must be an array"),
        };
        let left_ty = left.expr.ty();
        let common = if left_ty == Type::Unknown {
            Some(element.clone())
        } else {
            common_type(&left_ty, &element)
        };
        let Some(Type::Scalar(scalar)) = common else {
            return fail(e.location, "Could not select an operator overload");
        };
        let left = self.coerce(left, &Type::Scalar(scalar))?;
        let array = self.coerce(array, &Type::Array(scalar))?;
        fold(
            Expr::Quantified {
                op,
                left: Box::new(left),
                array: Box::new(array),
                all,
            },
            e.location,
        )
    }

    fn type_cast(&mut self, c: &protobuf::TypeCast) -> Result<Bound> {
        let node = required(c.arg.as_deref(), c.location)?;
        let target = cast_target(c.type_name.as_ref(), c.location)?;
        if let (Some(NodeEnum::AArrayExpr(array)), Type::Array(element)) = (&node.node, &target) {
            return self.cast_array_literal(array, *element, c.location);
        }
        let arg = self.bind(node)?;
        let location = arg.location.min(c.location);
        if arg.expr.ty() == Type::Unknown {
            let expr = self.coerce(arg, &target)?;
            return Ok(Bound {
                expr,
                location,
                param: None,
            });
        }
        let from = arg.expr.ty();
        if from == target {
            return Ok(arg);
        }
        if !eval::can_cast(&from, &target) {
            return fail(
                c.location,
                format!("unknown cast from type {from} to type {target}"),
            );
        }
        fold(
            Expr::Cast {
                arg: Box::new(arg.expr),
                to: target,
            },
            location,
        )
    }

    fn func_call(&mut self, f: &protobuf::FuncCall) -> Result<Bound> {
        if !f.agg_order.is_empty()
            || f.agg_filter.is_some()
            || f.over.is_some()
            || f.agg_within_group
            || f.agg_star
            || f.agg_distinct
        {
            return fail(f.location, "aggregation is not supported in this context");
        }
        if f.func_variadic {
            return fail(
                f.location,
                "explicit VARIADIC function calls are not currently supported",
            );
        }
        let names: Vec<&str> = f.funcname.iter().map(node_str).collect();
        let name = match names.as_slice() {
            ["pg_catalog", name] | [name] => *name,
            _ => "",
        };
        self.call(name, &names.join("."), &f.args, f.location)
    }

    /// A call of the function `name` (`shown` as written) with `args`.
    fn call(
        &mut self,
        name: &str,
        shown: &str,
        args: &[protobuf::Node],
        location: i32,
    ) -> Result<Bound> {
        let justify = match name {
            "justify_days" => Some(IntervalFunc::JustifyDays),
            "justify_hours" => Some(IntervalFunc::JustifyHours),
            "justify_interval" => Some(IntervalFunc::JustifyInterval),
            _ => None,
        };
        let text_func = match name {
            "lower" => Some(TextFunc::Lower),
            "upper" => Some(TextFunc::Upper),
            _ => None,
        };
        let array_concat = match name {
            "array_cat" => Some(ArrayConcat::Cat),
            "array_append" => Some(ArrayConcat::Append),
            "array_prepend" => Some(ArrayConcat::Prepend),
            _ => None,
        };
        match (name, args, justify, text_func, array_concat) {
            ("concat", [_, ..], ..) => self.concat_func(args, location),
            ("array_ndims", [arg], ..) => self.array_ndims(arg, location),
            ("timezone", [zone, arg], ..) => self.timezone(zone, arg, location),
            (_, [arg], Some(func), ..) => self.interval_func(func, name, arg, location),
            (_, [arg], _, Some(func), _) => self.text_func(func, name, arg, location),
            (_, [left, right], .., Some(func)) => {
                let (left, right) = (self.bind(left)?, self.bind(right)?);
                self.array_concat(func, left, right, location)
            }
            _ => fail(
                location,
                format!("unknown or unsupported function {shown}/{}", args.len()),
            ),
        }
    }

    /// `lower(text)`, `upper(text)`.
    fn text_func(
        &mut self,
        func: TextFunc,
        name: &str,
        node: &protobuf::Node,
        location: i32,
    ) -> Result<Bound> {
        let arg = self.bind(node)?;
        if !is_texty(&arg.expr.ty()) {
            return fail(
                location,
                format!(
                    "Could not select a function overload for {name}({})",
                    arg.expr.ty()
                ),
            );
        }
        let arg = self.coerce(arg, &Type::Scalar(Scalar::Text))?;
        fold(
            Expr::TextFunc {
                func,
                arg: Box::new(arg),
            },
            location,
        )
    }

    /// `array_ndims(anyarray)`: an unknown literal cannot fix the polymorphic type.
    fn array_ndims(&mut self, node: &protobuf::Node, location: i32) -> Result<Bound> {
        let arg = self.bind(node)?;
        let ty = arg.expr.ty();
        if !matches!(ty, Type::Array(_)) {
            return fail(
                location,
                format!("Could not select a function overload for array_ndims({ty})"),
            );
        }
        fold(Expr::ArrayNdims(Box::new(arg.expr)), location)
    }

    /// `timezone(zone, ts)`, also spelled `ts AT TIME ZONE zone`: a `timestamp` is read as
    /// wall-clock time in the zone (giving a `timestamptz`), anything else is read as a
    /// `timestamptz` (Postgres's preferred date/time type) and shown in the zone's wall-clock
    /// time. The zone must be a constant ampere can resolve exactly ([`Zone::lookup`]).
    fn timezone(
        &mut self,
        zone: &protobuf::Node,
        arg: &protobuf::Node,
        location: i32,
    ) -> Result<Bound> {
        let zone = self.bind(zone)?;
        let arg = self.bind(arg)?;
        let overload = |zone: &Type, arg: &Type| {
            fail(
                location,
                format!("Could not select a function overload for timezone({zone}, {arg})"),
            )
        };
        let (zone_ty, arg_ty) = (zone.expr.ty(), arg.expr.ty());
        if !is_texty(&zone_ty) {
            return overload(&zone_ty, &arg_ty);
        }
        let (input, output) = match arg_ty {
            Type::Scalar(Scalar::Timestamp) => (Scalar::Timestamp, Scalar::Timestamptz),
            Type::Unknown | Type::Scalar(Scalar::Timestamptz | Scalar::Date) => {
                (Scalar::Timestamptz, Scalar::Timestamp)
            }
            _ => return overload(&zone_ty, &arg_ty),
        };
        let zone_location = zone.location;
        let zone = self.coerce(zone, &Type::Scalar(Scalar::Text))?;
        let arg = self.coerce(arg, &Type::Scalar(input))?;
        let name =
            match zone {
                Expr::Const {
                    value: Value::Text(name),
                    ..
                } => name.into_owned(),
                Expr::Const {
                    value: Value::Null, ..
                } => {
                    // Strict: a NULL zone makes the result NULL.
                    return fold(
                        Expr::Const {
                            value: Value::Null,
                            ty: Type::Scalar(output),
                        },
                        location,
                    );
                }
                _ => return fail(
                    zone_location,
                    "ampere supports AT TIME ZONE and timezone() with a constant time zone only",
                ),
            };
        let zone = Zone::lookup(&name).map_err(|e| BindError {
            location: zone_location,
            message: e.to_string(),
        })?;
        if !self.zones.iter().any(|(known, _)| *known == zone) {
            self.zones.push((zone.clone(), zone_location));
        }
        fold(
            Expr::TimeZone {
                zone,
                name,
                arg: Box::new(arg),
                output,
            },
            location,
        )
    }

    /// `array_cat`, `array_append`, `array_prepend` (and `||` on arrays): the element type is
    /// the operands' common type (Postgres's `anycompatible` rules); an unknown operand takes
    /// the role its position gives it (an array for `array_cat`, an element otherwise).
    fn array_concat(
        &mut self,
        func: ArrayConcat,
        left: Bound,
        right: Bound,
        location: i32,
    ) -> Result<Bound> {
        let (lt, rt) = (left.expr.ty(), right.expr.ty());
        let (left_is_array, right_is_array) = match func {
            ArrayConcat::Cat => (true, true),
            ArrayConcat::Append => (true, false),
            ArrayConcat::Prepend => (false, true),
        };
        let element_of = |ty: &Type, is_array: bool| -> Result<Option<Scalar>> {
            match (ty, is_array) {
                (Type::Unknown, _) => Ok(None),
                (Type::Array(s), true) | (Type::Scalar(s), false) => Ok(Some(*s)),
                _ => fail(
                    location,
                    format!(
                        "Could not select a function overload for {}({lt}, {rt})",
                        func.name()
                    ),
                ),
            }
        };
        let element = match (
            element_of(&lt, left_is_array)?,
            element_of(&rt, right_is_array)?,
        ) {
            (None, None) => {
                return fail(
                    location,
                    "could not determine polymorphic type because input has type unknown",
                )
            }
            (Some(s), None) | (None, Some(s)) => s,
            (Some(a), Some(b)) => match union_type(&Type::Scalar(a), &Type::Scalar(b)) {
                Some(Type::Scalar(s)) => s,
                _ => {
                    return fail(
                        location,
                        format!(
                            "Could not select a function overload for {}({lt}, {rt})",
                            func.name()
                        ),
                    )
                }
            },
        };
        let typed = |is_array: bool| {
            if is_array {
                Type::Array(element)
            } else {
                Type::Scalar(element)
            }
        };
        let left = self.coerce(left, &typed(left_is_array))?;
        let right = self.coerce(right, &typed(right_is_array))?;
        fold(
            Expr::ArrayConcat {
                func,
                left: Box::new(left),
                right: Box::new(right),
                element,
            },
            location,
        )
    }

    /// `array[i]…` and `array[l:u]…`: subscripts are `int4` (numbers and unknown literals are
    /// cast to it); a slice anywhere makes every subscript a slice, a plain `[u]` then being
    /// `[1:u]`, as Postgres's `transformContainerSubscripts` does.
    fn indirection(&mut self, a: &protobuf::AIndirection) -> Result<Bound> {
        let node = required(a.arg.as_deref(), 0)?;
        let arg = self.bind(node)?;
        let location = arg.location;
        let ty = arg.expr.ty();
        let Type::Array(element) = ty else {
            return fail(
                location,
                format!("cannot subscript type {ty} because it does not support subscripting"),
            );
        };
        let mut indices = Vec::with_capacity(a.indirection.len());
        for item in &a.indirection {
            match item.node.as_ref() {
                Some(NodeEnum::AIndices(i)) => indices.push(i),
                _ => {
                    return fail(
                        location,
                        "ampere supports array subscripts only (no field selection)",
                    )
                }
            }
        }
        array_ops::check_subscript_count(indices.len()).map_err(|e| BindError {
            location,
            message: e.to_string(),
        })?;
        let arg = Box::new(arg.expr);
        if !indices.iter().any(|i| i.is_slice) {
            let mut subscripts = Vec::with_capacity(indices.len());
            for i in &indices {
                subscripts.push(self.subscript_index(required(i.uidx.as_deref(), location)?)?);
            }
            return fold(
                Expr::Subscript {
                    arg,
                    subscripts,
                    element,
                },
                location,
            );
        }
        let mut bounds = Vec::with_capacity(indices.len());
        for i in &indices {
            let lower = match (i.is_slice, i.lidx.as_deref()) {
                (true, None) => None,
                (true, Some(node)) => Some(self.subscript_index(node)?),
                (false, _) => Some(Expr::Const {
                    value: Value::Int(1),
                    ty: Type::Scalar(Scalar::Int4),
                }),
            };
            let upper = match i.uidx.as_deref() {
                None => None,
                Some(node) => Some(self.subscript_index(node)?),
            };
            bounds.push(SliceBound { lower, upper });
        }
        fold(
            Expr::Slice {
                arg,
                bounds,
                element,
            },
            location,
        )
    }

    /// One subscript, as an `int4`.
    fn subscript_index(&mut self, node: &protobuf::Node) -> Result<Expr> {
        let bound = self.bind(node)?;
        let int4 = Type::Scalar(Scalar::Int4);
        match bound.expr.ty() {
            Type::Unknown => self.coerce(bound, &int4),
            Type::Scalar(Scalar::Int4) => Ok(bound.expr),
            // Postgres's assignment casts: int8 checked, numeric and floats rounded.
            Type::Scalar(s) if s.is_number() => Ok(Expr::Cast {
                arg: Box::new(bound.expr),
                to: int4,
            }),
            _ => fail(bound.location, "array subscript must have type integer"),
        }
    }

    /// `concat(VARIADIC "any")`: each argument as its type's output function prints it (an
    /// unknown literal as text); types whose text ampere does not print are refused.
    fn concat_func(&mut self, nodes: &[protobuf::Node], location: i32) -> Result<Bound> {
        let mut args = Vec::with_capacity(nodes.len());
        for node in nodes {
            let arg = self.bind(node)?;
            let arg = match arg.expr.ty() {
                Type::Unknown => self.coerce(arg, &Type::Scalar(Scalar::Text))?,
                Type::Opaque(name) => {
                    return fail(
                        location,
                        format!("ampere cannot print type {name} for concat"),
                    )
                }
                _ => arg.expr,
            };
            args.push(arg);
        }
        fold(Expr::ConcatFunc { args }, location)
    }

    /// `justify_days|hours|interval(interval)`: an unknown is read as an interval, a time cast
    /// to one (its implicit cast).
    fn interval_func(
        &mut self,
        func: IntervalFunc,
        name: &str,
        node: &protobuf::Node,
        location: i32,
    ) -> Result<Bound> {
        let arg = self.bind(node)?;
        let ty = arg.expr.ty();
        if !matches!(
            ty,
            Type::Unknown | Type::Scalar(Scalar::Interval | Scalar::Time)
        ) {
            return fail(
                location,
                format!("Could not select a function overload for {name}({ty})"),
            );
        }
        let arg = self.coerce(arg, &Type::Scalar(Scalar::Interval))?;
        fold(
            Expr::IntervalFunc {
                func,
                arg: Box::new(arg),
                dialect: self.dialect,
            },
            location,
        )
    }

    fn coalesce(&mut self, c: &protobuf::CoalesceExpr) -> Result<Bound> {
        let (args, ty) = self.same_type_args(&c.args, c.location)?;
        fold(Expr::Coalesce { args, ty }, c.location)
    }

    fn min_max(&mut self, m: &protobuf::MinMaxExpr) -> Result<Bound> {
        let (args, ty) = self.same_type_args(&m.args, m.location)?;
        if matches!(ty, Type::Opaque(_)) {
            return fail(m.location, "Could not select a function overload");
        }
        let op = match MinMaxOp::try_from(m.op).unwrap_or(MinMaxOp::IsGreatest) {
            MinMaxOp::IsLeast => MinMax::Least,
            _ => MinMax::Greatest,
        };
        fold(Expr::MinMax { op, args, ty }, m.location)
    }

    /// Binds `nodes` and coerces them to their common type (Postgres's UNION/CASE rules).
    fn same_type_args(
        &mut self,
        nodes: &[protobuf::Node],
        location: i32,
    ) -> Result<(Vec<Expr>, Type)> {
        let mut bound = Vec::with_capacity(nodes.len());
        for node in nodes {
            bound.push(self.bind(node)?);
        }
        let mut ty = Type::Unknown;
        for b in &bound {
            let t = b.expr.ty();
            ty = if ty == Type::Unknown {
                t
            } else if t == Type::Unknown {
                ty
            } else {
                match union_type(&ty, &t) {
                    Some(common) => common,
                    None => {
                        return fail(b.location, format!("types {ty} and {t} cannot be matched"))
                    }
                }
            };
        }
        if ty == Type::Unknown {
            ty = Type::Scalar(Scalar::Text);
        }
        let _ = location;
        let mut args = Vec::with_capacity(bound.len());
        for b in bound {
            args.push(self.coerce(b, &ty)?);
        }
        Ok((args, ty))
    }

    /// `ARRAY[…]::t[]`: as Postgres's `transformArrayExpr` does under a cast, each element is
    /// cast to `t` on its own (no common type first: `ARRAY[bp, txt]::text[]` keeps `txt`'s
    /// trailing blanks), and an empty array is fine.
    fn cast_array_literal(
        &mut self,
        a: &protobuf::AArrayExpr,
        element: Scalar,
        location: i32,
    ) -> Result<Bound> {
        let target = Type::Scalar(element);
        let mut elements = Vec::with_capacity(a.elements.len());
        for node in &a.elements {
            let bound = self.bind(node)?;
            let from = bound.expr.ty();
            let expr = if from == Type::Unknown || from == target {
                self.coerce(bound, &target)?
            } else if matches!(from, Type::Array(_)) {
                return fail(
                    a.location,
                    format!("ampere does not support arrays of {from}"),
                );
            } else if eval::can_cast(&from, &target) {
                Expr::Cast {
                    arg: Box::new(bound.expr),
                    to: target.clone(),
                }
            } else {
                return fail(
                    bound.location,
                    format!("unknown cast from type {from} to type {target}"),
                );
            };
            elements.push(expr);
        }
        if elements.is_empty() {
            // `'{}'`, the one empty array (no dimensions).
            let value = parse_array("{}", element)
                .expect("invariant: '{}' is every element type's empty array");
            return fold(
                Expr::Const {
                    value,
                    ty: Type::Array(element),
                },
                a.location.min(location),
            );
        }
        fold(
            Expr::ArrayLiteral { elements, element },
            a.location.min(location),
        )
    }

    fn array_literal(&mut self, a: &protobuf::AArrayExpr) -> Result<Bound> {
        if a.elements.is_empty() {
            return fail(a.location, "cannot determine type of empty array");
        }
        let (elements, ty) = self.same_type_args(&a.elements, a.location)?;
        let Type::Scalar(element) = ty else {
            return fail(
                a.location,
                format!("ampere does not support arrays of {ty}"),
            );
        };
        fold(Expr::ArrayLiteral { elements, element }, a.location)
    }

    /// Coerces two operands to one type (an unknown takes the other's type).
    fn unify(&mut self, left: Bound, right: Bound, location: i32) -> Result<(Expr, Expr)> {
        let (lt, rt) = (left.expr.ty(), right.expr.ty());
        let ty = match (&lt, &rt) {
            (Type::Unknown, Type::Unknown) => Type::Scalar(Scalar::Text),
            (Type::Unknown, t) | (t, Type::Unknown) => t.clone(),
            (a, b) => match common_type(a, b) {
                Some(t) => t,
                None => return fail(location, "Could not select an operator overload"),
            },
        };
        Ok((self.coerce(left, &ty)?, self.coerce(right, &ty)?))
    }

    /// Gives an unknown literal its default type, `text`.
    fn settle_unknown(&mut self, bound: Bound) -> Result<Expr> {
        if bound.expr.ty() == Type::Unknown {
            return self.coerce(bound, &Type::Scalar(Scalar::Text));
        }
        Ok(bound.expr)
    }

    /// `bound` as a `target`: an unknown literal read with the type's input function, an
    /// implicit cast made explicit.
    fn coerce(&mut self, bound: Bound, target: &Type) -> Result<Expr> {
        let ty = bound.expr.ty();
        if ty == *target {
            return Ok(bound.expr);
        }
        if ty == Type::Unknown {
            if let Some(number) = bound.param {
                match self.param_types.get(&number) {
                    Some(seen) if seen != target => {
                        return fail(
                            bound.location,
                            format!("type conflict for ${number}: {seen} and {target}"),
                        )
                    }
                    _ => {
                        self.param_types.insert(number, target.clone());
                    }
                }
            }
            return typed_literal(bound.expr, target, bound.location, self.dialect);
        }
        if implicit_cast(&ty, target) || is_time_to_interval(&ty, target) {
            return Ok(fold(
                Expr::Cast {
                    arg: Box::new(bound.expr),
                    to: target.clone(),
                },
                bound.location,
            )?
            .expr);
        }
        fail(
            bound.location,
            format!("{ty} cannot be matched to {target}"),
        )
    }
}

/// An untyped literal (`'…'`, `NULL` or a parameter's text).
fn unknown(text: Option<String>) -> Expr {
    Expr::Const {
        value: text.map_or(Value::Null, |t| Value::Text(Cow::Owned(t))),
        ty: Type::Unknown,
    }
}

/// An unknown literal read as `target`.
fn typed_literal(expr: Expr, target: &Type, location: i32, dialect: Dialect) -> Result<Expr> {
    let Expr::Const { value, .. } = expr else {
        return fail(location, "internal: not a literal");
    };
    let text = match value {
        Value::Null => {
            return Ok(Expr::Const {
                value: Value::Null,
                ty: target.clone(),
            })
        }
        Value::Text(t) => t,
        _ => return fail(location, "internal: not a text literal"),
    };
    let invalid = || BindError {
        location,
        message: format!("invalid syntax for type {target}: {text}"),
    };
    let value = match target {
        // The server's own interval input: before 17 it refuses `infinity` (column texts are
        // read with 17's, since a server before 17 never sends one).
        Type::Scalar(Scalar::Interval) => {
            Value::Interval(Interval::parse_in(&text, dialect).map_err(|_| invalid())?)
        }
        Type::Array(Scalar::Interval) => Value::Array(Arc::new(
            array_text::parse_array(&text, |e| {
                Interval::parse_in(e, dialect).map(Value::Interval)
            })
            .map_err(|_| invalid())?,
        )),
        Type::Scalar(s) => parse_scalar(Cow::Borrowed(text.as_ref()), *s)
            .map(Value::into_owned)
            .map_err(|_| invalid())?,
        Type::Array(s) => parse_array(&text, *s).map_err(|_| invalid())?,
        Type::Unknown | Type::Enum(_) => Value::Text(text.clone()),
        Type::Opaque(name) => {
            return fail(
                location,
                format!("ampere cannot compare values of type {name}"),
            )
        }
    };
    Ok(Expr::Const {
        value,
        ty: target.clone(),
    })
}

/// A literal constant: integers as `int4`, `int8` or `numeric` by size, decimals as
/// `numeric`, strings and `NULL` untyped, as Postgres's parser types them.
fn constant(c: &protobuf::AConst) -> Result<Bound> {
    let location = c.location;
    let expr = match (&c.val, c.isnull) {
        (_, true) | (None, _) => unknown(None),
        (Some(a_const::Val::Ival(i)), _) => Expr::Const {
            value: Value::Int(i64::from(i.ival)),
            ty: Type::Scalar(Scalar::Int4),
        },
        (Some(a_const::Val::Fval(f)), _) => number_literal(&f.fval, location)?,
        (Some(a_const::Val::Boolval(b)), _) => Expr::Const {
            value: Value::Bool(b.boolval),
            ty: Type::Scalar(Scalar::Bool),
        },
        (Some(a_const::Val::Sval(s)), _) => unknown(Some(s.sval.clone())),
        (Some(a_const::Val::Bsval(_)), _) => {
            return fail(location, "BitString values are not supported")
        }
    };
    Ok(Bound {
        expr,
        location,
        param: None,
    })
}

/// A numeric literal Postgres's lexer did not type `int4`: `int8` when it is an integer that
/// fits, else `numeric`.
fn number_literal(text: &str, location: i32) -> Result<Expr> {
    // The parser folds a leading minus into the literal (`-2147483648` is an int4).
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            let ty = if i32::try_from(i).is_ok() {
                Scalar::Int4
            } else {
                Scalar::Int8
            };
            return Ok(Expr::Const {
                value: Value::Int(i),
                ty: Type::Scalar(ty),
            });
        }
    }
    let value = Numeric::parse(text).map_err(|e| BindError {
        location,
        message: e.to_string(),
    })?;
    Ok(Expr::Const {
        value: Value::Numeric(value),
        ty: Type::Scalar(Scalar::Numeric),
    })
}

/// Evaluates `expr` now when it reads no column (constant folding), after Postgres's own
/// simplifications (`eval_const_expressions`): the rendered SQL is planned with them, so an
/// operand they drop is never evaluated by Postgres and must not be by ampere either.
fn fold(expr: Expr, location: i32) -> Result<Bound> {
    let expr = simplify(expr);
    let expr = if expr.is_constant() && !matches!(expr, Expr::Const { .. }) {
        let ty = expr.ty();
        match eval::evaluate_constant(&expr) {
            Ok(value) => Expr::Const { value, ty },
            Err(error) => return fail(location, error.to_string()),
        }
    } else {
        expr
    };
    Ok(Bound {
        expr,
        location,
        param: None,
    })
}

/// Whether the expression as written references a column (Postgres's `contain_vars_of_level`).
fn reads_column(node: &protobuf::Node) -> bool {
    node.node.as_ref().is_some_and(|n| {
        n.nodes()
            .iter()
            .any(|(n, ..)| matches!(n, ampere_pg_parse::NodeRef::ColumnRef(_)))
    })
}

/// The common type of an IN list's left side and constant items (`select_common_type`):
/// unknowns take the others' type, all unknown is text; `None` when the types do not unify.
fn in_list_type(types: impl Iterator<Item = Type>) -> Option<Type> {
    let mut common = Type::Unknown;
    for ty in types {
        common = match (&common, &ty) {
            (Type::Unknown, _) => ty,
            (_, Type::Unknown) => common,
            _ => union_type(&common, &ty)?,
        };
    }
    Some(if common == Type::Unknown {
        Type::Scalar(Scalar::Text)
    } else {
        common
    })
}

/// Postgres's simplifications of constant operands: `AND` with a false constant is false and
/// drops true ones (`OR` dually); a strict operator or cast with a NULL constant operand is
/// NULL; `COALESCE` drops NULL constants and stops at the first non-NULL constant.
fn simplify(expr: Expr) -> Expr {
    let is_null = |e: &Expr| {
        matches!(
            e,
            Expr::Const {
                value: Value::Null,
                ..
            }
        )
    };
    match expr {
        Expr::And(args) => junction(args, false),
        Expr::Or(args) => junction(args, true),
        Expr::Coalesce { args, ty } => {
            let mut kept = Vec::with_capacity(args.len());
            for arg in args {
                if is_null(&arg) {
                    continue;
                }
                let stops = matches!(arg, Expr::Const { .. });
                kept.push(arg);
                if stops {
                    break;
                }
            }
            match kept.len() {
                0 => Expr::Const {
                    value: Value::Null,
                    ty,
                },
                1 => kept.pop().expect("invariant: one argument"),
                _ => Expr::Coalesce { args: kept, ty },
            }
        }
        strict @ (Expr::Not(_)
        | Expr::Compare { .. }
        | Expr::Arith { .. }
        | Expr::Negate { .. }
        | Expr::Unary { .. }
        | Expr::ArrayNdims(_)
        | Expr::DateTimeArith { .. }
        | Expr::IntervalFunc { .. }
        | Expr::Concat { .. }
        | Expr::Like { .. }
        | Expr::Cast { .. }
        | Expr::TextFunc { .. }
        | Expr::ArrayOp { .. })
            if strict.children().into_iter().any(is_null) =>
        {
            Expr::Const {
                value: Value::Null,
                ty: strict.ty(),
            }
        }
        other => other,
    }
}

/// `AND` (`is_or` false) or `OR` with its constant operands simplified.
fn junction(args: Vec<Expr>, is_or: bool) -> Expr {
    let mut kept = Vec::with_capacity(args.len());
    for arg in args {
        match arg {
            Expr::Const {
                value: Value::Bool(b),
                ..
            } if b == is_or => {
                return Expr::Const {
                    value: Value::Bool(is_or),
                    ty: Type::Scalar(Scalar::Bool),
                }
            }
            Expr::Const {
                value: Value::Bool(_),
                ..
            } => {}
            other => kept.push(other),
        }
    }
    match kept.len() {
        0 => Expr::Const {
            value: Value::Bool(!is_or),
            ty: Type::Scalar(Scalar::Bool),
        },
        1 => kept.pop().expect("invariant: one operand"),
        _ if is_or => Expr::Or(kept),
        _ => Expr::And(kept),
    }
}

/// The common type two known types are compared or combined in, if any.
pub(crate) fn common_type(a: &Type, b: &Type) -> Option<Type> {
    if a == b {
        return Some(a.clone());
    }
    if is_time_to_interval(a, b) || is_time_to_interval(b, a) {
        // Operator resolution casts a time to interval (`iv = t` compares intervals); the
        // UNION rules (`COALESCE`) do not, the two being of different categories.
        return Some(Type::Scalar(Scalar::Interval));
    }
    match (a, b) {
        (Type::Scalar(x), Type::Scalar(y)) => common_scalar(*x, *y).map(Type::Scalar),
        (Type::Array(x), Type::Array(y)) => common_scalar(*x, *y).map(Type::Array),
        _ => None,
    }
}

/// The type `GREATEST`, `LEAST`, `COALESCE` and `ARRAY[…]` resolve two types to, by
/// Postgres's `select_common_type`: the type the other casts to implicitly (for numbers, the
/// higher of int2 < int4 < int8 < numeric < float4 < float8; `LEAST(int8, float4)` is float4,
/// where an operator on the two would compare in float8).
fn union_type(a: &Type, b: &Type) -> Option<Type> {
    if implicit_cast(b, a) {
        Some(a.clone())
    } else if implicit_cast(a, b) {
        Some(b.clone())
    } else {
        None
    }
}

fn common_scalar(x: Scalar, y: Scalar) -> Option<Scalar> {
    if x.is_number() && y.is_number() {
        // Postgres's operator resolution prefers float8 (the category's preferred type) as
        // soon as a float4 meets another type: `f4 = 0.1` compares in double precision.
        if x != y && (x == Scalar::Float4 || y == Scalar::Float4) {
            return Some(Scalar::Float8);
        }
        return Some(if x.number_rank() >= y.number_rank() {
            x
        } else {
            y
        });
    }
    if x.is_string() && y.is_string() {
        // Operator resolution: text, the category's preferred type, wins over the others
        // (`bp = txt` compares text); bpchar wins over varchar (`bp >= vc` compares bpchar).
        return Some(if x == Scalar::Text || y == Scalar::Text {
            Scalar::Text
        } else if x == Scalar::Bpchar || y == Scalar::Bpchar {
            Scalar::Bpchar
        } else {
            Scalar::Varchar
        });
    }
    let time_rank = |s: Scalar| match s {
        Scalar::Date => 1,
        Scalar::Timestamp => 2,
        Scalar::Timestamptz => 3,
        _ => 0,
    };
    let (rx, ry) = (time_rank(x), time_rank(y));
    if rx > 0 && ry > 0 {
        return Some(if rx >= ry { x } else { y });
    }
    None
}

/// Whether Postgres casts `from` to `to` implicitly (and ampere computes that cast exactly).
fn implicit_cast(from: &Type, to: &Type) -> bool {
    match (from, to) {
        (Type::Scalar(x), Type::Scalar(y)) | (Type::Array(x), Type::Array(y)) => {
            implicit_scalar(*x, *y)
        }
        _ => false,
    }
}

/// Postgres's implicit casts between the scalars ampere evaluates.
fn implicit_scalar(from: Scalar, to: Scalar) -> bool {
    if from == to {
        return true;
    }
    if from.is_number() && to.is_number() {
        return from.number_rank() < to.number_rank();
    }
    if from.is_string() && to.is_string() {
        return true;
    }
    matches!(
        (from, to),
        (Scalar::Date, Scalar::Timestamp | Scalar::Timestamptz)
            | (Scalar::Timestamp, Scalar::Timestamptz)
    )
}

/// Postgres's implicit cast from `time` to `interval`, which operator and function
/// resolution use (`ts + t`, `iv < t`) but `COALESCE`/`GREATEST` typing does not.
fn is_time_to_interval(from: &Type, to: &Type) -> bool {
    *from == Type::Scalar(Scalar::Time) && *to == Type::Scalar(Scalar::Interval)
}

/// The date/time operator Postgres 15 resolves `left name right` to, from its operator
/// catalog and resolution rules (checked against Postgres): `None` where it finds none or
/// says "operator is not unique" (`date + unknown`). An unknown operand of `-` whose other
/// operand is a date, time or timestamp is read as that type (`ts - '1 day'` fails).
fn datetime_op(name: &str, left: &Type, right: &Type) -> Option<DateTimeOp> {
    use DateTimeOp as O;
    use Operand::{Int, Iv, Number, Ts, Tz, D, T, U};
    let (l, r) = (Operand::of(left)?, Operand::of(right)?);
    let number = |k: Operand| matches!(k, Int | Number | U);
    Some(match (name, l, r) {
        ("+", D, Int) => O::DatePlInt,
        ("+", Int, D) => O::IntPlDate,
        ("+", D, T) => O::DatePlTime,
        ("+", T, D) => O::TimePlDate,
        ("+", D, Iv) => O::DatePlInterval,
        ("+", Iv, D) => O::IntervalPlDate,
        ("+", T, Iv | U) => O::TimePlInterval,
        ("+", Iv | U, T) => O::IntervalPlTime,
        ("+", Ts, T | Iv | U) => O::TimestampPlInterval,
        ("+", T | Iv | U, Ts) => O::IntervalPlTimestamp,
        ("+", Tz, T | Iv | U) => O::TimestamptzPlInterval,
        ("+", T | Iv | U, Tz) => O::IntervalPlTimestamptz,
        ("+", Iv, Iv | U) | ("+", U, Iv) => O::IntervalPl,
        ("-", D, D | U) | ("-", U, D) => O::DateMi,
        ("-", D, Int) => O::DateMiInt,
        ("-", D, T | Iv) => O::DateMiInterval,
        ("-", D | Ts, Ts) | ("-", Ts, D | U) | ("-", U, Ts) => O::TimestampMi,
        ("-", D | Ts | Tz, Tz) | ("-", Tz, D | Ts | U) | ("-", U, Tz) => O::TimestamptzMi,
        ("-", T, T | U) | ("-", U, T) => O::TimeMiTime,
        ("-", T, Iv) => O::TimeMiInterval,
        ("-", Ts, T | Iv) => O::TimestampMiInterval,
        ("-", Tz, T | Iv) => O::TimestamptzMiInterval,
        ("-", Iv, T | Iv | U) | ("-", U, Iv) => O::IntervalMi,
        ("*", T | Iv, r) if number(r) => O::IntervalMul,
        ("*", l, T | Iv) if number(l) => O::Float8MulInterval,
        ("/", T | Iv, r) if number(r) => O::IntervalDiv,
        _ => return None,
    })
}

/// How an operand takes part in date/time operator resolution.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operand {
    /// `date`.
    D,
    /// `time`.
    T,
    /// `timestamp`.
    Ts,
    /// `timestamptz`.
    Tz,
    /// `interval`.
    Iv,
    /// `int2`/`int4` (cast implicitly to int4).
    Int,
    /// Another number (cast implicitly to float8, never to int4).
    Number,
    /// An unknown literal.
    U,
}

impl Operand {
    fn of(ty: &Type) -> Option<Self> {
        Some(match ty {
            Type::Unknown => Self::U,
            Type::Scalar(s) => match s {
                Scalar::Date => Self::D,
                Scalar::Time => Self::T,
                Scalar::Timestamp => Self::Ts,
                Scalar::Timestamptz => Self::Tz,
                Scalar::Interval => Self::Iv,
                Scalar::Int2 | Scalar::Int4 => Self::Int,
                s if s.is_number() => Self::Number,
                _ => return None,
            },
            _ => None?,
        })
    }
}

fn is_texty(ty: &Type) -> bool {
    matches!(ty, Type::Unknown) || matches!(ty, Type::Scalar(s) if s.is_string())
}

fn cmp_op(name: &str) -> Option<CmpOp> {
    Some(match name {
        "=" => CmpOp::Eq,
        "<>" | "!=" => CmpOp::Ne,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        _ => return None,
    })
}

fn bool_test_name(test: BoolTest) -> &'static str {
    match test {
        BoolTest::IsTrue => "IS TRUE",
        BoolTest::IsNotTrue => "IS NOT TRUE",
        BoolTest::IsFalse => "IS FALSE",
        BoolTest::IsNotFalse => "IS NOT FALSE",
        BoolTest::IsUnknown => "IS UNKNOWN",
        BoolTest::IsNotUnknown => "IS NOT UNKNOWN",
    }
}

/// The pattern and the `ESCAPE` argument of a LIKE's right side (`like_escape(p, e)`).
fn like_parts(rexpr: &protobuf::Node) -> (&protobuf::Node, Option<&protobuf::Node>) {
    if let Some(NodeEnum::FuncCall(f)) = rexpr.node.as_ref() {
        let names: Vec<&str> = f.funcname.iter().map(node_str).collect();
        if names == ["pg_catalog", "like_escape"] && f.args.len() == 2 {
            return (&f.args[0], Some(&f.args[1]));
        }
    }
    (rexpr, None)
}

/// The type a `::T` / `CAST(… AS T)` names.
fn cast_target(name: Option<&protobuf::TypeName>, location: i32) -> Result<Type> {
    let Some(name) = name else {
        return fail(location, "cast without a type");
    };
    let names: Vec<&str> = name.names.iter().map(node_str).collect();
    let base = match names.as_slice() {
        ["pg_catalog", n] | [n] => *n,
        _ => "",
    };
    let shown = names.join(".");
    if !name.typmods.is_empty() {
        return fail(
            name.location,
            format!("ampere does not support type modifiers in casts ({shown}(…))"),
        );
    }
    let scalar = match base {
        "text" => Some(Scalar::Text),
        "varchar" => Some(Scalar::Varchar),
        "bpchar" => Some(Scalar::Bpchar),
        "name" | "char" => None,
        other => Scalar::from_typname(other),
    };
    let Some(scalar) = scalar else {
        return fail(name.location, format!("unsupported type {shown}"));
    };
    Ok(if name.array_bounds.is_empty() {
        Type::Scalar(scalar)
    } else {
        Type::Array(scalar)
    })
}

fn required(node: Option<&protobuf::Node>, location: i32) -> Result<&protobuf::Node> {
    node.ok_or(BindError {
        location,
        message: "incomplete expression".into(),
    })
}

/// The text of a `String` node (identifiers, operator and function names).
pub(crate) fn node_str(node: &protobuf::Node) -> &str {
    match node.node.as_ref() {
        Some(NodeEnum::String(s)) => &s.sval,
        Some(NodeEnum::AStar(_)) => "*",
        _ => "",
    }
}

/// An identifier as Electric shows it in messages: bare when lower-case, else quoted.
fn show_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Postgres's name of a parse node (`CaseExpr`), for "… is not supported" messages.
fn node_name(node: &NodeEnum) -> String {
    let debug = format!("{node:?}");
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("expression")
        .to_owned()
}

/// Where a node the binder refuses starts, for the nodes that say.
fn location_of(node: &NodeEnum) -> i32 {
    match node {
        NodeEnum::CaseExpr(n) => n.location,
        NodeEnum::SqlvalueFunction(n) => n.location,
        NodeEnum::RowExpr(n) => n.location,
        NodeEnum::CollateClause(n) => n.location,
        NodeEnum::GroupingFunc(n) => n.location,
        NodeEnum::XmlExpr(n) => n.location,
        _ => 0,
    }
}
