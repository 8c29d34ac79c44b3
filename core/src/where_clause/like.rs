//! Postgres `LIKE` / `ILIKE` (`~~` / `~~*`), exactly as Postgres 15 evaluates them on a UTF-8
//! database under the `C` collation (`src/backend/utils/adt/like.c`, `like_match.c`).
//!
//! * `%` matches any sequence of characters, `_` exactly one *character* (not byte).
//! * The escape character (default `\`, or the one from `ESCAPE 'c'`, or none for `ESCAPE ''`)
//!   makes the next character literal, whatever it is (`%`, `_`, itself, a multi-byte char).
//! * `ILIKE` under `C` is `lower(text) LIKE lower(pattern)` with `lower` folding the ASCII letters
//!   `A`-`Z` only (`'ÄB' ILIKE 'äb' COLLATE "C"` is false in Postgres 15). The escape character
//!   is recognised before folding, so `ESCAPE 'A'` does not also make `a` an escape. Hence in
//!   SQL, `x ILIKE p ESCAPE e` equals `lower(x COLLATE "C") LIKE lower(like_escape(p, e)
//!   COLLATE "C")` but **not** `lower(x …) LIKE lower(p …) ESCAPE e` when `e` is an ASCII
//!   letter (`'a%' ILIKE 'A%' ESCAPE 'A'` is false, the latter true). `LIKE` itself compares
//!   bytes under any deterministic collation; `ILIKE` needs `COLLATE "C"` to fold ASCII only.
//!
//! Postgres raises `LIKE pattern must not end with escape character` lazily: only when matching
//! reaches the trailing escape (`'a' LIKE 'a\'` is false, `'ab' LIKE 'a\'` is the error).
//! [`LikePattern::compile`] refuses such a pattern outright (a constant pattern that may error
//! on some rows cannot be evaluated row by row); [`match_text`] reproduces the lazy behaviour
//! exactly, for patterns that are only known per row.
//!
//! This module owns pattern compilation and matching. It never handles SQL NULL (`LIKE` and
//! `like_escape` are strict: the caller yields NULL for a NULL operand or `ESCAPE NULL`), never
//! parses SQL, and never looks at collations other than `C`.

/// The errors Postgres raises for `LIKE` patterns; `Display` is Postgres's own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LikeError {
    /// The pattern's last character is the escape character (SQLSTATE 22025).
    #[error("LIKE pattern must not end with escape character")]
    EndsWithEscape,
    /// `ESCAPE` was given a string of two or more characters (SQLSTATE 22025).
    #[error("invalid escape string")]
    InvalidEscapeString,
}

/// The escape character of a `LIKE` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LikeEscape {
    /// No `ESCAPE` clause: backslash escapes (also what `ESCAPE '\'` gives).
    #[default]
    Backslash,
    /// `ESCAPE 'c'`: `c` escapes, and a backslash is an ordinary character.
    Char(char),
    /// `ESCAPE ''`: nothing escapes; backslash is an ordinary character.
    None,
}

impl LikeEscape {
    /// The escape of an `ESCAPE '…'` clause, as Postgres's `like_escape` reads it: empty
    /// disables escaping, one character is the escape, anything longer is an error.
    pub fn from_escape_string(escape: &str) -> Result<Self, LikeError> {
        let mut chars = escape.chars();
        match (chars.next(), chars.next()) {
            (None, _) => Ok(Self::None),
            (Some('\\'), None) => Ok(Self::Backslash),
            (Some(c), None) => Ok(Self::Char(c)),
            (Some(_), Some(_)) => Err(LikeError::InvalidEscapeString),
        }
    }

    /// The escape character, if any.
    pub const fn escape_char(self) -> Option<char> {
        match self {
            Self::Backslash => Some('\\'),
            Self::Char(c) => Some(c),
            Self::None => None,
        }
    }
}

/// Case handling: `LIKE` or `ILIKE` (under the `C` collation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LikeCase {
    /// `LIKE` / `~~`: characters compare byte for byte.
    Sensitive,
    /// `ILIKE` / `~~*` under `COLLATE "C"`: ASCII letters compare case-insensitively, every
    /// other character (including `Ä`/`ä`) byte for byte.
    AsciiInsensitive,
}

