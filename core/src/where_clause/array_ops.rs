//! Array subscripts, slices and concatenation, computed as Postgres 15 does
//! (`src/backend/utils/adt/arrayfuncs.c`, `arraysubs.c`, `array_userfuncs.c`), for any element
//! type: elements are moved or cloned, never compared or converted.
//!
//! * `a[i][j]…` ([`subscript`]): NULL unless every subscript is non-NULL, their number equals
//!   the array's dimensions and each lies within its dimension's bounds (lower bounds count:
//!   `('[5:6]={1,2}'::int[])[5]` is 1).
//! * `a[l:u]…` ([`slice`]): once any subscript is a slice all are, a plain `[j]` meaning
//!   `[1:j]` ([`SliceBounds::plain`]); a NULL bound makes the result NULL (the caller's
//!   check, after evaluating every bound); bounds are clamped to the array, dimensions past the given subscripts are taken whole, and the result
//!   has lower bounds 1. More subscripts than dimensions, or an empty range, give `{}`.
//! * `array_cat` / `anyarray || anyarray` ([`array_cat`]), `array_append` / `anyarray ||
//!   anyelement` ([`array_append`]), `array_prepend` / `anyelement || anyarray`
//!   ([`array_prepend`]), with their lower bounds and errors.
//! * More than six subscripts are refused when Postgres parses the expression
//!   ([`check_subscript_count`]), never at run time.
//!
//! Postgres computes `lower + length` in C `int` with wrapping (`-fwrapv`). A parsed array
//! always has `lower + length <= i32::MAX`, but `array_prepend` can build one whose upper bound
//! is `i32::MAX` (`array_prepend(2, '[2147483646:2147483646]={1}')` is
//! `[2147483646:2147483647]={2,1}`); subscripts and slices of such an array wrap exactly as
//! Postgres's do (every `a[i]` is NULL, `a[:5]` is the whole array).

use super::array_text::{ArrayDim, PgArray, MAX_ARRAY_SIZE, MAX_DIMENSIONS};

/// Postgres's `MaxAllocSize`: the largest single memory request.
const MAX_ALLOC_SIZE: u64 = 0x3fff_ffff;

/// `sizeof(Datum)` on 64-bit builds.
const DATUM_SIZE: u64 = 8;

/// Why an array operation failed; `Display` is Postgres's own message (without its detail
/// line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayOpError {
    /// More than [`MAX_DIMENSIONS`] subscripts (SQLSTATE 54000), raised by Postgres when it
    /// parses the expression (`array_subscript_transform`), without an error position.
    #[error("number of array dimensions ({count}) exceeds the maximum allowed (6)")]
    TooManySubscripts {
        /// The number of subscripts written.
        count: usize,
    },
    /// `array_cat` of arrays whose shapes do not fit together (SQLSTATE 2202E).
    #[error("cannot concatenate incompatible arrays")]
    IncompatibleArrays(ConcatMismatch),
    /// `array_append` / `array_prepend` of an array with two or more dimensions (SQLSTATE
    /// 22000).
    #[error("argument must be empty or one-dimensional array")]
    NotOneDimensional,
    /// The new element's subscript does not fit in `int4` (SQLSTATE 22003): `array_prepend`
    /// to an array whose lower bound is `-2147483648`, `array_append` to one whose upper bound
    /// is `2147483647` (only `array_prepend` builds such an array).
    #[error("integer out of range")]
    IntegerOutOfRange,
    /// More than [`MAX_ARRAY_SIZE`] elements (SQLSTATE 54000).
    #[error("array size exceeds the maximum allowed (134217727)")]
    SizeExceeded,
    /// The result's `lower + length` of some dimension overflows `int4` (SQLSTATE 54000).
    #[error("array lower bound is too large: {lower}")]
    LowerBoundTooLarge {
        /// That dimension's lower bound.
        lower: i32,
    },
    /// `array_append` / `array_prepend` of an array of more than 119,304,646 elements:
    /// Postgres's working copy of the elements (one 8-byte `Datum` each, plus an eighth of
    /// spare room) would exceed 1 GB (SQLSTATE XX000).
    #[error("invalid memory alloc request size {size}")]
    AllocTooLarge {
        /// The bytes Postgres asked for.
        size: u64,
    },
}

/// Which `array_cat` shape rule failed: Postgres's `DETAIL` line, for diagnostics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcatMismatch {
    /// The dimension counts differ by more than one.
    Dimensionality {
        /// The left array's dimension count.
        left: usize,
        /// The right array's dimension count.
        right: usize,
    },
    /// Same dimension count, but some inner dimension differs in length or lower bound.
    ElementDimensions,
    /// The smaller array's dimensions differ (in length or lower bound) from the bigger
    /// array's inner ones.
    Dimensions,
}

impl ConcatMismatch {
    /// Postgres's `DETAIL` line.
    pub fn detail(self) -> String {
        match self {
            Self::Dimensionality { left, right } => format!(
                "Arrays of {left} and {right} dimensions are not compatible for concatenation."
            ),
            Self::ElementDimensions => "Arrays with differing element dimensions are not \
                                        compatible for concatenation."
                .to_owned(),
            Self::Dimensions => {
                "Arrays with differing dimensions are not compatible for concatenation.".to_owned()
            }
        }
    }
}

