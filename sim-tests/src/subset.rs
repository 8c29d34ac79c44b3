//! Subset reads as the simulated client makes them (protocol.md §3.6, §5.7, §6.10): the rows
//! of its shape with `id <= $1`, ordered by `id` descending, limited and offset, with the
//! snapshot they were read at; and what the oracle says they must be.

use ampere_core::snapshot::PgSnapshot;
use serde_json::{Map, Value};

use crate::client::{Row, Rows};

/// One subset read's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubsetRead {
    /// `subset__where=id <= $1` with this as `$1`.
    pub max_id: i64,
    /// `subset__limit`.
    pub limit: u64,
    /// `subset__offset` (rows skipped).
    pub offset: u64,
}

impl SubsetRead {
    /// The `subset__*` query parameters, sorted by name as the official client sorts them.
    pub fn query_params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("subset__limit", self.limit.to_string()),
            ("subset__offset", self.offset.to_string()),
            ("subset__order_by", "id DESC".to_owned()),
            ("subset__params", format!("{{\"1\":\"{}\"}}", self.max_id)),
            ("subset__where", "id <= $1".to_owned()),
        ]
    }

    /// What the read must return from `rows` (the shape's rows as of its snapshot): those
    /// with `id <= max_id`, by `id` descending, `offset` skipped, at most `limit`.
    pub fn expected(&self, rows: &Rows) -> Vec<(String, Row)> {
        let id = |row: &Row| -> Option<i64> { row.get("id")?.as_deref()?.parse().ok() };
        let mut selected: Vec<(i64, String, Row)> = rows
            .iter()
            .filter_map(|(key, row)| {
                let id = id(row)?;
                (id <= self.max_id).then(|| (id, key.clone(), row.clone()))
            })
            .collect();
        selected.sort_by_key(|s| std::cmp::Reverse(s.0));
        let skip = usize::try_from(self.offset).unwrap_or(usize::MAX);
        let take = usize::try_from(self.limit).unwrap_or(usize::MAX);
        selected
            .into_iter()
            .skip(skip)
            .take(take)
            .map(|(_, key, row)| (key, row))
            .collect()
    }
}

/// A subset answer's body: `{"metadata":{…}, "data":[…]}` with a snapshot in decimal strings
/// and rows that are inserts stamped with the metadata's `snapshot_mark`.
pub fn parse_answer(body: &[u8]) -> Result<(PgSnapshot, Vec<(String, Row)>), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("subset body is not JSON ({e})"))?;
    let metadata = value
        .get("metadata")
        .and_then(Value::as_object)
        .ok_or("subset body without a metadata object")?;
    let decimal = |name: &str| -> Result<String, String> {
        match metadata.get(name) {
            Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(s.clone())
            }
            other => Err(format!(
                "subset metadata {name} is not a decimal string: {other:?}"
            )),
        }
    };
    let (xmin, xmax) = (decimal("xmin")?, decimal("xmax")?);
    decimal("database_lsn")?;
    let xip: Vec<String> = match metadata.get("xip_list") {
        Some(Value::Array(xips)) => xips
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or("an xip is not a string")
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("subset metadata without an xip_list array".to_owned()),
    };
    let text = format!("{xmin}:{xmax}:{}", xip.join(","));
    let snapshot = PgSnapshot::parse(&text).ok_or_else(|| format!("invalid snapshot {text}"))?;
    let mark = metadata
        .get("snapshot_mark")
        .and_then(Value::as_u64)
        .ok_or("subset metadata without an integer snapshot_mark")?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("subset body without a data array")?;
    data.iter()
        .map(|item| row(item, mark))
        .collect::<Result<_, _>>()
        .map(|rows| (snapshot, rows))
}

fn row(item: &Value, mark: u64) -> Result<(String, Row), String> {
    let item = item.as_object().ok_or("a subset row is not an object")?;
    let key = item
        .get("key")
        .and_then(Value::as_str)
        .ok_or("a subset row without a string key")?;
    let headers: &Map<String, Value> = item
        .get("headers")
        .and_then(Value::as_object)
        .ok_or("a subset row without headers")?;
    if headers.get("operation").and_then(Value::as_str) != Some("insert") {
        return Err(format!("subset row {key} is not an insert"));
    }
    if headers.get("snapshot_mark").and_then(Value::as_u64) != Some(mark) {
        return Err(format!(
            "subset row {key} lacks the read's snapshot_mark {mark}"
        ));
    }
    let value = item
        .get("value")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("subset row {key} without a value object"))?;
    let row = value
        .iter()
        .map(|(column, v)| match v {
            Value::String(s) => Ok((column.clone(), Some(s.clone()))),
            Value::Null => Ok((column.clone(), None)),
            other => Err(format!("subset row {key}: column {column} is {other}")),
        })
        .collect::<Result<Row, String>>()?;
    Ok((key.to_owned(), row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> (String, Row) {
        let mut row = Row::new();
        row.insert("id".to_owned(), Some(id.to_owned()));
        (format!("k{id}"), row)
    }

    #[test]
    fn the_expected_rows_are_ordered_by_id_descending_then_offset_and_limited() {
        let rows: Rows = ["1", "2", "10", "11", "3"].into_iter().map(row).collect();
        let read = SubsetRead {
            max_id: 10,
            limit: 2,
            offset: 1,
        };
        let keys: Vec<String> = read.expected(&rows).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["k3", "k2"]);
    }

    #[test]
    fn an_answer_parses_its_snapshot_and_rows_and_checks_their_mark() {
        let body = r#"{"metadata":{"database_lsn":"9","snapshot_mark":5,"xip_list":["751"],"xmax":"752","xmin":"750"}, "data": [{"key":"k","value":{"id":"1"},"headers":{"operation":"insert","relation":["public","items"],"snapshot_mark":5}}]}"#;
        let (snapshot, rows) = parse_answer(body.as_bytes()).expect("valid");
        assert_eq!(Some(snapshot), PgSnapshot::parse("750:752:751"));
        assert_eq!(rows.len(), 1);
        let wrong_mark = body.replace("\"snapshot_mark\":5}}", "\"snapshot_mark\":6}}");
        assert!(parse_answer(wrong_mark.as_bytes()).is_err());
    }
}