/// A compiled `LIKE` / `ILIKE` pattern: compile once, then [`LikePattern::matches`] many texts
/// without allocating.
#[derive(Debug, Clone)]
pub struct LikePattern {
    matcher: Matcher,
    case: LikeCase,
}

impl LikePattern {
    /// Compiles `pattern` with its escape character for `LIKE` or `ILIKE`.
    ///
    /// Errors with [`LikeError::EndsWithEscape`] if the pattern ends in an unescaped escape
    /// character, even though Postgres raises that only on rows whose matching reaches it.
    pub fn compile(pattern: &str, escape: LikeEscape, case: LikeCase) -> Result<Self, LikeError> {
        let segments = segments(pattern, escape.escape_char(), case)?;
        Ok(Self {
            matcher: Matcher::from_segments(segments),
            case,
        })
    }

    /// Whether `text` matches, as `text LIKE pattern` (or `ILIKE`) returns true in Postgres.
    pub fn matches(&self, text: &str) -> bool {
        self.matcher.matches(text, self.case)
    }
}

/// A maximal run of pattern items between two `%` (or a pattern end).
#[derive(Debug, Clone, Default)]
struct Segment {
    items: Vec<Item>,
    /// Characters the segment matches (it always matches a fixed number).
    char_len: usize,
}

/// One item of a [`Segment`].
#[derive(Debug, Clone)]
enum Item {
    /// Literal characters, never empty; ASCII-lowercased for [`LikeCase::AsciiInsensitive`].
    Literal(String),
    /// A run of this many `_`.
    AnyChars(usize),
}

/// Splits the pattern at its unescaped `%` into segments.
fn segments(
    pattern: &str,
    escape: Option<char>,
    case: LikeCase,
) -> Result<Vec<Segment>, LikeError> {
    let mut done = Vec::new();
    let mut current = Segment::default();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            let escaped = chars.next().ok_or(LikeError::EndsWithEscape)?;
            current.push_literal(escaped, case);
        } else if c == '%' {
            done.push(std::mem::take(&mut current));
        } else if c == '_' {
            current.push_any_char();
        } else {
            current.push_literal(c, case);
        }
    }
    done.push(current);
    Ok(done)
}

impl Segment {
    fn push_literal(&mut self, c: char, case: LikeCase) {
        let c = match case {
            LikeCase::Sensitive => c,
            LikeCase::AsciiInsensitive => c.to_ascii_lowercase(),
        };
        match self.items.last_mut() {
            Some(Item::Literal(run)) => run.push(c),
            _ => self.items.push(Item::Literal(c.to_string())),
        }
        self.char_len += 1;
    }

    fn push_any_char(&mut self) {
        match self.items.last_mut() {
            Some(Item::AnyChars(n)) => *n += 1,
            _ => self.items.push(Item::AnyChars(1)),
        }
        self.char_len += 1;
    }

    /// The segment's text if it is all literal (`""` when empty).
    fn literal(&self) -> Option<&str> {
        match self.items.as_slice() {
            [] => Some(""),
            [Item::Literal(run)] => Some(run),
            _ => None,
        }
    }

    fn is_wildcards_only(&self) -> bool {
        self.items
            .iter()
            .all(|item| matches!(item, Item::AnyChars(_)))
    }

    /// Matches the segment at byte `start` of `text`; the byte just past the match.
    fn match_at(&self, text: &str, start: usize, case: LikeCase) -> Option<usize> {
        let bytes = text.as_bytes();
        let mut at = start;
        for item in &self.items {
            match item {
                Item::Literal(run) => {
                    let end = at + run.len();
                    if !bytes_equal(bytes.get(at..end)?, run.as_bytes(), case) {
                        return None;
                    }
                    at = end;
                }
                Item::AnyChars(n) => at = skip_chars(bytes, at, *n)?,
            }
        }
        Some(at)
    }
}

