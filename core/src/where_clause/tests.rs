//! The where-clause pipeline on a fixed table: error texts, canonical forms, rendered SQL and
//! evaluation. Agreement with Postgres itself is checked by io-real's differential test.

use super::*;
use crate::pgoutput::Oid;
use crate::shape::{ColumnSchema, RelationName, ServerVersion};

fn column(name: &str, type_oid: u32, typname: &str) -> ColumnSchema {
    ColumnSchema {
        name: name.into(),
        type_oid,
        typname: typname.into(),
        dims: 0,
        not_null: false,
        pk_index: None,
        modifiers: vec![],
        is_enum: false,
    }
}

/// `items(id int8 pk, n int4, title text, price numeric, tags text[], code bpchar, doc jsonb)`.
fn table() -> TableSchema {
    let mut id = column("id", 20, "int8");
    id.pk_index = Some(0);
    TableSchema {
        server_version: ServerVersion::PG_15,
        oid: Oid(16_384),
        relation: RelationName {
            schema: "public".into(),
            table: "items".into(),
        },
        columns: vec![
            id,
            column("n", 23, "int4"),
            column("title", 25, "text"),
            column("price", 1700, "numeric"),
            column("tags", 1009, "text"),
            column("code", 1042, "bpchar"),
            column("doc", 3802, "jsonb"),
            column("Mixed", 16, "bool"),
            ColumnSchema {
                is_enum: true,
                ..column("mood", 70_000, "mood")
            },
            column("d", 1082, "date"),
            column("tm", 1083, "time"),
            column("ts", 1114, "timestamp"),
            column("tz", 1184, "timestamptz"),
            column("iv", 1186, "interval"),
        ],
    }
}

fn compile(text: &str) -> Result<WhereClause, WhereError> {
    WhereClause::compile(text, &Params::new(), &table())
}

fn error(text: &str) -> String {
    compile(text).expect_err(text).to_string()
}

fn with_params(text: &str, params: &[(u32, &str)]) -> Result<WhereClause, WhereError> {
    let params: Params = params.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    WhereClause::compile(text, &params, &table())
}

/// A row of `table()` from `(column index, text)` pairs; other columns NULL.
fn row(values: &[(usize, &str)]) -> Vec<Option<String>> {
    let mut row = vec![None; table().columns.len()];
    for (i, v) in values {
        row[*i] = Some((*v).to_owned());
    }
    row
}

#[test]
fn a_syntax_error_names_postgres_message_at_the_wrapped_position() {
    assert_eq!(
        error("1 x 1"),
        "At location 17: syntax error at or near \"x\""
    );
    assert_eq!(
        error("n = "),
        "At location 19: syntax error at end of input"
    );
}

#[test]
fn statement_splits_and_trailing_clauses_are_refused() {
    assert_eq!(
        error("n = 1; DROP TABLE items"),
        "unescaped \";\" causing statement split"
    );
    assert_eq!(
        error("n = 1 ORDER BY n"),
        "malformed query ending with SQL clauses"
    );
    assert_eq!(
        error("n = 1 GROUP BY n"),
        "malformed query ending with SQL clauses"
    );
    assert_eq!(
        error("n = 1 LIMIT 1"),
        "malformed query ending with SQL clauses"
    );
}

#[test]
fn hostile_where_clauses_are_refused_before_any_sql_exists() {
    assert!(error("1=1) OR (1=1").contains("syntax error"));
    assert!(error("pg_sleep(10) IS NULL").contains("unknown or unsupported function pg_sleep/1"));
    assert!(error("n IN (SELECT 1)").contains("subqueries are not supported"));
    assert!(error("(SELECT true)").contains("subqueries are not supported"));
    assert_eq!(
        error("n = 1 -- and more"),
        "At location 6: comments are not allowed in a where clause"
    );
    assert!(error("n = 1 /* x */").contains("comments are not allowed"));
}

#[test]
fn semantic_errors_name_their_position_in_the_where_text() {
    assert_eq!(error("nope = 1"), "At location 0: unknown reference nope");
    assert_eq!(
        error("n = 1 AND items.n = 2"),
        "At location 10: unknown reference items.n"
    );
    assert_eq!(
        error("n"),
        "At location 0: WHERE clause must return a boolean"
    );
    assert_eq!(
        error("n = 'x'"),
        "At location 4: invalid syntax for type int4: x"
    );
    assert_eq!(error("n ~ 'x'"), "At location 2: unknown binary operator ~");
    assert_eq!(
        error("doc = 'x'"),
        "At location 6: ampere cannot compare values of type jsonb"
    );
    assert_eq!(
        error("CASE WHEN n = 1 THEN true END"),
        "At location 0: CaseExpr is not supported in this context"
    );
    assert_eq!(
        error("count(*) > 1"),
        "At location 0: aggregation is not supported in this context"
    );
    assert_eq!(
        error("n::money = 1"),
        "At location 3: unsupported type money"
    );
}

#[test]
fn params_are_typed_by_context_and_must_be_provided_and_used() {
    assert!(with_params("n = $1 AND title = $2", &[(1, "5"), (2, "a")]).is_ok());
    assert_eq!(
        with_params("n = $1", &[]).unwrap_err().to_string(),
        "At location 4: parameter $1 was not provided"
    );
    assert_eq!(
        with_params("n = $1", &[(1, "5"), (2, "x")])
            .unwrap_err()
            .to_string(),
        "At location 0: parameter value for $2 was not used"
    );
    assert_eq!(
        with_params("n = $1 AND title = $1", &[(1, "5")])
            .unwrap_err()
            .to_string(),
        "At location 19: type conflict for $1: int4 and text"
    );
}

