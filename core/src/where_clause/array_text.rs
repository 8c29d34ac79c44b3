//! Postgres's array text format, read as `array_in` and written as `array_out` do (Postgres 15,
//! `src/backend/utils/adt/arrayfuncs.c`) for element types whose delimiter is `,` (every type
//! but `box`).
//!
//! * `{}` is the empty array (no dimensions); `{1,2,3}` one dimension; `{{1,2},{3,4}}` two, and
//!   sub-arrays must be rectangular; at most 6 dimensions.
//! * Elements may be double-quoted; a backslash escapes the next character, inside or outside
//!   quotes. Whitespace around an element is dropped, inside it kept. An unquoted, unescaped
//!   `NULL` (any case) is SQL NULL; `"NULL"` is the string.
//! * An optional decoration gives the bounds: `[0:1]={1,2}`, `[1:2][1:1]={{1},{2}}`, `[3]={…}`
//!   (lower bound 1); it must agree with the braces. Bounds are read with C's `atoi`, as
//!   Postgres does (`[4294967297:4294967297]` is `[1:1]`).
//!
//! One deliberate difference: Postgres 15 accepts some literals whose sub-arrays nest to
//! different depths (`{{1},{{2}}}` reads as `{{{1}},{{2}}}`, `{{{1}},{2}}` as `{}`; fixed in
//! Postgres 17); this module rejects them as malformed, so a caller refuses such a constant.
//!
//! This module owns the array syntax only. It never parses or formats element values (the
//! caller's `element` closures do) and never compares elements.

use std::fmt::Write as _;

/// Postgres's `MAXDIM`: the most dimensions an array may have.
pub const MAX_DIMENSIONS: usize = 6;

/// Postgres's `MaxArraySize`: the most elements an array may have.
pub const MAX_ARRAY_SIZE: usize = 134_217_727;

/// One dimension of an array: its lower bound (subscript of the first element) and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArrayDim {
    /// The subscript of the first element along this dimension (1 unless decorated).
    pub lower: i32,
    /// The number of elements along this dimension (never 0 in a parsed array).
    pub len: u32,
}

impl ArrayDim {
    /// The subscript of the last element (`lower + len - 1`).
    pub fn upper(self) -> i64 {
        i64::from(self.lower) + i64::from(self.len) - 1
    }
}

/// A Postgres array value: dimensions and elements in row-major order (`None` = SQL NULL).
///
/// The empty array has no dimensions and no elements; otherwise `elements.len()` is the product
/// of the dimension lengths.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PgArray<T> {
    /// Outermost dimension first; empty for the empty array.
    pub dims: Vec<ArrayDim>,
    /// All elements, row-major (the last subscript varies fastest).
    pub elements: Vec<Option<T>>,
}

impl<T> PgArray<T> {
    /// The empty array `{}`.
    pub const fn empty() -> Self {
        Self {
            dims: Vec::new(),
            elements: Vec::new(),
        }
    }

    /// A one-dimensional array with lower bound 1 (the empty array if `elements` is empty, or
    /// absurdly longer than any Postgres array can be: more than `u32::MAX`).
    pub fn from_elements(elements: Vec<Option<T>>) -> Self {
        match u32::try_from(elements.len()) {
            Ok(0) | Err(_) => Self::empty(),
            Ok(len) => Self {
                dims: vec![ArrayDim { lower: 1, len }],
                elements,
            },
        }
    }

    /// Whether the shapes agree as Postgres's array equality (`array_eq`, also `<>`) requires
    /// before comparing elements: same number of dimensions, same lengths **and same lower
    /// bounds** (`'[0:1]={1,2}'::int[] = '{1,2}'::int[]` is false, and so is
    /// `'{{1,2}}'::int[] = '{1,2}'::int[]`). `array_eq` then compares elements pairwise with
    /// the element type's `=`, treating two NULL elements as equal and NULL vs non-NULL as
    /// unequal (`ARRAY[NULL]::int[] = ARRAY[NULL]::int[]` is true; it never yields NULL for
    /// non-NULL arrays).
    pub fn dims_equal<U>(&self, other: &PgArray<U>) -> bool {
        self.dims == other.dims
    }
}

