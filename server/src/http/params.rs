//! Shape request parameters: decoding the query string and validating it in Electric's order
//! (protocol.md §3.1, §3.2, §3.7). Checks that need the catalog live in `shape.rs`.

use std::collections::BTreeMap;

use ampere_core::offset::RequestOffset;
use ampere_core::shape::{LogMode, Replica, ShapeDefinition, ShapeHandle};
use ampere_core::where_clause::{Params, WhereClause};
use ampere_core::LogOffset;

use super::errors::ApiError;
use super::identifiers;

/// `subset__*` keys that make a GET a subset request (§3.6).
const SUBSET_KEYS: [&str; 5] = [
    "subset__where",
    "subset__params",
    "subset__limit",
    "subset__offset",
    "subset__order_by",
];

/// POST body keys that belong to the subset (§3.6), besides a nested `"subset"` object. A
/// body's `offset` is the subset's row offset, never the log offset.
const BODY_SUBSET_KEYS: [&str; 7] = [
    "where",
    "order_by",
    "limit",
    "offset",
    "params",
    "where_expr",
    "order_by_expr",
];

/// A decoded query string: standard form decoding, last value wins, bracketed keys kept whole
/// (`params[1]`).
#[derive(Clone, Default, Debug)]
pub(crate) struct Query {
    values: BTreeMap<String, String>,
}

impl Query {
    /// Decodes `raw` (without the `?`). Invalid UTF-8 is replaced, never rejected.
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let values = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self { values }
    }

    /// The value of `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key` unless absent or blank (only whitespace), as Electric's casting
    /// treats blank strings.
    fn non_blank(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.trim().is_empty())
    }

    /// The secret the request presents (`secret`, else the legacy `api_secret`).
    pub(crate) fn secret(&self) -> Option<&str> {
        self.get("secret").or_else(|| self.get("api_secret"))
    }

    /// This query with a POST body's keys in place of its own (§3.6): every key but the
    /// subset's, whose value is a string, number or boolean (`offset` in a body is the
    /// subset's row offset, never the log offset).
    pub(crate) fn overridden_by(&self, body: &serde_json::Map<String, serde_json::Value>) -> Self {
        let mut values = self.values.clone();
        for (key, value) in body {
            if key == "subset" || BODY_SUBSET_KEYS.contains(&key.as_str()) {
                continue;
            }
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            values.insert(key.clone(), text);
        }
        Self { values }
    }

    /// This query reduced to the shape it names, for `DELETE` (§1.5), which ignores `offset`
    /// and `live`: `offset=-1` (so `handle` is ignored too) and no live flags, so that
    /// [`shape_params`] checks exactly what a GET's definition must pass.
    pub(crate) fn definition_only(&self) -> Self {
        let mut values = self.values.clone();
        for key in ["live", "live_sse", "experimental_live_sse"] {
            values.remove(key);
        }
        values.retain(|key, _| !key.starts_with("subset__"));
        values.insert("offset".to_owned(), "-1".to_owned());
        Self { values }
    }
}

/// A validated shape request, before the catalog is consulted.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct ShapeParams {
    /// `offset`.
    pub(crate) offset: RequestOffset,
    /// `handle`; always `None` for `offset=-1` and `offset=now`, which ignore it.
    pub(crate) handle: Option<ShapeHandle>,
    /// `expired_handle`: the handle a 409 retired for this client, which the official client
    /// sends while it holds one (protocol.md §7). Only a hint; nothing is refused for it.
    pub(crate) expired_handle: Option<ShapeHandle>,
    /// Whether the request is live (a long-poll, or with `is_sse` an event stream).
    pub(crate) is_live: bool,
    /// `live_sse` (or `experimental_live_sse`): live changes as server-sent events.
    pub(crate) is_sse: bool,
    /// `cursor`, for the next `electric-cursor`.
    pub(crate) cursor: Option<String>,
    /// The shape the request names.
    pub(crate) definition: ShapeDefinition,
    /// `columns` in the request's order (for error messages), if given.
    pub(crate) columns: Option<Vec<String>>,
    /// `where` as sent (validated against the table before a shape is created; error
    /// positions refer to this text), if given.
    pub(crate) where_text: Option<String>,
    /// `params[n]`.
    pub(crate) params: Params,
    /// The subset to read instead of the log (§3.6), if any `subset__*` key or a POST body
    /// asked for one.
    pub(crate) subset: Option<SubsetParams>,
}

