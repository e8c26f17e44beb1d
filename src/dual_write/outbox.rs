//! The outbox stream: its entries as the relay reads them, and how far behind the relay is.
//!
//! An entry is a batch (see [`crate::legacy::writer`]): a `b` field of `<ms> <member>`
//! lines, and/or field pairs in order, the i-th `m` (member) with the i-th `s` (score).
//! Field order matters and names repeat, so entries are read from the raw reply rather
//! than through a map.

use crate::connect::RedisConn;
use redis::Value;
use serde::Serialize;

use crate::legacy::writer::{OUTBOX_BATCH_FIELD, OUTBOX_MEMBER_FIELD, OUTBOX_SCORE_FIELD};
use crate::legacy::LegacyKeys;

/// One outbox entry: its stream id and the events it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub id: String,
    /// Each event's member bytes and score; `None` when the entry carried no score for it
    /// (written by hand or by a broken application: a dead letter, never a guess).
    pub events: Vec<(Vec<u8>, Option<f64>)>,
}

impl OutboxEntry {
    /// The time part (epoch ms) of the id `<ms>-<seq>`: when the entry was appended.
    pub fn appended_ms(&self) -> Option<i64> {
        self.id.split('-').next()?.parse().ok()
    }

    /// The events of an entry: the lines of a batch field, then the pairs, the i-th member
    /// with the i-th score. Fields with other names are ignored. An entry with fields but no
    /// event is one broken event (empty member: a dead letter); an entry with no fields
    /// (deleted while pending) carries nothing.
    fn from_fields(id: String, fields: &[Value]) -> OutboxEntry {
        let mut events: Vec<(Vec<u8>, Option<f64>)> = Vec::new();
        let mut members: Vec<Vec<u8>> = Vec::new();
        let mut scores: Vec<Option<f64>> = Vec::new();
        for pair in fields.chunks(2) {
            let [name, value] = pair else { break };
            let value = bytes(value).unwrap_or_default();
            match bytes(name).as_deref() {
                Some(n) if n == OUTBOX_BATCH_FIELD.as_bytes() => events.extend(value.split(|b| *b == b'\n').map(batch_line)),
                Some(n) if n == OUTBOX_MEMBER_FIELD.as_bytes() => members.push(value),
                Some(n) if n == OUTBOX_SCORE_FIELD.as_bytes() => scores.push(score(&value)),
                _ => {}
            }
        }
        events.extend(members.into_iter().enumerate().map(|(i, member)| (member, scores.get(i).copied().flatten())));
        if events.is_empty() && !fields.is_empty() {
            events.push((Vec::new(), None));
        }
        OutboxEntry { id, events }
    }
}

/// One `<ms> <member>` line of a batch field; a line without a score is a member without one.
fn batch_line(line: &[u8]) -> (Vec<u8>, Option<f64>) {
    match line.iter().position(|b| *b == b' ') {
        Some(space) if score(&line[..space]).is_some() => (line[space + 1..].to_vec(), score(&line[..space])),
        _ => (line.to_vec(), None),
    }
}

fn score(text: &[u8]) -> Option<f64> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        Value::Double(d) => Some(d.to_string().into_bytes()),
        _ => None,
    }
}

/// A field list: `[f1, v1, f2, v2, …]` (RESP2) or a map (RESP3).
fn field_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
        _ => Vec::new(),
    }
}

/// Entries of a list `[[id, fields], …]`.
fn entries(list: &Value) -> Vec<OutboxEntry> {
    let Value::Array(items) = list else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(parts) => {
                let id = bytes(parts.first()?).and_then(|b| String::from_utf8(b).ok())?;
                Some(OutboxEntry::from_fields(id, &parts.get(1).map(field_list).unwrap_or_default()))
            }
            _ => None,
        })
        .collect()
}

