//! Lossless conversion between the JSON objects clients send and BSON documents.
//!
//! Done by hand rather than through serde so that each value converts in one pass and the
//! mapping is explicit: integers become Int64, other numbers Double, and nothing else is made.

use mongodb::bson::raw::{Error as RawError, RawBsonRef};
use mongodb::bson::{Bson, RawArrayBuf, RawBson, RawDocument, RawDocumentBuf};
use serde_json::{Map, Number, Value};

/// Converts a validated JSON object (integers fit in i64, keys are safe) straight into BSON
/// bytes: what the driver sends, with no `Document` (a hashed map per object) built on the
/// way.
pub fn object_to_raw(map: &Map<String, Value>) -> RawDocumentBuf {
    let mut doc = RawDocumentBuf::new();
    for (key, value) in map {
        // Validation refused keys with a NUL, the one key `append` cannot write.
        doc.append(key, value_to_raw(value));
    }
    doc
}

fn value_to_raw(value: &Value) -> RawBson {
    match value {
        Value::Null => RawBson::Null,
        Value::Bool(b) => RawBson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RawBson::Int64(i),
            // Validation refused integers beyond i64, so what is left is a float.
            None => RawBson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => RawBson::String(s.clone()),
        Value::Array(items) => {
            let mut array = RawArrayBuf::new();
            for item in items {
                array.push(value_to_raw(item));
            }
            RawBson::Array(array)
        }
        Value::Object(map) => RawBson::Document(object_to_raw(map)),
    }
}

/// Converts a stored document back into the JSON object it was made from, read straight
/// from BSON bytes as the driver received them.
pub fn raw_to_object(doc: &RawDocument) -> Result<Map<String, Value>, RawError> {
    doc.iter()
        .map(|element| {
            let (key, value) = element?;
            Ok((key.to_owned(), raw_to_value(value)?))
        })
        .collect()
}

fn raw_to_value(value: RawBsonRef<'_>) -> Result<Value, RawError> {
    Ok(match value {
        RawBsonRef::Null | RawBsonRef::Undefined => Value::Null,
        RawBsonRef::Boolean(b) => Value::Bool(b),
        RawBsonRef::Int32(i) => Value::from(i),
        RawBsonRef::Int64(i) => Value::from(i),
        RawBsonRef::Double(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        RawBsonRef::String(s) => Value::String(s.to_owned()),
        RawBsonRef::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| raw_to_value(item?))
                .collect::<Result<_, _>>()?,
        ),
        RawBsonRef::Document(doc) => Value::Object(raw_to_object(doc)?),
        // Only written by hand into the database, never by this service: show it as
        // MongoDB's relaxed extended JSON rather than fail the read.
        other => Bson::try_from(other.to_raw_bson())?.into_relaxed_extjson(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn round_trips_every_json_kind() {
        let v = json!({
            "s": "text\u{0}with nul", "i": -42, "big": i64::MAX, "f": 0.5, "whole_float": 2.0,
            "t": true, "n": null, "a": [1, "two", [3.5], {"k": []}], "o": {"nested": {"deep": 1}}
        });
        let map = v.as_object().unwrap();
        let raw = object_to_raw(map);
        assert_eq!(&raw_to_object(&raw).unwrap(), map);
    }

    #[test]
    fn reads_kinds_only_written_by_hand_as_extended_json() {
        let doc = mongodb::bson::doc! {
            "oid": mongodb::bson::oid::ObjectId::parse_str("65f0a1b2c3d4e5f601234567").unwrap(),
            "i32": 7_i32, "when": mongodb::bson::DateTime::from_millis(0), "u": Bson::Undefined,
        };
        let raw = RawDocumentBuf::from_document(&doc).unwrap();
        let expected = json!({
            "oid": {"$oid": "65f0a1b2c3d4e5f601234567"}, "i32": 7,
            "when": {"$date": "1970-01-01T00:00:00Z"}, "u": null,
        });
        assert_eq!(&raw_to_object(&raw).unwrap(), expected.as_object().unwrap());
    }
}