/// A subset request's parameters, checked for form (the where clause and `order_by` are bound
/// to the shape's table once it is known).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct SubsetParams {
    /// `where`.
    pub(crate) where_text: Option<String>,
    /// `params`: the subset where clause's own `$n`.
    pub(crate) params: Params,
    /// `order_by`.
    pub(crate) order_by: Option<String>,
    /// `limit` (> 0).
    pub(crate) limit: Option<u64>,
    /// `offset`: rows skipped (≥ 0), not a log offset.
    pub(crate) offset: Option<u64>,
}

/// A subset's parameters as sent, before their form is checked: from `subset__*` query keys
/// (strings) or a POST body (any JSON).
#[derive(Clone, Default, Debug)]
pub(crate) struct RawSubset {
    values: BTreeMap<String, serde_json::Value>,
}

impl RawSubset {
    /// The `subset__*` keys of `query` (`subset__params[1]` kept whole), if any of the five
    /// that make a subset request is present (the client's `*_expr` keys alone do not).
    fn from_query(query: &Query) -> Option<Self> {
        if !SUBSET_KEYS.iter().any(|k| query.get(k).is_some())
            && !query
                .values
                .keys()
                .any(|k| k.starts_with("subset__params["))
        {
            return None;
        }
        let values = query
            .values
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("subset__")?;
                Some((key.to_owned(), serde_json::Value::String(v.clone())))
            })
            .collect();
        Some(Self { values })
    }

    /// A POST body's subset: its subset keys, and those of a nested `"subset":{…}` object
    /// (which win).
    pub(crate) fn from_body(body: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        let mut values = BTreeMap::new();
        let mut is_subset = false;
        for key in BODY_SUBSET_KEYS {
            if let Some(value) = body.get(key) {
                is_subset = true;
                values.insert(key.to_owned(), value.clone());
            }
        }
        if let Some(nested) = body.get("subset") {
            is_subset = true;
            if let Some(nested) = nested.as_object() {
                for (key, value) in nested {
                    values.insert(key.clone(), value.clone());
                }
            }
        }
        is_subset.then_some(Self { values })
    }

    /// Checks the parameters' form, naming every failing one (Electric's subset changeset).
    fn check(&self) -> Result<SubsetParams, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let text = |key: &'static str, errors: &mut Vec<(&'static str, String)>| match self
            .values
            .get(key)
        {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push((key, "is invalid".to_owned()));
                None
            }
        };
        let where_text = text("where", &mut errors);
        let order_by = text("order_by", &mut errors);
        let limit = self.integer("limit", &mut errors).and_then(|n| {
            if n > 0 {
                u64::try_from(n).ok()
            } else {
                errors.push(("limit", "must be greater than 0".to_owned()));
                None
            }
        });
        let offset = self.integer("offset", &mut errors).and_then(|n| {
            if n >= 0 {
                u64::try_from(n).ok()
            } else {
                errors.push(("offset", "must be greater than or equal to 0".to_owned()));
                None
            }
        });
        let limited = self.values.contains_key("limit") || self.values.contains_key("offset");
        if limited && order_by.is_none() {
            errors.push((
                "order_by",
                "order_by is required when limit or offset is present".to_owned(),
            ));
        }
        let params = match self.params() {
            Ok(params) => params,
            Err(message) => {
                errors.push(("params", message.to_owned()));
                Params::new()
            }
        };
        if errors.is_empty() {
            Ok(SubsetParams {
                where_text,
                params,
                order_by,
                limit,
                offset,
            })
        } else {
            Err(errors)
        }
    }

    /// An integer parameter: a JSON number or its decimal text.
    fn integer(&self, key: &'static str, errors: &mut Vec<(&'static str, String)>) -> Option<i64> {
        let parsed = match self.values.get(key)? {
            serde_json::Value::Null => return None,
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if parsed.is_none() {
            errors.push((key, "is invalid".to_owned()));
        }
        parsed
    }

    /// `params`: a JSON object (or its text), or `params[n]` keys; values become strings.
    fn params(&self) -> Result<Params, &'static str> {
        let mut raw: Vec<(String, String)> = self
            .values
            .iter()
            .filter_map(|(k, v)| {
                let inner = k.strip_prefix("params[")?.strip_suffix(']')?;
                Some((inner.to_owned(), json_text(v)))
            })
            .collect();
        let object = match self.values.get("params") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) if text.trim().is_empty() => None,
            Some(serde_json::Value::String(text)) => {
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(serde_json::Value::Object(object)) => Some(object),
                    Ok(_) => return Err("params must be a JSON object"),
                    Err(_) => return Err("params must be valid JSON"),
                }
            }
            Some(serde_json::Value::Object(object)) => Some(object.clone()),
            Some(_) => return Err("params must be a JSON object"),
        };
        for (key, value) in object.into_iter().flatten() {
            raw.push((key, json_text(&value)));
        }
        number_params(raw)
    }
}

