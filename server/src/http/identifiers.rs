//! Postgres identifiers in query parameters: `table` and each `columns` item (protocol.md §3.3).
//!
//! Matches Electric's parser, quirks included: a part is quoted only when it both starts and
//! ends with `"`, a quote counts as unescaped only when neither neighbour is a quote, and
//! `columns` splits at commas followed by an even number of quotes.

use ampere_core::shape::RelationName;
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// Postgres's `NAMEDATALEN - 1`.
const IDENTIFIER_LEN_MAX: usize = 63;

const ZERO_LENGTH: &str = "Invalid zero-length delimited identifier";

const NUL_BYTE: &str = "Invalid identifier containing a NUL byte (Postgres names cannot hold one)";

/// Parses `[schema.]table`; one part means schema `public`. The error is the wire message.
pub(crate) fn parse_relation(text: &str) -> Result<RelationName, String> {
    let parts = split_relation(text);
    match parts.as_slice() {
        [table] => Ok(RelationName {
            schema: "public".to_owned(),
            table: parse_identifier(table)?,
        }),
        [schema, table] => Ok(RelationName {
            schema: parse_identifier(schema)?,
            table: parse_identifier(table)?,
        }),
        _ => Err(format!(
            "Invalid relation identifier, too many delimiters: {text}"
        )),
    }
}

/// Parses a comma list of identifiers, keeping the request's order. The error is the wire
/// message of the first bad item.
pub(crate) fn parse_columns(text: &str) -> Result<Vec<String>, String> {
    split_columns(text)
        .into_iter()
        .map(parse_identifier)
        .collect()
}

/// Parses one identifier: quoted keeps case and unescapes `""`; unquoted is checked against
/// `^[\pL_][\pL\pM_0-9$]*$` and ASCII-lowercased.
pub(crate) fn parse_identifier(text: &str) -> Result<String, String> {
    let parsed = if let Some(inner) = quoted_inner(text) {
        parse_quoted(inner)?
    } else {
        parse_unquoted(text)?
    };
    if parsed.chars().count() > IDENTIFIER_LEN_MAX {
        return Err(format!(
            "Identifier is too long (max length is {IDENTIFIER_LEN_MAX})"
        ));
    }
    Ok(parsed)
}

/// The text between the quotes when `text` starts and ends with `"` (a lone `"` gives "").
fn quoted_inner(text: &str) -> Option<&str> {
    if text.len() >= 2 {
        text.strip_prefix('"')?.strip_suffix('"')
    } else if text == "\"" {
        Some("")
    } else {
        None
    }
}

fn parse_quoted(inner: &str) -> Result<String, String> {
    if inner.is_empty() {
        return Err(ZERO_LENGTH.to_owned());
    }
    if has_unescaped_quote(inner) {
        return Err(format!("Invalid identifier with unescaped quote: {inner}"));
    }
    if inner.contains('\0') {
        // Postgres cannot hold one in a name (nor in any text): looking the table up would
        // fail on every retry instead of telling the client its request is wrong.
        return Err(NUL_BYTE.to_owned());
    }
    Ok(inner.replace("\"\"", "\""))
}

/// Electric's `(?<!")"(?!")`: a quote with no quote on either side.
fn has_unescaped_quote(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        let before = i > 0 && bytes[i - 1] == b'"';
        let after = bytes.get(i + 1) == Some(&b'"');
        b == b'"' && !before && !after
    })
}