#[test]
fn the_canonical_text_inlines_params_and_normalises_layout() {
    let a = WhereClause::canonicalize(
        "n=$1   and TITLE ilike $2",
        &[(1, "5".into()), (2, "%a'b%".into())].into(),
    )
    .unwrap();
    let b =
        WhereClause::canonicalize("(n = '5') AND (title ILIKE '%a''b%')", &Params::new()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, "n = '5' AND title ILIKE '%a''b%'");
}

#[test]
fn rendered_sql_types_every_constant_and_casts_explicitly() {
    let clause = compile("n > 1.5 AND title < 'b' AND price = 2").unwrap();
    assert_eq!(
        clause.to_sql(),
        "((CAST(\"n\" AS pg_catalog.numeric) > '1.5'::pg_catalog.numeric) AND (\"title\" COLLATE \"C\" \
         < 'b'::pg_catalog.text) AND (\"price\" = '2'::pg_catalog.numeric))"
    );
    let quoted = compile("\"Mixed\" AND title = 'it''s \\'").unwrap();
    assert_eq!(
        quoted.to_sql(),
        "(\"Mixed\" AND (\"title\" = E'it''s \\\\'::pg_catalog.text))"
    );
}

#[test]
fn evaluation_uses_three_valued_logic() {
    let clause = compile("n = 1 OR title = 'a'").unwrap();
    assert_eq!(clause.evaluate(&row(&[(1, "1")])), Ok(Some(true)));
    assert_eq!(clause.evaluate(&row(&[(1, "2")])), Ok(None));
    assert_eq!(
        clause.evaluate(&row(&[(1, "2"), (2, "b")])),
        Ok(Some(false))
    );
    let negated = compile("NOT (n IN (1, NULL))").unwrap();
    assert_eq!(negated.evaluate(&row(&[(1, "2")])), Ok(None));
    assert_eq!(negated.evaluate(&row(&[(1, "1")])), Ok(Some(false)));
}

#[test]
fn numeric_comparisons_are_exact() {
    let clause = compile("price = 0.3").unwrap();
    assert!(clause.matches(&row(&[(3, "0.30")])));
    assert!(!clause.matches(&row(&[(3, "0.30000000000000000001")])));
    let sum = compile("price + 0.1 = 0.3").unwrap();
    assert!(sum.matches(&row(&[(3, "0.2")])));
}

#[test]
fn integer_literals_beyond_int4_are_int8_then_numeric() {
    assert!(compile("id = 3000000000")
        .unwrap()
        .matches(&row(&[(0, "3000000000")])));
    assert!(compile("price = 99999999999999999999")
        .unwrap()
        .matches(&row(&[(3, "99999999999999999999.0")])));
    assert!(compile("price < 1e3").unwrap().matches(&row(&[(3, "999")])));
    assert!(compile("price > .5").unwrap().matches(&row(&[(3, "0.6")])));
}

#[test]
fn like_and_ilike_follow_postgres_with_escapes() {
    let like = compile("title LIKE 'a\\%%'").unwrap();
    assert!(like.matches(&row(&[(2, "a%bc")])));
    assert!(!like.matches(&row(&[(2, "abc")])));
    let ilike = compile("title ILIKE '%XY%'").unwrap();
    assert!(ilike.matches(&row(&[(2, "the xylophone")])));
    let custom = compile("title LIKE 'a!_b' ESCAPE '!'").unwrap();
    assert!(custom.matches(&row(&[(2, "a_b")])));
    assert!(!custom.matches(&row(&[(2, "axb")])));
}

#[test]
fn bpchar_values_compare_without_trailing_blanks() {
    let clause = compile("code = 'ab'").unwrap();
    assert!(clause.matches(&row(&[(5, "ab   ")])));
    assert_eq!(clause.to_sql(), "(\"code\" = 'ab'::pg_catalog.bpchar)");
    // Found by the differential test: a constant's own trailing blanks do not count either,
    // while LIKE sees the padding (Postgres's bpcharlike).
    assert!(compile("code = 'ab '")
        .unwrap()
        .matches(&row(&[(5, "ab   ")])));
    assert!(compile("code LIKE 'ab   '")
        .unwrap()
        .matches(&row(&[(5, "ab   ")])));
    assert!(!compile("code LIKE 'ab'")
        .unwrap()
        .matches(&row(&[(5, "ab   ")])));
}

#[test]
fn arrays_support_any_all_and_containment() {
    let any = compile("'b' = ANY(tags)").unwrap();
    assert!(any.matches(&row(&[(4, "{a,b}")])));
    assert!(!any.matches(&row(&[(4, "{a,c}")])));
    assert_eq!(any.evaluate(&row(&[(4, "{a,NULL}")])), Ok(None));
    let contains = compile("tags @> '{a,b}'").unwrap();
    assert!(contains.matches(&row(&[(4, "{b,c,a}")])));
    assert!(!contains.matches(&row(&[(4, "{b,c}")])));
    let overlaps = compile("tags && ARRAY['x', 'c']").unwrap();
    assert!(overlaps.matches(&row(&[(4, "{b,c}")])));
    let all = compile("n > ALL('{1,2}')").unwrap();
    assert!(all.matches(&row(&[(1, "3")])));
    assert!(!all.matches(&row(&[(1, "2")])));
}