/// A JSON value as a parameter's text: strings as they are, anything else as JSON.
fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl ShapeParams {
    /// The request offset as the ETag renders it.
    pub(crate) fn offset_text(&self) -> String {
        match self.offset {
            RequestOffset::Log(offset) => offset.to_string(),
            RequestOffset::Now => "now".to_owned(),
        }
    }
}

/// Validates a shape request; `body_subset` is a POST body's subset, which replaces any
/// `subset__*` keys. Electric's order: the parameters that fail on their own form (a blank
/// `offset`, `columns`, `replica`, `log`) are all named in one 400; after them the first
/// failing check decides; the subset's parameters last, each failing one named.
pub(crate) fn shape_params(
    query: &Query,
    body_subset: Option<RawSubset>,
) -> Result<ShapeParams, ApiError> {
    let offset_text = query
        .non_blank("offset")
        .ok_or_else(|| ApiError::invalid("offset", "can't be blank"));
    let cast = (offset_text, columns(query), replica(query), log_mode(query));
    let (offset, columns, replica, log) = match cast {
        (Ok(offset), Ok(columns), Ok(replica), Ok(log)) => (offset, columns, replica, log),
        (offset, columns, replica, log) => {
            let errors = [offset.err(), columns.err(), replica.err(), log.err()];
            return Err(ApiError::merge(errors.into_iter().flatten()));
        }
    };
    let offset = offset
        .parse()
        .map_err(|_| ApiError::invalid("offset", "has invalid format"))?;
    let handle = handle(query, offset)?;
    let (is_live, is_sse) = live(query, offset)?;
    let relation = table(query)?;
    let params = params(query)?;
    let where_text = query.non_blank("where").map(str::to_owned);
    let where_clause = where_clause(where_text.as_deref(), &params)?;
    if query.get("queryable_columns").is_some() {
        // Never ignored: a proxy sets it to hide columns from subset filters.
        return Err(ApiError::invalid(
            "queryable_columns",
            "queryable_columns is not supported yet",
        ));
    }
    let subset = subset(query, body_subset, is_sse)?;
    let definition = ShapeDefinition {
        relation,
        columns: columns.as_ref().map(|c| {
            let mut sorted = c.clone();
            sorted.sort();
            sorted.dedup();
            sorted
        }),
        replica,
        where_clause,
        log,
    };
    Ok(ShapeParams {
        offset,
        handle,
        expired_handle: query
            .non_blank("expired_handle")
            .map(|h| ShapeHandle::from_string(h.to_owned())),
        is_live,
        is_sse,
        cursor: query.get("cursor").map(str::to_owned),
        definition,
        columns,
        where_text,
        params,
        subset,
    })
}