/// Why array text was rejected; `Display` is Postgres's own message (without its detail line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayTextError<E> {
    /// The text is not an array literal (SQLSTATE 22P02).
    #[error("malformed array literal: \"{text}\"")]
    Malformed {
        /// The text Postgres quotes: the whole input, or from the first `{` on for errors
        /// inside the braces (as `ArrayCount` reports them).
        text: String,
        /// Postgres's `DETAIL` line, for diagnostics only (not part of the message).
        detail: &'static str,
    },
    /// More than [`MAX_DIMENSIONS`] dimensions (decoration or braces) (SQLSTATE 54000).
    #[error("number of array dimensions ({ndim}) exceeds the maximum allowed (6)")]
    TooManyDimensions {
        /// The dimension count reached.
        ndim: usize,
    },
    /// A decoration `[m:n]` with `n < m` (SQLSTATE 2202E).
    #[error("upper bound cannot be less than lower bound")]
    UpperBelowLower,
    /// `lower + len` overflows a 32-bit integer (SQLSTATE 54000).
    #[error("array lower bound is too large: {lower}")]
    LowerBoundTooLarge {
        /// The offending lower bound.
        lower: i32,
    },
    /// More than [`MAX_ARRAY_SIZE`] elements (SQLSTATE 54000).
    #[error("array size exceeds the maximum allowed (134217727)")]
    SizeExceeded,
    /// The element input function rejected an element.
    #[error("{0}")]
    Element(E),
}

/// Parses array text as `array_in` does: structure first (any structural error wins), then
/// `element` on each non-NULL element's de-escaped text, in row-major order, stopping at the
/// first element error.
pub fn parse_array<T, E>(
    text: &str,
    mut element: impl FnMut(&str) -> Result<T, E>,
) -> Result<PgArray<T>, ArrayTextError<E>> {
    // Postgres quotes the whole input, except for errors in the braces (`ArrayCount`), where it
    // quotes the text from the first `{`.
    let malformed = |detail| ArrayTextError::Malformed {
        text: text.to_owned(),
        detail,
    };
    let (decoration, body) = read_decoration(text).map_err(|e| e.into_error(&malformed))?;
    let body_malformed = |detail| ArrayTextError::Malformed {
        text: body.to_owned(),
        detail,
    };
    let shape = ArrayShape::scan(body).map_err(|e| e.into_error(&body_malformed))?;
    let dims = match decoration {
        None => shape.dims().map(|len| ArrayDim { lower: 1, len }).collect(),
        Some(bounds) => {
            let dims: Vec<u32> = shape.dims().collect();
            match_decoration(&bounds, &dims).map_err(|e| e.into_error(&malformed))?
        }
    };
    check_size(&dims)?;
    let mut elements = Vec::with_capacity(shape.count);
    for_each_element(body, |item| {
        let value = item
            .map(&mut element)
            .transpose()
            .map_err(ArrayTextError::Element)?;
        elements.push(value);
        Ok(())
    })?;
    Ok(PgArray { dims, elements })
}

/// A structural error before it is tied to the input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Malformed(&'static str),
    TooManyDimensions(usize),
    UpperBelowLower,
}

impl Syntax {
    fn into_error<E>(
        self,
        malformed: &impl Fn(&'static str) -> ArrayTextError<E>,
    ) -> ArrayTextError<E> {
        match self {
            Self::Malformed(detail) => malformed(detail),
            Self::TooManyDimensions(ndim) => ArrayTextError::TooManyDimensions { ndim },
            Self::UpperBelowLower => ArrayTextError::UpperBelowLower,
        }
    }
}

/// `array_isspace`: the C locale's `isspace`.
const fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).copied().is_some_and(is_array_space) {
        at += 1;
    }
    at
}

/// A dimension decoration bound pair: `(lower, upper)` as read by `atoi`.
type Bounds = (i32, i32);

