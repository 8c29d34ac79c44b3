//! Differential test of the where-clause evaluator against a real Postgres.
//!
//! Goal: ampere evaluates a where clause on a row of Postgres text values exactly as Postgres
//! filters that row with the SQL ampere renders for the snapshot (the hard rule of
//! `ampere_core::where_clause`).
//!
//! Method: one table with a column of every type the evaluator supports, filled with a few
//! hundred seeded random rows full of edge values (NULLs, limits, NaN and infinities, BC and
//! infinite dates, LIKE metacharacters, non-ASCII text, padded `bpchar`, arrays with NULLs,
//! several dimensions and custom bounds). Thousands of seeded random expressions over the
//! supported language (and a little beyond it) are compiled; for each compiled clause the test
//! compares, row by row, Postgres's value of the rendered SQL (`t`/`f`/NULL, per row with an
//! exception handler when the whole query fails) with `WhereClause::evaluate`, the ids of
//! `WHERE <sql>` with `matches`, and the rendered SQL with the user's where text (the cluster's
//! collation is C, so both must mean the same). A mismatch is shrunk greedily over the
//! generator's expression tree before it is reported with its rows.
//!
//! Replay: `WHERE_DIFF_SEED=<seed> [WHERE_DIFF_CASES=<n>]`, or one expression with
//! `WHERE_DIFF_EXPR=<where text>`.

// Helpers outside `#[test]` fns panic on failure too: this whole file is test code.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use ampere_core::shape::{RelationName, TableSchema};
use ampere_core::where_clause::{Params, WhereClause};
use ampere_io_real::embedded_pg::shared_for_tests;

const DEFAULT_SEED: u64 = 0x5EED_0FA3_9E7E;
const DEFAULT_CASES: usize = 5000;
const ROWS: usize = 300;
/// Distinct minimised mismatches collected before the test stops looking
/// (`WHERE_DIFF_MAX_FAILURES`).
const MAX_FAILURES: usize = 20;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness.

/// splitmix64: tiny, seedable, good enough for test generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = u64::try_from(hi - lo + 1).unwrap();
        lo + i64::try_from(self.next() % span).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// The table and its values.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    Bool,
    I2,
    I4,
    I8,
    F4,
    F8,
    Num,
    Text,
    Uuid,
    Date,
    Time,
    Ts,
    Tz,
    IntArr,
    TextArr,
    Iv,
}

const ALL_TYS: [Ty; 16] = [
    Ty::Bool,
    Ty::I2,
    Ty::I4,
    Ty::I8,
    Ty::F4,
    Ty::F8,
    Ty::Num,
    Ty::Text,
    Ty::Uuid,
    Ty::Date,
    Ty::Time,
    Ty::Ts,
    Ty::Tz,
    Ty::IntArr,
    Ty::TextArr,
    Ty::Iv,
];
const NUMBERS: [Ty; 6] = [Ty::I2, Ty::I4, Ty::I8, Ty::F4, Ty::F8, Ty::Num];
const INTS: [Ty; 3] = [Ty::I2, Ty::I4, Ty::I8];
const DATETIMES: [Ty; 3] = [Ty::Date, Ty::Ts, Ty::Tz];

const DDL: &str = "
CREATE TABLE t (
    id int8 PRIMARY KEY, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, num numeric,
    txt text, vc varchar(20), bp char(5), b bool, u uuid, d date, tm time, ts timestamp,
    tz timestamptz, ia int4[], ta text[], iv interval
);
CREATE FUNCTION eval_rows(cond text) RETURNS TABLE(rid int8, val text, err text)
LANGUAGE plpgsql AS $$
DECLARE
    r int8;
    v bool;
BEGIN
    FOR r IN SELECT t.id FROM t ORDER BY t.id LOOP
        rid := r;
        BEGIN
            EXECUTE format('SELECT (%s) FROM t WHERE id = $1', cond) INTO v USING r;
            val := CASE WHEN v THEN 't' WHEN NOT v THEN 'f' END;
            err := NULL;
        EXCEPTION WHEN OTHERS THEN
            val := NULL;
            err := SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
END $$;
";

/// Table columns after `id`, with their generator type.
const COLUMNS: [(&str, Ty); 18] = [
    ("i2", Ty::I2),
    ("i4", Ty::I4),
    ("i8", Ty::I8),
    ("f4", Ty::F4),
    ("f8", Ty::F8),
    ("num", Ty::Num),
    ("txt", Ty::Text),
    ("vc", Ty::Text),
    ("bp", Ty::Text),
    ("b", Ty::Bool),
    ("u", Ty::Uuid),
    ("d", Ty::Date),
    ("tm", Ty::Time),
    ("ts", Ty::Ts),
    ("tz", Ty::Tz),
    ("ia", Ty::IntArr),
    ("ta", Ty::TextArr),
    ("iv", Ty::Iv),
];

const SETTINGS: &str = "SET DateStyle = 'ISO, DMY'; SET TimeZone = 'UTC'; \
    SET IntervalStyle = 'iso_8601'; SET extra_float_digits = 1; SET statement_timeout = '20s'";