/// The canonical where clause of the definition (`params` inlined).
fn where_clause(where_text: Option<&str>, params: &Params) -> Result<Option<String>, ApiError> {
    match where_text {
        Some(text) => WhereClause::canonicalize(text, params)
            .map(Some)
            .map_err(|e| ApiError::invalid("where", e.to_string())),
        None if !params.is_empty() => Err(ApiError::invalid(
            "params",
            "params were given without a where clause",
        )),
        None => Ok(None),
    }
}

/// The subset of a POST body, else of `subset__*` keys, checked for form; not streamed.
fn subset(
    query: &Query,
    body_subset: Option<RawSubset>,
    is_sse: bool,
) -> Result<Option<SubsetParams>, ApiError> {
    let subset = body_subset
        .or_else(|| RawSubset::from_query(query))
        .map(|raw| raw.check())
        .transpose()
        .map_err(ApiError::InvalidSubset)?;
    if subset.is_some() && is_sse {
        return Err(ApiError::invalid(
            "live_sse",
            "can't be true for a subset request",
        ));
    }
    Ok(subset)
}

/// `params[n]=v` keys, or `params` as a JSON object (`{"1":"a"}`): numbered from 1 with no gap.
fn params(query: &Query) -> Result<Params, ApiError> {
    let invalid = |message: &str| ApiError::invalid("params", message.to_owned());
    let mut raw: Vec<(String, String)> = query
        .values
        .iter()
        .filter_map(|(k, v)| {
            let inner = k.strip_prefix("params[")?.strip_suffix(']')?;
            Some((inner.to_owned(), v.clone()))
        })
        .collect();
    if let Some(json) = query.non_blank("params") {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|_| invalid("params must be a JSON object of strings keyed by number"))?;
        for (key, value) in object {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            raw.push((key, text));
        }
    }
    number_params(raw).map_err(invalid)
}

/// `(key, value)` pairs as `$n` values: keys must be numbers from 1 without a gap.
fn number_params(raw: Vec<(String, String)>) -> Result<Params, &'static str> {
    let mut params = Params::new();
    for (key, value) in raw {
        let number: u32 = key
            .parse()
            .ok()
            .filter(|_| key.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("Parameters can only use numbers as keys")?;
        params.insert(number, value);
    }
    let sequential = params
        .keys()
        .copied()
        .eq(1..=u32::try_from(params.len()).unwrap_or(0));
    if !sequential {
        return Err("Parameters must be numbered sequentially, starting from 1");
    }
    Ok(params)
}

fn handle(query: &Query, offset: RequestOffset) -> Result<Option<ShapeHandle>, ApiError> {
    if matches!(
        offset,
        RequestOffset::Now | RequestOffset::Log(LogOffset::BeforeAll)
    ) {
        return Ok(None);
    }
    match query.non_blank("handle") {
        Some(handle) => Ok(Some(ShapeHandle::from_string(handle.to_owned()))),
        None => Err(ApiError::invalid(
            "handle",
            "can't be blank when offset != -1",
        )),
    }
}

/// Any value but the exact string `false` is true (Electric quirk).
pub(crate) fn is_truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| v != "false")
}

/// `live`, and `live_sse` (which needs `live`).
fn live(query: &Query, offset: RequestOffset) -> Result<(bool, bool), ApiError> {
    let is_live = is_truthy(query.get("live"));
    if is_live {
        match offset {
            RequestOffset::Log(LogOffset::BeforeAll) => {
                return Err(ApiError::invalid("live", "can't be true when offset == -1"));
            }
            RequestOffset::Now => {
                return Err(ApiError::invalid(
                    "live",
                    "can't be true when offset is 'now'",
                ));
            }
            RequestOffset::Log(_) => {}
        }
    }
    let sse = query
        .get("live_sse")
        .or_else(|| query.get("experimental_live_sse"));
    let is_sse = is_truthy(sse);
    if is_sse && !is_live {
        return Err(ApiError::invalid(
            "live_sse",
            "can't be true unless live is also true",
        ));
    }
    Ok((is_live, is_sse))
}

