//! Server-sent events as the simulated client reads them (protocol.md §6.5): the body of a
//! `live_sse` response split into the batches the official client hands its subscribers, each
//! ending with an `up-to-date` event.

use serde_json::{Map, Value};

/// One batch of an event stream: its messages (the last is `up-to-date`) and the
/// `global_last_seen_lsn` that `up-to-date` carries, which the client resumes from
/// (`<lsn>_0`).
#[derive(Debug)]
pub struct SseBatch {
    /// The messages in order, `up-to-date` last.
    pub messages: Vec<Map<String, Value>>,
    /// The `up-to-date` message's `global_last_seen_lsn`.
    pub lsn: u64,
}

/// The complete batches of `body`, in order. Events after the last `up-to-date`, and an event
/// cut off by the end of what arrived, belong to no complete batch and are left out, as the
/// official client drops what it has not handed on when a stream breaks.
pub fn batches(body: &[u8]) -> Result<Vec<SseBatch>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("event stream is not UTF-8: {e}"))?;
    let mut batches = Vec::new();
    let mut pending = Vec::new();
    let mut events: Vec<&str> = text.split("\n\n").collect();
    // The text after the last blank line is an event still arriving (or nothing).
    events.pop();
    for event in events {
        let mut data = String::new();
        for line in event.lines() {
            if line.starts_with(':') {
                continue; // a comment: `: keep-alive`
            }
            let Some(value) = line.strip_prefix("data:") else {
                return Err(format!(
                    "event line is neither data nor a comment: {line:?}"
                ));
            };
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
        if data.is_empty() {
            continue;
        }
        let message: Map<String, Value> = serde_json::from_str(&data)
            .map_err(|e| format!("event data is not a JSON object ({e}): {data}"))?;
        let control = message
            .get("headers")
            .and_then(|h| h.get("control"))
            .and_then(Value::as_str);
        let lsn = match control {
            Some("up-to-date") => Some(up_to_date_lsn(&message)?),
            _ => None,
        };
        pending.push(message);
        if let Some(lsn) = lsn {
            batches.push(SseBatch {
                messages: std::mem::take(&mut pending),
                lsn,
            });
        }
    }
    Ok(batches)
}

/// The decimal `global_last_seen_lsn` of an `up-to-date` event.
fn up_to_date_lsn(message: &Map<String, Value>) -> Result<u64, String> {
    message
        .get("headers")
        .and_then(|h| h.get("global_last_seen_lsn"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "up-to-date event without a decimal global_last_seen_lsn: {}",
                Value::Object(message.clone())
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_end_at_up_to_date_and_a_cut_off_tail_is_left_out() {
        let body = concat!(
            ": keep-alive\n\n",
            "data: {\"key\":\"k1\",\"headers\":{\"operation\":\"insert\"}}\n\n",
            "data: {\"headers\":{\"control\":\"up-to-date\",\"global_last_seen_lsn\":\"42\"}}\n\n",
            "data: {\"key\":\"k2\",\"headers\":{\"operation\":\"delete\"}}\n\n",
            "data: {\"headers\":{\"control\":\"up-to",
        );
        let batches = batches(body.as_bytes()).expect("valid");
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].lsn, 42);
        assert_eq!(batches[0].messages.len(), 2);
    }

    #[test]
    fn a_line_that_is_not_data_is_refused() {
        assert!(batches(b"event: x\n\n").is_err());
        let no_lsn = "data: {\"headers\":{\"control\":\"up-to-date\"}}\n\n";
        assert!(batches(no_lsn.as_bytes()).is_err());
    }
}