const I2S: &[&str] = &["0", "1", "-1", "32767", "-32768", "7", "100", "-100"];
const I4S: &[&str] = &[
    "0",
    "1",
    "-1",
    "2147483647",
    "-2147483648",
    "42",
    "1000",
    "32767",
];
const I8S: &[&str] = &[
    "0",
    "1",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "3000000000",
    "42",
    "2147483648",
];
const F4S: &[&str] = &[
    "0",
    "-0",
    "1",
    "1.5",
    "0.1",
    "3.4e38",
    "1e-45",
    "NaN",
    "Infinity",
    "-Infinity",
    "-2.5",
    "16777217",
    "42",
];
const F8S: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "1.5",
    "0.1",
    "0.30000000000000004",
    "1e308",
    "-1e308",
    "5e-324",
    "NaN",
    "Infinity",
    "-Infinity",
    "2.5",
    "3000000000",
    "123.45",
    "42",
];
const NUMS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "1.5",
    "1.50",
    "0.3",
    "0.30",
    "-2.5",
    "99999999999999999999",
    "99999999999999999999.0",
    "1e-20",
    "123.4500",
    "NaN",
    "Infinity",
    "-Infinity",
    "3000000000",
    "32767",
    "1000",
    "42",
];
const TEXTS: &[&str] = &[
    "", "a", "A", "ab", "Ab", "abc", "abc ", "ab  ", "b", "B", "z", "zebra", "Zebra", "%", "_",
    "\\", "a%b", "a_b", "a\\b", "it's", "\"q\"", "ä", "Ä", "É", "é", "äb", "x y", " lead",
    "trail ", "100%", "a!b", "!", "NULL", "{a,b}", "1", "10", "9", "42", "t",
];
const BPCHARS: &[&str] = &[
    "", "a", "ab", "ab ", "abc", "A", "ä", "É", "a_b", "%", "  a", "abcde", "a b", "1", "t",
];
const UUIDS: &[&str] = &[
    "00000000-0000-0000-0000-000000000000",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12",
    "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13}",
    "a0eebc999c0b4ef8bb6d6bb9bd380a14",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
];
const DATES: &[&str] = &[
    "2000-01-01",
    "1999-12-31",
    "2024-02-29",
    "1970-01-01",
    "0044-03-15 BC",
    "4713-01-01 BC",
    "5874897-12-31",
    "infinity",
    "-infinity",
    "2000-01-02",
    "0001-01-01",
    "2023-06-15",
];
const DATE_INPUTS: &[&str] = &[
    "01-02-2003",
    "epoch",
    "2000-1-1",
    "January 8, 1999",
    "20000101",
];
const IVS: &[&str] = &[
    "0",
    "1 day",
    "-1 day",
    "1 mon",
    "30 days",
    "1 mon -30 days",
    "-1 day +02:03:04.5",
    "P1Y2M3DT4H5M6.5S",
    "1.5 days",
    "00:00:01",
    "24:00:00",
    "-00:00:00.000001",
    "178000000 years",
    "-178000000 years",
    "2147483647 days",
    "-2147483648 days",
    IV_LARGEST,
    "1 mon 1 day 1 hour",
    "3 years 25 days 47:59:59",
    "@ 2 hours ago",
];
/// The largest interval in [`IVS`], whose hour field beyond int32 Postgres 14's interval
/// input refuses (`interval field value out of range`), and what stands for it there: the
/// largest hour field 14 accepts.
const IV_LARGEST: &str = "2562047788:00:54.775807";
const IV_LARGEST_BEFORE_15: &str = "2147483647:59:59.999999";
/// The server's `server_version_num`, set once the test connected (the value pools depend
/// on it).
static SERVER_VERSION: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
/// Interval values only Postgres 17 and later have: a quarter of the interval values there
/// (rows and literals), none before, so older servers replay the same cases as ever.
const INFINITE_IVS: &[&str] = &["infinity", "-infinity", "+Infinity", "@ -infinity"];
const INFINITE_IV_PERCENT: usize = 25;
const TIMES: &[&str] = &[
    "00:00:00",
    "23:59:59.999999",
    "24:00:00",
    "12:00:00",
    "12:00:00.5",
    "06:30",
    "13:14:15.161718",
];
const TSS: &[&str] = &[
    "2000-01-01 00:00:00",
    "1999-12-31 23:59:59.999999",
    "2000-01-01 12:00:00",
    "1970-01-01 00:00:00",
    "0001-01-01 00:00:00 BC",
    "294276-12-31 23:59:59",
    "4713-01-01 00:00:00 BC",
    "infinity",
    "-infinity",
    "2024-02-29 06:30:00.5",
    "2000-01-01",
    "2018-03-11 02:30:00",
    "2018-11-04 01:30:00",
    "1850-06-01 12:00:00",
];
const TZS: &[&str] = &[
    "2000-01-01 00:00:00+00",
    "2000-01-01 00:00:00+02",
    "1999-12-31 22:00:00-02",
    "2000-01-01 12:00:00.25+05:30",
    "infinity",
    "-infinity",
    "1970-01-01 00:00:00+00",
    "0001-01-01 00:00:00+00 BC",
    "2024-02-29 06:30:00+00",
    "2000-01-01",
    "2018-11-04 05:30:00+00",
    "2018-11-04 06:30:00.5+00",
    "2200-07-01 00:00:00+00",
];
/// Zones for `AT TIME ZONE` / `timezone()`: gaps, folds, half-hour DST, LMT, inverted POSIX
/// signs, case, and two ampere refuses (an abbreviation, an unknown name).
const ZONES: &[&str] = &[
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "UTC",
    "Etc/GMT+5",
    "america/new_york",
    "Europe/Moscow",
    "EST",
    "Mars/Olympus",
];
const INT_ARRS: &[&str] = &[
    "{}",
    "{1,2}",
    "{1,NULL,3}",
    "{NULL}",
    "{2147483647,-2147483648}",
    "{{1,2},{3,4}}",
    "[0:1]={5,6}",
    "{1}",
    "{3,2,1}",
    "{42}",
    "{1,1}",
];
const TEXT_ARRS: &[&str] = &[
    "{}",
    "{a,b}",
    "{\"a b\",NULL}",
    "{\"\",\"\\\\\"}",
    "{ä,É}",
    "{\"NULL\"}",
    "{A}",
    "{abc,\"abc \"}",
    "{\"it's\"}",
    "{b,a}",
    "{a}",
    "{{a,b},{c,d}}",
];

fn pool(ty: Ty) -> &'static [&'static str] {
    match ty {
        Ty::Bool => &["t", "f", "true", "false", "yes", "off", "1"],
        Ty::I2 => I2S,
        Ty::I4 => I4S,
        Ty::I8 => I8S,
        Ty::F4 => F4S,
        Ty::F8 => F8S,
        Ty::Num => NUMS,
        Ty::Text => TEXTS,
        Ty::Uuid => UUIDS,
        Ty::Date => DATES,
        Ty::Time => TIMES,
        Ty::Ts => TSS,
        Ty::Tz => TZS,
        Ty::IntArr => INT_ARRS,
        Ty::TextArr => TEXT_ARRS,
        Ty::Iv if SERVER_VERSION.get().is_some_and(|v| *v < 150_000) => {
            static BEFORE_15: std::sync::OnceLock<Vec<&str>> = std::sync::OnceLock::new();
            BEFORE_15.get_or_init(|| {
                let swap = |iv: &&'static str| {
                    if *iv == IV_LARGEST {
                        IV_LARGEST_BEFORE_15
                    } else {
                        iv
                    }
                };
                IVS.iter().map(swap).collect()
            })
        }
        Ty::Iv => IVS,
    }
}

/// A standard-conforming SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn random_text(rng: &mut Rng, max: usize) -> String {
    const CHARS: &[char] = &[
        'a', 'b', 'A', 'B', '%', '_', '\\', '\'', ' ', 'ä', 'É', 'z', '!',
    ];
    let len = rng.below(max + 1);
    (0..len).map(|_| *rng.pick(CHARS)).collect()
}

fn array_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn random_date(rng: &mut Rng) -> String {
    let bc = if rng.chance(5) { " BC" } else { "" };
    format!(
        "{:04}-{:02}-{:02}{bc}",
        rng.range(1, 3000),
        rng.range(1, 12),
        rng.range(1, 28)
    )
}

fn random_time(rng: &mut Rng) -> String {
    let mut s = format!(
        "{:02}:{:02}:{:02}",
        rng.range(0, 23),
        rng.range(0, 59),
        rng.range(0, 59)
    );
    if rng.chance(50) {
        let _ = write!(s, ".{:06}", rng.range(0, 999_999));
    }
    s
}