fn table(query: &Query) -> Result<ampere_core::shape::RelationName, ApiError> {
    let text = query
        .non_blank("table")
        .ok_or_else(|| ApiError::invalid("table", "can't be blank"))?;
    identifiers::parse_relation(text).map_err(|message| ApiError::invalid("table", message))
}

fn columns(query: &Query) -> Result<Option<Vec<String>>, ApiError> {
    query
        .non_blank("columns")
        .map(|text| {
            identifiers::parse_columns(text)
                .map_err(|message| ApiError::invalid("columns", message))
        })
        .transpose()
}

fn replica(query: &Query) -> Result<Replica, ApiError> {
    match query.non_blank("replica") {
        None | Some("default") => Ok(Replica::Default),
        Some("full") => Ok(Replica::Full),
        Some(_) => Err(ApiError::invalid("replica", "is invalid")),
    }
}

fn log_mode(query: &Query) -> Result<LogMode, ApiError> {
    match query.non_blank("log") {
        None | Some("full") => Ok(LogMode::Full),
        Some("changes_only") => Ok(LogMode::ChangesOnly),
        Some(_) => Err(ApiError::invalid("log", "is invalid")),
    }
}

#[cfg(test)]
mod tests {
    use ampere_core::shape::RelationName;

    use super::*;

    fn parse(query: &str) -> Result<ShapeParams, ApiError> {
        shape_params(&Query::parse(Some(query)), None)
    }

    fn rejects(query: &str, field: &str, message: &str) {
        match parse(query) {
            Err(ApiError::Invalid {
                field: f,
                message: m,
            }) => {
                assert_eq!((f, m.as_str()), (field, message), "{query}");
            }
            other => panic!("{query}: expected 400 on {field}, got {other:?}"),
        }
    }

    #[test]
    fn offset_is_required_and_must_parse() {
        rejects("table=items", "offset", "can't be blank");
        rejects("table=items&offset=", "offset", "can't be blank");
        rejects("table=items&offset=%20", "offset", "can't be blank");
        for bad in ["abc", "-2", "1", "1_x", "18446744073709551616_0", "NOW"] {
            rejects(
                &format!("table=items&offset={bad}"),
                "offset",
                "has invalid format",
            );
        }
    }

    #[test]
    fn offset_is_checked_before_table() {
        rejects("", "offset", "can't be blank");
        rejects("offset=x", "offset", "has invalid format");
    }

    #[test]
    fn handle_is_required_unless_offset_is_minus_one_or_now() {
        rejects(
            "table=items&offset=0_0",
            "handle",
            "can't be blank when offset != -1",
        );
        rejects(
            "table=items&offset=0_0&handle=",
            "handle",
            "can't be blank when offset != -1",
        );
        let p = parse("table=items&offset=0_0&handle=h-1").expect("valid");
        assert_eq!(p.handle, Some(ShapeHandle::from_string("h-1".into())));
    }

    #[test]
    fn handle_is_ignored_for_minus_one_and_now() {
        for offset in ["-1", "-1_0", "now"] {
            let p = parse(&format!("table=items&offset={offset}&handle=stale")).expect("valid");
            assert_eq!(p.handle, None, "{offset}");
        }
    }

    #[test]
    fn live_is_true_for_anything_but_false_and_forbidden_at_minus_one_and_now() {
        rejects(
            "table=items&offset=-1&live=true",
            "live",
            "can't be true when offset == -1",
        );
        rejects(
            "table=items&offset=-1&live=",
            "live",
            "can't be true when offset == -1",
        );
        rejects(
            "table=items&offset=now&live=1",
            "live",
            "can't be true when offset is 'now'",
        );
        assert!(
            !parse("table=items&offset=-1&live=false")
                .expect("valid")
                .is_live
        );
        let base = "table=items&offset=0_0&handle=h";
        assert!(parse(&format!("{base}&live")).expect("valid").is_live);
        assert!(parse(&format!("{base}&live=no")).expect("valid").is_live);
        assert!(!parse(base).expect("valid").is_live);
    }

