//! The `electric-schema` header (protocol.md §4.2).

use ampere_core::json::push_json_string;
use ampere_core::shape::TableSchema;

/// `{"<col>":{"type":…[,"dims":n][,"pk_index":i][,"not_null":true][,modifiers…]}}` for the
/// selected columns (all of them when `selected` is `None`), in `attnum` order.
///
/// Non-ASCII characters are sent as `\u` escapes: header values are read as Latin-1 by
/// browsers, so raw UTF-8 would garble column names, while escapes decode correctly in
/// `JSON.parse` (Electric sends raw UTF-8; escaping is a harmless improvement).
pub(crate) fn electric_schema(schema: &TableSchema, selected: Option<&[String]>) -> String {
    let mut out = String::from("{");
    let columns = schema
        .columns
        .iter()
        .filter(|c| selected.is_none_or(|s| s.contains(&c.name)));
    for (i, column) in columns.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, &column.name);
        out.push_str(":{\"type\":");
        push_json_string(&mut out, &column.typname);
        if column.dims > 0 {
            out.push_str(&format!(",\"dims\":{}", column.dims));
        }
        if let Some(pk_index) = column.pk_index {
            out.push_str(&format!(",\"pk_index\":{pk_index}"));
        }
        if column.not_null {
            out.push_str(",\"not_null\":true");
        }
        for (name, value) in &column.modifiers {
            out.push(',');
            push_json_string(&mut out, name);
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
    }
    out.push('}');
    ascii_only(&out)
}

/// Escapes every character outside printable ASCII as `\uXXXX` (UTF-16 units). Valid on any
/// JSON text, because such characters can only occur inside strings.
fn ascii_only(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut units = [0_u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use ampere_core::pgoutput::Oid;
    use ampere_core::shape::{ColumnSchema, RelationName};

    use super::*;

    fn column(name: &str, typname: &str) -> ColumnSchema {
        ColumnSchema {
            name: name.to_owned(),
            type_oid: 0,
            typname: typname.to_owned(),
            dims: 0,
            not_null: false,
            pk_index: None,
            modifiers: vec![],
            is_enum: false,
        }
    }

    fn table(columns: Vec<ColumnSchema>) -> TableSchema {
        TableSchema {
            server_version: ampere_core::shape::ServerVersion::PG_15,
            oid: Oid(1),
            relation: RelationName {
                schema: "public".to_owned(),
                table: "items".to_owned(),
            },
            columns,
        }
    }

    #[test]
    fn describes_every_column_in_attnum_order_by_default() {
        let mut id = column("id", "uuid");
        id.pk_index = Some(0);
        id.not_null = true;
        let mut priority = column("priority", "int4");
        priority.not_null = true;
        let mut title = column("title", "text");
        title.not_null = true;
        let t = table(vec![id, priority, title]);
        assert_eq!(
            electric_schema(&t, None),
            "{\"id\":{\"type\":\"uuid\",\"pk_index\":0,\"not_null\":true},\
             \"priority\":{\"type\":\"int4\",\"not_null\":true},\
             \"title\":{\"type\":\"text\",\"not_null\":true}}"
        );
    }

    #[test]
    fn keeps_only_selected_columns() {
        let t = table(vec![
            column("id", "int4"),
            column("a", "text"),
            column("b", "text"),
        ]);
        let selected = ["b".to_owned(), "id".to_owned()];
        assert_eq!(
            electric_schema(&t, Some(&selected)),
            "{\"id\":{\"type\":\"int4\"},\"b\":{\"type\":\"text\"}}"
        );
    }

    #[test]
    fn arrays_report_element_type_and_dims_and_modifiers_follow() {
        let mut tags = column("tags", "int8");
        tags.dims = 2;
        let mut name = column("name", "varchar");
        name.modifiers = vec![("max_length".to_owned(), "10".to_owned())];
        let mut span = column("span", "interval");
        span.modifiers = vec![
            ("precision".to_owned(), "3".to_owned()),
            ("fields".to_owned(), "\"MINUTE TO SECOND\"".to_owned()),
        ];
        let t = table(vec![tags, name, span]);
        assert_eq!(
            electric_schema(&t, None),
            "{\"tags\":{\"type\":\"int8\",\"dims\":2},\
             \"name\":{\"type\":\"varchar\",\"max_length\":10},\
             \"span\":{\"type\":\"interval\",\"precision\":3,\"fields\":\"MINUTE TO SECOND\"}}"
        );
    }

    #[test]
    fn escapes_quotes_and_non_ascii_names_so_the_header_stays_ascii() {
        let t = table(vec![column("naïve \"q\"", "text"), column("😀", "mood")]);
        let header = electric_schema(&t, None);
        assert!(header.is_ascii());
        assert_eq!(
            header,
            "{\"na\\u00efve \\\"q\\\"\":{\"type\":\"text\"},\"\\ud83d\\ude00\":{\"type\":\"mood\"}}"
        );
    }

    #[test]
    fn an_empty_selection_gives_an_empty_object() {
        assert_eq!(electric_schema(&table(vec![]), None), "{}");
    }
}