/// Reads the optional `[m:n]…=` decoration; returns it and the text of the braces.
fn read_decoration(text: &str) -> Result<(Option<Vec<Bounds>>, &str), Syntax> {
    let bytes = text.as_bytes();
    let mut bounds = Vec::new();
    let mut at = skip_space(bytes, 0);
    while bytes.get(at) == Some(&b'[') {
        if bounds.len() >= MAX_DIMENSIONS {
            return Err(Syntax::TooManyDimensions(bounds.len() + 1));
        }
        let (pair, next) = read_bounds(bytes, at + 1)?;
        bounds.push(pair);
        at = skip_space(bytes, next);
    }
    if bounds.is_empty() {
        if bytes.get(at) != Some(&b'{') {
            return Err(Syntax::Malformed(
                "Array value must start with \"{\" or dimension information.",
            ));
        }
        return Ok((None, &text[at..]));
    }
    if bytes.get(at) != Some(&b'=') {
        return Err(Syntax::Malformed("Missing \"=\" after array dimensions."));
    }
    at = skip_space(bytes, at + 1);
    if bytes.get(at) != Some(&b'{') {
        return Err(Syntax::Malformed("Array contents must start with \"{\"."));
    }
    Ok((Some(bounds), &text[at..]))
}

/// Reads `m:n]` or `n]` (after the `[`); returns the bounds and the index after `]`.
fn read_bounds(bytes: &[u8], start: usize) -> Result<(Bounds, usize), Syntax> {
    let number_end = |from: usize| {
        let run = bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'-' || **b == b'+');
        from + run.count()
    };
    let mut end = number_end(start);
    if end == start {
        return Err(Syntax::Malformed(
            "\"[\" must introduce explicitly-specified array dimensions.",
        ));
    }
    let mut lower = 1;
    let mut upper_start = start;
    if bytes.get(end) == Some(&b':') {
        lower = atoi(&bytes[start..end]);
        upper_start = end + 1;
        end = number_end(upper_start);
        if end == upper_start {
            return Err(Syntax::Malformed("Missing array dimension value."));
        }
    }
    if bytes.get(end) != Some(&b']') {
        return Err(Syntax::Malformed("Missing \"]\" after array dimensions."));
    }
    let upper = atoi(&bytes[upper_start..end]);
    if upper < lower {
        return Err(Syntax::UpperBelowLower);
    }
    Ok(((lower, upper), end + 1))
}

/// C's `atoi` as glibc implements it (`(int) strtol(s, NULL, 10)`): optional sign, leading
/// digits only, saturating at the 64-bit `long` range, then truncated to 32 bits.
fn atoi(run: &[u8]) -> i32 {
    let (negative, digits) = match run.first() {
        Some(b'-') => (true, &run[1..]),
        Some(b'+') => (false, &run[1..]),
        _ => (false, run),
    };
    let mut value: i64 = 0;
    for &d in digits.iter().take_while(|d| d.is_ascii_digit()) {
        let digit = i64::from(d - b'0');
        let next = value.checked_mul(10).and_then(|v| {
            if negative {
                v.checked_sub(digit)
            } else {
                v.checked_add(digit)
            }
        });
        match next {
            Some(next) => value = next,
            None => {
                value = if negative { i64::MIN } else { i64::MAX };
                break;
            }
        }
    }
    // Truncation to the low 32 bits is exactly C's conversion of `long` to `int` on glibc.
    value as i32
}

/// The decoration's dimensions, which must equal the braces' (`dims` from [`ArrayShape`]).
fn match_decoration(bounds: &[Bounds], dims: &[u32]) -> Result<Vec<ArrayDim>, Syntax> {
    let mismatch = Syntax::Malformed("Specified array dimensions do not match array contents.");
    if bounds.len() != dims.len() {
        return Err(mismatch);
    }
    bounds
        .iter()
        .zip(dims)
        .map(|(&(lower, upper), &len)| {
            // C computes `ub - lb + 1` in `int`; it wraps on overflow.
            let declared = upper.wrapping_sub(lower).wrapping_add(1);
            match u32::try_from(declared) {
                Ok(declared) if declared == len => Ok(ArrayDim { lower, len }),
                _ => Err(mismatch),
            }
        })
        .collect()
}