/// The parse-time check of a subscript list `a[…][…]…` (slices or not): at most
/// [`MAX_DIMENSIONS`] subscripts, whatever the array's value (even NULL) or dimensions.
pub fn check_subscript_count(count: usize) -> Result<(), ArrayOpError> {
    if count > MAX_DIMENSIONS {
        return Err(ArrayOpError::TooManySubscripts { count });
    }
    Ok(())
}

/// A dimension's length as Postgres's C `int` holds it (a length never exceeds
/// [`MAX_ARRAY_SIZE`]).
fn c_len(dim: ArrayDim) -> i32 {
    i32::try_from(dim.len).unwrap_or(i32::MAX)
}

/// `lb + dim` in C `int` with wrapping: one past the upper bound, unless that overflowed.
fn c_end(dim: ArrayDim) -> i32 {
    dim.lower.wrapping_add(c_len(dim))
}

/// Distance from `from` to `to` (`from <= to`) as an index.
fn distance(from: i32, to: i32) -> usize {
    usize::try_from(i64::from(to) - i64::from(from)).unwrap_or(0)
}

/// `a[s1][s2]…` (`array_get_element`), borrowing the element: `None` for a NULL subscript, a
/// subscript count other than the array's dimension count (the empty array has none), a
/// subscript out of bounds, or a NULL element.
pub fn subscript_ref<'a, T>(a: &'a PgArray<T>, subscripts: &[Option<i32>]) -> Option<&'a T> {
    if subscripts.len() != a.dims.len() || a.dims.is_empty() {
        return None;
    }
    let mut offset = 0usize;
    for (&dim, &sub) in a.dims.iter().zip(subscripts) {
        let sub = sub?;
        if sub < dim.lower || sub >= c_end(dim) {
            return None;
        }
        let len = usize::try_from(dim.len).ok()?;
        offset = offset
            .checked_mul(len)?
            .checked_add(distance(dim.lower, sub))?;
    }
    a.elements.get(offset)?.as_ref()
}

/// `a[s1][s2]…` (`array_get_element`): `None` for a NULL subscript, a subscript count other
/// than the array's dimension count (the empty array has none), a subscript out of bounds, or
/// a NULL element.
pub fn subscript<T: Clone>(a: &PgArray<T>, subscripts: &[Option<i32>]) -> Option<T> {
    subscript_ref(a, subscripts).cloned()
}

/// One subscript of a slice, `[lower:upper]`, its bounds evaluated: `None` is an omitted bound
/// (`[:u]`, `[l:]`: the array's own). A bound that evaluates to NULL makes the whole slice
/// NULL; the caller returns NULL then, after evaluating every bound (Postgres evaluates them
/// all before looking for NULLs: `a[NULL:1/0]` fails with division by zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceBounds {
    /// The first subscript taken.
    pub lower: Option<i32>,
    /// The last subscript taken.
    pub upper: Option<i32>,
}

impl SliceBounds {
    /// A plain `[j]` among slices: `[1:j]` (Postgres's parser makes the lower bound the
    /// constant 1, not the array's lower bound).
    pub const fn plain(j: i32) -> Self {
        Self {
            lower: Some(1),
            upper: Some(j),
        }
    }
}

/// `a[l1:u1][l2:u2]…` (`array_get_slice`), its bounds non-NULL: the elements within the
/// bounds, clamped to the array, dimensions past the subscripts taken whole, with lower bounds
/// 1 — or `{}` when the array has fewer dimensions than subscripts or some range is empty.
pub fn slice<T: Clone>(a: &PgArray<T>, bounds: &[SliceBounds]) -> PgArray<T> {
    match slice_ranges(a, bounds) {
        Some(ranges) => extract(a, &ranges),
        None => PgArray::empty(),
    }
}

/// The clamped `(lower, upper)` of every dimension, or `None` for an empty result.
fn slice_ranges<T>(a: &PgArray<T>, bounds: &[SliceBounds]) -> Option<Vec<(i32, i32)>> {
    let ndim = a.dims.len();
    if ndim < bounds.len() || ndim == 0 || ndim > MAX_DIMENSIONS {
        return None;
    }
    let mut ranges = Vec::with_capacity(ndim);
    for (i, &dim) in a.dims.iter().enumerate() {
        let SliceBounds { lower, upper } = bounds.get(i).copied().unwrap_or(SliceBounds {
            lower: None,
            upper: None,
        });
        let end = c_end(dim);
        let lower = lower.filter(|&l| l >= dim.lower).unwrap_or(dim.lower);
        let upper = upper.filter(|&u| u < end).unwrap_or(end.wrapping_sub(1));
        if lower > upper {
            return None;
        }
        ranges.push((lower, upper));
    }
    Some(ranges)
}