/// A random value of a column (SQL input text), `None` for NULL.
fn random_value(rng: &mut Rng, column: &str, ty: Ty, infinite_intervals: bool) -> Option<String> {
    if rng.chance(10) {
        return None;
    }
    if ty == Ty::Iv && infinite_intervals && rng.chance(INFINITE_IV_PERCENT) {
        return Some((*rng.pick(INFINITE_IVS)).to_owned());
    }
    if column == "bp" {
        return Some(if rng.chance(70) {
            (*rng.pick(BPCHARS)).to_owned()
        } else {
            random_text(rng, 5)
        });
    }
    if rng.chance(60) {
        return Some((*rng.pick(pool(ty))).to_owned());
    }
    Some(match ty {
        Ty::Bool => (*rng.pick(&["t", "f"])).to_owned(),
        Ty::I2 => rng.range(-200, 200).to_string(),
        Ty::I4 => rng.range(-100_000, 100_000).to_string(),
        Ty::I8 => rng.range(-10_000_000_000, 10_000_000_000).to_string(),
        Ty::F4 => format!("{}", rng.range(-4000, 4000) as f32 / 8.0),
        Ty::F8 => format!("{}", rng.range(-1_000_000, 1_000_000) as f64 / 1000.0),
        Ty::Num => format!("{}.{}", rng.range(-1000, 1000), rng.range(0, 999)),
        Ty::Text => random_text(rng, if column == "vc" { 20 } else { 8 }),
        Ty::Uuid => format!(
            "{:08x}-0000-4000-8000-{:012x}",
            rng.next() as u32,
            rng.next() & 0xFFFF_FFFF_FFFF
        ),
        Ty::Date => random_date(rng),
        Ty::Iv => format!(
            "{} mons {} days {} seconds",
            rng.range(-30, 30),
            rng.range(-100, 100),
            rng.range(-200_000, 200_000) as f64 / 7.0
        ),
        Ty::Time => random_time(rng),
        Ty::Ts => format!("{} {}", random_date(rng), random_time(rng)),
        Ty::Tz => format!(
            "{} {}{:+03}",
            random_date(rng),
            random_time(rng),
            rng.range(-12, 12)
        ),
        Ty::IntArr => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| {
                    if rng.chance(15) {
                        "NULL".to_owned()
                    } else {
                        rng.range(-3, 5).to_string()
                    }
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Ty::TextArr => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| {
                    if rng.chance(15) {
                        "NULL".to_owned()
                    } else {
                        array_quote(rng.pick::<&str>(TEXTS))
                    }
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    })
}

fn insert_sql(rng: &mut Rng, infinite_intervals: bool) -> String {
    let mut sql = String::from("INSERT INTO t VALUES ");
    for id in 1..=ROWS {
        if id > 1 {
            sql.push_str(",\n");
        }
        let _ = write!(sql, "({id}");
        for (name, ty) in COLUMNS {
            match random_value(rng, name, ty, infinite_intervals) {
                None => sql.push_str(", NULL"),
                Some(v) => {
                    let _ = write!(sql, ", {}", quote(&v));
                }
            }
        }
        sql.push(')');
    }
    sql
}

// ---------------------------------------------------------------------------------------------
// Expressions: a tree of SQL text fragments, so it can be shrunk.

/// `parts[0] args[0] parts[1] … args[n-1] parts[n]`, of (roughly) type `ty`.
#[derive(Clone, Debug)]
struct Node {
    ty: Ty,
    parts: Vec<String>,
    args: Vec<Self>,
}

impl Node {
    fn leaf(ty: Ty, text: impl Into<String>) -> Self {
        Self {
            ty,
            parts: vec![text.into()],
            args: vec![],
        }
    }

    fn op(ty: Ty, parts: &[&str], args: Vec<Self>) -> Self {
        assert_eq!(parts.len(), args.len() + 1, "parts interleave args");
        Self {
            ty,
            parts: parts.iter().map(|p| (*p).to_owned()).collect(),
            args,
        }
    }

    /// `name(a, b, …)`.
    fn call(ty: Ty, name: &str, args: Vec<Self>) -> Self {
        let mut parts = vec![format!("{name}(")];
        parts.extend((1..args.len()).map(|_| ", ".to_owned()));
        parts.push(")".to_owned());
        Self { ty, parts, args }
    }

    fn render(&self) -> String {
        let mut out = self.parts[0].clone();
        for (arg, part) in self.args.iter().zip(&self.parts[1..]) {
            out.push_str(&arg.render());
            out.push_str(part);
        }
        out
    }

    fn size(&self) -> usize {
        1 + self.args.iter().map(Self::size).sum::<usize>()
    }
}

fn columns_of(ty: Ty) -> Vec<&'static str> {
    let mut out: Vec<&str> = COLUMNS
        .iter()
        .filter(|(_, t)| *t == ty)
        .map(|(n, _)| *n)
        .collect();
    if ty == Ty::I8 {
        out.push("id");
    }
    out
}

fn cast_name(rng: &mut Rng, ty: Ty) -> &'static str {
    let names: &[&str] = match ty {
        Ty::Bool => &["bool", "boolean"],
        Ty::I2 => &["int2", "smallint"],
        Ty::I4 => &["int4", "integer", "int"],
        Ty::I8 => &["int8", "bigint"],
        Ty::F4 => &["float4", "real"],
        Ty::F8 => &["float8", "double precision"],
        Ty::Num => &["numeric", "decimal"],
        Ty::Text => &["text", "varchar"],
        Ty::Uuid => &["uuid"],
        Ty::Date => &["date"],
        Ty::Time => &["time"],
        Ty::Ts => &["timestamp"],
        Ty::Tz => &["timestamptz", "timestamp with time zone"],
        Ty::IntArr => &["int4[]", "int8[]"],
        Ty::TextArr => &["text[]"],
        Ty::Iv => &["interval"],
    };
    rng.pick::<&str>(names)
}

fn looks_numeric(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    !body.is_empty()
        && body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == 'e' || c == '-')
}

/// The other operand types a value of `ty` is compared or combined with.
fn partners(ty: Ty) -> &'static [Ty] {
    match ty {
        Ty::I2 | Ty::I4 | Ty::I8 | Ty::F4 | Ty::F8 | Ty::Num => &NUMBERS,
        Ty::Date | Ty::Ts | Ty::Tz => &DATETIMES,
        Ty::Bool => &[Ty::Bool],
        Ty::Text => &[Ty::Text],
        Ty::Uuid => &[Ty::Uuid],
        Ty::Time => &[Ty::Time],
        Ty::Iv => &[Ty::Iv, Ty::Iv, Ty::Time],
        Ty::IntArr => &[Ty::IntArr],
        Ty::TextArr => &[Ty::TextArr],
    }
}

fn rank(ty: Ty) -> usize {
    match ty {
        Ty::I2 => 1,
        Ty::I4 => 2,
        Ty::I8 => 3,
        Ty::Num => 4,
        Ty::F4 => 5,
        Ty::F8 => 6,
        Ty::Date => 1,
        Ty::Ts => 2,
        Ty::Tz => 3,
        _ => 0,
    }
}

struct Gen {
    rng: Rng,
    /// The server has infinite intervals (Postgres 17+).
    infinite_intervals: bool,
}

impl Gen {
    /// A partner of `ty`, now and then any type at all (mostly refused).
    fn partner(&mut self, ty: Ty) -> Ty {
        if self.rng.chance(3) {
            *self.rng.pick(&ALL_TYS)
        } else {
            *self.rng.pick(partners(ty))
        }
    }

    /// A partner of `ty` whose combination with `ty` is still `ty`.
    fn lower_partner(&mut self, ty: Ty) -> Ty {
        let options: Vec<Ty> = partners(ty)
            .iter()
            .copied()
            .filter(|t| rank(*t) <= rank(ty))
            .collect();
        *self.rng.pick(&options)
    }

    fn literal(&mut self, ty: Ty) -> Node {
        if self.rng.chance(4) {
            return Node::leaf(ty, "NULL");
        }
        if matches!(ty, Ty::IntArr | Ty::TextArr) && self.rng.chance(30) {
            let element = if ty == Ty::IntArr { Ty::I4 } else { Ty::Text };
            let n = 1 + self.rng.below(3);
            let items: Vec<Node> = (0..n).map(|_| self.leaf(element)).collect();
            let mut parts = vec!["ARRAY["];
            parts.extend(std::iter::repeat_n(", ", n - 1));
            parts.push("]");
            return Node::op(ty, &parts, items);
        }
        let rng = &mut self.rng;
        let value: String =
            if ty == Ty::Iv && self.infinite_intervals && rng.chance(INFINITE_IV_PERCENT) {
                (*rng.pick(INFINITE_IVS)).to_owned()
            } else if ty == Ty::Date && rng.chance(15) {
                (*rng.pick(DATE_INPUTS)).to_owned()
            } else if ty == Ty::Text && rng.chance(20) {
                random_text(rng, 4)
            } else {
                (*rng.pick(pool(ty))).to_owned()
            };
        let text = match ty {
            Ty::Bool => match rng.below(4) {
                0 => "true".to_owned(),
                1 => "false".to_owned(),
                _ => quote(&value),
            },
            Ty::I2 | Ty::I4 | Ty::I8 | Ty::Num | Ty::F4 | Ty::F8 => match rng.below(6) {
                0..=2 if looks_numeric(&value) && !matches!(ty, Ty::F4 | Ty::F8) => value,
                0 if looks_numeric(&value) => value,
                0..=2 => quote(&value),
                _ => format!("{}::{}", quote(&value), cast_name(rng, ty)),
            },
            Ty::Date | Ty::Ts | Ty::Tz | Ty::Time if rng.chance(15) => {
                let keyword = match ty {
                    Ty::Date => "DATE",
                    Ty::Ts => "TIMESTAMP",
                    Ty::Tz => "TIMESTAMPTZ",
                    _ => "TIME",
                };
                format!("{keyword} {}", quote(&value))
            }
            _ => {
                if rng.chance(50) {
                    quote(&value)
                } else {
                    format!("{}::{}", quote(&value), cast_name(rng, ty))
                }
            }
        };
        Node::leaf(ty, text)
    }

    fn column(&mut self, ty: Ty) -> Option<Node> {
        let names = columns_of(ty);
        if names.is_empty() {
            return None;
        }
        let name = *self.rng.pick(&names);
        Some(Node::leaf(
            ty,
            if self.rng.chance(3) {
                format!("\"{name}\"")
            } else {
                name.to_owned()
            },
        ))
    }