#[test]
fn evaluation_errors_leave_the_row_out_and_constant_errors_are_refused() {
    let clause = compile("10 / n > 1").unwrap();
    assert_eq!(
        clause.evaluate(&row(&[(1, "0")])),
        Err(EvalError("division by zero".into()))
    );
    assert!(!clause.matches(&row(&[(1, "0")])));
    assert_eq!(error("n > 1 / 0"), "At location 6: division by zero");
    assert_eq!(
        error("n > 2147483647 + 1"),
        "At location 15: integer out of range"
    );
}

#[test]
fn constant_where_clauses_fold() {
    assert!(compile("true").unwrap().matches(&row(&[])));
    assert!(!compile("1 = 2").unwrap().matches(&row(&[])));
    assert_eq!(
        compile("1 < 2 AND n = 1").unwrap().to_sql(),
        "(\"n\" = '1'::pg_catalog.int4)"
    );
}

#[test]
fn the_clause_names_the_columns_it_reads() {
    assert_eq!(
        compile("n = 1 AND (title = 'a' OR n = 2)")
            .unwrap()
            .columns(),
        &[1, 2]
    );
}

#[test]
fn enum_columns_compare_by_label_at_snapshot_and_replication_time_alike() {
    let clause = compile("mood = 'happy' OR mood IN ('ok')").unwrap();
    assert!(clause.matches(&row(&[(8, "happy")])));
    assert!(clause.matches(&row(&[(8, "ok")])));
    assert!(!clause.matches(&row(&[(8, "sad")])));
    assert_eq!(
        clause.to_sql(),
        "((\"mood\"::text = 'happy'::pg_catalog.text) OR (\"mood\"::text = 'ok'::pg_catalog.text))"
    );
    assert!(compile("mood::text < 'b'")
        .unwrap()
        .matches(&row(&[(8, "a")])));
    assert!(error("mood < 'b'").contains("enum values with = and <> only"));
}

#[test]
fn literals_and_float_mixing_type_as_postgres_types_them() {
    // Found by the differential test.
    let min = compile("n = -2147483648").unwrap();
    assert!(
        min.to_sql().contains("'-2147483648'::pg_catalog.int4"),
        "{}",
        min.to_sql()
    );
    assert!(error("n = - '1'").contains("Could not select an operator overload"));
    let table = table();
    let mut with_float = table.clone();
    with_float.columns.push(column("f4", 700, "float4"));
    let f4 = WhereClause::compile("f4 = 0.1", &Params::new(), &with_float).unwrap();
    assert!(f4.to_sql().contains("pg_catalog.float8"), "{}", f4.to_sql());
    let mut values = row(&[]);
    values.push(Some("0.1".into()));
    assert!(
        !f4.matches(&values),
        "0.1::float4 widened is not 0.1::float8"
    );
}

#[test]
fn nan_divided_by_zero_is_nan_and_runtime_date_input_is_refused() {
    let table = table();
    let mut with_float = table.clone();
    with_float.columns.push(column("f8", 701, "float8"));
    let clause = WhereClause::compile("(f8 / 0) IS NULL", &Params::new(), &with_float).unwrap();
    let mut values = row(&[]);
    values.push(Some("NaN".into()));
    assert_eq!(clause.evaluate(&values), Ok(Some(false)));
    assert!(error("title::date IS NULL").contains("unknown cast from type text to type date"));
    assert!(compile("'2024-01-01'::date IS NOT NULL").is_ok());
}

#[test]
fn constant_operands_simplify_as_postgres_plans_them() {
    // Found by the differential test: Postgres folds `x OR true`, `x AND false` and strict
    // operators with a NULL constant without evaluating `x`; so must ampere.
    let or_true = compile("(n + 2147483647 > 0) OR true").unwrap();
    assert!(or_true.matches(&row(&[(1, "5")])));
    let and_false = compile("(10 / n > 0) AND false").unwrap();
    assert_eq!(and_false.evaluate(&row(&[(1, "0")])), Ok(Some(false)));
    let strict_null = compile("(NULL::int4 + 10 / n) IS NULL").unwrap();
    assert!(strict_null.matches(&row(&[(1, "0")])));
    let coalesce = compile("COALESCE(NULL, n, 3, n) = 1").unwrap();
    assert_eq!(
        coalesce.to_sql().matches("\"n\"").count(),
        1,
        "{}",
        coalesce.to_sql()
    );
}

#[test]
fn date_time_arithmetic_types_and_renders_as_postgres_resolves_it() {
    for (text, sql) in [
        (
            "d + n = '2000-01-02'",
            "((\"d\" + \"n\") = '2000-01-02'::pg_catalog.date)",
        ),
        ("d - d > 3", "((\"d\" - \"d\") > '3'::pg_catalog.int4)"),
        (
            "ts + '1 day' > ts",
            "((\"ts\" + 'P1D'::pg_catalog.interval) > \"ts\")",
        ),
        (
            "ts + tm > ts",
            "((\"ts\" + CAST(\"tm\" AS pg_catalog.interval)) > \"ts\")",
        ),
        (
            "d - ts < iv",
            "((CAST(\"d\" AS pg_catalog.timestamp) - \"ts\") < \"iv\")",
        ),
        (
            "iv * 2 = '2 days'",
            "((\"iv\" * '2'::pg_catalog.float8) = 'P2D'::pg_catalog.interval)",
        ),
        (
            "-iv < tm",
            "((- \"iv\") < CAST(\"tm\" AS pg_catalog.interval))",
        ),
        (
            "justify_days(iv) = '1 mon'",
            "(justify_days(\"iv\") = 'P1M'::pg_catalog.interval)",
        ),
    ] {
        assert_eq!(compile(text).expect(text).to_sql(), sql, "{text}");
    }
}