/// The sub-array within `ranges` (non-empty, inside the array), with lower bounds 1.
fn extract<T: Clone>(a: &PgArray<T>, ranges: &[(i32, i32)]) -> PgArray<T> {
    let dims: Vec<ArrayDim> = ranges
        .iter()
        .map(|&(lower, upper)| ArrayDim {
            lower: 1,
            len: u32::try_from(distance(lower, upper) + 1).unwrap_or(u32::MAX),
        })
        .collect();
    // Elements between consecutive subscripts of each dimension.
    let mut strides = vec![1usize; a.dims.len()];
    for i in (0..a.dims.len().saturating_sub(1)).rev() {
        let len = usize::try_from(a.dims[i + 1].len).unwrap_or(0);
        strides[i] = strides[i + 1].saturating_mul(len);
    }
    let count = dims.iter().map(|d| d.len as usize).product();
    let mut elements = Vec::with_capacity(count);
    copy_level(a, ranges, &strides, 0, 0, &mut elements);
    PgArray { dims, elements }
}

/// Appends, in row-major order, the elements of `ranges[depth..]` within the block that
/// starts at element offset `base`.
fn copy_level<T: Clone>(
    a: &PgArray<T>,
    ranges: &[(i32, i32)],
    strides: &[usize],
    depth: usize,
    base: usize,
    out: &mut Vec<Option<T>>,
) {
    let (lower, upper) = ranges[depth];
    let first = distance(a.dims[depth].lower, lower);
    for step in 0..=distance(lower, upper) {
        let offset = base + (first + step) * strides[depth];
        if depth + 1 == ranges.len() {
            out.push(a.elements.get(offset).cloned().flatten());
        } else {
            copy_level(a, ranges, strides, depth + 1, offset, out);
        }
    }
}

/// `ArrayGetNItems` and `ArrayCheckBounds` on a result's dimensions.
fn check_result_dims(dims: &[ArrayDim]) -> Result<(), ArrayOpError> {
    let items = dims
        .iter()
        .try_fold(1u64, |n, d| n.checked_mul(u64::from(d.len)));
    if items.is_none_or(|n| n > MAX_ARRAY_SIZE as u64) {
        return Err(ArrayOpError::SizeExceeded);
    }
    for &dim in dims {
        if dim.lower.checked_add(c_len(dim)).is_none() {
            return Err(ArrayOpError::LowerBoundTooLarge { lower: dim.lower });
        }
    }
    Ok(())
}

/// `array_cat(left, right)`, also `anyarray || anyarray`.
///
/// NULL is no operand (both NULL: NULL), and neither is an empty array: the other operand is
/// returned as it is, lower bounds included. Arrays with the same number of dimensions are
/// joined along the first, keeping the left's lower bounds (the inner dimensions must agree in
/// length and lower bound); an array with one dimension fewer joins the other as one more
/// element of its first dimension (at the front or back), keeping the bigger array's lower
/// bounds (its dimensions must equal the bigger's inner ones).
pub fn array_cat<T: Clone>(
    left: Option<&PgArray<T>>,
    right: Option<&PgArray<T>>,
) -> Result<Option<PgArray<T>>, ArrayOpError> {
    let (left, right) = match (left, right) {
        (None, None) => return Ok(None),
        (None, Some(only)) | (Some(only), None) => return Ok(Some(only.clone())),
        (Some(left), Some(right)) => (left, right),
    };
    let (n1, n2) = (left.dims.len(), right.dims.len());
    if n1 == 0 && n2 > 0 {
        return Ok(Some(right.clone()));
    }
    if n2 == 0 {
        return Ok(Some(left.clone()));
    }
    let incompatible = |mismatch| Err(ArrayOpError::IncompatibleArrays(mismatch));
    let dims = if n1 == n2 {
        if left.dims[1..] != right.dims[1..] {
            return incompatible(ConcatMismatch::ElementDimensions);
        }
        let mut dims = left.dims.clone();
        dims[0].len = dims[0].len.saturating_add(right.dims[0].len);
        dims
    } else if n1 + 1 == n2 || n1 == n2 + 1 {
        let (outer, inner) = if n1 > n2 {
            (left, right)
        } else {
            (right, left)
        };
        if outer.dims[1..] != inner.dims[..] {
            return incompatible(ConcatMismatch::Dimensions);
        }
        let mut dims = outer.dims.clone();
        dims[0].len = dims[0].len.saturating_add(1);
        dims
    } else {
        let mismatch = ConcatMismatch::Dimensionality {
            left: n1,
            right: n2,
        };
        return incompatible(mismatch);
    };
    check_result_dims(&dims)?;
    let mut elements = Vec::with_capacity(left.elements.len() + right.elements.len());
    elements.extend_from_slice(&left.elements);
    elements.extend_from_slice(&right.elements);
    Ok(Some(PgArray { dims, elements }))
}