    fn leaf(&mut self, ty: Ty) -> Node {
        if self.rng.chance(55) {
            if let Some(c) = self.column(ty) {
                return c;
            }
        }
        self.literal(ty)
    }

    fn expr(&mut self, ty: Ty, depth: usize) -> Node {
        if depth == 0 || self.rng.chance(if ty == Ty::Bool { 5 } else { 45 }) {
            return self.leaf(ty);
        }
        let d = depth - 1;
        match ty {
            Ty::Bool => self.predicate(d),
            Ty::I2 | Ty::I4 | Ty::I8 | Ty::F4 | Ty::F8 | Ty::Num => self.number(ty, d),
            Ty::Text => self.text(d),
            Ty::IntArr | Ty::TextArr => self.array(ty, d),
            _ => self.other(ty, d),
        }
    }

    /// A type to compare at, weighted towards the interesting ones.
    fn compared_type(&mut self) -> Ty {
        match self.rng.below(20) {
            0..=7 => *self.rng.pick(&NUMBERS),
            8..=11 => Ty::Text,
            12..=15 => *self.rng.pick(&DATETIMES),
            16 => Ty::Uuid,
            17 => Ty::Bool,
            18 if self.rng.chance(50) => Ty::Time,
            18 => Ty::Iv,
            _ => *self.rng.pick(&[Ty::IntArr, Ty::TextArr]),
        }
    }

    fn predicate(&mut self, d: usize) -> Node {
        match self.rng.below(26) {
            0..=5 => {
                let ty = self.compared_type();
                let other = self.partner(ty);
                let op = *self.rng.pick(&["=", "<>", "<", "<=", ">", ">=", "!="]);
                let (l, r) = (self.expr(ty, d), self.expr(other, d));
                Node::op(Ty::Bool, &["(", &format!(" {op} "), ")"], vec![l, r])
            }
            6..=8 => {
                let op = if self.rng.chance(50) { " AND " } else { " OR " };
                let n = 2 + self.rng.below(2);
                let args: Vec<Node> = (0..n).map(|_| self.expr(Ty::Bool, d)).collect();
                let mut parts = vec!["("];
                parts.extend(std::iter::repeat_n(op, n - 1));
                parts.push(")");
                Node::op(Ty::Bool, &parts, args)
            }
            9 => Node::op(Ty::Bool, &["(NOT ", ")"], vec![self.expr(Ty::Bool, d)]),
            10 => {
                let ty = *self.rng.pick(&ALL_TYS);
                let test = *self
                    .rng
                    .pick(&[" IS NULL)", " IS NOT NULL)", " ISNULL)", " NOTNULL)"]);
                Node::op(Ty::Bool, &["(", test], vec![self.expr(ty, d)])
            }
            11 => {
                let test = *self.rng.pick(&[
                    " IS TRUE)",
                    " IS NOT TRUE)",
                    " IS FALSE)",
                    " IS NOT FALSE)",
                    " IS UNKNOWN)",
                    " IS NOT UNKNOWN)",
                ]);
                Node::op(Ty::Bool, &["(", test], vec![self.expr(Ty::Bool, d)])
            }
            12 | 13 => self.distinct(d),
            14 | 15 => self.in_list(d),
            16 | 17 => self.between(d),
            18..=20 => self.like(d),
            21 | 22 => self.quantified(d),
            23 | 24 => self.array_op(d),
            _ => {
                let from = *self.rng.pick(&[Ty::I4, Ty::Text, Ty::I8]);
                let target = cast_name(&mut self.rng, Ty::Bool);
                Node::op(
                    Ty::Bool,
                    &["(", &format!(")::{target}")],
                    vec![self.expr(from, d)],
                )
            }
        }
    }

    fn distinct(&mut self, d: usize) -> Node {
        let ty = self.compared_type();
        let other = self.partner(ty);
        let op = if self.rng.chance(50) {
            " IS DISTINCT FROM "
        } else {
            " IS NOT DISTINCT FROM "
        };
        let (l, r) = (self.expr(ty, d), self.expr(other, d));
        Node::op(Ty::Bool, &["(", op, ")"], vec![l, r])
    }

    fn array_op(&mut self, d: usize) -> Node {
        let ty = *self.rng.pick(&[Ty::IntArr, Ty::TextArr]);
        let other = if self.rng.chance(5) {
            self.partner(ty)
        } else {
            ty
        };
        let op = *self.rng.pick(&[" @> ", " <@ ", " && "]);
        let (l, r) = (self.expr(ty, d), self.expr(other, d));
        Node::op(Ty::Bool, &["(", op, ")"], vec![l, r])
    }

    fn in_list(&mut self, d: usize) -> Node {
        let ty = self.compared_type();
        let n = 1 + self.rng.below(4);
        let x = self.expr(ty, d);
        let mut args = vec![x];
        for _ in 0..n {
            let other = self.partner(ty);
            args.push(self.expr(other, d.min(1)));
        }
        let head = if self.rng.chance(30) {
            " NOT IN ("
        } else {
            " IN ("
        };
        let mut parts = vec!["(", head];
        parts.extend(std::iter::repeat_n(", ", n - 1));
        parts.push("))");
        Node::op(Ty::Bool, &parts, args)
    }

    fn between(&mut self, d: usize) -> Node {
        let ty = self.compared_type();
        let (lo_ty, hi_ty) = (self.partner(ty), self.partner(ty));
        let kw = *self.rng.pick(&[
            " BETWEEN ",
            " NOT BETWEEN ",
            " BETWEEN SYMMETRIC ",
            " NOT BETWEEN SYMMETRIC ",
        ]);
        let args = vec![self.expr(ty, d), self.expr(lo_ty, d), self.expr(hi_ty, d)];
        Node::op(Ty::Bool, &["(", kw, " AND ", ")"], args)
    }

    fn like_pattern(&mut self, escape: bool) -> Node {
        const CHARS: &[char] = &['%', '_', '\\', 'a', 'b', 'A', 'ä', '!', ' ', 'É', 'B', '\''];
        let len = self.rng.below(6);
        let mut p: String = (0..len).map(|_| *self.rng.pick(CHARS)).collect();
        if self.rng.chance(30) {
            p = format!("%{}%", self.rng.pick(TEXTS));
        }
        // A trailing escape character is an error in Postgres: keep it rare.
        let trailing = if escape { '!' } else { '\\' };
        if p.ends_with(trailing) && self.rng.chance(80) {
            p.push('%');
        }
        Node::leaf(Ty::Text, quote(&p))
    }

    fn like(&mut self, d: usize) -> Node {
        let kw = *self.rng.pick(&[
            " LIKE ",
            " ILIKE ",
            " NOT LIKE ",
            " NOT ILIKE ",
            " ~~ ",
            " ~~* ",
            " !~~ ",
        ]);
        let escape = kw.contains("LIKE") && self.rng.chance(25);
        let arg = self.expr(Ty::Text, d);
        let pattern = if self.rng.chance(10) {
            self.expr(Ty::Text, d)
        } else {
            self.like_pattern(escape)
        };
        let tail = if escape {
            *self
                .rng
                .pick(&[" ESCAPE '!')", " ESCAPE '')", " ESCAPE '\\')"])
        } else {
            ")"
        };
        Node::op(Ty::Bool, &["(", kw, tail], vec![arg, pattern])
    }

    fn quantified(&mut self, d: usize) -> Node {
        let (arr_ty, elem) = if self.rng.chance(60) {
            (
                Ty::IntArr,
                *self
                    .rng
                    .pick(&[Ty::I2, Ty::I4, Ty::I4, Ty::I8, Ty::Num, Ty::F8]),
            )
        } else {
            (Ty::TextArr, Ty::Text)
        };
        let op = *self.rng.pick(&["=", "<>", "<", "<=", ">", ">="]);
        let q = if self.rng.chance(60) { "ANY" } else { "ALL" };
        let (x, arr) = (self.expr(elem, d), self.expr(arr_ty, d));
        Node::op(Ty::Bool, &["(", &format!(" {op} {q}("), "))"], vec![x, arr])
    }