/// `ArrayGetNItems` and `ArrayCheckBounds`.
fn check_size<E>(dims: &[ArrayDim]) -> Result<(), ArrayTextError<E>> {
    let mut items: usize = 1;
    for dim in dims {
        items = items.saturating_mul(usize::try_from(dim.len).unwrap_or(usize::MAX));
        if items > MAX_ARRAY_SIZE {
            return Err(ArrayTextError::SizeExceeded);
        }
    }
    for dim in dims {
        let len = i32::try_from(dim.len).map_err(|_| ArrayTextError::SizeExceeded)?;
        if dim.lower.checked_add(len).is_none() {
            return Err(ArrayTextError::LowerBoundTooLarge { lower: dim.lower });
        }
    }
    Ok(())
}

/// The brace structure of array text, validated as `ArrayCount` does.
#[derive(Debug, Default)]
struct ArrayShape {
    /// Children per level at each depth, outermost first; all `None` for `{}`.
    children: [Option<u32>; MAX_DIMENSIONS],
    /// Number of elements.
    count: usize,
    /// Depth of the levels holding elements, once one has been seen.
    leaf_depth: Option<usize>,
}

impl ArrayShape {
    /// Validates `body` (starting at its `{`): braces, quoting, rectangularity, trailing junk.
    fn scan(body: &str) -> Result<Self, Syntax> {
        let bytes = body.as_bytes();
        let mut shape = Self::default();
        let after = skip_space(bytes, 1);
        let end = if bytes.get(after) == Some(&b'}') {
            after + 1
        } else {
            shape.level(bytes, 0, 1)?
        };
        if skip_space(bytes, end) != bytes.len() {
            return Err(Syntax::Malformed("Junk after closing right brace."));
        }
        Ok(shape)
    }

    /// Scans the level whose `{` is at `start`, at nesting `depth` (1 = outermost); returns
    /// the index after its `}`.
    fn level(&mut self, bytes: &[u8], start: usize, depth: usize) -> Result<usize, Syntax> {
        if depth > MAX_DIMENSIONS {
            return Err(Syntax::TooManyDimensions(depth));
        }
        let mut at = skip_space(bytes, start + 1);
        let sublevels = bytes.get(at) == Some(&b'{');
        let mut children: u32 = 0;
        loop {
            at = if sublevels {
                self.level(bytes, at, depth + 1)?
            } else {
                self.count += 1;
                element_end(bytes, skip_space(bytes, at))?
            };
            children = children.saturating_add(1);
            at = skip_space(bytes, at);
            match bytes.get(at) {
                Some(b',') if sublevels => at = expect_open(bytes, at + 1)?,
                Some(b',') => at += 1,
                Some(b'}') => break,
                Some(&b) => return Err(unexpected(b)),
                None => return Err(Syntax::Malformed("Unexpected end of input.")),
            }
        }
        self.close_level(depth, children, !sublevels)?;
        Ok(at + 1)
    }

    /// Records a closed level's child count, which must match every level at the same depth.
    fn close_level(
        &mut self,
        depth: usize,
        children: u32,
        holds_elements: bool,
    ) -> Result<(), Syntax> {
        let ragged = Syntax::Malformed(
            "Multidimensional arrays must have sub-arrays with matching dimensions.",
        );
        if holds_elements {
            if self.leaf_depth.is_some_and(|leaf| leaf != depth) {
                return Err(ragged);
            }
            self.leaf_depth = Some(depth);
        }
        match &mut self.children[depth - 1] {
            Some(seen) if *seen != children => Err(ragged),
            Some(_) => Ok(()),
            slot @ None => {
                *slot = Some(children);
                Ok(())
            }
        }
    }

    /// The dimension lengths, outermost first (none for `{}`).
    fn dims(&self) -> impl Iterator<Item = u32> + '_ {
        let ndim = self.leaf_depth.unwrap_or(0);
        self.children[..ndim].iter().map(|len| len.unwrap_or(0))
    }
}

/// After a `,` between sub-arrays: whitespace, then the next sub-array's `{`.
fn expect_open(bytes: &[u8], at: usize) -> Result<usize, Syntax> {
    let at = skip_space(bytes, at);
    match bytes.get(at) {
        Some(b'{') => Ok(at),
        Some(&b) => Err(unexpected(b)),
        None => Err(Syntax::Malformed("Unexpected end of input.")),
    }
}