/// The entries of an `XREADGROUP … STREAMS <one stream>` reply (nil when a blocking read timed out).
pub fn read_reply(reply: &Value) -> Vec<OutboxEntry> {
    match reply {
        // RESP2: [[stream, entries]]
        Value::Array(streams) => streams
            .iter()
            .flat_map(|stream| match stream {
                Value::Array(parts) => parts.get(1).map(entries).unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect(),
        // RESP3: {stream: entries}
        Value::Map(streams) => streams.iter().flat_map(|(_, list)| entries(list)).collect(),
        _ => Vec::new(),
    }
}

/// The claimed entries of an `XAUTOCLAIM` reply: `[next, entries, deleted ids]`.
pub fn autoclaim_reply(reply: &Value) -> Vec<OutboxEntry> {
    match reply {
        Value::Array(parts) => parts.get(1).map(entries).unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OutboxLag {
    /// Entries in the stream (the relay deletes what it has committed and acknowledged).
    pub entries: u64,
    /// Entries delivered to a relay worker and not yet acknowledged.
    pub pending: u64,
    /// Age of the oldest entry still in the stream.
    pub oldest_age_seconds: Option<f64>,
}

type StreamEntries = Vec<(String, Vec<(String, String)>)>;

pub async fn lag(conn: &mut RedisConn, keys: &LegacyKeys, group: &str) -> redis::RedisResult<OutboxLag> {
    let (entries, oldest): (u64, StreamEntries) =
        redis::pipe().cmd("XLEN").arg(&keys.outbox).cmd("XRANGE").arg(&keys.outbox).arg("-").arg("+").arg("COUNT").arg(1).query_async(conn).await?;
    let pending: u64 = match redis::cmd("XPENDING").arg(&keys.outbox).arg(group).query_async::<redis::Value>(conn).await {
        Ok(redis::Value::Array(items)) => match items.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        // No stream or no group yet: nothing is pending.
        _ => 0,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let oldest_age_seconds = oldest.first().and_then(|(id, _)| id.split('-').next()?.parse::<i64>().ok()).map(|ms| ((now_ms - ms).max(0)) as f64 / 1000.0);
    Ok(OutboxLag { entries, pending, oldest_age_seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![bulk(id), Value::Array(fields.iter().map(|f| bulk(f)).collect())])
    }

    #[test]
    fn an_entry_is_a_batch_paired_in_order_and_a_single_event_is_a_batch_of_one() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("outbox"),
            Value::Array(vec![
                entry("1700000000000-0", &["m", "a", "s", "1", "m", "b", "s", "2.5"]),
                entry("1700000000001-0", &["s", "3", "m", "c"]),
                entry("1700000000002-0", &["m", "d", "m", "e", "s", "4", "x", "ignored"]),
                entry("1700000000003-0", &["x", "y"]),
                Value::Array(vec![bulk("1700000000004-0"), Value::Nil]),
            ]),
        ])]);
        let read = read_reply(&reply);
        let events: Vec<Vec<(&[u8], Option<f64>)>> = read.iter().map(|e| e.events.iter().map(|(m, s)| (m.as_slice(), *s)).collect()).collect();
        assert_eq!(
            events,
            vec![
                vec![(&b"a"[..], Some(1.0)), (&b"b"[..], Some(2.5))],
                vec![(&b"c"[..], Some(3.0))],
                vec![(&b"d"[..], Some(4.0)), (&b"e"[..], None)],
                vec![(&b""[..], None)],
                vec![],
            ]
        );
        assert_eq!(read[0].appended_ms(), Some(1_700_000_000_000));
        assert!(read_reply(&Value::Nil).is_empty(), "a blocking read that timed out");
    }

    #[test]
    fn a_batch_field_holds_one_event_per_line() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("outbox"),
            Value::Array(vec![entry("1-0", &["b", "1700000000000 {\"a\":1}\n1700000000001 {\"b\": 2}\nno-score", "m", "c", "s", "3"])]),
        ])]);
        let read = read_reply(&reply);
        assert_eq!(
            read[0].events,
            vec![
                (br#"{"a":1}"#.to_vec(), Some(1_700_000_000_000.0)),
                (br#"{"b": 2}"#.to_vec(), Some(1_700_000_000_001.0)),
                (b"no-score".to_vec(), None),
                (b"c".to_vec(), Some(3.0)),
            ]
        );
    }

    /// What ingest appends is what the relay reads back, event for event.
    #[test]
    fn an_ingest_batch_reads_back_whole_in_either_shape() {
        use crate::event::AcceptedEvent;
        let event = |member: &str, time_ms| AcceptedEvent { member: member.into(), time_ms, event_name: "e".into(), category: "c".into(), session_id: None };
        let compact = vec![event(r#"{"event_name":"e","n":1}"#, 1_700_000_000_000), event(r#"{"event_name":"e","n":2}"#, 1_700_000_000_001)];
        let with_newline = vec![event("{\n\"a\": 1}", 5), event(r#"{"b":2}"#, 6)];
        for batch in [compact, with_newline] {
            let xadd = crate::legacy::writer::outbox_entry("outbox", &batch);
            let args: Vec<Vec<u8>> = xadd
                .args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => b.to_vec(),
                    redis::Arg::Cursor => vec![],
                })
                .collect();
            assert_eq!((&args[0][..], &args[1][..], &args[2][..]), (&b"XADD"[..], &b"outbox"[..], &b"*"[..]));
            let fields: Vec<Value> = args[3..].iter().map(|a| Value::BulkString(a.clone())).collect();
            let read = OutboxEntry::from_fields("1-0".into(), &fields);
            let expected: Vec<(Vec<u8>, Option<f64>)> = batch.iter().map(|e| (e.member.as_bytes().to_vec(), Some(e.time_ms as f64))).collect();
            assert_eq!(read.events, expected);
        }
    }

    #[test]
    fn claimed_entries_are_the_second_part_of_the_reply() {
        let reply = Value::Array(vec![bulk("0-0"), Value::Array(vec![entry("5-0", &["m", "a", "s", "1"])]), Value::Array(vec![])]);
        assert_eq!(autoclaim_reply(&reply), vec![OutboxEntry { id: "5-0".into(), events: vec![(b"a".to_vec(), Some(1.0))] }]);
    }
}
