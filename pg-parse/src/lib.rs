//! Postgres's own parser (libpg_query, via the `pg_query` crate) behind a safe API.
//!
//! Owns the one foreign call ampere makes: parsing SQL text into Postgres's raw parse tree,
//! keeping the error's cursor position, which `pg_query::parse` drops. ampere's where-clause
//! errors must name that position exactly as Electric does (protocol.md §3.4), so this crate
//! calls libpg_query's protobuf entry point itself and decodes the tree with `pg_query`'s own
//! types. The crate holds the only `unsafe` code in ampere's parsing path; `ampere-core`
//! keeps `forbid(unsafe_code)`.
//!
//! Never: evaluates, type-checks or renders SQL (that is `ampere_core::where_clause`).

use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::thread;

/// Stack of the thread that parses and deparses. Decoding the tree recurses once per nested
/// message, some 50 KiB a level in a debug build; prost stops at 100 levels
/// ([`TOO_DEEP`]), which this stack holds with room to spare, so a deeply nested statement is
/// an error, never a stack overflow of the caller's thread.
const PARSER_STACK_BYTES: usize = 16 << 20;

/// The message for a statement nested deeper than the decoder reads.
pub const TOO_DEEP: &str = "the expression nests too deeply (at most about 50 levels)";

pub use pg_query::protobuf;
pub use pg_query::{NodeEnum, NodeRef};

/// Why Postgres's parser refused a statement.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ParseError {
    /// Postgres's message, e.g. `syntax error at or near "x"`.
    pub message: String,
    /// Postgres's 1-based character position of the error in the statement, if it has one.
    pub cursor: Option<u32>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses `sql` with Postgres's grammar into its raw parse tree (one entry per statement).
///
/// # Errors
/// [`ParseError`] with Postgres's message and cursor for a syntax error; a statement with a
/// NUL byte is refused with a message of ampere's own (Postgres cannot receive one either).
pub fn parse(sql: &str) -> Result<protobuf::ParseResult, ParseError> {
    let Ok(input) = CString::new(sql) else {
        return Err(ParseError {
            message: "invalid byte sequence: the text contains a NUL byte".to_owned(),
            cursor: None,
        });
    };
    on_parser_stack(|| ffi::parse(&input))
}

/// Runs `f` on a thread of its own with [`PARSER_STACK_BYTES`] of stack.
fn on_parser_stack<T: Send>(
    f: impl FnOnce() -> Result<T, ParseError> + Send,
) -> Result<T, ParseError> {
    thread::scope(|scope| {
        let spawned = thread::Builder::new()
            .name("pg-parse".to_owned())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, f);
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => Err(ParseError {
                message: format!("cannot start the parser's thread: {e}"),
                cursor: None,
            }),
        }
    })
}

/// Postgres's SQL text for `tree` (libpg_query's deparser): a canonical spelling, identical for
/// statements that differ only in layout, case of keywords or redundant parentheses.
///
/// # Errors
/// [`ParseError`] when the deparser does not support a node of the tree.
pub fn deparse(tree: &protobuf::ParseResult) -> Result<String, ParseError> {
    on_parser_stack(|| {
        pg_query::deparse(tree, pg_query::DeparseOptions::default()).map_err(|e| ParseError {
            message: e.to_string(),
            cursor: None,
        })
    })
}

/// One lexical token of a statement: its byte range and Postgres's token kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Token {
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset just past the token.
    pub end: usize,
    /// What it is (`Param` for `$1`, `SqlComment`, `CComment`, …).
    pub kind: protobuf::Token,
}

/// The tokens of `sql`, comments included, as Postgres's lexer splits it.
///
/// # Errors
/// [`ParseError`] (without a cursor) for text the lexer refuses.
pub fn tokens(sql: &str) -> Result<Vec<Token>, ParseError> {
    let scanned = pg_query::scan(sql).map_err(|e| ParseError {
        message: e.to_string(),
        cursor: None,
    })?;
    Ok(scanned
        .tokens
        .iter()
        .map(|t| Token {
            start: usize::try_from(t.start).unwrap_or(0),
            end: usize::try_from(t.end).unwrap_or(0),
            kind: protobuf::Token::try_from(t.token).unwrap_or(protobuf::Token::Nul),
        })
        .collect())
}