/// `ArrayCount`'s complaint about a byte where it does not belong.
const fn unexpected(b: u8) -> Syntax {
    Syntax::Malformed(match b {
        b'{' => "Unexpected \"{\" character.",
        b'}' => "Unexpected \"}\" character.",
        b',' => "Unexpected \",\" character.",
        b'\\' => "Unexpected \"\\\" character.",
        _ => "Unexpected array element.",
    })
}

/// Validates one element starting at `at` (leading whitespace already skipped): a quoted
/// string, or unquoted characters and escapes. Returns the index after it (before any `,`/`}`).
fn element_end(bytes: &[u8], mut at: usize) -> Result<usize, Syntax> {
    let end_of_input = Syntax::Malformed("Unexpected end of input.");
    match bytes.get(at) {
        None => return Err(end_of_input),
        Some(b'"') => {
            at += 1;
            loop {
                match bytes.get(at) {
                    None => return Err(end_of_input),
                    Some(b'"') => return Ok(at + 1),
                    Some(b'\\') if at + 1 >= bytes.len() => return Err(end_of_input),
                    Some(b'\\') => at += 2,
                    Some(_) => at += 1,
                }
            }
        }
        Some(&b @ (b',' | b'}' | b'{')) => return Err(unexpected(b)),
        Some(_) => {}
    }
    loop {
        match bytes.get(at) {
            None => return Err(end_of_input),
            Some(b',' | b'}') => return Ok(at),
            Some(&b @ (b'"' | b'{')) => return Err(unexpected(b)),
            Some(b'\\') if at + 1 >= bytes.len() => return Err(end_of_input),
            Some(b'\\') => at += 2,
            Some(_) => at += 1,
        }
    }
}

/// Calls `visit` on each element of validated array text, in order: `None` for an unquoted
/// `NULL`, else the de-escaped text (`ReadArrayStr`'s rules for dropping whitespace). Stops at
/// the first error `visit` returns.
fn for_each_element<E>(
    body: &str,
    mut visit: impl FnMut(Option<&str>) -> Result<(), E>,
) -> Result<(), E> {
    let mut item = ElementText::default();
    let mut chars = body.chars();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(escaped) = chars.next() {
                    item.push_significant(escaped);
                }
                item.quoted = true;
            }
            '"' => {
                in_quotes = !in_quotes;
                item.quoted = true;
                item.started = true;
                item.end = item.text.len();
            }
            _ if in_quotes => item.text.push(c),
            '{' => {}
            ',' | '}' if item.started => {
                let result = visit(item.value());
                item.reset();
                result?;
            }
            ',' | '}' => {}
            _ if u8::try_from(c).is_ok_and(is_array_space) => item.push_space(c),
            _ => item.push_significant(c),
        }
    }
    Ok(())
}

/// The element being read by [`for_each_element`].
#[derive(Debug, Default)]
struct ElementText {
    text: String,
    /// Length of `text` up to its last character that trailing-space trimming keeps.
    end: usize,
    /// Whether any quote or escape was seen (then it cannot be a NULL).
    quoted: bool,
    /// Whether anything but leading whitespace was seen.
    started: bool,
}

impl ElementText {
    fn push_significant(&mut self, c: char) {
        self.text.push(c);
        self.end = self.text.len();
        self.started = true;
    }

    fn push_space(&mut self, c: char) {
        if self.started {
            self.text.push(c);
        }
    }

    /// The finished element, trailing whitespace dropped; `None` for NULL.
    fn value(&mut self) -> Option<&str> {
        self.text.truncate(self.end);
        let null = !self.quoted && self.text.eq_ignore_ascii_case("NULL");
        (!null).then_some(self.text.as_str())
    }

    fn reset(&mut self) {
        self.text.clear();
        self.end = 0;
        self.quoted = false;
        self.started = false;
    }
}