    fn number(&mut self, ty: Ty, d: usize) -> Node {
        if ty == Ty::I4 && self.rng.chance(10) {
            let (l, r) = (self.expr(Ty::Date, d), self.expr(Ty::Date, d));
            return Node::op(ty, &["(", " - ", ")"], vec![l, r]);
        }
        if ty == Ty::I4 && self.rng.chance(5) {
            let array = *self.rng.pick(&[Ty::IntArr, Ty::TextArr]);
            return Node::call(ty, "array_ndims", vec![self.expr(array, d)]);
        }
        if ty == Ty::I4 && self.rng.chance(8) {
            return self.subscript(Ty::IntArr, ty, d);
        }
        match self.rng.below(15) {
            12 if INTS.contains(&ty) => {
                let other = self.lower_partner(ty);
                let op = *self.rng.pick(&[" & ", " | ", " # "]);
                let (l, r) = (self.expr(ty, d), self.expr(other, d));
                Node::op(ty, &["(", op, ")"], vec![l, r])
            }
            12 => Node::op(ty, &["(@ ", ")"], vec![self.expr(ty, d)]),
            13 if INTS.contains(&ty) => Node::op(ty, &["(~ ", ")"], vec![self.expr(ty, d)]),
            13 | 14 if ty == Ty::F8 => {
                if self.rng.chance(30) {
                    let from = *self.rng.pick(&[Ty::F8, Ty::F4, Ty::I4]);
                    Node::op(ty, &["(|/ ", ")"], vec![self.expr(from, d)])
                } else {
                    let l = *self.rng.pick(&[Ty::F8, Ty::I4, Ty::F4]);
                    let r = *self.rng.pick(&[Ty::F8, Ty::I2, Ty::I8]);
                    let (l, r) = (self.expr(l, d), self.expr(r, d));
                    Node::op(ty, &["(", " ^ ", ")"], vec![l, r])
                }
            }
            13 | 14 => Node::op(ty, &["(@ ", ")"], vec![self.expr(ty, d)]),
            0..=4 => {
                let other = self.lower_partner(ty);
                let op = *self.rng.pick(&[" + ", " - ", " * ", " / "]);
                let (mut l, mut r) = (self.expr(ty, d), self.expr(other, d));
                if self.rng.chance(50) {
                    std::mem::swap(&mut l, &mut r);
                }
                Node::op(ty, &["(", op, ")"], vec![l, r])
            }
            5 => Node::op(ty, &["(- ", ")"], vec![self.expr(ty, d)]),
            6..=8 => {
                let from = if self.rng.chance(15) {
                    *self.rng.pick(&[Ty::Text, Ty::Bool])
                } else {
                    *self.rng.pick(&NUMBERS)
                };
                let name = cast_name(&mut self.rng, ty);
                if self.rng.chance(50) {
                    Node::op(ty, &["(", &format!(")::{name}")], vec![self.expr(from, d)])
                } else {
                    Node::op(
                        ty,
                        &["CAST(", &format!(" AS {name})")],
                        vec![self.expr(from, d)],
                    )
                }
            }
            _ => self.variadic(ty, d),
        }
    }

    /// `COALESCE`, `GREATEST` or `LEAST` of values combining to `ty`.
    fn variadic(&mut self, ty: Ty, d: usize) -> Node {
        let name = *self.rng.pick(&["COALESCE", "GREATEST", "LEAST"]);
        let n = 2 + self.rng.below(2);
        let mut args = vec![self.expr(ty, d)];
        for _ in 1..n {
            let other = self.lower_partner(ty);
            args.push(self.expr(other, d));
        }
        let k = self.rng.below(n);
        args.swap(0, k);
        Node::call(ty, name, args)
    }

    fn text(&mut self, d: usize) -> Node {
        match self.rng.below(10) {
            0..=2 => {
                let r = if self.rng.chance(8) {
                    *self.rng.pick(&NUMBERS)
                } else {
                    Ty::Text
                };
                let (l, r) = (self.expr(Ty::Text, d), self.expr(r, d));
                Node::op(Ty::Text, &["(", " || ", ")"], vec![l, r])
            }
            3 if self.rng.chance(50) => {
                let n = 1 + self.rng.below(3);
                let args: Vec<Node> = (0..n)
                    .map(|_| {
                        let ty = *self.rng.pick(&ALL_TYS);
                        self.expr(ty, d)
                    })
                    .collect();
                Node::call(Ty::Text, "concat", args)
            }
            3 if self.rng.chance(50) => self.subscript(Ty::TextArr, Ty::Text, d),
            3 | 4 => {
                let f = *self.rng.pick(&["lower", "upper"]);
                Node::call(Ty::Text, f, vec![self.expr(Ty::Text, d)])
            }
            5..=7 => {
                let from = *self.rng.pick(&ALL_TYS);
                let name = cast_name(&mut self.rng, Ty::Text);
                Node::op(
                    Ty::Text,
                    &["(", &format!(")::{name}")],
                    vec![self.expr(from, d)],
                )
            }
            _ => self.variadic(Ty::Text, d),
        }
    }

    fn array(&mut self, ty: Ty, d: usize) -> Node {
        let element = if ty == Ty::IntArr {
            *self.rng.pick(&INTS)
        } else {
            Ty::Text
        };
        match self.rng.below(5) {
            3 => self.slice(ty, d),
            4 => self.array_concat(ty, element, d),
            0 => {
                let n = 1 + self.rng.below(3);
                let items: Vec<Node> = (0..n).map(|_| self.expr(element, d)).collect();
                let mut parts = vec!["ARRAY["];
                parts.extend(std::iter::repeat_n(", ", n - 1));
                parts.push("]");
                Node::op(ty, &parts, items)
            }
            1 => {
                let lit = self.literal(ty);
                Node::call(ty, "COALESCE", vec![self.expr(ty, d), lit])
            }
            _ => {
                let name = cast_name(&mut self.rng, ty);
                Node::op(ty, &["(", &format!(")::{name}")], vec![self.expr(ty, d)])
            }
        }
    }

    /// A subscript (`(a)[i]`, `(a)[i][j]`) of an array of type `array`, of element type `ty`.
    fn subscript(&mut self, array: Ty, ty: Ty, d: usize) -> Node {
        let arg = self.expr(array, d);
        let n = 1 + usize::from(self.rng.chance(25));
        let mut args = vec![arg];
        let mut parts = vec!["(".to_owned(), ")[".to_owned()];
        for i in 0..n {
            args.push(self.index(d));
            parts.push(if i + 1 == n { "]" } else { "][" }.to_owned());
        }
        Node { ty, parts, args }
    }

    /// An array subscript: mostly small constants (bounds in and out of range), else any int.
    fn index(&mut self, d: usize) -> Node {
        if self.rng.chance(25) {
            let ty = *self.rng.pick(&[Ty::I4, Ty::I2, Ty::I8]);
            return self.expr(ty, d.min(1));
        }
        let i = *self
            .rng
            .pick(&["-1", "0", "1", "1", "2", "3", "NULL", "'2'"]);
        Node::leaf(Ty::I4, i)
    }

    /// A slice `(a)[l:u]` (bounds omitted now and then, a second dimension sometimes).
    fn slice(&mut self, ty: Ty, d: usize) -> Node {
        let mut args = vec![self.expr(ty, d)];
        let mut parts = vec!["(".to_owned()];
        let mut open = ")[".to_owned();
        for _ in 0..1 + usize::from(self.rng.chance(25)) {
            match self.rng.below(6) {
                0 => {
                    parts.push(open + ":");
                    args.push(self.index(d));
                }
                1 => {
                    parts.push(open);
                    args.push(self.index(d));
                    parts.push(":".to_owned());
                    args.push(Node::leaf(Ty::I4, ""));
                }
                2 => {
                    // A plain subscript in a slice is `[1:u]`.
                    parts.push(open);
                    args.push(self.index(d));
                }
                _ => {
                    parts.push(open);
                    args.push(self.index(d));
                    parts.push(":".to_owned());
                    args.push(self.index(d));
                }
            }
            open = "][".to_owned();
        }
        parts.push("]".to_owned());
        if !parts.iter().any(|p| p.contains(':')) {
            // Plain subscripts alone are no slice: make the first one `[:u]`.
            parts[1].push(':');
        }
        Node { ty, parts, args }
    }