    #[test]
    fn live_sse_needs_live_and_either_name_turns_it_on() {
        let base = "table=items&offset=0_0&handle=h";
        let message = "can't be true unless live is also true";
        rejects(&format!("{base}&live_sse=true"), "live_sse", message);
        rejects(
            &format!("{base}&experimental_live_sse=true"),
            "live_sse",
            message,
        );
        assert!(
            !parse(&format!("{base}&live_sse=false"))
                .expect("valid")
                .is_sse
        );
        for sse in ["live_sse=true", "experimental_live_sse=true"] {
            let params = parse(&format!("{base}&live=true&{sse}")).expect("valid");
            assert!(params.is_live && params.is_sse, "{sse}");
        }
        let long_poll = parse(&format!("{base}&live=true")).expect("valid");
        assert!(long_poll.is_live && !long_poll.is_sse);
    }

    #[test]
    fn table_is_required_and_parsed() {
        rejects("offset=-1", "table", "can't be blank");
        rejects("offset=-1&table=", "table", "can't be blank");
        rejects(
            "offset=-1&table=a.b.c",
            "table",
            "Invalid relation identifier, too many delimiters: a.b.c",
        );
        rejects(
            "offset=-1&table=%22%22",
            "table",
            "Invalid zero-length delimited identifier",
        );
        rejects(
            "offset=-1&table=%22a%22b%22",
            "table",
            "Invalid identifier with unescaped quote: a\"b",
        );
        rejects(
            "offset=-1&table=it-ems",
            "table",
            "Invalid unquoted identifier contains special characters: it-ems",
        );
        let long = "a".repeat(64);
        rejects(
            &format!("offset=-1&table={long}"),
            "table",
            "Identifier is too long (max length is 63)",
        );
        let p = parse("offset=-1&table=App.%22Issues%22").expect("valid");
        assert_eq!(
            p.definition.relation,
            RelationName {
                schema: "app".into(),
                table: "Issues".into()
            }
        );
    }

    #[test]
    fn columns_are_parsed_sorted_for_the_definition_and_kept_in_order_for_messages() {
        let p = parse("offset=-1&table=items&columns=%22title%22,id,id").expect("valid");
        assert_eq!(
            p.columns,
            Some(vec!["title".into(), "id".into(), "id".into()])
        );
        assert_eq!(
            p.definition.columns,
            Some(vec!["id".into(), "title".into()])
        );
        rejects(
            "offset=-1&table=items&columns=id,",
            "columns",
            "Invalid zero-length delimited identifier",
        );
        rejects(
            "offset=-1&table=items&columns=a%20b",
            "columns",
            "Invalid unquoted identifier contains special characters: a b",
        );
        assert_eq!(
            parse("offset=-1&table=items&columns=")
                .expect("valid")
                .columns,
            None
        );
    }

    #[test]
    fn replica_accepts_default_and_full_only() {
        let p = parse("offset=-1&table=items&replica=full").expect("valid");
        assert_eq!(p.definition.replica, Replica::Full);
        assert_eq!(
            parse("offset=-1&table=items")
                .expect("valid")
                .definition
                .replica,
            Replica::Default
        );
        rejects(
            "offset=-1&table=items&replica=teapot",
            "replica",
            "is invalid",
        );
    }

    #[test]
    fn log_full_and_changes_only_name_different_shapes_and_anything_else_is_invalid() {
        let log = |query: &str| parse(query).unwrap().definition.log;
        assert_eq!(log("offset=-1&table=items"), LogMode::Full);
        assert_eq!(log("offset=-1&table=items&log=full"), LogMode::Full);
        assert_eq!(
            log("offset=-1&table=items&log=changes_only"),
            LogMode::ChangesOnly
        );
        assert_eq!(
            log("offset=now&table=items&log=changes_only"),
            LogMode::ChangesOnly
        );
        let full = parse("offset=-1&table=items&log=full").unwrap().definition;
        let changes_only = parse("offset=-1&table=items&log=changes_only")
            .unwrap()
            .definition;
        assert_ne!(full.identity(), changes_only.identity());
        assert_eq!(
            changes_only.identity(),
            parse("offset=-1&table=items&log=changes_only&replica=default")
                .unwrap()
                .definition
                .identity()
        );
        rejects("offset=-1&table=items&log=some", "log", "is invalid");
        rejects(
            "offset=-1&table=items&log=CHANGES_ONLY",
            "log",
            "is invalid",
        );
    }