/// `array_set_element` (its expanded-array form) on a one-dimensional array with lower bound
/// `lower` and `len` elements, at `index` just outside it: the new lower bound and length,
/// after Postgres's checks in its order.
fn extend_one_dimension(lower: i32, len: i32, index: i32) -> Result<(i32, i32), ArrayOpError> {
    let (mut lb, mut dim) = (lower, len);
    if index < lb {
        dim = lb
            .checked_sub(index)
            .and_then(|added| dim.checked_add(added))
            .ok_or(ArrayOpError::SizeExceeded)?;
        lb = index;
    }
    let end = dim.wrapping_add(lb);
    if index >= end {
        dim = index
            .checked_sub(end)
            .and_then(|added| added.checked_add(1))
            .and_then(|added| dim.checked_add(added))
            .ok_or(ArrayOpError::SizeExceeded)?;
    }
    let new_len = u32::try_from(dim).map_err(|_| ArrayOpError::SizeExceeded)?;
    check_result_dims(&[ArrayDim {
        lower: lb,
        len: new_len,
    }])?;
    // The working copy of the elements grows to `dim + dim / 8` Datums.
    let size = (u64::from(new_len) + u64::from(new_len / 8)) * DATUM_SIZE;
    if size > MAX_ALLOC_SIZE {
        return Err(ArrayOpError::AllocTooLarge { size });
    }
    Ok((lb, dim))
}

/// `array_append(array, element)`, also `anyarray || anyelement`: `element` after the last
/// element, the lower bound kept. A NULL or empty array gives `{element}` (lower bound 1).
/// Never NULL: the `Option` only matches [`array_cat`]'s result.
pub fn array_append<T: Clone>(
    array: Option<&PgArray<T>>,
    element: Option<T>,
) -> Result<Option<PgArray<T>>, ArrayOpError> {
    let Some(dim) = one_dimension(array)? else {
        return Ok(Some(PgArray::from_elements(vec![element])));
    };
    let index = dim
        .lower
        .checked_add(c_len(dim))
        .ok_or(ArrayOpError::IntegerOutOfRange)?;
    let (lower, len) = extend_one_dimension(dim.lower, c_len(dim), index)?;
    let old = array.map_or(&[][..], |a| &a.elements[..]);
    let mut elements = Vec::with_capacity(old.len() + 1);
    elements.extend_from_slice(old);
    elements.push(element);
    let dims = vec![ArrayDim {
        lower,
        len: len.unsigned_abs(),
    }];
    Ok(Some(PgArray { dims, elements }))
}

/// `array_prepend(element, array)`, also `anyelement || anyarray`: `element` before the first
/// element, **the lower bound kept** (`array_prepend(0, '[5:6]={1,2}')` is `[5:7]={0,1,2}`,
/// and `array_prepend(2, '[2147483646:2147483646]={1}')` is `[2147483646:2147483647]={2,1}`,
/// an array Postgres could not read back). A NULL or empty array gives `{element}`. Never
/// NULL: the `Option` only matches [`array_cat`]'s result.
pub fn array_prepend<T: Clone>(
    element: Option<T>,
    array: Option<&PgArray<T>>,
) -> Result<Option<PgArray<T>>, ArrayOpError> {
    let Some(dim) = one_dimension(array)? else {
        return Ok(Some(PgArray::from_elements(vec![element])));
    };
    let index = dim
        .lower
        .checked_sub(1)
        .ok_or(ArrayOpError::IntegerOutOfRange)?;
    let (_, len) = extend_one_dimension(dim.lower, c_len(dim), index)?;
    let old = array.map_or(&[][..], |a| &a.elements[..]);
    let mut elements = Vec::with_capacity(old.len() + 1);
    elements.push(element);
    elements.extend_from_slice(old);
    let dims = vec![ArrayDim {
        lower: dim.lower,
        len: len.unsigned_abs(),
    }];
    Ok(Some(PgArray { dims, elements }))
}

/// The only dimension of a one-dimensional array; `None` for a NULL or empty one.
fn one_dimension<T>(array: Option<&PgArray<T>>) -> Result<Option<ArrayDim>, ArrayOpError> {
    match array.map_or(&[][..], |a| &a.dims[..]) {
        [] => Ok(None),
        [dim] => Ok(Some(*dim)),
        _ => Err(ArrayOpError::NotOneDimensional),
    }
}

#[cfg(test)]
mod tests {
    use super::super::array_text::{format_array, parse_array};
    use super::*;

    // Every expected value below is Postgres 15.18's answer to the same `int4[]` expression.

    type Int4s = PgArray<i32>;

    fn int4(literal: &str) -> Int4s {
        parse_array(literal, |s| s.parse::<i32>().map_err(|e| e.to_string()))
            .expect("test literal parses")
    }

    fn show(array: &Int4s) -> String {
        let mut out = String::new();
        format_array(array, i32::to_string, &mut out);
        out
    }

    fn at(literal: &str, subscripts: &[Option<i32>]) -> Option<i32> {
        subscript(&int4(literal), subscripts)
    }

    fn range(lower: Option<i32>, upper: Option<i32>) -> SliceBounds {
        SliceBounds { lower, upper }
    }

    /// `(literal)[bounds]` as Postgres prints it.
    fn sliced(literal: &str, bounds: &[SliceBounds]) -> String {
        show(&slice(&int4(literal), bounds))
    }

    /// A result as Postgres prints it; `"NULL"` for NULL.
    fn shown(result: Result<Option<Int4s>, ArrayOpError>) -> Result<String, String> {
        result
            .map(|a| a.map_or_else(|| "NULL".to_owned(), |a| show(&a)))
            .map_err(|e| e.to_string())
    }

    fn cat(left: Option<&str>, right: Option<&str>) -> Result<String, String> {
        shown(array_cat(left.map(int4).as_ref(), right.map(int4).as_ref()))
    }