#[test]
fn ambiguous_or_missing_date_time_operators_are_refused_as_postgres_refuses_them() {
    for text in [
        "d + '1 day' > ts",
        "'1' + d > d",
        "tm + tm > tm",
        "d + 1::int8 > d",
        "iv - d > ts",
        "iv * iv > iv",
        "coalesce(tm, iv) > iv",
        "+iv > iv",
    ] {
        assert!(compile(text).is_err(), "{text}");
    }
    assert!(error("ts - '1 day' > ts").contains("timestamp"));
    assert!(error("d - '1 day' > 0").contains("date"));
}

#[test]
fn date_time_arithmetic_evaluates_as_postgres_computes_it() {
    let at = |d: &str, tm: &str, ts: &str, iv: &str| {
        let mut r = vec![None; 14];
        r[9] = Some(d.to_owned());
        r[10] = Some(tm.to_owned());
        r[11] = Some(ts.to_owned());
        r[12] = Some(format!("{ts}+00"));
        r[13] = Some(iv.to_owned());
        r
    };
    let row = at("2000-01-31", "23:00:00", "2000-01-31 12:00:00", "P1M1DT2H");
    for (text, expected) in [
        ("d + iv = '2000-03-01 02:00'", Some(true)),
        ("ts + iv = '2000-03-01 14:00'", Some(true)),
        ("tz - iv = '1999-12-30 10:00+00'", Some(true)),
        ("tm + iv = '01:00'", Some(true)),
        ("d + tm = '2000-01-31 23:00'", Some(true)),
        ("ts - d = '12:00'", Some(true)),
        ("iv / 2 = '15 days 13:00:00'", Some(true)),
        ("iv * 0.5 = '15 days 13:00:00'", Some(true)),
        ("iv = '1 mon 1 day 2 hours'", Some(true)),
        ("iv > '31 days'", Some(true)),
        ("tm - tm = '0'", Some(true)),
        ("justify_hours('25 hours') = '1 day 1 hour'", Some(true)),
        ("(iv)::text = 'P1M1DT2H'", Some(true)),
    ] {
        let clause = compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(clause.evaluate(&row), Ok(expected), "{text}");
    }
    let far = at("5874897-12-31", "00:00:00", "294276-12-31 23:59:59", "P1D");
    assert!(compile("d + 1 > d")
        .expect("date + int4")
        .evaluate(&far)
        .is_err());
    assert!(compile("ts + iv > ts")
        .expect("ts + iv")
        .evaluate(&far)
        .is_err());
}

#[test]
fn interval_text_input_is_refused_for_columns() {
    assert!(compile("title::interval > iv").is_err());
    assert!(compile("'1 day'::interval < iv").is_ok());
}

#[test]
fn in_lists_type_their_constants_together_as_postgres_does() {
    // Found by the differential test: `bp NOT IN ('abc '::text, '', vc)` compares the
    // constants as bpchar (blank-insensitive), the column item one by one.
    let clause = compile("code IN ('ab '::text, 'zz')").unwrap();
    assert!(clause.matches(&row(&[(5, "ab   ")])));
    assert!(
        clause.to_sql().contains("pg_catalog.bpchar"),
        "{}",
        clause.to_sql()
    );
    let single = compile("code IN ('ab '::text)").unwrap();
    assert!(
        !single.matches(&row(&[(5, "ab   ")])),
        "one constant compares as text"
    );
}

#[test]
fn in_list_items_that_read_columns_compare_one_by_one_even_when_they_fold() {
    // Found by the differential test: `COALESCE(0.3, price)` folds to 0.3, but Postgres sorts
    // IN items before folding, so it compares as numeric, not in the constants' float4.
    let mut with_float = table();
    with_float.columns.push(column("f4", 700, "float4"));
    let clause = WhereClause::compile(
        "price IN (1, '3.4e38'::float4, COALESCE(0.3, price))",
        &Params::new(),
        &with_float,
    )
    .unwrap();
    assert!(clause.matches(&row(&[(3, "0.30")])));
}

#[test]
fn arrays_cast_to_their_text_form() {
    let clause = compile("tags::text = '{a,\"b c\",NULL}'").unwrap();
    assert!(clause.matches(&row(&[(4, "{a,\"b c\",NULL}")])));
}

#[test]
fn bit_operators_apply_to_integers_of_one_type_only() {
    let and = compile("(n & 6) = 4").unwrap();
    assert!(and.matches(&row(&[(1, "12")])));
    assert!(!and.matches(&row(&[(1, "3")])));
    assert!(compile("(n | 1) = 7").unwrap().matches(&row(&[(1, "6")])));
    assert!(compile("(n # 5) = 3").unwrap().matches(&row(&[(1, "6")])));
    assert!(compile("~ n = -7").unwrap().matches(&row(&[(1, "6")])));
    assert!(compile("(id & 4294967296) <> 0")
        .unwrap()
        .matches(&row(&[(0, "4294967296")])));
    assert_eq!(
        error("(price & 1) = 1"),
        "At location 7: Could not select an operator overload"
    );
    assert_eq!(
        error("~ price = 1"),
        "At location 0: Could not select an operator overload"
    );
}