/// libpg_query's C entry points, as `pg_query.h` declares them. The static library is built
/// and linked by the `pg_query` crate.
mod ffi {
    #![allow(unsafe_code)]

    use super::{c_char, c_int, CStr, CString, ParseError};
    use prost::Message;

    /// `PgQueryError`.
    #[repr(C)]
    struct PgQueryError {
        message: *mut c_char,
        funcname: *mut c_char,
        filename: *mut c_char,
        lineno: c_int,
        cursorpos: c_int,
        context: *mut c_char,
    }

    /// `PgQueryProtobuf`.
    #[repr(C)]
    struct PgQueryProtobuf {
        len: usize,
        data: *mut c_char,
    }

    /// `PgQueryProtobufParseResult`.
    #[repr(C)]
    struct PgQueryProtobufParseResult {
        parse_tree: PgQueryProtobuf,
        stderr_buffer: *mut c_char,
        error: *mut PgQueryError,
    }

    extern "C" {
        fn pg_query_parse_protobuf(input: *const c_char) -> PgQueryProtobufParseResult;
        fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
    }

    pub(super) fn parse(input: &CString) -> Result<super::protobuf::ParseResult, ParseError> {
        // SAFETY: `input` is a valid NUL-terminated string that outlives the call; the result
        // is read only before it is freed, exactly once, by libpg_query's own free function.
        unsafe {
            let result = pg_query_parse_protobuf(input.as_ptr());
            let outcome = if result.error.is_null() {
                let tree = &result.parse_tree;
                let bytes = if tree.data.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(tree.data.cast::<u8>(), tree.len)
                };
                super::protobuf::ParseResult::decode(bytes).map_err(|e| ParseError {
                    message: if e.to_string().contains("recursion limit") {
                        super::TOO_DEEP.to_owned()
                    } else {
                        format!("could not decode the parse tree: {e}")
                    },
                    cursor: None,
                })
            } else {
                let error = &*result.error;
                let message = if error.message.is_null() {
                    "syntax error".to_owned()
                } else {
                    CStr::from_ptr(error.message).to_string_lossy().into_owned()
                };
                Err(ParseError {
                    message,
                    cursor: u32::try_from(error.cursorpos).ok().filter(|&c| c > 0),
                })
            };
            pg_query_free_protobuf_parse_result(result);
            outcome
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_keeps_postgres_message_and_cursor() {
        let error = parse("SELECT 1 WHERE 1 x 1").unwrap_err();
        assert_eq!(error.message, "syntax error at or near \"x\"");
        assert_eq!(error.cursor, Some(18));
    }

    #[test]
    fn an_incomplete_statement_errors_at_end_of_input() {
        let error = parse("SELECT 1 WHERE a =").unwrap_err();
        assert_eq!(error.message, "syntax error at end of input");
        assert_eq!(error.cursor, Some(19));
    }

    #[test]
    fn a_valid_statement_gives_one_tree_per_statement() {
        let tree = parse("SELECT 1 WHERE a = 1; SELECT 2").unwrap();
        assert_eq!(tree.stmts.len(), 2);
    }

    #[test]
    fn deparse_spells_layout_variants_the_same() {
        let a = deparse(&parse("select 1 where A=1 and (b  in (1,2))").unwrap()).unwrap();
        let b = deparse(&parse("SELECT 1 WHERE a = 1 AND b IN (1, 2)").unwrap()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn tokens_name_parameters_and_comments() {
        let sql = "SELECT 1 WHERE a = $1 -- note";
        let kinds: Vec<_> = tokens(sql).unwrap().iter().map(|t| t.kind).collect();
        assert!(kinds.contains(&protobuf::Token::Param));
        assert_eq!(kinds.last(), Some(&protobuf::Token::SqlComment));
        let param = tokens(sql).unwrap()[5];
        assert_eq!(&sql[param.start..param.end], "$1");
    }

    #[test]
    fn a_nul_byte_is_refused_without_reaching_the_parser() {
        assert!(parse("SELECT 1 WHERE a = '\0'").is_err());
    }
}