    /// `||`, `array_cat`, `array_append` or `array_prepend` giving an array of type `ty`.
    fn array_concat(&mut self, ty: Ty, element: Ty, d: usize) -> Node {
        let (a, b) = (self.expr(ty, d), self.expr(ty, d));
        let e = self.expr(element, d);
        match self.rng.below(6) {
            0 => Node::op(ty, &["(", " || ", ")"], vec![a, b]),
            1 => Node::op(ty, &["(", " || ", ")"], vec![a, e]),
            2 => Node::op(ty, &["(", " || ", ")"], vec![e, a]),
            3 => Node::call(ty, "array_cat", vec![a, b]),
            4 => Node::call(ty, "array_append", vec![a, e]),
            _ => Node::call(ty, "array_prepend", vec![e, a]),
        }
    }

    /// `ts AT TIME ZONE z` / `timezone(z, ts)` giving `ty` (a timestamp from a timestamptz or
    /// the reverse).
    fn time_zone(&mut self, ty: Ty, d: usize) -> Node {
        let from = if ty == Ty::Ts {
            *self.rng.pick(&[Ty::Tz, Ty::Tz, Ty::Date])
        } else {
            Ty::Ts
        };
        let arg = self.expr(from, d);
        let zone = Node::leaf(Ty::Text, quote(self.rng.pick::<&str>(ZONES)));
        if self.rng.chance(50) {
            Node::op(ty, &["(", " AT TIME ZONE ", ")"], vec![arg, zone])
        } else {
            Node::call(ty, "timezone", vec![zone, arg])
        }
    }

    /// Dates, times, timestamps and uuids: casts between them and `COALESCE`/`GREATEST`/`LEAST`.
    /// Date/time arithmetic of result type `ty` (Postgres's operators and the `justify_*`
    /// functions).
    fn datetime_arith(&mut self, ty: Ty, d: usize) -> Node {
        let int = *self.rng.pick(&[Ty::I2, Ty::I4, Ty::I4, Ty::I8]);
        let number = *self.rng.pick(&NUMBERS);
        let (l, op, r) = match ty {
            Ty::Date => *self.rng.pick(&[
                (Ty::Date, "+", int),
                (int, "+", Ty::Date),
                (Ty::Date, "-", int),
            ]),
            Ty::Ts => *self.rng.pick(&[
                (Ty::Date, "+", Ty::Iv),
                (Ty::Iv, "+", Ty::Date),
                (Ty::Date, "-", Ty::Iv),
                (Ty::Date, "+", Ty::Time),
                (Ty::Time, "+", Ty::Date),
                (Ty::Ts, "+", Ty::Iv),
                (Ty::Iv, "+", Ty::Ts),
                (Ty::Ts, "-", Ty::Iv),
                (Ty::Ts, "+", Ty::Time),
            ]),
            Ty::Tz => *self.rng.pick(&[
                (Ty::Tz, "+", Ty::Iv),
                (Ty::Iv, "+", Ty::Tz),
                (Ty::Tz, "-", Ty::Iv),
            ]),
            Ty::Time => *self.rng.pick(&[
                (Ty::Time, "+", Ty::Iv),
                (Ty::Iv, "+", Ty::Time),
                (Ty::Time, "-", Ty::Iv),
            ]),
            _ => {
                if self.rng.chance(15) {
                    let name =
                        *self
                            .rng
                            .pick(&["justify_days", "justify_hours", "justify_interval"]);
                    let arg = self.expr(Ty::Iv, d);
                    return Node::call(Ty::Iv, name, vec![arg]);
                }
                if self.rng.chance(10) {
                    let arg = self.expr(Ty::Iv, d);
                    return Node::op(Ty::Iv, &["(- ", ")"], vec![arg]);
                }
                *self.rng.pick(&[
                    (Ty::Time, "-", Ty::Time),
                    (Ty::Ts, "-", Ty::Ts),
                    (Ty::Tz, "-", Ty::Tz),
                    (Ty::Date, "-", Ty::Ts),
                    (Ty::Iv, "+", Ty::Iv),
                    (Ty::Iv, "-", Ty::Iv),
                    (Ty::Iv, "-", Ty::Time),
                    (Ty::Iv, "*", number),
                    (number, "*", Ty::Iv),
                    (Ty::Iv, "/", number),
                ])
            }
        };
        let (l, r) = (self.expr(l, d), self.expr(r, d));
        Node::op(ty, &["(", &format!(" {op} "), ")"], vec![l, r])
    }

    fn other(&mut self, ty: Ty, d: usize) -> Node {
        if matches!(ty, Ty::Iv) || (self.rng.chance(35) && DATETIMES.contains(&ty)) {
            return self.datetime_arith(ty, d);
        }
        if matches!(ty, Ty::Time) && self.rng.chance(35) {
            return self.datetime_arith(ty, d);
        }
        if matches!(ty, Ty::Ts | Ty::Tz) && self.rng.chance(30) {
            return self.time_zone(ty, d);
        }
        if self.rng.chance(50) {
            return self.variadic(ty, d);
        }
        let from = match ty {
            Ty::Date => *self.rng.pick(&[Ty::Ts, Ty::Tz, Ty::Text]),
            Ty::Ts => *self.rng.pick(&[Ty::Date, Ty::Tz, Ty::Text]),
            Ty::Tz => *self.rng.pick(&[Ty::Date, Ty::Ts, Ty::Text]),
            Ty::Time => *self.rng.pick(&[Ty::Ts, Ty::Tz, Ty::Text]),
            _ => Ty::Text,
        };
        let name = cast_name(&mut self.rng, ty);
        Node::op(ty, &["(", &format!(")::{name}")], vec![self.expr(from, d)])
    }
}

// ---------------------------------------------------------------------------------------------
// Checking one where clause.

/// What went wrong, kept fixed while shrinking.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `evaluate` differs from Postgres's value of the rendered SQL on a row.
    Eval,
    /// `matches` differs from `SELECT id FROM t WHERE <sql>`.
    Where,
    /// The rendered SQL and the user's where text select differently.
    Original,
    /// Postgres refuses the rendered SQL itself (syntax, unknown operator, …).
    Render,
}

enum Verdict {
    Refused(String),
    PgError(String),
    Agreed { original_refused: Option<String> },
    Mismatch(Kind, String),
}

struct Ctx {
    client: Client,
    schema: TableSchema,
    /// The server has infinite intervals (Postgres 17+).
    infinite_intervals: bool,
    rows: Vec<Vec<Option<String>>>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    /// Rows where Postgres failed on the rendered SQL and ampere still computed a value
    /// (`(true, false)` count, then how many of them ampere found true).
    pg_row_errors: usize,
    pg_row_errors_ampere_value: usize,
    pg_row_errors_ampere_true: usize,
    pg_row_error_samples: BTreeMap<String, String>,
}

fn strip_location(message: &str) -> &str {
    match message.strip_prefix("At location ") {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m),
        None => message,
    }
}

/// A refusal message with its values cut, for the distribution.
fn refusal_bucket(message: &str) -> String {
    let m = strip_location(message);
    let m = if m.starts_with("invalid syntax for type") {
        m.rsplit_once(": ").map_or(m, |(head, _)| head)
    } else {
        m
    };
    m.chars().take(90).collect()
}

fn pg_error_text(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_owned())
}

fn is_rejection(e: &tokio_postgres::Error) -> bool {
    // Class 42: syntax error or access rule violation (unknown operator, bad cast, …).
    e.code().is_some_and(|c| c.code().starts_with("42"))
}