/// Writes `array` as `array_out` does: `{}` when empty, the `[m:n]…=` decoration only if some
/// lower bound is not 1, NULL elements as `NULL`, and elements quoted when empty, equal to
/// `NULL` in any case, or containing `{ } , " \` or whitespace (with `"` and `\` escaped).
///
/// `element` gives each non-NULL element's text output. If `elements` is shorter than the
/// dimensions say, the missing elements are written as `NULL`.
pub fn format_array<T>(array: &PgArray<T>, element: impl Fn(&T) -> String, out: &mut String) {
    if array.dims.is_empty() || array.elements.is_empty() {
        out.push_str("{}");
        return;
    }
    if array.dims.iter().any(|dim| dim.lower != 1) {
        for dim in &array.dims {
            // Writing to a `String` cannot fail.
            let _ = write!(out, "[{}:{}]", dim.lower, dim.upper());
        }
        out.push('=');
    }
    let mut elements = array.elements.iter();
    format_level(&array.dims, &mut elements, &element, out);
}

fn format_level<'a, T: 'a>(
    dims: &[ArrayDim],
    elements: &mut impl Iterator<Item = &'a Option<T>>,
    element: &impl Fn(&T) -> String,
    out: &mut String,
) {
    let Some((dim, inner)) = dims.split_first() else {
        return;
    };
    out.push('{');
    for i in 0..dim.len {
        if i > 0 {
            out.push(',');
        }
        if !inner.is_empty() {
            format_level(inner, elements, element, out);
            continue;
        }
        match elements.next() {
            Some(Some(value)) => quote_element(&element(value), out),
            Some(None) | None => out.push_str("NULL"),
        }
    }
    out.push('}');
}