    #[test]
    fn where_is_canonicalised_with_params_inlined_into_the_definition() {
        let a = parse("offset=-1&table=items&where=id%20%3D%20%241&params[1]=7").unwrap();
        let b = parse("offset=-1&table=items&where=(id%3D'7')").unwrap();
        assert_eq!(a.definition, b.definition);
        assert_eq!(a.definition.where_clause.as_deref(), Some("id = '7'"));
        assert_eq!(a.where_text.as_deref(), Some("id = $1"));
        assert!(parse("offset=-1&table=items&where=").is_ok());
        assert!(parse("offset=-1&table=items&paramsx=1").is_ok());
        let json = parse("offset=-1&table=items&where=id%3D%241&params=%7B%221%22%3A%227%22%7D");
        assert_eq!(json.unwrap().definition, a.definition);
    }

    #[test]
    fn where_and_params_mistakes_are_400s_on_their_field() {
        rejects(
            "offset=-1&table=items&where=1%20x%201",
            "where",
            "At location 17: syntax error at or near \"x\"",
        );
        rejects(
            "offset=-1&table=items&where=id%3D%241&params[a]=1",
            "params",
            "Parameters can only use numbers as keys",
        );
        rejects(
            "offset=-1&table=items&where=id%3D%242&params[2]=1",
            "params",
            "Parameters must be numbered sequentially, starting from 1",
        );
        rejects(
            "offset=-1&table=items&params[1]=a",
            "params",
            "params were given without a where clause",
        );
        rejects(
            "offset=-1&table=items&queryable_columns=id",
            "queryable_columns",
            "queryable_columns is not supported yet",
        );
    }

    fn subset_errors(query: &str) -> Vec<(&'static str, String)> {
        match parse(query) {
            Err(ApiError::InvalidSubset(errors)) => errors,
            other => panic!("{query}: expected a subset 400, got {other:?}"),
        }
    }

    #[test]
    fn any_subset_key_makes_a_subset_request_and_its_values_are_checked() {
        let base = "offset=-1&table=items";
        let p = parse(&format!(
            "{base}&subset__where=title%20%3D%20%241&subset__params=%7B%221%22%3A%22a%22%7D\
             &subset__order_by=id%20DESC&subset__limit=10&subset__offset=0"
        ))
        .expect("valid");
        let subset = p.subset.expect("a subset request");
        assert_eq!(subset.where_text.as_deref(), Some("title = $1"));
        assert_eq!(subset.params, Params::from([(1, "a".to_owned())]));
        assert_eq!(subset.order_by.as_deref(), Some("id DESC"));
        assert_eq!((subset.limit, subset.offset), (Some(10), Some(0)));
        // Bracket params too; and the client's own expression keys alone do not make one.
        let bracket = parse(&format!(
            "{base}&subset__where=id%3D%241&subset__params[1]=5"
        ));
        let subset = bracket.expect("valid").subset.expect("a subset request");
        assert_eq!(subset.params, Params::from([(1, "5".to_owned())]));
        assert!(parse(&format!("{base}&subset__where_expr=x"))
            .expect("valid")
            .subset
            .is_none());
    }

