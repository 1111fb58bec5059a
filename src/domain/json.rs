use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use super::ValidationError;

/// Nesting deeper than this is refused: deep documents cost stack in every parser on the way.
const MAX_DEPTH: usize = 32;

/// A client-supplied JSON object (session metadata or event payload) that is safe to store.
///
/// At every depth its keys do not start with `$` and hold no `.` or NUL, so no client key can
/// be read by MongoDB as an operator or a path. Integers fit in 64 bits so none is rounded.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct JsonObject(Map<String, Value>);

/// Whether a retry carries the same content: serde_json's equality (keys in any order, `1`
/// unlike `1.0`), except that floats compare bit for bit, so `-0.0` is not `0.0` either.
impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        same_object(&self.0, &other.0)
    }
}

fn same_object(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        (Value::Object(x), Value::Object(y)) => same_object(x, y),
        _ => a == b,
    }
}

impl JsonObject {
    /// Checks `value` against the key rules, the depth limit and `max_bytes` serialized.
    pub fn parse(field: &str, value: Value, max_bytes: usize) -> Result<Self, ValidationError> {
        let Value::Object(map) = value else {
            return Err(ValidationError::new(field, "must be a JSON object"));
        };
        for (key, child) in &map {
            check_entry(field, key, child, 1)?;
        }
        let size = serialized_len(&map);
        if size > max_bytes {
            return Err(ValidationError::new(
                field,
                format!("is {size} bytes serialized; the limit is {max_bytes}"),
            ));
        }
        Ok(Self(map))
    }

    /// Wraps an object read back from a store, which was checked when it was written.
    pub fn from_stored(map: Map<String, Value>) -> Self {
        Self(map)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

fn check_entry(field: &str, key: &str, value: &Value, depth: usize) -> Result<(), ValidationError> {
    if key.starts_with('$') || key.contains('.') || key.contains('\0') {
        return Err(ValidationError::new(
            field,
            format!(
                "key {key:?} is not allowed: keys must not start with '$' or contain '.' or NUL"
            ),
        ));
    }
    check_value(field, value, depth)
}

/// `depth` counts the objects and arrays around `value`; an object or array is one more
/// level itself, even an empty one.
fn check_value(field: &str, value: &Value, depth: usize) -> Result<(), ValidationError> {
    let container = matches!(value, Value::Object(_) | Value::Array(_));
    if depth + usize::from(container) > MAX_DEPTH {
        return Err(ValidationError::new(
            field,
            format!("is nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    match value {
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_entry(field, k, v, depth + 1)),
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| check_value(field, v, depth + 1)),
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => Err(ValidationError::new(
            field,
            format!("integer {n} is out of range: integers must fit in a signed 64-bit integer"),
        )),
        _ => Ok(()),
    }
}

/// A JSON value as a request sends it, refused when an object in it names a key twice.
///
/// A parser keeps one of the two values and drops the other unseen (`serde_json::Value`
/// keeps the last). Refusing the body says so, as a repeated top-level field is refused.
#[derive(Debug)]
pub struct JsonInput(pub Value);

impl<'de> Deserialize<'de> for JsonInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InputVisitor).map(Self)
    }
}

struct InputVisitor;