/// Writes one element's text, quoted and escaped if `array_out` would.
fn quote_element(text: &str, out: &mut String) {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("NULL")
        || text
            .bytes()
            .any(|b| matches!(b, b'{' | b'}' | b',' | b'"' | b'\\') || is_array_space(b));
    if !needs_quotes {
        out.push_str(text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values below are Postgres 15's answers (`'…'::text[]`, `'…'::int4[]`).

    type Parsed = Result<PgArray<String>, ArrayTextError<String>>;

    fn text(literal: &str) -> Parsed {
        parse_array(literal, |s| Ok(s.to_owned()))
    }

    fn int4(literal: &str) -> Result<PgArray<i32>, ArrayTextError<String>> {
        parse_array(literal, |s| {
            s.parse()
                .map_err(|_| format!("invalid input syntax for type integer: \"{s}\""))
        })
    }

    fn out(array: &PgArray<String>) -> String {
        let mut out = String::new();
        format_array(array, Clone::clone, &mut out);
        out
    }

    /// Parses with text elements and writes back, as `'…'::text[]::text` does.
    fn round_trip(literal: &str) -> String {
        out(&text(literal).expect("test literal parses"))
    }

    fn some(items: &[&str]) -> Vec<Option<String>> {
        items.iter().map(|s| Some((*s).to_owned())).collect()
    }

    fn dim(lower: i32, len: u32) -> ArrayDim {
        ArrayDim { lower, len }
    }

    fn message(literal: &str) -> String {
        text(literal)
            .map(|_| ())
            .expect_err("test literal is rejected")
            .to_string()
    }

    #[test]
    fn braces_give_the_dimensions() {
        assert_eq!(text("{}"), Ok(PgArray::empty()));
        assert_eq!(text(" { } "), Ok(PgArray::empty()));
        let ints = int4("{1,2,3}").expect("parses");
        assert_eq!(ints.dims, vec![dim(1, 3)]);
        assert_eq!(ints.elements, vec![Some(1), Some(2), Some(3)]);
        let square = int4("{{1,2},{3,4}}").expect("parses");
        assert_eq!(square.dims, vec![dim(1, 2), dim(1, 2)]);
        assert_eq!(square.elements, vec![Some(1), Some(2), Some(3), Some(4)]);
    }

    #[test]
    fn quoted_elements_are_de_escaped() {
        let array = text(r#"{"a b","c\"d","e\\f"}"#).expect("parses");
        assert_eq!(array.elements, some(&["a b", "c\"d", "e\\f"]));
        assert_eq!(out(&array), r#"{"a b","c\"d","e\\f"}"#);
        assert_eq!(round_trip(r#"{"a\"b", a\,b}"#), r#"{"a\"b","a,b"}"#);
    }

    #[test]
    fn only_an_unquoted_unescaped_null_is_null() {
        let array = text(r#"{"NULL",NULL,nULl,\N\U\L\L,NULLx}"#).expect("parses");
        let expected = vec![Some("NULL".to_owned()), None, None, Some("NULL".to_owned())];
        assert_eq!(array.elements[..4], expected);
        assert_eq!(out(&array), r#"{"NULL",NULL,NULL,"NULL",NULLx}"#);
    }

    #[test]
    fn whitespace_around_elements_is_dropped_and_inside_kept() {
        assert_eq!(round_trip("{a b ,  \"c\" , d\\ }"), r#"{"a b",c,"d "}"#);
        assert_eq!(round_trip("{\"a\"  , b  c }"), r#"{a,"b  c"}"#);
        assert_eq!(round_trip("{ \"\" }"), r#"{""}"#);
        assert_eq!(round_trip("{\" q \"}"), r#"{" q "}"#);
    }

    #[test]
    fn a_dimension_decoration_sets_lower_bounds() {
        let array = int4("[0:1]={1,2}").expect("parses");
        assert_eq!(array.dims, vec![dim(0, 2)]);
        assert_eq!(round_trip(" [0:1] = {1,2} "), "[0:1]={1,2}");
        assert_eq!(round_trip("[1:2][1:1]={{1},{2}}"), "{{1},{2}}");
        assert_eq!(round_trip("[3]={1,2,3}"), "{1,2,3}");
        assert_eq!(
            round_trip("[0:1][-1:0]={{1,2},{3,4}}"),
            "[0:1][-1:0]={{1,2},{3,4}}"
        );
        assert_eq!(
            round_trip("[-2147483648:-2147483648]={1}"),
            "[-2147483648:-2147483648]={1}"
        );
    }

    #[test]
    fn decoration_bounds_are_read_with_atoi() {
        assert_eq!(round_trip("[4294967297:4294967297]={1}"), "{1}");
        assert_eq!(round_trip("[+1:2]={1,2}"), "{1,2}");
        assert_eq!(
            message("[1:99999999999999999999]={1}"),
            "upper bound cannot be less than lower bound"
        );
        assert_eq!(
            message("[5:4]={}"),
            "upper bound cannot be less than lower bound"
        );
    }

    #[test]
    fn bounds_must_fit_in_int4() {
        assert_eq!(
            message("[2147483647:2147483647]={1}"),
            "array lower bound is too large: 2147483647"
        );
    }

    #[test]
    fn structural_errors_quote_the_braces_and_decoration_errors_the_whole_text() {
        assert_eq!(message(" {L"), r#"malformed array literal: "{L""#);
        assert_eq!(message("{1,2}x"), r#"malformed array literal: "{1,2}x""#);
        assert_eq!(
            message("[0:1]= { \"a\"  "),
            r#"malformed array literal: "{ "a"  ""#
        );
        assert_eq!(
            message("[1:1]={}"),
            r#"malformed array literal: "[1:1]={}""#
        );
        assert_eq!(
            message("[0:2]={1,2}"),
            r#"malformed array literal: "[0:2]={1,2}""#
        );
        assert_eq!(message(""), r#"malformed array literal: """#);
        assert_eq!(message("1,2"), r#"malformed array literal: "1,2""#);
    }

    #[test]
    fn sub_arrays_must_be_rectangular() {
        assert_eq!(
            message("{{1,2},{3}}"),
            r#"malformed array literal: "{{1,2},{3}}""#
        );
        assert_eq!(
            message("{{1,2},3}"),
            r#"malformed array literal: "{{1,2},3}""#
        );
        assert_eq!(message("{1,{2}}"), r#"malformed array literal: "{1,{2}}""#);
        assert_eq!(message("{{}}"), r#"malformed array literal: "{{}}""#);
    }

    #[test]
    fn sub_arrays_at_different_depths_are_rejected_where_postgres_15_misreads_them() {
        // Postgres 15 reads these as `{{{1}},{{2}}}` and `{}`; Postgres 17 rejects them.
        assert!(text("{{1},{{2}}}").is_err());
        assert!(text("{{{1}},{2}}").is_err());
    }

    #[test]
    fn misplaced_quotes_and_separators_are_malformed() {
        for literal in [
            r#"{"a"b}"#,
            r#"{a "b"}"#,
            r#"{"a" "b"}"#,
            "{,}",
            "{a,}",
            "{a",
            "{a\\",
        ] {
            assert!(
                matches!(text(literal), Err(ArrayTextError::Malformed { .. })),
                "{literal}"
            );
        }
    }

    #[test]
    fn seven_dimensions_are_too_many() {
        let message_7 = "number of array dimensions (7) exceeds the maximum allowed (6)";
        assert_eq!(message("{{{{{{{1}}}}}}}"), message_7);
        assert_eq!(message("[1][1][1][1][1][1][1]={1}"), message_7);
        assert_eq!(round_trip("{{{{{{1}}}}}}"), "{{{{{{1}}}}}}");
    }

    #[test]
    fn structure_is_checked_before_any_element() {
        let mut calls = 0;
        let parsed = parse_array("{1x,}", |s: &str| {
            calls += 1;
            Err::<i32, _>(s.to_owned())
        });
        assert!(matches!(parsed, Err(ArrayTextError::Malformed { .. })));
        assert_eq!(calls, 0);
    }

    #[test]
    fn the_first_element_error_stops_parsing() {
        let mut seen = Vec::new();
        let parsed = parse_array("{1,x,y}", |s: &str| {
            seen.push(s.to_owned());
            s.parse::<i32>()
                .map_err(|_| format!("invalid input syntax for type integer: \"{s}\""))
        });
        assert_eq!(
            parsed.map(|_| ()).map_err(|e| e.to_string()),
            Err("invalid input syntax for type integer: \"x\"".to_owned())
        );
        assert_eq!(seen, ["1", "x"]);
    }

    #[test]
    fn output_quotes_exactly_what_array_out_quotes() {
        let items = [
            "", "NULL", "null", "a b", "\t", "\\", "\"", "{", "}", ",", "v", "\u{c}", "\r", "\n",
            "ä", " x", "x ", "\u{1}", "Nul", "NULLs", "[1]", ":", "=",
        ];
        let array = PgArray::from_elements(some(&items));
        let expected =
            "{\"\",\"NULL\",\"null\",\"a b\",\"\t\",\"\\\\\",\"\\\"\",\"{\",\"}\",\",\",v,\
                        \"\u{c}\",\"\r\",\"\n\",ä,\" x\",\"x \",\u{1},Nul,NULLs,[1],:,=}";
        assert_eq!(out(&array), expected);
        assert_eq!(text(expected), Ok(array));
    }

    #[test]
    fn output_nests_braces_and_writes_nulls() {
        let array = PgArray {
            dims: vec![dim(1, 2), dim(1, 2)],
            elements: vec![
                Some("a".to_owned()),
                Some("b c".to_owned()),
                None,
                Some("\"".into()),
            ],
        };
        assert_eq!(out(&array), r#"{{a,"b c"},{NULL,"\""}}"#);
        assert_eq!(text(&out(&array)), Ok(array));
        assert_eq!(out(&PgArray::empty()), "{}");
        assert_eq!(round_trip("[-5:-3]={x,y,z}"), "[-5:-3]={x,y,z}");
    }

    #[test]
    fn array_equality_compares_lower_bounds_too() {
        let shifted = int4("[0:1]={1,2}").expect("parses");
        let plain = int4("{1,2}").expect("parses");
        let nested = int4("{{1,2}}").expect("parses");
        assert!(!shifted.dims_equal(&plain));
        assert!(!nested.dims_equal(&plain));
        assert!(plain.dims_equal(&int4("[1:2]={3,4}").expect("parses")));
        assert!(PgArray::<i32>::empty().dims_equal(&int4("{}").expect("parses")));
    }
}