    #[test]
    fn every_failing_subset_parameter_is_named() {
        let base = "offset=-1&table=items";
        assert_eq!(
            subset_errors(&format!("{base}&subset__limit=0&subset__offset=-1")),
            [
                ("limit", "must be greater than 0".to_owned()),
                ("offset", "must be greater than or equal to 0".to_owned()),
                (
                    "order_by",
                    "order_by is required when limit or offset is present".to_owned()
                ),
            ]
        );
        assert_eq!(
            subset_errors(&format!("{base}&subset__limit=x&subset__order_by=id")),
            [("limit", "is invalid".to_owned())]
        );
        assert_eq!(
            subset_errors(&format!("{base}&subset__params=%5B1%5D")),
            [("params", "params must be a JSON object".to_owned())]
        );
        assert_eq!(
            subset_errors(&format!("{base}&subset__params=%7B")),
            [("params", "params must be valid JSON".to_owned())]
        );
        assert_eq!(
            subset_errors(&format!("{base}&subset__params[2]=a")),
            [(
                "params",
                "Parameters must be numbered sequentially, starting from 1".to_owned()
            )]
        );
    }

    #[test]
    fn a_post_body_subset_replaces_the_query_and_its_offset_is_a_row_offset() {
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"where":"id > $1","params":{"1":5},"order_by":"id","limit":2,"offset":1,
                "subset":{"limit":3},"table":"ignored_here"}"#,
        )
        .expect("json");
        let query = Query::parse(Some("offset=-1&table=items&subset__limit=99"));
        let overridden = query.overridden_by(&body);
        assert_eq!(overridden.get("table"), Some("ignored_here"));
        assert_eq!(overridden.get("offset"), Some("-1"), "the log offset stays");
        let p = shape_params(&query, RawSubset::from_body(&body)).expect("valid");
        let subset = p.subset.expect("a subset request");
        assert_eq!(subset.where_text.as_deref(), Some("id > $1"));
        assert_eq!(subset.params, Params::from([(1, "5".to_owned())]));
        assert_eq!((subset.limit, subset.offset), (Some(3), Some(1)));
        let empty = serde_json::Map::new();
        assert!(RawSubset::from_body(&empty).is_none());
    }

    #[test]
    fn a_subset_cannot_be_streamed_as_server_sent_events() {
        rejects(
            "offset=0_0&handle=h&table=items&live=true&live_sse=true&subset__where=id%3D1",
            "live_sse",
            "can't be true for a subset request",
        );
    }

    #[test]
    fn parameters_that_fail_on_their_own_are_all_named_in_one_400() {
        match parse("table=items&replica=x&log=y&columns=a,") {
            Err(ApiError::InvalidFields(fields)) => assert_eq!(
                fields,
                [
                    ("offset", "can't be blank".to_owned()),
                    (
                        "columns",
                        "Invalid zero-length delimited identifier".to_owned()
                    ),
                    ("replica", "is invalid".to_owned()),
                    ("log", "is invalid".to_owned()),
                ]
            ),
            other => panic!("expected every field named, got {other:?}"),
        }
        // Checks that need the others to pass still come one at a time.
        rejects("offset=x&table=items", "offset", "has invalid format");
    }

    #[test]
    fn unknown_parameters_are_ignored_and_the_last_value_wins() {
        let p = parse(
            "offset=0_0&handle=a&handle=b&table=items&cache-buster=1&expired_handle=x&foo[1]=2",
        )
        .expect("valid");
        assert_eq!(p.handle, Some(ShapeHandle::from_string("b".into())));
        assert_eq!(p.expired_handle, Some(ShapeHandle::from_string("x".into())));
        assert_eq!(p.offset_text(), "0_0");
    }

    #[test]
    fn secret_prefers_secret_over_api_secret() {
        assert_eq!(
            Query::parse(Some("api_secret=a&secret=b")).secret(),
            Some("b")
        );
        assert_eq!(Query::parse(Some("api_secret=a")).secret(), Some("a"));
        assert_eq!(Query::parse(Some("table=x")).secret(), None);
    }

    #[test]
    fn query_decoding_handles_plus_percent_and_bad_utf8() {
        let q = Query::parse(Some("table=a+b&x=%E2%82%AC&y=%FF&z=%"));
        assert_eq!(q.get("table"), Some("a b"));
        assert_eq!(q.get("x"), Some("€"));
        assert_eq!(q.get("y"), Some("\u{FFFD}"));
        assert_eq!(q.get("z"), Some("%"));
    }
}