fn parse_unquoted(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err(ZERO_LENGTH.to_owned());
    }
    let mut chars = text.chars();
    let first_ok = chars.next().is_some_and(|c| is_letter(c) || c == '_');
    let rest_ok =
        chars.all(|c| is_letter(c) || is_mark(c) || c == '_' || c == '$' || c.is_ascii_digit());
    if !(first_ok && rest_ok) {
        return Err(format!(
            "Invalid unquoted identifier contains special characters: {text}"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

fn is_letter(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Letter
}

fn is_mark(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Mark
}

/// Splits on `.` outside double quotes, each `"` toggling the quoted state.
fn split_relation(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'.' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Electric's `,(?=(?:[^"]*"[^"]*")*[^"]*$)`: split at commas followed by an even number of
/// quotes. (Unlike toggling from the left, this differs when the quote count is odd.)
fn split_columns(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut end = text.len();
    let mut is_even_quotes_after = true;
    for (i, b) in text.bytes().enumerate().rev() {
        match b {
            b'"' => is_even_quotes_after = !is_even_quotes_after,
            b',' if is_even_quotes_after => {
                parts.push(&text[i + 1..end]);
                end = i;
            }
            _ => {}
        }
    }
    parts.push(&text[..end]);
    parts.reverse();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(schema: &str, table: &str) -> RelationName {
        RelationName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        }
    }

    #[test]
    fn unqualified_table_is_in_public_and_lowercased() {
        assert_eq!(parse_relation("items"), Ok(rel("public", "items")));
        assert_eq!(parse_relation("Items"), Ok(rel("public", "items")));
        assert_eq!(parse_relation("foo.Bar"), Ok(rel("foo", "bar")));
    }

    #[test]
    fn quoted_parts_keep_case_dots_and_spaces() {
        assert_eq!(
            parse_relation("app.\"Issues for x_1\""),
            Ok(rel("app", "Issues for x_1"))
        );
        assert_eq!(
            parse_relation("\"foo.woah\".\"bar\""),
            Ok(rel("foo.woah", "bar"))
        );
        assert_eq!(parse_relation("\"foo\".bar"), Ok(rel("foo", "bar")));
        assert_eq!(
            parse_identifier("\"Foo\"\"Bar\""),
            Ok("Foo\"Bar".to_owned())
        );
        assert_eq!(parse_identifier("\" \""), Ok(" ".to_owned()));
    }

    #[test]
    fn too_many_delimiters_names_the_input() {
        assert_eq!(
            parse_relation("foo.bar.baz"),
            Err("Invalid relation identifier, too many delimiters: foo.bar.baz".to_owned())
        );
    }

    #[test]
    fn quoting_errors_use_electric_messages() {
        let err = |t: &str| parse_identifier(t).unwrap_err();
        assert_eq!(err("\"\""), ZERO_LENGTH);
        assert_eq!(err(""), ZERO_LENGTH);
        assert_eq!(err("\""), ZERO_LENGTH);
        assert_eq!(
            err("\"Foo\"Bar\""),
            "Invalid identifier with unescaped quote: Foo\"Bar"
        );
        assert_eq!(
            err("Foo\"Bar\""),
            "Invalid unquoted identifier contains special characters: Foo\"Bar\""
        );
        assert_eq!(
            err(" "),
            "Invalid unquoted identifier contains special characters:  "
        );
        assert_eq!(
            err("foob@r"),
            "Invalid unquoted identifier contains special characters: foob@r"
        );
        assert_eq!(
            parse_relation("\"foo\".\"bar").unwrap_err(),
            "Invalid unquoted identifier contains special characters: \"bar"
        );
    }

    #[test]
    fn a_nul_byte_in_a_quoted_or_unquoted_identifier_is_a_client_error() {
        assert_eq!(parse_relation("\"ite\0ms\""), Err(NUL_BYTE.to_owned()));
        assert_eq!(parse_columns("id,\"a\0\""), Err(NUL_BYTE.to_owned()));
        assert_eq!(
            parse_relation("ite\0ms"),
            Err("Invalid unquoted identifier contains special characters: ite\0ms".to_owned())
        );
        // Line breaks are legal inside quotes in Postgres (the table may exist); the log
        // escapes them (`logging::EscapedFields`).
        assert_eq!(parse_identifier("\"a\nb\""), Ok("a\nb".to_owned()));
    }

    #[test]
    fn unquoted_identifiers_follow_the_unicode_letter_rule() {
        assert_eq!(parse_identifier("_x$1"), Ok("_x$1".to_owned()));
        assert_eq!(parse_identifier("Café"), Ok("café".to_owned()));
        // A combining mark may follow a letter but not start an identifier.
        assert_eq!(parse_identifier("e\u{301}"), Ok("e\u{301}".to_owned()));
        assert!(parse_identifier("\u{301}e").is_err());
        assert!(parse_identifier("1abc").is_err());
        // Only ASCII is lowercased, as Postgres does.
        assert_eq!(parse_identifier("ÉA"), Ok("Éa".to_owned()));
    }

    #[test]
    fn identifiers_longer_than_63_characters_are_rejected() {
        let ok = "a".repeat(63);
        assert_eq!(parse_identifier(&ok), Ok(ok.clone()));
        let long = "a".repeat(64);
        let message = "Identifier is too long (max length is 63)".to_owned();
        assert_eq!(parse_identifier(&long), Err(message.clone()));
        assert_eq!(
            parse_identifier(&format!("\"{long}\"")),
            Err(message.clone())
        );
        // Characters, not bytes: 63 two-byte letters pass.
        assert!(parse_identifier(&"é".repeat(63)).is_ok());
        assert_eq!(parse_relation(&format!("s.{long}")), Err(message));
    }

    #[test]
    fn columns_split_on_commas_outside_quotes() {
        let ok = |t: &str, want: &[&str]| {
            let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(parse_columns(t), Ok(want), "{t}");
        };
        ok("id", &["id"]);
        ok("id,name", &["id", "name"]);
        ok("\"PoT@To\",PoTaTo", &["PoT@To", "potato"]);
        ok("\"PoTaTo,sunday\",foo", &["PoTaTo,sunday", "foo"]);
        ok("\"fo\"\"o\",bar", &["fo\"o", "bar"]);
        ok(
            "\"id\",\"title\",\"has,comma\",\"has\"\"quote\"",
            &["id", "title", "has,comma", "has\"quote"],
        );
    }

    #[test]
    fn column_list_errors_use_electric_messages() {
        assert_eq!(parse_columns("foo,"), Err(ZERO_LENGTH.to_owned()));
        assert_eq!(parse_columns(",,,"), Err(ZERO_LENGTH.to_owned()));
        assert_eq!(parse_columns(""), Err(ZERO_LENGTH.to_owned()));
        assert_eq!(
            parse_columns("\"id,\"name\""),
            Err("Invalid unquoted identifier contains special characters: \"id".to_owned())
        );
    }
}