#[test]
fn abs_and_square_root_follow_postgres_errors() {
    let abs = compile("@ n = 5").unwrap();
    assert!(abs.matches(&row(&[(1, "-5")])));
    assert_eq!(
        abs.evaluate(&row(&[(1, "-2147483648")])),
        Err(EvalError("integer out of range".into()))
    );
    assert!(compile("@ price = 1.50")
        .unwrap()
        .matches(&row(&[(3, "-1.5")])));
    let sqrt = compile("|/ n = 3").unwrap();
    assert!(sqrt.matches(&row(&[(1, "9")])));
    assert_eq!(
        sqrt.evaluate(&row(&[(1, "-9")])),
        Err(EvalError(
            "cannot take square root of a negative number".into()
        ))
    );
}

#[test]
fn power_is_float8_unless_an_operand_is_numeric() {
    let pow = compile("n ^ 2 = 81").unwrap();
    assert!(pow.matches(&row(&[(1, "9")])));
    assert!(pow.to_sql().contains("CAST(\"n\" AS pg_catalog.float8) ^"));
    assert_eq!(
        compile("n ^ -1 > 0").unwrap().evaluate(&row(&[(1, "0")])),
        Err(EvalError(
            "zero raised to a negative power is undefined".into()
        ))
    );
    assert_eq!(
        compile("n ^ 0.5 > 0").unwrap_err().to_string(),
        "At location 2: ampere does not support numeric ^ yet; cast an operand to float8"
    );
    assert_eq!(
        error("price ^ 2 > 0"),
        "At location 6: ampere does not support numeric ^ yet; cast an operand to float8"
    );
    assert_eq!(
        compile("n::float8 ^ 1000 > 0")
            .unwrap()
            .evaluate(&row(&[(1, "10")])),
        Err(EvalError("value out of range: overflow".into()))
    );
    assert!(compile("'NaN'::float8 ^ 0 = 1").unwrap().matches(&row(&[])));
}

#[test]
fn concat_prints_each_argument_with_its_output_function_and_skips_nulls() {
    let clause = compile("concat(\"Mixed\", code, n, NULL, tags) = 'tab  7{a,\"b c\"}'").unwrap();
    assert!(clause.matches(&row(&[(7, "t"), (5, "ab  "), (1, "7"), (4, "{a,\"b c\"}")])));
    assert_eq!(
        compile("concat(n) = ''").unwrap().evaluate(&row(&[])),
        Ok(Some(true)),
        "all NULL: the empty string"
    );
}

#[test]
fn array_ndims_counts_dimensions_and_is_null_for_an_empty_array() {
    let clause = compile("array_ndims(tags) = 2").unwrap();
    assert!(clause.matches(&row(&[(4, "{{a},{b}}")])));
    assert_eq!(clause.evaluate(&row(&[(4, "{}")])), Ok(None));
    assert_eq!(
        error("array_ndims(n) = 1"),
        "At location 0: Could not select a function overload for array_ndims(int4)"
    );
}

#[test]
fn an_array_constructor_under_a_cast_casts_each_element() {
    // Postgres pushes the cast into the constructor: `txt` keeps its blanks as text, where a
    // common type first would make it bpchar.
    let clause = compile("title = ANY(ARRAY[code, title]::text[])").unwrap();
    assert!(clause.matches(&row(&[(2, "ab "), (5, "x   ")])));
    assert!(compile("ARRAY[]::int4[] = '{}'")
        .unwrap()
        .matches(&row(&[])));
}

#[test]
fn numeric_division_is_postgres_exact_division_at_its_result_scale() {
    let third = compile("price / 3 = 0.33333333333333333333").unwrap();
    assert!(third.matches(&row(&[(3, "1")])));
    assert!(!third.matches(&row(&[(3, "1.0000000000000000000001")])));
    assert!(third
        .to_sql()
        .contains("(\"price\" / '3'::pg_catalog.numeric)"));
    assert!(compile("(10 / 2.0)::text = '5.0000000000000000'")
        .unwrap()
        .matches(&row(&[])));
    assert_eq!(
        compile("price / 0 > 1")
            .unwrap()
            .evaluate(&row(&[(3, "1")])),
        Err(EvalError("division by zero".into()))
    );
    assert_eq!(error("price > 1 / 0.0"), "At location 10: division by zero");
}

#[test]
fn floats_cast_to_numeric_through_their_fifteen_digit_text() {
    assert!(compile("0.1::float8::numeric = 0.1")
        .unwrap()
        .matches(&row(&[])));
    assert!(
        compile("(1::float8 / 3)::numeric::text = '0.333333333333333'")
            .unwrap()
            .matches(&row(&[]))
    );
    assert!(compile("16777217::float4::numeric = 16777200")
        .unwrap()
        .matches(&row(&[])));
}

#[test]
fn array_subscripts_and_slices_read_as_postgres_reads_them() {
    let first = compile("tags[1] = 'a'").unwrap();
    assert!(first.matches(&row(&[(4, "{a,b}")])));
    assert!(first.matches(&row(&[(4, "[0:1]={z,a}")])));
    assert!(
        !first.matches(&row(&[(4, "{{a,b},{c,d}}")])),
        "one subscript of two is NULL"
    );
    assert_eq!(
        first.to_sql(),
        "((\"tags\")['1'::pg_catalog.int4] = 'a'::pg_catalog.text)"
    );
    assert!(compile("tags[2][1] = 'c'")
        .unwrap()
        .matches(&row(&[(4, "{{a,b},{c,d}}")])));
    assert!(compile("tags[n] IS NULL")
        .unwrap()
        .matches(&row(&[(1, "3"), (4, "{a,b}")])));
    let slice = compile("tags[2:] = '{b,c}' AND tags[:1] = '{a}' AND tags[1][1:2] = '{}'");
    assert!(slice.unwrap().matches(&row(&[(4, "{a,b,c}")])));
    assert!(error("title[1] = 'a'").contains("cannot subscript type text"));
    assert!(error("tags[true] = 'a'").contains("array subscript must have type integer"));
    assert!(error("tags[1][1][1][1][1][1][1] = 'a'")
        .contains("number of array dimensions (7) exceeds the maximum allowed (6)"));
}