    fn both(left: &str, right: &str) -> Result<String, String> {
        cat(Some(left), Some(right))
    }

    fn append(array: Option<&str>, element: Option<i32>) -> Result<String, String> {
        shown(array_append(array.map(int4).as_ref(), element))
    }

    fn prepend(element: Option<i32>, array: Option<&str>) -> Result<String, String> {
        shown(array_prepend(element, array.map(int4).as_ref()))
    }

    /// `array_prepend(2, '[2147483646:2147483646]={1}')`: upper bound 2147483647.
    fn past_int4() -> Int4s {
        array_prepend(Some(2), Some(&int4("[2147483646:2147483646]={1}")))
            .expect("prepends")
            .expect("never NULL")
    }

    /// An array that claims `len` elements along one dimension without holding them: enough
    /// for the size checks, which fail before any element is touched.
    fn claimed(lower: i32, lens: &[u32]) -> Int4s {
        let mut dims: Vec<ArrayDim> = lens.iter().map(|&len| ArrayDim { lower: 1, len }).collect();
        dims[0].lower = lower;
        PgArray {
            dims,
            elements: Vec::new(),
        }
    }

    fn err<T>(e: ArrayOpError) -> Result<T, String> {
        Err(e.to_string())
    }

    #[test]
    fn a_subscript_counts_from_the_lower_bound() {
        assert_eq!(at("[5:6]={1,2}", &[Some(5)]), Some(1));
        assert_eq!(at("[5:6]={1,2}", &[Some(6)]), Some(2));
        assert_eq!(at("[5:6]={1,2}", &[Some(1)]), None);
        assert_eq!(at("[5:6]={1,2}", &[Some(4)]), None);
        assert_eq!(at("[5:6]={1,2}", &[Some(7)]), None);
        assert_eq!(
            at("[0:1][-1:0]={{1,2},{3,4}}", &[Some(1), Some(-1)]),
            Some(3)
        );
    }

    #[test]
    fn a_subscript_count_other_than_the_dimension_count_is_null() {
        assert_eq!(at("{{1,2},{3,4}}", &[Some(2), Some(1)]), Some(3));
        assert_eq!(at("{{1,2},{3,4}}", &[Some(1)]), None);
        assert_eq!(at("{1,2}", &[Some(1), Some(1)]), None);
        assert_eq!(at("{{{{{{1}}}}}}", &[Some(1); 6]), Some(1));
        assert_eq!(at("{1}", &[Some(1); 6]), None);
        assert_eq!(at("{}", &[Some(1)]), None);
        assert_eq!(at("{}", &[]), None);
    }

    #[test]
    fn a_null_subscript_or_element_is_null() {
        assert_eq!(at("{1,2}", &[None]), None);
        assert_eq!(at("{{1,2}}", &[Some(1), None]), None);
        assert_eq!(at("{1,NULL}", &[Some(2)]), None);
        let array = int4("{7,8}");
        assert_eq!(subscript_ref(&array, &[Some(2)]), Some(&8));
    }

    #[test]
    fn seven_subscripts_are_refused_at_parse_time() {
        assert_eq!(check_subscript_count(6), Ok(()));
        assert_eq!(
            check_subscript_count(7).map_err(|e| e.to_string()),
            Err("number of array dimensions (7) exceeds the maximum allowed (6)".to_owned())
        );
    }

    #[test]
    fn subscripts_of_an_array_past_int4_wrap_to_null_as_in_postgres() {
        let array = past_int4();
        assert_eq!(show(&array), "[2147483646:2147483647]={2,1}");
        assert_eq!(subscript(&array, &[Some(2_147_483_646)]), None);
        assert_eq!(subscript(&array, &[Some(i32::MAX)]), None);
    }

    #[test]
    fn a_slice_has_lower_bound_one() {
        assert_eq!(sliced("{1,2,3,4,5}", &[range(Some(2), Some(3))]), "{2,3}");
        let a = "[5:9]={1,2,3,4,5}";
        assert_eq!(sliced(a, &[range(Some(6), Some(7))]), "{2,3}");
        assert_eq!(sliced(a, &[range(None, Some(6))]), "{1,2}");
        assert_eq!(sliced(a, &[range(Some(8), None)]), "{4,5}");
        assert_eq!(sliced(a, &[range(None, None)]), "{1,2,3,4,5}");
        assert_eq!(sliced("{1,NULL,3}", &[range(Some(2), Some(3))]), "{NULL,3}");
    }

    #[test]
    fn slice_bounds_are_clamped_to_the_array_or_give_the_empty_array() {
        let a = "[5:9]={1,2,3,4,5}";
        assert_eq!(sliced(a, &[range(Some(0), Some(100))]), "{1,2,3,4,5}");
        assert_eq!(sliced(a, &[range(Some(10), Some(100))]), "{}");
        assert_eq!(sliced(a, &[range(Some(7), Some(6))]), "{}");
        assert_eq!(
            sliced("{1,2,3}", &[range(Some(i32::MIN), Some(i32::MAX))]),
            "{1,2,3}"
        );
        assert_eq!(sliced("{}", &[range(Some(1), Some(2))]), "{}");
        assert_eq!(sliced("{}", &[range(None, None)]), "{}");
    }