/// A compiled pattern, by shape; the common shapes get a fast path.
#[derive(Debug, Clone)]
enum Matcher {
    /// No wildcards: `literal`.
    Equal(String),
    /// `literal%`.
    Prefix(String),
    /// `%literal`.
    Suffix(String),
    /// `%literal%`.
    Contains(Needle),
    /// Only `_`: exactly this many characters.
    CharsExactly(usize),
    /// Only `_` and at least one `%`: at least this many characters.
    CharsAtLeast(usize),
    /// `_` and literals, no `%`.
    Anchored(Segment),
    /// Anything else: `head%middle%…%tail`, middle segments non-empty.
    General {
        head: Segment,
        middle: Vec<MiddleSegment>,
        tail: Segment,
    },
}

impl Matcher {
    fn from_segments(mut segments: Vec<Segment>) -> Self {
        if segments.iter().all(Segment::is_wildcards_only) {
            let count = segments.iter().map(|s| s.char_len).sum();
            return match segments.len() {
                1 => Self::CharsExactly(count),
                _ => Self::CharsAtLeast(count),
            };
        }
        let tail = segments.pop().unwrap_or_default();
        if segments.is_empty() {
            return match tail.literal() {
                Some(literal) => Self::Equal(literal.to_owned()),
                None => Self::Anchored(tail),
            };
        }
        let head = segments.remove(0);
        segments.retain(|s| !s.items.is_empty());
        match (head.literal(), segments.as_slice(), tail.literal()) {
            (Some(head), [], Some("")) => Self::Prefix(head.to_owned()),
            (Some(""), [], Some(tail)) => Self::Suffix(tail.to_owned()),
            (Some(""), [only], Some("")) => match only.literal() {
                Some(needle) => Self::Contains(Needle::new(needle)),
                None => Self::general(head, segments, tail),
            },
            _ => Self::general(head, segments, tail),
        }
    }

    fn general(head: Segment, middle: Vec<Segment>, tail: Segment) -> Self {
        let middle = middle.into_iter().map(MiddleSegment::new).collect();
        Self::General { head, middle, tail }
    }

    fn matches(&self, text: &str, case: LikeCase) -> bool {
        let bytes = text.as_bytes();
        match self {
            Self::Equal(literal) => bytes_equal(bytes, literal.as_bytes(), case),
            Self::Prefix(literal) => bytes
                .get(..literal.len())
                .is_some_and(|start| bytes_equal(start, literal.as_bytes(), case)),
            Self::Suffix(literal) => bytes
                .len()
                .checked_sub(literal.len())
                .is_some_and(|at| bytes_equal(&bytes[at..], literal.as_bytes(), case)),
            Self::Contains(needle) if case == LikeCase::Sensitive => text.contains(&*needle.text),
            Self::Contains(needle) => needle.find(text, 0, case).is_some(),
            Self::CharsExactly(count) => text.chars().count() == *count,
            Self::CharsAtLeast(count) => *count == 0 || text.chars().count() >= *count,
            Self::Anchored(segment) => segment.match_at(text, 0, case) == Some(text.len()),
            Self::General { head, middle, tail } => general_matches(head, middle, tail, text, case),
        }
    }
}

/// `head%m1%…%mN%tail`: head anchored at the start, tail at the end, and the middle segments
/// leftmost-first in between (each matches a fixed number of characters, so the leftmost
/// placement never rules out a later segment).
fn general_matches(
    head: &Segment,
    middle: &[MiddleSegment],
    tail: &Segment,
    text: &str,
    case: LikeCase,
) -> bool {
    let Some(mut at) = head.match_at(text, 0, case) else {
        return false;
    };
    let Some(tail_start) = start_of_last_chars(text.as_bytes(), tail.char_len) else {
        return false;
    };
    if tail_start < at || tail.match_at(text, tail_start, case) != Some(text.len()) {
        return false;
    }
    let window = &text[..tail_start];
    for segment in middle {
        match segment.find(window, at, case) {
            Some(end) => at = end,
            None => return false,
        }
    }
    true
}

/// A segment between two `%`, with a search needle for its leading literal if it has one.
#[derive(Debug, Clone)]
struct MiddleSegment {
    segment: Segment,
    lead: Option<Needle>,
}

impl MiddleSegment {
    fn new(segment: Segment) -> Self {
        let lead = match segment.items.first() {
            Some(Item::Literal(run)) => Some(Needle::new(run)),
            _ => None,
        };
        Self { segment, lead }
    }

