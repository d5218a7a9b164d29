//! Pagination: page sizes, pages, and opaque cursors — the id that ended a page, as the 22 base64url
//! characters of its 16 bytes, so every string of the documented pattern is a cursor the server accepts
//! (a position in the list).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use orderflow_domain::{OrderId, ShipmentId};
use poem_openapi::registry::MetaSchemaRef;
use poem_openapi::types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type};
use serde_json::Value;
use uuid::Uuid;

use super::Problem;
use super::text::with_pattern;

/// The documented pattern: 16 bytes in base64url without padding (the last character carries the final
/// two bits, so it is one of `AQgw`).
const PATTERN: &str = "^[A-Za-z0-9_-]{21}[AQgw]$";

/// A page's `next_cursor` and the `cursor` that asks for the page after it: the id that ended the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdCursor(pub Uuid);

impl IdCursor {
    fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    fn decode(cursor: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        Uuid::from_slice(&bytes).ok().map(Self)
    }
}

impl Type for IdCursor {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(with_pattern(PATTERN.to_owned())))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl ParseFromParameter for IdCursor {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Self::decode(value).ok_or_else(|| ParseError::custom("is not a cursor this API issued"))
    }
}

impl ParseFromJSON for IdCursor {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(cursor)) => Self::parse_from_parameter(&cursor),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for IdCursor {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.encode()))
    }
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

/// Declares a page of a list as the API shows it (its items, and the `next_cursor` that asks for the page
/// after it) and its conversion from a store's [`Page`](orderflow_ports::Page), item by item:
/// `page!(/** doc */ OrderList { /** doc */ items: OrderDto, next_cursor: IdCursor });`.
#[macro_export]
macro_rules! page {
    ($(#[$doc:meta])* $name:ident { $(#[$items_doc:meta])* items: $item:ty, next_cursor: $cursor:ty $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, ::poem_openapi::Object)]
        pub struct $name {
            $(#[$items_doc])*
            pub items: Vec<$item>,
            /// Pass as `cursor` to get the next page; `null` on the last.
            #[oai(nullable)]
            pub next_cursor: Option<$cursor>,
        }

        impl<T: Into<$item>, K: Into<$cursor>> From<::orderflow_ports::Page<T, K>> for $name {
            fn from(page: ::orderflow_ports::Page<T, K>) -> Self {
                Self { items: page.items.into_iter().map(Into::into).collect(), next_cursor: page.next.map(Into::into) }
            }
        }
    };
}

impl From<OrderId> for IdCursor {
    fn from(id: OrderId) -> Self {
        Self(id.as_uuid())
    }
}

impl From<ShipmentId> for IdCursor {
    fn from(id: ShipmentId) -> Self {
        Self(id.as_uuid())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;

    #[test]
    fn garbage_is_no_cursor() {
        for garbage in ["%%%", "bm90LWFuLWlk", "", "AAAAAAAAAAAAAAAAAAAAAB"] {
            assert!(IdCursor::parse_from_parameter(garbage).is_err(), "{garbage}");
        }
    }

    proptest! {
        #[test]
        fn cursors_round_trip_and_match_their_documented_pattern(bytes in any::<[u8; 16]>()) {
            let cursor = IdCursor(Uuid::from_bytes(bytes));
            let text = cursor.encode();
            prop_assert!(Regex::new(PATTERN).expect("compiles").is_match(&text), "{}", text);
            prop_assert_eq!(IdCursor::parse_from_parameter(&text).expect("decodes"), cursor);
        }

        #[test]
        fn every_string_of_the_pattern_is_a_cursor(text in "[A-Za-z0-9_-]{21}[AQgw]") {
            prop_assert!(IdCursor::parse_from_parameter(&text).is_ok(), "{}", text);
        }
    }
}