    #[test]
    fn more_slice_subscripts_than_dimensions_give_the_empty_array() {
        let subscripts = [range(Some(1), Some(2)), range(Some(1), Some(1))];
        assert_eq!(sliced("{1,2,3}", &subscripts), "{}");
    }

    #[test]
    fn a_plain_subscript_among_slices_runs_from_one() {
        let a = "{{1,2,3},{4,5,6},{7,8,9}}";
        let plain = SliceBounds::plain;
        assert_eq!(
            sliced(a, &[range(Some(1), Some(2)), plain(2)]),
            "{{1,2},{4,5}}"
        );
        assert_eq!(
            sliced(a, &[plain(2), range(Some(2), Some(3))]),
            "{{2,3},{5,6}}"
        );
        assert_eq!(
            sliced(a, &[range(None, Some(2)), range(Some(2), None)]),
            "{{2,3},{5,6}}"
        );
    }

    #[test]
    fn dimensions_past_the_slice_subscripts_are_taken_whole() {
        let a = "{{1,2,3},{4,5,6},{7,8,9}}";
        assert_eq!(sliced(a, &[range(Some(2), Some(3))]), "{{4,5,6},{7,8,9}}");
        let b = "{{{1,2},{3,4}},{{5,6},{7,8}}}";
        assert_eq!(sliced(b, &[range(Some(2), Some(2))]), "{{{5,6},{7,8}}}");
        let three = [
            range(Some(2), Some(2)),
            range(Some(1), Some(2)),
            range(Some(2), Some(2)),
        ];
        assert_eq!(sliced(b, &three), "{{{6},{8}}}");
        let whole = [range(None, None), SliceBounds::plain(2)];
        assert_eq!(sliced(b, &whole), "{{{1,2},{3,4}},{{5,6},{7,8}}}");
    }

    #[test]
    fn slices_of_a_two_dimensional_array_respect_both_lower_bounds() {
        let a = "[0:2][-1:1]={{1,2,3},{4,5,6},{7,8,9}}";
        let plain = SliceBounds::plain;
        let all = range(None, None);
        let cases = [
            (
                [range(Some(1), Some(2)), range(Some(0), Some(1))],
                "{{5,6},{8,9}}",
            ),
            ([range(Some(1), Some(2)), plain(1)], "{{6},{9}}"),
            ([plain(1), range(None, Some(0))], "{{4,5}}"),
            ([plain(0), all], "{}"),
            ([all, plain(-5)], "{}"),
            ([all, range(Some(-1), Some(-1))], "{{1},{4},{7}}"),
        ];
        for (subscripts, expected) in cases {
            assert_eq!(sliced(a, &subscripts), expected, "{subscripts:?}");
        }
        assert_eq!(sliced(a, &[range(Some(2), None)]), "{{7,8,9}}");
    }

    #[test]
    fn slices_of_an_array_past_int4_wrap_as_in_postgres() {
        let array = past_int4();
        let slice_of = |s: SliceBounds| Some(show(&slice(&array, &[s])));
        let all = Some("{2,1}".to_owned());
        assert_eq!(slice_of(range(Some(2_147_483_646), Some(i32::MAX))), all);
        assert_eq!(slice_of(range(None, None)), all);
        assert_eq!(
            slice_of(range(Some(i32::MAX), None)),
            Some("{1}".to_owned())
        );
        assert_eq!(slice_of(range(None, Some(5))), all);
        assert_eq!(slice_of(range(Some(-5), Some(5))), all);
        assert_eq!(slice_of(SliceBounds::plain(1)), all);
    }

    #[test]
    fn array_cat_joins_along_the_first_dimension() {
        assert_eq!(both("{1,2}", "{3,4}"), Ok("{1,2,3,4}".into()));
        assert_eq!(both("{{1,2}}", "{3,4}"), Ok("{{1,2},{3,4}}".into()));
        assert_eq!(both("{3,4}", "{{1,2}}"), Ok("{{3,4},{1,2}}".into()));
        assert_eq!(
            both("{{1,NULL}}", "{{NULL,4}}"),
            Ok("{{1,NULL},{NULL,4}}".into())
        );
        assert_eq!(
            both("{{{1,2},{3,4}}}", "{{5,6},{7,8}}"),
            Ok("{{{1,2},{3,4}},{{5,6},{7,8}}}".into())
        );
    }

    #[test]
    fn array_cat_keeps_the_left_lower_bounds_or_the_bigger_arrays() {
        assert_eq!(
            both("[5:6]={1,2}", "[0:1]={3,4}"),
            Ok("[5:8]={1,2,3,4}".into())
        );
        assert_eq!(both("{1,2}", "[0:1]={3,4}"), Ok("{1,2,3,4}".into()));
        let outer = "[0:0][2:3]={{1,2}}";
        assert_eq!(
            both(outer, "[7:7][2:3]={{3,4}}"),
            Ok("[0:1][2:3]={{1,2},{3,4}}".into())
        );
        assert_eq!(
            both(outer, "[2:3]={5,6}"),
            Ok("[0:1][2:3]={{1,2},{5,6}}".into())
        );
        assert_eq!(
            both("[2:3]={5,6}", outer),
            Ok("[0:1][2:3]={{5,6},{1,2}}".into())
        );
    }