    /// The end of the leftmost match starting at or after byte `from` of `window`.
    fn find(&self, window: &str, from: usize, case: LikeCase) -> Option<usize> {
        let bytes = window.as_bytes();
        let mut at = from;
        loop {
            if let Some(lead) = &self.lead {
                at = lead.find(window, at, case)?;
            }
            if let Some(end) = self.segment.match_at(window, at, case) {
                return Some(end);
            }
            at = skip_chars(bytes, at, 1)?;
        }
    }
}

/// A literal to search for (already ASCII-lowercased for [`LikeCase::AsciiInsensitive`]).
#[derive(Debug, Clone)]
struct Needle {
    text: String,
}

impl Needle {
    fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
        }
    }

    /// The byte offset of the first occurrence at or after `from` in `haystack`.
    fn find(&self, haystack: &str, from: usize, case: LikeCase) -> Option<usize> {
        let found = find_bytes(haystack.get(from..)?, &self.text, case);
        found.map(|offset| offset + from)
    }
}

/// Finds `needle` (ASCII-lowercased for [`LikeCase::AsciiInsensitive`]) in `haystack`: scans
/// for the needle's first byte (in either case when folding), then compares the rest. A match
/// of valid UTF-8 in valid UTF-8 always starts on a character boundary (and folding never
/// touches non-ASCII bytes).
fn find_bytes(haystack: &str, needle: &str, case: LikeCase) -> Option<usize> {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    let (&first, rest) = needle.split_first()?;
    let first = FirstByte::new(first, case);
    let last_start = haystack.len().checked_sub(needle.len())?;
    let mut at = 0;
    while at <= last_start {
        at += first.position_in(&haystack[at..=last_start])?;
        if bytes_equal(&haystack[at + 1..at + needle.len()], rest, case) {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// A byte to scan for: `b` matches if `b | mask == target` (`mask` is `0x20` to accept both
/// cases of an ASCII letter, else 0).
#[derive(Debug, Clone, Copy)]
struct FirstByte {
    target: u8,
    mask: u8,
}

impl FirstByte {
    fn new(first: u8, case: LikeCase) -> Self {
        let fold = case == LikeCase::AsciiInsensitive && first.is_ascii_alphabetic();
        Self {
            target: first,
            mask: if fold { 0x20 } else { 0 },
        }
    }

    /// The first index of a matching byte, testing 8 bytes at a time (SWAR zero-byte test).
    fn position_in(self, haystack: &[u8]) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        let (target, mask) = (u64::from(self.target) * ONES, u64::from(self.mask) * ONES);
        let mut base = 0;
        for chunk in haystack.chunks_exact(8) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            let diff = (u64::from_le_bytes(word) | mask) ^ target;
            if diff.wrapping_sub(ONES) & !diff & HIGHS != 0 {
                break;
            }
            base += 8;
        }
        let offset = haystack[base..]
            .iter()
            .position(|&b| b | self.mask == self.target)?;
        Some(base + offset)
    }
}

fn bytes_equal(text: &[u8], literal: &[u8], case: LikeCase) -> bool {
    match case {
        LikeCase::Sensitive => text == literal,
        LikeCase::AsciiInsensitive => text.eq_ignore_ascii_case(literal),
    }
}

/// The byte length of the UTF-8 character starting with `lead`.
const fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0x80..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xFF => 4,
    }
}

/// The byte offset `n` characters after byte `at`, if the text has that many.
fn skip_chars(bytes: &[u8], mut at: usize, n: usize) -> Option<usize> {
    for _ in 0..n {
        at += utf8_len(*bytes.get(at)?);
    }
    Some(at)
}

/// The byte offset where the last `n` characters start, if the text has that many.
fn start_of_last_chars(bytes: &[u8], n: usize) -> Option<usize> {
    let mut at = bytes.len();
    for _ in 0..n {
        at = bytes[..at].iter().rposition(|&b| b & 0xC0 != 0x80)?;
    }
    Some(at)
}