async fn rows_of(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

fn show(v: Option<&str>) -> String {
    v.map_or_else(|| "NULL".to_owned(), |s| format!("{s:?}"))
}

fn describe_row(schema: &TableSchema, clause: &WhereClause, row: &[Option<String>]) -> String {
    let mut out = format!("id={}", show(row[0].as_deref()));
    for &i in clause.columns() {
        if i != 0 {
            let _ = write!(
                out,
                " {}={}",
                schema.columns[i].name,
                show(row[i].as_deref())
            );
        }
    }
    out
}

impl Ctx {
    /// Postgres's value of `sql` per row (`t`/`f`/NULL or the error), in id order.
    async fn pg_values(&self, sql: &str) -> Result<Vec<Result<Option<String>, String>>, Verdict> {
        let query = format!("SELECT id, ({sql}) AS verdict FROM t ORDER BY t.id");
        match rows_of(&self.client, &query).await {
            Ok(rows) => Ok(rows.into_iter().map(|r| Ok(r[1].clone())).collect()),
            Err(e) if is_rejection(&e) => Err(Verdict::Mismatch(
                Kind::Render,
                format!("Postgres rejects the rendered SQL: {}", pg_error_text(&e)),
            )),
            Err(e) => {
                let first = pg_error_text(&e);
                let query = format!("SELECT val, err FROM eval_rows({})", quote(sql));
                let rows = rows_of(&self.client, &query)
                    .await
                    .map_err(|e| Verdict::PgError(pg_error_text(&e)))?;
                if rows.iter().all(|r| r[1].is_some()) {
                    return Err(Verdict::PgError(first));
                }
                Ok(rows
                    .into_iter()
                    .map(|r| match &r[1] {
                        Some(err) => Err(err.clone()),
                        None => Ok(r[0].clone()),
                    })
                    .collect())
            }
        }
    }

    /// `evaluate` against Postgres's values: how many rows differ, a report of the first ones,
    /// and whether Postgres gave a value on every row.
    fn compare_rows(
        &mut self,
        clause: &WhereClause,
        pg: &[Result<Option<String>, String>],
        text: &str,
    ) -> (usize, String, bool) {
        let mut report = String::new();
        let mut differing = 0;
        let mut complete = true;
        for (row, pg_value) in self.rows.iter().zip(pg) {
            let ours = clause.evaluate(row);
            let ours_text = match &ours {
                Ok(Some(true)) => "t".to_owned(),
                Ok(Some(false)) => "f".to_owned(),
                Ok(None) => "NULL".to_owned(),
                Err(e) => format!("error: {e}"),
            };
            let agree = match (pg_value, &ours) {
                (Ok(Some(v)), Ok(Some(b))) => (v == "t") == *b,
                (Ok(None), Ok(None)) => true,
                (Ok(_), _) => false,
                (Err(pg_err), ours) => {
                    complete = false;
                    self.stats.pg_row_errors += 1;
                    if let Ok(value) = ours {
                        self.stats.pg_row_errors_ampere_value += 1;
                        if *value == Some(true) {
                            self.stats.pg_row_errors_ampere_true += 1;
                        }
                        let key: String = pg_err.chars().take(60).collect();
                        if !self.stats.pg_row_error_samples.contains_key(&key) {
                            let sample = format!(
                                "{text}  [{}] ampere={ours_text}",
                                describe_row(&self.schema, clause, row)
                            );
                            self.stats.pg_row_error_samples.insert(key, sample);
                        }
                    }
                    true
                }
            };
            if !agree {
                differing += 1;
                if differing <= 6 {
                    let pg_text = match pg_value {
                        Ok(v) => show(v.as_deref()).replace('"', ""),
                        Err(e) => format!("error: {e}"),
                    };
                    let _ = writeln!(
                        report,
                        "    row {}: ampere={ours_text} postgres={pg_text}",
                        describe_row(&self.schema, clause, row)
                    );
                }
            }
        }
        (differing, report, complete)
    }

    async fn check(&mut self, text: &str) -> Verdict {
        let clause = match WhereClause::compile(text, &Params::new(), &self.schema) {
            Ok(c) => c,
            Err(e) => return Verdict::Refused(e.to_string()),
        };
        let sql = clause.to_sql();
        let pg = match self.pg_values(&sql).await {
            Ok(values) => values,
            Err(verdict) => return verdict,
        };
        let (differing, report, complete) = self.compare_rows(&clause, &pg, text);
        if differing > 0 {
            return Verdict::Mismatch(
                Kind::Eval,
                format!("rendered SQL: {sql}\n  {differing} rows differ:\n{report}"),
            );
        }
        if !complete {
            return Verdict::Agreed {
                original_refused: None,
            };
        }
        self.compare_where(&clause, &sql, &pg, text).await
    }

    /// `WHERE <sql>` against `matches`, and the user's text against the rendered SQL.
    async fn compare_where(
        &mut self,
        clause: &WhereClause,
        sql: &str,
        pg: &[Result<Option<String>, String>],
        text: &str,
    ) -> Verdict {
        let query = format!("SELECT id FROM t WHERE {sql} ORDER BY t.id");
        if let Ok(rows) = rows_of(&self.client, &query).await {
            let theirs: Vec<String> = rows.into_iter().filter_map(|r| r[0].clone()).collect();
            let ours: Vec<String> = self
                .rows
                .iter()
                .filter(|r| clause.matches(r))
                .filter_map(|r| r[0].clone())
                .collect();
            if theirs != ours {
                return Verdict::Mismatch(
                    Kind::Where,
                    format!(
                        "rendered SQL: {sql}\n  WHERE selects ids {theirs:?}\n  matches selects \
                         ids {ours:?}"
                    ),
                );
            }
        }
        let query = format!("SELECT id, ({text}) AS verdict FROM t ORDER BY t.id");
        let original = match rows_of(&self.client, &query).await {
            Ok(rows) => rows,
            Err(e) => {
                let kind = if is_rejection(&e) {
                    "Postgres refuses"
                } else {
                    "fails at run time"
                };
                return Verdict::Agreed {
                    original_refused: Some(format!("{kind}: {}: {text}", pg_error_text(&e))),
                };
            }
        };
        let mut report = String::new();
        let mut differing = 0;
        for ((row, theirs), ours) in self.rows.iter().zip(&original).zip(pg) {
            let ours = ours.clone().unwrap_or(None);
            if theirs[1] != ours {
                differing += 1;
                if differing <= 6 {
                    let _ = writeln!(
                        report,
                        "    row {}: where text={} rendered SQL={}",
                        describe_row(&self.schema, clause, row),
                        show(theirs[1].as_deref()),
                        show(ours.as_deref())
                    );
                }
            }
        }
        if differing > 0 {
            return Verdict::Mismatch(
                Kind::Original,
                format!("rendered SQL: {sql}\n  {differing} rows differ:\n{report}"),
            );
        }
        Verdict::Agreed {
            original_refused: None,
        }
    }

    /// Whether `node` still fails with `kind`.
    async fn still_fails(&mut self, node: &Node, kind: Kind) -> Option<String> {
        match self.check(&node.render()).await {
            Verdict::Mismatch(k, report) if k == kind => Some(report),
            _ => None,
        }
    }

    /// Greedy shrinking: take any one-step simplification that still fails the same way.
    async fn shrink(&mut self, mut node: Node, kind: Kind, mut report: String) -> (Node, String) {
        let key = |n: &Node| (n.size(), n.render().len());
        let mut steps = 0;
        'outer: while steps < 400 {
            for candidate in variants(&node) {
                if key(&candidate) >= key(&node) {
                    continue;
                }
                steps += 1;
                if let Some(r) = self.still_fails(&candidate, kind).await {
                    node = candidate;
                    report = r;
                    continue 'outer;
                }
            }
            break;
        }
        (node, report)
    }
}

/// Simple stand-ins for a node of type `ty`.
fn simple(ty: Ty) -> Vec<Node> {
    let mut out: Vec<Node> = columns_of(ty)
        .into_iter()
        .map(|c| Node::leaf(ty, c))
        .collect();
    out.push(Node::leaf(ty, "NULL"));
    let first = pool(ty)[0];
    out.push(Node::leaf(ty, quote(first)));
    if looks_numeric(first) {
        out.push(Node::leaf(ty, first));
    }
    if ty == Ty::Bool {
        out.push(Node::leaf(ty, "true"));
        out.push(Node::leaf(ty, "false"));
    }
    out
}