#[test]
fn arrays_concatenate_append_and_prepend_as_postgres_does() {
    let appended = compile("array_append(tags, 'c') = '{a,b,c}'").unwrap();
    assert!(appended.matches(&row(&[(4, "{a,b}")])));
    assert!(
        !appended.matches(&row(&[(4, "[5:6]={a,b}")])),
        "array equality compares lower bounds too"
    );
    assert!(compile("array_append(tags, 'c')::text = '[5:7]={a,b,c}'")
        .unwrap()
        .matches(&row(&[(4, "[5:6]={a,b}")])));
    assert!(
        compile("array_append(tags, 'c') = '{c}'")
            .unwrap()
            .matches(&row(&[])),
        "a NULL array appends to {{}}"
    );
    assert!(compile("(tags || title)::text = '{a,NULL}'")
        .unwrap()
        .matches(&row(&[(4, "{a}")])));
    assert!(
        compile("('x'::text || tags) @> '{x,a}' AND array_prepend('x', tags) = '{x,a}'")
            .unwrap()
            .matches(&row(&[(4, "{a}")]))
    );
    let cat = compile("(tags || '{b}')::text = '[0:1]={a,b}'").unwrap();
    assert!(cat.matches(&row(&[(4, "[0:0]={a}")])));
    assert_eq!(
        compile("array_cat(tags, '{x}') IS NULL")
            .unwrap()
            .evaluate(&row(&[(4, "{{a,b}}")])),
        Err(EvalError("cannot concatenate incompatible arrays".into()))
    );
    let e = error("tags || 'c' IS NULL");
    assert!(e.contains("invalid syntax for type text[]: c"), "{e}");
    assert!(error("array_cat('{a}', '{b}') IS NULL").contains("polymorphic type"));
}

#[test]
fn at_time_zone_reads_and_shows_wall_clock_time_as_postgres_does() {
    // 02:30 on 2018-03-11 does not exist in New York: read with the offset before the change.
    let gap = compile("ts AT TIME ZONE 'America/New_York' = '2018-03-11 07:30:00+00'").unwrap();
    assert!(gap.matches(&row(&[(11, "2018-03-11 02:30:00")])));
    assert_eq!(
        gap.to_sql(),
        "(pg_catalog.timezone('America/New_York'::pg_catalog.text, \"ts\") = \
         '2018-03-11 07:30:00+00'::pg_catalog.timestamptz)"
    );
    // 01:30 on 2018-11-04 happens twice: read with the offset after the change.
    assert!(
        compile("timezone('america/new_york', ts) = '2018-11-04 06:30:00+00'")
            .unwrap()
            .matches(&row(&[(11, "2018-11-04 01:30:00")]))
    );
    assert!(
        compile("tz AT TIME ZONE 'Asia/Kolkata' = '2000-01-01 05:30:00'")
            .unwrap()
            .matches(&row(&[(12, "2000-01-01 00:00:00+00")]))
    );
    assert!(compile("tz AT TIME ZONE NULL IS NULL")
        .unwrap()
        .matches(&row(&[])));
    assert!(error("tz AT TIME ZONE 'EST' IS NULL")
        .contains("time zone \"EST\" is not supported by ampere"));
    assert!(error("tz AT TIME ZONE 'Mars/Olympus' IS NULL")
        .contains("time zone \"Mars/Olympus\" not recognized"));
    assert!(error("tz AT TIME ZONE title IS NULL").contains("constant time zone only"));
    assert!(error("tm AT TIME ZONE 'UTC' IS NULL").contains("Could not select a function overload"));
}

#[test]
fn a_where_clause_nested_too_deeply_is_refused_not_a_stack_overflow() {
    // Run on a test thread's 2 MiB stack, in a debug build: the depth limit must hold there.
    let nested = |depth: usize| format!("{}true", "NOT ".repeat(depth));
    assert!(compile(&nested(45)).unwrap().matches(&row(&[])) == (45 % 2 == 0));
    for depth in [60, 1_000] {
        assert_eq!(
            error(&nested(depth)),
            "the expression nests too deeply (at most about 50 levels)"
        );
    }
    let chain = format!("n{} > 0", " + 1".repeat(2_000));
    assert_eq!(
        error(&chain),
        "the expression nests too deeply (at most about 50 levels)"
    );
}

/// `table()` on a server of `version`.
fn table_on(version: ServerVersion) -> TableSchema {
    TableSchema {
        server_version: version,
        ..table()
    }
}

/// `concat(<expr>)` on `row` of `table_on(version)`: the value's text as Postgres prints it
/// (`IntervalStyle = iso_8601`), or the message of the error binding or evaluating it raised.
fn concat_on(version: ServerVersion, expr: &str, values: &[(usize, &str)]) -> String {
    // `title` (NULL, which concat skips) keeps the call from being folded, so a column-free
    // expression is folded by the binder but printed by the evaluator.
    let text = format!("concat({expr}, title) IS NULL");
    let clause = match WhereClause::compile(&text, &Params::new(), &table_on(version)) {
        Ok(clause) => clause,
        Err(e) => return e.message,
    };
    let Expr::IsNull { arg, .. } = clause.expr() else {
        panic!("{text} bound to {:?}", clause.expr());
    };
    let mut row = vec![None; table().columns.len()];
    for (i, v) in values {
        row[*i] = Some((*v).to_owned());
    }
    match eval::compile(arg)(&row) {
        Ok(Value::Text(t)) => t.into_owned(),
        Ok(other) => panic!("concat gave {other:?}"),
        Err(e) => e.0,
    }
}