    #[test]
    fn array_cat_returns_the_other_operand_of_a_null_or_empty_one_as_it_is() {
        assert_eq!(
            cat(Some("{}"), Some("[3:4]={1,2}")),
            Ok("[3:4]={1,2}".into())
        );
        assert_eq!(
            cat(Some("[3:4]={1,2}"), Some("{}")),
            Ok("[3:4]={1,2}".into())
        );
        assert_eq!(cat(None, Some("[3:4]={1,2}")), Ok("[3:4]={1,2}".into()));
        assert_eq!(cat(Some("[3:4]={1,2}"), None), Ok("[3:4]={1,2}".into()));
        assert_eq!(cat(None, None), Ok("NULL".into()));
        assert_eq!(cat(Some("{}"), Some("{}")), Ok("{}".into()));
        assert_eq!(cat(Some("{}"), None), Ok("{}".into()));
    }

    #[test]
    fn array_cat_refuses_arrays_whose_shapes_do_not_fit() {
        let refused: Result<String, String> =
            err(ArrayOpError::IncompatibleArrays(ConcatMismatch::Dimensions));
        assert_eq!(
            refused,
            Err("cannot concatenate incompatible arrays".into())
        );
        for (left, right) in [
            ("{{1,2}}", "[7:7][2:3]={{3,4}}"),
            ("{{1,2}}", "{{3,4,5}}"),
            ("{{{1,2},{3,4}}}", "{{{5,6}}}"),
            ("[0:0][2:3]={{1,2}}", "{5,6}"),
            ("{{1,2}}", "{3}"),
            ("{{{1}}}", "{1}"),
            ("{1}", "{{{1}}}"),
        ] {
            assert_eq!(both(left, right), refused, "{left} || {right}");
        }
    }