impl<'de> Visitor<'de> for InputVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity, so a parsed float always converts.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(JsonInput(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let JsonInput(value) = map.next_value()?;
            match object.entry(key) {
                Entry::Vacant(free) => {
                    free.insert(value);
                }
                Entry::Occupied(taken) => {
                    return Err(de::Error::custom(format!(
                        "key {:?} appears twice in one object",
                        taken.key()
                    )))
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// Counts the bytes of the compact serialization without allocating it.
fn serialized_len(map: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Map into an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, map);
    counter.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<JsonObject, ValidationError> {
        JsonObject::parse("payload", v, 1024)
    }

    #[test]
    fn accepts_plain_objects_of_any_value_kind() {
        let v =
            json!({"text": "hi\u{0}there", "n": -5, "f": 1.5, "a": [1, {"b": null}], "ok": true});
        assert_eq!(parse(v.clone()).unwrap().as_map(), v.as_object().unwrap());
    }

    #[test]
    fn rejects_anything_but_an_object() {
        for bad in [json!([]), json!("s"), json!(1), json!(null), json!(true)] {
            assert!(parse(bad).is_err());
        }
    }

    #[test]
    fn rejects_operator_and_path_keys_at_every_depth() {
        for bad in [
            json!({"$set": 1}),
            json!({"a.b": 1}),
            json!({"a\u{0}": 1}),
            json!({"a": {"b": {"$gt": 1}}}),
            json!({"a": [{"x.y": 1}]}),
            json!({"a": [[{"$where": "1"}]]}),
        ] {
            let err = parse(bad.clone()).unwrap_err();
            assert_eq!(err.field, "payload", "{bad}");
        }
        assert!(parse(json!({"a$": 1, "b": {"c$d": 2}})).is_ok());
    }

    #[test]
    fn enforces_the_size_limit_on_the_compact_serialization() {
        let at_limit = json!({"k": "x".repeat(1024 - 8)});
        assert_eq!(serde_json::to_vec(&at_limit).unwrap().len(), 1024);
        assert!(parse(at_limit).is_ok());
        assert!(parse(json!({"k": "x".repeat(1024 - 7)})).is_err());
    }

    #[test]
    fn refuses_nesting_deeper_than_the_limit() {
        let nest = |levels: usize| (0..levels).fold(json!(1), |inner, _| json!({ "k": inner }));
        assert!(parse(nest(MAX_DEPTH)).is_ok());
        assert!(parse(nest(MAX_DEPTH + 1)).is_err());
        // An empty object or array is a level too.
        for innermost in [json!({}), json!([])] {
            let ending = |levels: usize| {
                (1..levels).fold(innermost.clone(), |inner, _| json!({ "k": inner }))
            };
            assert!(parse(ending(MAX_DEPTH)).is_ok());
            assert!(parse(ending(MAX_DEPTH + 1)).is_err());
        }
    }

    #[test]
    fn input_with_a_key_twice_in_one_object_is_refused_at_any_depth() {
        let read = |text: &str| serde_json::from_str::<JsonInput>(text).map(|v| v.0);
        let sent = r#"{"a": [1, 2.5, "s", null, true, {"b": {}}], "c": {"d": -7}}"#;
        assert_eq!(
            read(sent).unwrap(),
            serde_json::from_str::<Value>(sent).unwrap()
        );
        for twice in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": 1, "a": 1}"#,
            r#"{"x": {"a": {"$gt": 1}, "a": 2}}"#,
            r#"{"x": [{"k": 1, "k": 1}]}"#,
        ] {
            let err = read(twice).unwrap_err().to_string();
            assert!(err.contains("appears twice"), "{twice}: {err}");
        }
    }

    #[test]
    fn equal_content_is_exact_about_numbers_and_free_about_key_order() {
        let obj = |v: Value| JsonObject(v.as_object().unwrap().clone());
        let a = obj(json!({"a": [1, 2.5, {"z": -0.0, "y": "s"}], "b": null}));
        let b = obj(json!({"b": null, "a": [1, 2.5, {"y": "s", "z": -0.0}]}));
        assert_eq!(a, b);
        for (x, y) in [
            (json!({"n": 0.0}), json!({"n": -0.0})),
            (json!({"n": 1}), json!({"n": 1.0})),
            (json!({"n": [0.0]}), json!({"n": [-0.0]})),
            (json!({"n": {"m": -0.0}}), json!({"n": {"m": 0.0}})),
            (json!({"n": 1}), json!({"n": 1, "m": 1})),
            (json!({"n": [1]}), json!({"n": [1, 1]})),
        ] {
            assert_ne!(obj(x.clone()), obj(y.clone()), "{x} {y}");
            assert_ne!(obj(y.clone()), obj(x.clone()), "{y} {x}");
        }
    }

    #[test]
    fn refuses_integers_that_do_not_fit_in_i64() {
        assert!(parse(json!({"n": i64::MAX})).is_ok());
        assert!(parse(json!({"n": u64::MAX})).is_err());
    }
}
