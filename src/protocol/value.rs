//! Decoding of the few replies the proxy must understand (Pub/Sub confirmations, EXEC results, INFO), through
//! redis-protocol. The per-command path never decodes; only these rarer frames are turned into values.

use redis_protocol::{resp2, resp3};

/// A reply, simplified to what the proxy looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A simple, bulk or verbatim string.
    Str(Vec<u8>),
    Int(i64),
    /// A simple or blob error, with its text.
    Error(String),
    Null,
    /// An array, set or push: the elements.
    Array(Vec<Value>),
    /// A map: keys and values in order.
    Map(Vec<(Value, Value)>),
    /// A double, boolean or big number, as its text.
    Other(String),
}

impl Value {
    /// Decodes one complete frame as RESP2 (`protocol` 2) or RESP3 (3).
    pub fn decode(frame: &[u8], protocol: u8) -> Option<Value> {
        if protocol >= 3 {
            let (frame, _) = resp3::decode::complete::decode(frame).ok()??;
            Some(Value::from_resp3(frame))
        } else {
            let (frame, _) = resp2::decode::decode(frame).ok()??;
            Some(Value::from_resp2(frame))
        }
    }

    fn from_resp2(frame: resp2::types::OwnedFrame) -> Value {
        use resp2::types::OwnedFrame as F;
        match frame {
            F::SimpleString(s) | F::BulkString(s) => Value::Str(s),
            F::Error(e) => Value::Error(e),
            F::Integer(i) => Value::Int(i),
            F::Array(items) => Value::Array(items.into_iter().map(Value::from_resp2).collect()),
            F::Null => Value::Null,
        }
    }

    fn from_resp3(frame: resp3::types::OwnedFrame) -> Value {
        use resp3::types::OwnedFrame as F;
        match frame {
            F::BlobString { data, .. } | F::SimpleString { data, .. } | F::VerbatimString { data, .. } => {
                Value::Str(data)
            }
            F::BlobError { data, .. } => Value::Error(String::from_utf8_lossy(&data).into_owned()),
            F::SimpleError { data, .. } => Value::Error(data),
            F::Number { data, .. } => Value::Int(data),
            F::Null => Value::Null,
            F::Array { data, .. } | F::Push { data, .. } => {
                Value::Array(data.into_iter().map(Value::from_resp3).collect())
            }
            F::Set { data, .. } => Value::Array(data.into_iter().map(Value::from_resp3).collect()),
            F::Map { data, .. } => Value::Map(
                data.into_iter()
                    .map(|(k, v)| (Value::from_resp3(k), Value::from_resp3(v)))
                    .collect(),
            ),
            F::Boolean { data, .. } => Value::Other(data.to_string()),
            F::Double { data, .. } => Value::Other(data.to_string()),
            F::BigNumber { data, .. } => Value::Other(String::from_utf8_lossy(&data).into_owned()),
            other => Value::Other(format!("{other:?}")),
        }
    }

    /// The bytes of a string value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }
}

/// Whether a raw reply frame is an error (`-` or RESP3's `!`), looking past an attribute if there is one.
pub fn is_error_frame(frame: &[u8]) -> bool {
    match frame.first() {
        Some(b'-' | b'!') => true,
        Some(b'|') => Value::decode(frame, 3).is_some_and(|v| v.is_error()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_protocols() {
        let v = Value::decode(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n", 2).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![Value::Str(b"unsubscribe".to_vec()), Value::Null, Value::Int(0)])
        );
        let v = Value::decode(b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n", 3).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Str(b"subscribe".to_vec()),
                Value::Str(b"c".to_vec()),
                Value::Int(1)
            ])
        );
        assert!(is_error_frame(b"-ERR x\r\n"));
        assert!(!is_error_frame(b"+OK\r\n"));
    }
}