    #[test]
    fn array_cat_mismatches_carry_postgres_details() {
        let mismatch = |l: &str, r: &str| match array_cat(Some(&int4(l)), Some(&int4(r))) {
            Err(ArrayOpError::IncompatibleArrays(m)) => m.detail(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            mismatch("{{{1}}}", "{1}"),
            "Arrays of 3 and 1 dimensions are not compatible for concatenation."
        );
        assert_eq!(
            mismatch("{{1,2}}", "{{3,4,5}}"),
            "Arrays with differing element dimensions are not compatible for concatenation."
        );
        assert_eq!(
            mismatch("{{1,2}}", "{3}"),
            "Arrays with differing dimensions are not compatible for concatenation."
        );
    }

    #[test]
    fn array_cat_checks_the_result_bounds() {
        let too_large = err(ArrayOpError::LowerBoundTooLarge {
            lower: 2_147_483_646,
        });
        assert_eq!(both("[2147483646:2147483646]={1}", "{2}"), too_large);
        assert_eq!(both("{2}", "[2147483646:2147483646][1:1]={{1}}"), too_large);
        let near = "[2147483645:2147483645][1:1]={{1}}";
        let joined = "[2147483645:2147483646][1:1]={{1},{2}}";
        assert_eq!(both(near, "{2}"), Ok(joined.into()));
        assert_eq!(both(near, "{{2}}"), Ok(joined.into()));
        assert_eq!(
            both("{2}", near),
            Ok("[2147483645:2147483646][1:1]={{2},{1}}".into())
        );
    }

    #[test]
    fn array_cat_of_an_array_past_int4() {
        let past = past_int4();
        let (five, empty) = (int4("{5}"), int4("{}"));
        let too_large = err(ArrayOpError::LowerBoundTooLarge {
            lower: 2_147_483_646,
        });
        assert_eq!(shown(array_cat(Some(&past), Some(&five))), too_large);
        assert_eq!(
            shown(array_cat(Some(&five), Some(&past))),
            Ok("{5,2,1}".into())
        );
        assert_eq!(
            shown(array_cat(Some(&empty), Some(&past))),
            Ok("[2147483646:2147483647]={2,1}".into())
        );
    }

    #[test]
    fn array_cat_refuses_more_than_max_array_size_elements() {
        let size = || Err(ArrayOpError::SizeExceeded);
        let (long, short) = (claimed(1, &[134_217_720]), claimed(1, &[10]));
        assert_eq!(array_cat(Some(&long), Some(&short)), size());
        let (wide, row) = (claimed(1, &[2, 67_108_864]), claimed(1, &[67_108_864]));
        assert_eq!(array_cat(Some(&wide), Some(&row)), size());
        assert_eq!(array_cat(Some(&row), Some(&wide)), size());
    }

    #[test]
    fn array_append_and_prepend_keep_the_lower_bound() {
        assert_eq!(
            append(Some("[5:6]={1,2}"), Some(3)),
            Ok("[5:7]={1,2,3}".into())
        );
        assert_eq!(
            prepend(Some(0), Some("[5:6]={1,2}")),
            Ok("[5:7]={0,1,2}".into())
        );
        assert_eq!(
            prepend(None, Some("[-3:-2]={1,2}")),
            Ok("[-3:-1]={NULL,1,2}".into())
        );
        assert_eq!(
            append(Some("[-3:-2]={1,2}"), None),
            Ok("[-3:-1]={1,2,NULL}".into())
        );
        assert_eq!(append(Some("{1,2}"), Some(3)), Ok("{1,2,3}".into()));
    }

    #[test]
    fn array_append_and_prepend_to_a_null_or_empty_array_start_at_one() {
        assert_eq!(append(None, Some(3)), Ok("{3}".into()));
        assert_eq!(append(None, None), Ok("{NULL}".into()));
        assert_eq!(append(Some("{}"), None), Ok("{NULL}".into()));
        assert_eq!(prepend(None, None), Ok("{NULL}".into()));
        assert_eq!(prepend(Some(7), Some("{}")), Ok("{7}".into()));
        assert_eq!(prepend(Some(1), None), Ok("{1}".into()));
    }

    #[test]
    fn array_append_and_prepend_refuse_multidimensional_arrays() {
        let refused: Result<String, String> = err(ArrayOpError::NotOneDimensional);
        assert_eq!(
            refused,
            Err("argument must be empty or one-dimensional array".into())
        );
        assert_eq!(append(Some("{{1}}"), Some(1)), refused);
        assert_eq!(prepend(Some(1), Some("{{1}}")), refused);
        assert_eq!(prepend(None, Some("{{1}}")), refused);
    }

    #[test]
    fn array_append_at_the_top_of_int4_fails_on_the_bounds() {
        assert_eq!(
            append(Some("[2147483646:2147483646]={1}"), Some(2)),
            err(ArrayOpError::LowerBoundTooLarge {
                lower: 2_147_483_646
            })
        );
        assert_eq!(
            append(Some("[2147483645:2147483645]={1}"), Some(2)),
            Ok("[2147483645:2147483646]={1,2}".into())
        );
        assert_eq!(
            append(Some("[-2147483648:-2147483648]={1}"), Some(2)),
            Ok("[-2147483648:-2147483647]={1,2}".into())
        );
    }

    #[test]
    fn array_prepend_at_the_bottom_of_int4_is_out_of_range() {
        let out_of_range: Result<String, String> = err(ArrayOpError::IntegerOutOfRange);
        assert_eq!(out_of_range, Err("integer out of range".into()));
        assert_eq!(
            prepend(Some(2), Some("[-2147483648:-2147483648]={1}")),
            out_of_range
        );
        assert_eq!(
            prepend(Some(2), Some("[-2147483647:-2147483647]={1}")),
            Ok("[-2147483647:-2147483646]={2,1}".into())
        );
    }

    #[test]
    fn array_prepend_may_push_the_upper_bound_to_the_top_of_int4() {
        assert_eq!(
            prepend(Some(2), Some("[2147483646:2147483646]={1}")),
            Ok("[2147483646:2147483647]={2,1}".into())
        );
        assert_eq!(
            prepend(Some(2), Some("[2147483645:2147483646]={1,2}")),
            Ok("[2147483645:2147483647]={2,1,2}".into())
        );
        let once = array_prepend(Some(2), Some(&int4("[2147483645:2147483645]={1}")));
        assert_eq!(
            shown(once.clone()),
            Ok("[2147483645:2147483646]={2,1}".into())
        );
        let twice = array_prepend(Some(2), once.ok().flatten().as_ref());
        assert_eq!(shown(twice), Ok("[2147483645:2147483647]={2,2,1}".into()));
    }

    #[test]
    fn appending_or_prepending_to_an_array_past_int4_fails() {
        let past = past_int4();
        assert_eq!(
            shown(array_append(Some(&past), Some(3))),
            err(ArrayOpError::IntegerOutOfRange)
        );
        assert_eq!(
            shown(array_prepend(Some(3), Some(&past))),
            err(ArrayOpError::SizeExceeded)
        );
    }

    #[test]
    fn array_append_and_prepend_refuse_oversized_arrays() {
        let full = claimed(1, &[134_217_727]);
        let size = Err(ArrayOpError::SizeExceeded);
        assert_eq!(array_append(Some(&full), Some(1)), size);
        assert_eq!(array_prepend(Some(1), Some(&full)), size);
        assert_eq!(
            ArrayOpError::SizeExceeded.to_string(),
            "array size exceeds the maximum allowed (134217727)"
        );
    }

    #[test]
    fn array_append_and_prepend_of_119304647_elements_exceed_the_allocation_limit() {
        let big = claimed(1, &[119_304_647]);
        let alloc = ArrayOpError::AllocTooLarge {
            size: 1_073_741_832,
        };
        assert_eq!(array_append(Some(&big), Some(1)), Err(alloc.clone()));
        assert_eq!(array_prepend(Some(1), Some(&big)), Err(alloc.clone()));
        assert_eq!(
            alloc.to_string(),
            "invalid memory alloc request size 1073741832"
        );
        // One element fewer fits (Postgres returns 119304647 elements).
        assert_eq!(
            extend_one_dimension(1, 119_304_646, 119_304_647),
            Ok((1, 119_304_647))
        );
    }
}