/// Every one-step simplification of `node`.
fn variants(node: &Node) -> Vec<Node> {
    let mut out = Vec::new();
    out.extend(node.args.iter().filter(|a| a.ty == node.ty).cloned());
    out.extend(simple(node.ty));
    // A variadic call or list without one of its arguments.
    if node.args.len() > 2
        && node.parts[1..node.parts.len() - 1]
            .iter()
            .all(|p| p == ", " || p == " AND " || p == " OR ")
    {
        for i in 0..node.args.len() {
            let mut n = node.clone();
            n.args.remove(i);
            n.parts.remove(1);
            out.push(n);
        }
    }
    for (i, arg) in node.args.iter().enumerate() {
        for v in variants(arg) {
            let mut n = node.clone();
            n.args[i] = v;
            out.push(n);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The test.

async fn setup(seed: u64) -> Ctx {
    let cluster = shared_for_tests().expect("shared test cluster starts");
    let url = cluster
        .create_database("where_diff")
        .expect("CREATE DATABASE");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(SETTINGS)
        .await
        .expect("session settings");
    client.batch_execute(DDL).await.expect("create table");
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .expect("server_version_num")
        .get(0);
    let infinite_intervals = version >= 170_000;
    SERVER_VERSION.get_or_init(|| version);
    println!("where_differential: server_version_num {version}, infinite intervals: {infinite_intervals}");
    let mut rng = Rng(seed ^ 0xDA7A);
    client
        .batch_execute(&insert_sql(&mut rng, infinite_intervals))
        .await
        .expect("insert rows");
    let relation = RelationName {
        schema: "public".into(),
        table: "t".into(),
    };
    let schema = ampere_io_real::catalog::table_schema(&client, &relation)
        .await
        .expect("catalog lookup")
        .expect("table exists");
    let rows = rows_of(&client, "SELECT * FROM t ORDER BY id")
        .await
        .expect("read rows");
    assert_eq!(rows.len(), ROWS);
    Ctx {
        client,
        schema,
        infinite_intervals,
        rows,
        stats: Stats::default(),
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn print_distribution(title: &str, counts: &BTreeMap<String, usize>, limit: usize) {
    let mut sorted: Vec<(&String, &usize)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!("{title}:");
    for (message, count) in sorted.into_iter().take(limit) {
        println!("  {count:>5}  {message}");
    }
}

/// Checks each line of `texts` (`WHERE_DIFF_EXPR`) and prints the verdicts.
async fn replay(ctx: &mut Ctx, texts: &str) {
    let mut failed = false;
    for text in texts.lines() {
        match ctx.check(text).await {
            Verdict::Refused(m) => println!("{text}\n  refused: {m}"),
            Verdict::PgError(m) => println!("{text}\n  Postgres error: {m}"),
            Verdict::Agreed { original_refused } => {
                println!("{text}\n  agreed (where text fails in Postgres: {original_refused:?})");
            }
            Verdict::Mismatch(kind, report) => {
                failed = true;
                println!("{text}\n  {kind:?} mismatch: {report}");
            }
        }
    }
    assert!(!failed, "mismatches above");
}

/// What the cases came to.
#[derive(Default)]
struct Tally {
    compiled: usize,
    compared: usize,
    refusals: BTreeMap<String, usize>,
    pg_errors: BTreeMap<String, usize>,
    original_refused: BTreeMap<String, usize>,
    failures: Vec<String>,
    seen_failures: Vec<String>,
}

impl Tally {
    fn note_original(&mut self, refused: &str) {
        let mut fields = refused.splitn(3, ": ");
        let kind = fields.next().unwrap_or_default();
        let message: String = fields.next().unwrap_or_default().chars().take(50).collect();
        let entry = self
            .original_refused
            .entry(format!("{kind}: {message}"))
            .or_default();
        *entry += 1;
        if *entry == 1 {
            println!("note: the where text (not the rendered SQL) {refused}");
        }
    }

    fn print(&self, ctx: &Ctx, cases: usize, started: Instant) {
        let refused: usize = self.refusals.values().sum();
        let pg_errored: usize = self.pg_errors.values().sum();
        println!(
            "where_differential: {cases} cases: {} compiled, {refused} refused, {pg_errored} \
             Postgres errors, {} compared ({} failures) in {:.1?}",
            self.compiled,
            self.compared,
            self.failures.len(),
            started.elapsed()
        );
        println!(
            "rows Postgres failed on (per-row fallback): {}, where ampere computed a value: {}, \
             of them true: {}",
            ctx.stats.pg_row_errors,
            ctx.stats.pg_row_errors_ampere_value,
            ctx.stats.pg_row_errors_ampere_true
        );
        for (error, sample) in &ctx.stats.pg_row_error_samples {
            println!("  {error}: e.g. {sample}");
        }
        print_distribution("refusals", &self.refusals, 40);
        print_distribution("Postgres errors", &self.pg_errors, 20);
        print_distribution(
            "where texts that fail in Postgres although their rendered SQL does not",
            &self.original_refused,
            20,
        );
    }
}

#[tokio::test]
async fn ampere_evaluates_every_where_clause_exactly_as_postgres_filters_it() {
    let started = Instant::now();
    let seed: u64 = env_or("WHERE_DIFF_SEED", DEFAULT_SEED);
    let cases: usize = env_or("WHERE_DIFF_CASES", DEFAULT_CASES);
    let max_failures: usize = env_or("WHERE_DIFF_MAX_FAILURES", MAX_FAILURES);
    println!(
        "where_differential: seed {seed}, {cases} cases; replay with\n  \
         WHERE_DIFF_SEED={seed} WHERE_DIFF_CASES={cases} cargo test -p ampere-io-real \
         --test where_differential -- --nocapture"
    );
    let mut ctx = setup(seed).await;
    if let Ok(texts) = std::env::var("WHERE_DIFF_EXPR") {
        replay(&mut ctx, &texts).await;
        return;
    }

    let mut generator = Gen {
        rng: Rng(seed),
        infinite_intervals: ctx.infinite_intervals,
    };
    let mut tally = Tally::default();
    for case in 0..cases {
        let depth = 1 + generator.rng.below(4);
        let node = generator.expr(Ty::Bool, depth);
        let text = node.render();
        let verdict = ctx.check(&text).await;
        if !matches!(verdict, Verdict::Refused(_)) {
            tally.compiled += 1;
        }
        match verdict {
            Verdict::Refused(m) => *tally.refusals.entry(refusal_bucket(&m)).or_default() += 1,
            Verdict::PgError(m) => {
                *tally
                    .pg_errors
                    .entry(m.chars().take(70).collect())
                    .or_default() += 1;
            }
            Verdict::Agreed { original_refused } => {
                tally.compared += 1;
                if let Some(r) = original_refused {
                    tally.note_original(&r);
                }
            }
            Verdict::Mismatch(kind, report) => {
                println!("case {case}: {kind:?} mismatch on {text}; shrinking");
                let (small, report) = ctx.shrink(node, kind, report).await;
                let small_text = small.render();
                if !tally.seen_failures.contains(&small_text) {
                    let message = format!(
                        "{kind:?} mismatch (case {case}, seed {seed})\n  where: {small_text}\n  \
                         replay: WHERE_DIFF_SEED={seed} WHERE_DIFF_EXPR={} cargo test -p \
                         ampere-io-real --test where_differential -- --nocapture\n  {report}",
                        quote(&small_text)
                    );
                    println!("{message}");
                    tally.failures.push(message);
                    tally.seen_failures.push(small_text);
                }
                if tally.failures.len() >= max_failures {
                    break;
                }
            }
        }
    }
    tally.print(&ctx, cases, started);
    assert!(
        tally.failures.is_empty(),
        "ampere and Postgres disagree:\n\n{}",
        tally.failures.join("\n\n")
    );
}