/// Rows of (expression, column values by index, expected text or error).
type Cases = &'static [(&'static str, &'static [(usize, &'static str)], &'static str)];

fn assert_cases(version: ServerVersion, cases: Cases) {
    for (expr, values, expected) in cases {
        assert_eq!(
            concat_on(version, expr, values),
            *expected,
            "{expr} on {values:?} ({version})"
        );
    }
}

/// Date/time operations on Postgres 17 (the test below says where the values come from).
const PG_17_INTERVAL_CASES: Cases = &[
    (
        "d - ts",
        &[(9, "2020-01-01"), (11, "-infinity")],
        "infinity",
    ),
    (
        "ts - d",
        &[(9, "2020-01-01"), (11, "-infinity")],
        "-infinity",
    ),
    ("ts - ts", &[(11, "infinity")], "interval out of range"),
    ("tz - tz", &[(12, "-infinity")], "interval out of range"),
    (
        "ts - '2020-01-01'::timestamp",
        &[(11, "infinity")],
        "infinity",
    ),
    (
        "'2020-01-01'::timestamp - ts",
        &[(11, "infinity")],
        "-infinity",
    ),
    (
        "ts - '4713-11-24 00:00:00 BC'::timestamp",
        &[(11, "294276-12-31 23:59:59")],
        "interval out of range",
    ),
    ("iv", &[(13, "infinity")], "infinity"),
    ("-iv", &[(13, "-infinity")], "infinity"),
    ("-iv", &[(13, "infinity")], "-infinity"),
    ("iv + iv", &[(13, "infinity")], "infinity"),
    ("iv - iv", &[(13, "infinity")], "interval out of range"),
    (
        "iv + '-infinity'::interval",
        &[(13, "infinity")],
        "interval out of range",
    ),
    (
        "iv - '-infinity'::interval",
        &[(13, "infinity")],
        "infinity",
    ),
    ("iv + '1 day'", &[(13, "-infinity")], "-infinity"),
    ("'1 day' - iv", &[(13, "-infinity")], "infinity"),
    ("'1 day' + iv", &[(13, "infinity")], "infinity"),
    ("iv * 0", &[(13, "infinity")], "interval out of range"),
    ("iv * -2.5", &[(13, "infinity")], "-infinity"),
    (
        "iv * 'NaN'::float8",
        &[(13, "1 day")],
        "interval out of range",
    ),
    ("iv * 'infinity'::float8", &[(13, "1 day")], "infinity"),
    ("iv * 'infinity'::float8", &[(13, "-1 day")], "-infinity"),
    ("iv * '-infinity'::float8", &[(13, "1 day")], "-infinity"),
    (
        "iv * 'infinity'::float8",
        &[(13, "0")],
        "interval out of range",
    ),
    ("iv * 'infinity'::float8", &[(13, "infinity")], "infinity"),
    (
        "iv / 'infinity'::float8",
        &[(13, "infinity")],
        "interval out of range",
    ),
    ("iv / 'infinity'::float8", &[(13, "1 day")], "PT0S"),
    ("iv / -3", &[(13, "infinity")], "-infinity"),
    ("iv / 0", &[(13, "infinity")], "division by zero"),
    ("iv * 2147483647.5", &[(13, "1 mon")], "P178956970Y7M15D"),
    ("iv * 0.5", &[(13, "1 mon 3 days 04:00:00")], "P16DT14H"),
    (
        "ts + iv",
        &[(11, "2020-01-01 00:00:00"), (13, "infinity")],
        "infinity",
    ),
    (
        "ts - iv",
        &[(11, "2020-01-01 00:00:00"), (13, "infinity")],
        "-infinity",
    ),
    (
        "ts + iv",
        &[(11, "-infinity"), (13, "infinity")],
        "timestamp out of range",
    ),
    (
        "ts - iv",
        &[(11, "infinity"), (13, "infinity")],
        "timestamp out of range",
    ),
    ("ts + iv", &[(11, "infinity"), (13, "1 day")], "infinity"),
    (
        "ts - iv",
        &[
            (11, "2020-01-01 00:00:00"),
            (13, "-178956970 years -8 months"),
        ],
        "interval out of range",
    ),
    (
        "tz + iv",
        &[(12, "2020-01-01 00:00:00+00"), (13, "-infinity")],
        "-infinity",
    ),
    (
        "tz - iv",
        &[(12, "-infinity"), (13, "-infinity")],
        "timestamp out of range",
    ),
    ("d + iv", &[(9, "2020-01-01"), (13, "infinity")], "infinity"),
    (
        "d - iv",
        &[(9, "2020-01-01"), (13, "infinity")],
        "-infinity",
    ),
    (
        "iv + d",
        &[(9, "infinity"), (13, "-infinity")],
        "timestamp out of range",
    ),
    (
        "tm + iv",
        &[(10, "12:00:00"), (13, "infinity")],
        "cannot add infinite interval to time",
    ),
    (
        "tm - iv",
        &[(10, "12:00:00"), (13, "-infinity")],
        "cannot subtract infinite interval from time",
    ),
    ("iv + tm", &[(10, "12:00:00"), (13, "1 hour")], "13:00:00"),
    ("justify_days(iv)", &[(13, "infinity")], "infinity"),
    ("justify_hours(iv)", &[(13, "-infinity")], "-infinity"),
    ("justify_interval(iv)", &[(13, "infinity")], "infinity"),
    (
        "justify_interval(iv)",
        &[(13, "1 mon -1 day 25:00:00")],
        "P1MT1H",
    ),
    ("iv < '178000000 years'", &[(13, "infinity")], "f"),
    ("iv > '-178000000 years'", &[(13, "-infinity")], "f"),
    ("iv = 'infinity'", &[(13, "infinity")], "t"),
    ("greatest(iv, '1 day')", &[(13, "-infinity")], "P1D"),
    ("iv::text", &[(13, "-infinity")], "-infinity"),
    ("'infinity'::interval", &[], "infinity"),
    ("' +Infinity '::interval", &[], "infinity"),
    ("'@ -infinity'::interval", &[], "-infinity"),
    (
        "'infinity ago'::interval",
        &[],
        "invalid syntax for type interval: infinity ago",
    ),
    (
        "'1 day infinity'::interval",
        &[],
        "invalid syntax for type interval: 1 day infinity",
    ),
    (
        "'{infinity,-infinity,1 day}'::interval[]",
        &[],
        "{infinity,-infinity,P1D}",
    ),
];

