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
use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::thread;

/// Work for the parser's threads.
type Job = Box<dyn FnOnce() + Send>;

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
    on_parser_stack(move || ffi::parse(&input))
}

/// Runs `f` on one of the parser's threads ([`PARSER_STACK_BYTES`] of stack each, one per
/// core, started on first use and kept: a request pays a channel round trip, not a thread).
/// Should those threads be gone, `f` runs on a thread of its own.
fn on_parser_stack<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ParseError> + Send + 'static,
) -> Result<T, ParseError> {
    let (reply, outcome) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(f());
    });
    let unsent = match parser_threads() {
        Some(jobs) => jobs.send(job).err().map(|mpsc::SendError(job)| job),
        None => Some(job),
    };
    if let Some(job) = unsent {
        spawn_parser_thread(job, "pg-parse-once")?
            .join()
            .map_err(|_| lost())?;
    }
    outcome.recv().map_err(|_| lost())?
}

/// The error when the parser's thread ended without an answer (libpg_query panicked).
fn lost() -> ParseError {
    ParseError {
        message: "the parser failed on this statement".to_owned(),
        cursor: None,
    }
}

/// The queue of the parser's threads, started on first use; `None` if none would start.
fn parser_threads() -> Option<&'static mpsc::Sender<Job>> {
    static JOBS: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    JOBS.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = thread::available_parallelism().map_or(1, usize::from);
        let mut started = 0;
        for _ in 0..threads {
            let queue = Arc::clone(&queue);
            let worker: Job = Box::new(move || loop {
                let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                let Ok(job) = next else { return };
                // A panicking job drops its reply (its caller sees `lost`); the thread stays.
                let _ = panic::catch_unwind(AssertUnwindSafe(job));
            });
            started += usize::from(spawn_parser_thread(worker, "pg-parse").is_ok());
        }
        (started > 0).then_some(jobs)
    })
    .as_ref()
}

fn spawn_parser_thread(body: Job, name: &str) -> Result<thread::JoinHandle<()>, ParseError> {
    thread::Builder::new()
        .name(name.to_owned())
        .stack_size(PARSER_STACK_BYTES)
        .spawn(body)
        .map_err(|e| ParseError {
            message: format!("cannot start the parser's thread: {e}"),
            cursor: None,
        })
}

/// Postgres's SQL text for `tree` (libpg_query's deparser): a canonical spelling, identical for
/// statements that differ only in layout, case of keywords or redundant parentheses.
///
/// # Errors
/// [`ParseError`] when the deparser does not support a node of the tree.
pub fn deparse(tree: protobuf::ParseResult) -> Result<String, ParseError> {
    on_parser_stack(move || {
        pg_query::deparse(&tree, pg_query::DeparseOptions::default()).map_err(|e| ParseError {
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
                // libpg_query's own depth limit, met before the decoder's.
                let message = if message.contains("nested too deeply") {
                    super::TOO_DEEP.to_owned()
                } else {
                    message
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
        let a = deparse(parse("select 1 where A=1 and (b  in (1,2))").unwrap()).unwrap();
        let b = deparse(parse("SELECT 1 WHERE a = 1 AND b IN (1, 2)").unwrap()).unwrap();
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

    #[test]
    fn a_statement_nested_deeper_than_the_decoder_reads_is_an_error_not_an_overflow() {
        for depth in [60, 5_000] {
            let deep = format!("SELECT 1 WHERE {}true", "NOT ".repeat(depth));
            assert_eq!(parse(&deep).unwrap_err().message, TOO_DEEP, "{depth}");
        }
    }

    #[test]
    fn many_callers_share_the_parser_threads() {
        let callers: Vec<_> = (0..16)
            .map(|i| {
                thread::spawn(move || {
                    let tree = parse(&format!("SELECT {i} WHERE x = {i}")).unwrap();
                    deparse(tree).unwrap()
                })
            })
            .collect();
        for (i, caller) in callers.into_iter().enumerate() {
            assert_eq!(caller.join().unwrap(), format!("SELECT {i} WHERE x = {i}"));
        }
    }
}
