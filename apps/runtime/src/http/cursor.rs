//! Opaque pagination cursors: the last key of a page, base64url-encoded so clients do not build them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Problem;

/// Encodes a page key.
pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Decodes a cursor this API issued, parsing the key with `parse`.
///
/// # Errors
/// A 400 [`Problem`] on field `cursor` when it is not one.
pub fn decode_cursor<K>(cursor: &str, parse: impl FnOnce(&str) -> Option<K>) -> Result<K, Problem> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|key| parse(&key))
        .ok_or_else(|| Problem::invalid("cursor", "is not a cursor this API issued"))
}

/// Parses an id from a path segment.
///
/// # Errors
/// A 400 [`Problem`] on `field` when it is not a UUID.
pub fn parse_id(raw: &str, field: &str) -> Result<uuid::Uuid, Problem> {
    raw.parse().map_err(|_| Problem::invalid(field, "must be a UUID"))
}

/// Checks a page size: 1–100, default 20.
///
/// # Errors
/// A 400 [`Problem`] on field `limit` when out of range.
pub fn page_limit(limit: Option<i64>) -> Result<usize, Problem> {
    match limit {
        None => Ok(20),
        Some(n @ 1..=100) => usize::try_from(n).map_err(|_| Problem::invalid("limit", "must be between 1 and 100")),
        Some(_) => Err(Problem::invalid("limit", "must be between 1 and 100")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = encode_cursor("SKU-1");
        assert_eq!(decode_cursor(&cursor, |k| Some(k.to_owned())).unwrap(), "SKU-1");
        assert!(decode_cursor("%%%", |k| Some(k.to_owned())).is_err());
        assert!(decode_cursor(&cursor, |_| None::<String>).is_err());
    }
}