/// One-shot `text LIKE pattern` (or `ILIKE`) with Postgres's exact error behaviour: a pattern
/// ending in the escape character is an error only if matching reaches it, as in Postgres
/// (`'a' LIKE 'a\'` is false, `'ab' LIKE 'a\'` is the error). For patterns known only per row.
///
/// A port of `MatchText` (`like_match.c`) run on the pattern as `like_escape` rewrites it.
pub fn match_text(
    text: &str,
    pattern: &str,
    escape: LikeEscape,
    case: LikeCase,
) -> Result<bool, LikeError> {
    let pattern = backslash_pattern(pattern, escape);
    let outcome = match_bytes(text.as_bytes(), &pattern, case)?;
    Ok(outcome == Outcome::True)
}

/// `MatchText`'s result: `Abort` is a false that no later start position can turn true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    True,
    False,
    Abort,
}

/// `like_escape` (`do_like_escape`): the pattern rewritten to use backslash escapes.
fn backslash_pattern(pattern: &str, escape: LikeEscape) -> Vec<u8> {
    let escape = match escape {
        LikeEscape::Backslash => return pattern.as_bytes().to_vec(),
        LikeEscape::Char(c) => Some(c),
        LikeEscape::None => None,
    };
    let mut out = Vec::with_capacity(pattern.len() * 2);
    let mut after_escape = false;
    for c in pattern.chars() {
        if Some(c) == escape && !after_escape {
            out.push(b'\\');
            after_escape = true;
            continue;
        }
        if c == '\\' && !after_escape {
            out.push(b'\\');
        }
        let mut buf = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        after_escape = false;
    }
    out
}

const fn fold(b: u8, case: LikeCase) -> u8 {
    match case {
        LikeCase::Sensitive => b,
        LikeCase::AsciiInsensitive => b.to_ascii_lowercase(),
    }
}

/// `MatchText`: byte-wise lockstep, stepping over whole characters for wildcards.
fn match_bytes(mut t: &[u8], mut p: &[u8], case: LikeCase) -> Result<Outcome, LikeError> {
    if p == b"%" {
        return Ok(Outcome::True);
    }
    while let (Some(&tc), Some(&pc)) = (t.first(), p.first()) {
        match pc {
            b'\\' => {
                p = &p[1..];
                let escaped = *p.first().ok_or(LikeError::EndsWithEscape)?;
                if fold(escaped, case) != fold(tc, case) {
                    return Ok(Outcome::False);
                }
            }
            b'%' => return match_after_percent(t, &p[1..], case),
            b'_' => {
                t = &t[utf8_len(tc).min(t.len())..];
                p = &p[1..];
                continue;
            }
            _ if fold(pc, case) != fold(tc, case) => return Ok(Outcome::False),
            _ => {}
        }
        t = &t[1..];
        p = &p[1..];
    }
    if !t.is_empty() {
        return Ok(Outcome::False);
    }
    let rest = p
        .iter()
        .position(|&b| b != b'%')
        .map_or(&p[p.len()..], |i| &p[i..]);
    Ok(if rest.is_empty() {
        Outcome::True
    } else {
        Outcome::Abort
    })
}