#[test]
fn on_postgres_17_intervals_can_be_infinite_and_arithmetic_propagates_them() {
    // Expected values: Postgres 17.10's `SELECT concat(<expr>)` on the same values
    // (IntervalStyle iso_8601, TimeZone UTC); a constant's refusal is ampere's 400 wording.
    // Columns: 9 d date, 10 tm time, 11 ts timestamp, 12 tz timestamptz, 13 iv interval.
    assert_cases(ServerVersion::PG_17, PG_17_INTERVAL_CASES);
}

/// The same operations before Postgres 17 (the test below says where the values come from).
const PG_15_INTERVAL_CASES: Cases = &[
    (
        "d - ts",
        &[(9, "2020-01-01"), (11, "-infinity")],
        "cannot subtract infinite timestamps",
    ),
    (
        "ts - d",
        &[(9, "2020-01-01"), (11, "-infinity")],
        "cannot subtract infinite timestamps",
    ),
    (
        "ts - ts",
        &[(11, "infinity")],
        "cannot subtract infinite timestamps",
    ),
    (
        "tz - tz",
        &[(12, "-infinity")],
        "cannot subtract infinite timestamps",
    ),
    (
        "ts - '2020-01-01'::timestamp",
        &[(11, "infinity")],
        "cannot subtract infinite timestamps",
    ),
    (
        "'2020-01-01'::timestamp - ts",
        &[(11, "infinity")],
        "cannot subtract infinite timestamps",
    ),
    (
        "ts - '4713-11-24 00:00:00 BC'::timestamp",
        &[(11, "294276-12-31 23:59:59")],
        "P-104300820DT-8H-1M-50.551616S",
    ),
    (
        "iv * 'NaN'::float8",
        &[(13, "1 day")],
        "interval out of range",
    ),
    (
        "iv * 'infinity'::float8",
        &[(13, "1 day")],
        "interval out of range",
    ),
    (
        "iv * 'infinity'::float8",
        &[(13, "-1 day")],
        "interval out of range",
    ),
    (
        "iv * '-infinity'::float8",
        &[(13, "1 day")],
        "interval out of range",
    ),
    (
        "iv * 'infinity'::float8",
        &[(13, "0")],
        "interval out of range",
    ),
    ("iv / 'infinity'::float8", &[(13, "1 day")], "PT0S"),
    ("iv * 2147483647.5", &[(13, "1 mon")], "P178956970Y7M15D"),
    ("iv * 0.5", &[(13, "1 mon 3 days 04:00:00")], "P16DT14H"),
    ("ts + iv", &[(11, "infinity"), (13, "1 day")], "infinity"),
    (
        "ts - iv",
        &[
            (11, "2020-01-01 00:00:00"),
            (13, "-178956970 years -8 months"),
        ],
        "timestamp out of range",
    ),
    ("iv + tm", &[(10, "12:00:00"), (13, "1 hour")], "13:00:00"),
    (
        "justify_interval(iv)",
        &[(13, "1 mon -1 day 25:00:00")],
        "P1MT1H",
    ),
    (
        "'infinity'::interval",
        &[],
        "invalid syntax for type interval: infinity",
    ),
    (
        "'{1 day,-infinity}'::interval[]",
        &[],
        "invalid syntax for type interval[]: {1 day,-infinity}",
    ),
];

#[test]
fn before_postgres_17_intervals_stay_finite_and_infinite_timestamps_do_not_subtract() {
    // Expected values: Postgres 15.x's `SELECT concat(<expr>)` on the same values.
    assert_cases(ServerVersion::PG_15, PG_15_INTERVAL_CASES);
}

#[test]
fn a_schema_of_postgres_16_still_follows_postgres_15() {
    let pg16 = ServerVersion(160_004);
    assert_eq!(
        concat_on(pg16, "d - ts", &[(9, "2020-01-01"), (11, "-infinity")]),
        "cannot subtract infinite timestamps"
    );
    assert_eq!(
        concat_on(
            ServerVersion(180_001),
            "d - ts",
            &[(9, "2020-01-01"), (11, "-infinity")]
        ),
        "infinity"
    );
}