/// `MatchText`'s `%` branch; `p` is the pattern after the `%`.
fn match_after_percent(mut t: &[u8], mut p: &[u8], case: LikeCase) -> Result<Outcome, LikeError> {
    loop {
        match p.first() {
            Some(b'%') => p = &p[1..],
            Some(b'_') => {
                let Some(&tc) = t.first() else {
                    return Ok(Outcome::Abort);
                };
                t = &t[utf8_len(tc).min(t.len())..];
                p = &p[1..];
            }
            _ => break,
        }
    }
    let Some(&pc) = p.first() else {
        return Ok(Outcome::True);
    };
    let first = if pc == b'\\' {
        *p.get(1).ok_or(LikeError::EndsWithEscape)?
    } else {
        pc
    };
    while let Some(&tc) = t.first() {
        if fold(tc, case) == fold(first, case) {
            let outcome = match_bytes(t, p, case)?;
            if outcome != Outcome::False {
                return Ok(outcome);
            }
        }
        t = &t[utf8_len(tc).min(t.len())..];
    }
    Ok(Outcome::Abort)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(text: &str, pattern: &str) -> bool {
        check(text, pattern, LikeEscape::Backslash, LikeCase::Sensitive)
    }

    fn ilike(text: &str, pattern: &str) -> bool {
        check(
            text,
            pattern,
            LikeEscape::Backslash,
            LikeCase::AsciiInsensitive,
        )
    }

    /// Compiled and one-shot matching, which must agree.
    fn check(text: &str, pattern: &str, escape: LikeEscape, case: LikeCase) -> bool {
        let compiled = LikePattern::compile(pattern, escape, case).expect("test pattern compiles");
        let result = compiled.matches(text);
        assert_eq!(
            match_text(text, pattern, escape, case),
            Ok(result),
            "{text:?} {pattern:?}"
        );
        result
    }

    fn with_escape(text: &str, pattern: &str, escape: &str) -> bool {
        let escape = LikeEscape::from_escape_string(escape).expect("test escape is valid");
        check(text, pattern, escape, LikeCase::Sensitive)
    }

    fn ilike_with_escape(text: &str, pattern: &str, escape: &str) -> bool {
        let escape = LikeEscape::from_escape_string(escape).expect("test escape is valid");
        check(text, pattern, escape, LikeCase::AsciiInsensitive)
    }

    // Expected values below are Postgres 15's answers (C.UTF-8 database, `COLLATE "C"`).

    #[test]
    fn underscore_matches_one_character_not_one_byte() {
        assert!(like("äb", "_b"));
        assert!(!like("äb", "__b"));
        assert!(like("𝄞", "_"));
        assert!(!like("ä", "__"));
        assert!(like("ää", "_%_"));
        assert!(!like("", "_%"));
    }

    #[test]
    fn empty_pattern_matches_only_the_empty_string_and_percent_matches_everything() {
        assert!(like("", ""));
        assert!(!like("a", ""));
        assert!(like("", "%"));
        assert!(like("any ä 𝄞", "%"));
        assert!(like("", "%%"));
    }

    #[test]
    fn percent_finds_a_match_after_a_false_start() {
        assert!(like("aab", "%ab"));
        assert!(like("abcabd", "%ab_%d"));
        assert!(!like("abcabd", "a%b_d"));
        assert!(like("xaxbxaybz", "%a_b%z"));
        assert!(!like("ab", "%a%b%c"));
        assert!(like("abab", "ab%ab"));
        assert!(!like("aba", "ab%ab"));
    }

    #[test]
    fn backslash_escapes_wildcards_and_itself() {
        assert!(like("a%", "a\\%"));
        assert!(!like("ab", "a\\%"));
        assert!(like("a_b", "a\\_b"));
        assert!(!like("axb", "a\\_b"));
        assert!(like("a\\b", "a\\\\b"));
        assert!(like("ab", "a\\b"));
        assert!(like("abc", "%\\c"));
        assert!(like("a\\", "%\\\\"));
        assert!(!like("ab", "a%\\\\"));
    }

    #[test]
    fn a_custom_escape_replaces_backslash() {
        assert!(with_escape("a%", "a#%", "#"));
        assert!(with_escape("a\\b", "a\\b", "#"));
        assert!(with_escape("a#", "a##", "#"));
        assert!(with_escape("%", "ä%", "ä"));
        assert!(!with_escape("x", "ä%", "ä"));
        assert!(with_escape("ab", "a\\b", "\\"));
    }

    #[test]
    fn an_empty_escape_string_disables_escaping() {
        assert!(with_escape("a\\", "a\\", ""));
        assert!(with_escape("a\\x", "a\\_", ""));
        assert!(!with_escape("a_", "a\\_", ""));
    }

    #[test]
    fn escape_strings_read_as_like_escape_does() {
        assert_eq!(LikeEscape::from_escape_string(""), Ok(LikeEscape::None));
        assert_eq!(
            LikeEscape::from_escape_string("\\"),
            Ok(LikeEscape::Backslash)
        );
        assert_eq!(
            LikeEscape::from_escape_string("ä"),
            Ok(LikeEscape::Char('ä'))
        );
        assert_eq!(
            LikeEscape::from_escape_string("ab"),
            Err(LikeError::InvalidEscapeString)
        );
        assert_eq!(
            LikeError::InvalidEscapeString.to_string(),
            "invalid escape string"
        );
    }

    #[test]
    fn a_trailing_escape_is_an_error() {
        let err = LikePattern::compile("a\\", LikeEscape::Backslash, LikeCase::Sensitive);
        assert_eq!(err.map(|_| ()), Err(LikeError::EndsWithEscape));
        let err = LikePattern::compile("a#", LikeEscape::Char('#'), LikeCase::Sensitive);
        assert_eq!(err.map(|_| ()), Err(LikeError::EndsWithEscape));
        assert_eq!(
            LikeError::EndsWithEscape.to_string(),
            "LIKE pattern must not end with escape character"
        );
        assert!(LikePattern::compile("a\\", LikeEscape::None, LikeCase::Sensitive).is_ok());
    }

    #[test]
    fn match_text_raises_the_trailing_escape_error_only_when_matching_reaches_it() {
        let once =
            |text, pattern| match_text(text, pattern, LikeEscape::Backslash, LikeCase::Sensitive);
        assert_eq!(once("a", "a\\"), Ok(false));
        assert_eq!(once("ab", "a\\"), Err(LikeError::EndsWithEscape));
        assert_eq!(once("ab", "b\\"), Ok(false));
        assert_eq!(once("", "%\\"), Ok(false));
        assert_eq!(once("x", "%\\"), Err(LikeError::EndsWithEscape));
        assert_eq!(once("x", "_\\"), Ok(false));
        let custom = match_text("ab", "a#", LikeEscape::Char('#'), LikeCase::Sensitive);
        assert_eq!(custom, Err(LikeError::EndsWithEscape));
    }

    #[test]
    fn ilike_under_c_folds_ascii_letters_only() {
        assert!(ilike("AB", "ab"));
        assert!(!ilike("ÄB", "äb"));
        assert!(ilike("Äb", "ÄB"));
        assert!(ilike("Ab", "a\\B"));
        assert!(!ilike("é", "É"));
        assert!(!ilike("ß", "SS"));
    }

    #[test]
    fn ilike_fast_paths_fold_ascii_only() {
        assert!(!ilike("xaÄby", "%äB%"));
        assert!(ilike("xaÄby", "%Äb%"));
        assert!(!ilike("ÄBC", "äb%"));
        assert!(ilike("ÄBC", "Äb%"));
        assert!(ilike("xYZ", "%yz"));
        assert!(ilike(
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxHaYsTaCkxx",
            "%haystack%"
        ));
        assert!(!ilike(
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxHaYsTaCx",
            "%haystack%"
        ));
    }

    #[test]
    fn ilike_recognises_the_escape_before_folding() {
        assert!(ilike_with_escape("%", "A%", "A"));
        assert!(!ilike_with_escape("a%", "A%", "A"));
        assert!(ilike_with_escape("Axyz", "a%", "A"));
    }

    #[test]
    fn literal_shapes_take_the_fast_paths() {
        let shape = |pattern| {
            let compiled =
                LikePattern::compile(pattern, LikeEscape::Backslash, LikeCase::Sensitive);
            match compiled.expect("test pattern compiles").matcher {
                Matcher::Equal(_) => "equal",
                Matcher::Prefix(_) => "prefix",
                Matcher::Suffix(_) => "suffix",
                Matcher::Contains(_) => "contains",
                Matcher::CharsExactly(_) | Matcher::CharsAtLeast(_) => "count",
                Matcher::Anchored(_) => "anchored",
                Matcher::General { .. } => "general",
            }
        };
        assert_eq!(shape("a\\%b"), "equal");
        assert_eq!(shape("ab%%"), "prefix");
        assert_eq!(shape("%ä"), "suffix");
        assert_eq!(shape("%%a\\_b%"), "contains");
        assert_eq!(shape("_%__"), "count");
        assert_eq!(shape("a_b"), "anchored");
        assert_eq!(shape("a%b%c"), "general");
    }

    #[test]
    fn multi_byte_literals_match_whole_characters() {
        assert!(like("x€y𝄞z", "%€_𝄞%"));
        assert!(!like("x€y𝄞z", "%€𝄞%"));
        assert!(like("€€", "%€"));
        assert!(like("ä€", "ä%"));
    }
}
