//! Strings documented exactly, carried as sent for the domain to check: free text as the domain accepts
//! it (a name, a city, a tracking number) — the OpenAPI pattern admits a string if and only if the
//! domain's text check does, so a client or fuzzer working from the document never sends text the
//! server refuses — and ids in paths.

use std::borrow::Cow;
use std::marker::PhantomData;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::Problem;

/// What `str::trim` removes: Unicode `White_Space`.
const SPACE: &str = r"\t\n\x0B\x0C\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
/// What `char::is_control` refuses: Unicode `Cc`.
const CONTROL: &str = r"\x00-\x1F\x7F-\x9F";

/// The rule a [`Pattern`] string follows, as its schema states it.
pub trait Shape: Send + Sync + 'static {
    /// The schema: a string with a pattern (ECMA-262 syntax that Rust's `regex` and Python's `re` read
    /// alike, see [`with_pattern`]) or a format.
    fn schema() -> MetaSchema;
}

/// A string schema with `pattern`.
pub fn with_pattern(pattern: String) -> MetaSchema {
    let mut schema = MetaSchema::new("string");
    schema.pattern = Some(pattern);
    schema
}

/// An id documented as `format: uuid`. The path router cannot say which parameter it failed to parse,
/// so the text is taken as sent and [`PathId::parse`] names the field at fault.
pub type PathId = Pattern<UuidShape>;

/// The [`Shape`] of a [`PathId`].
pub enum UuidShape {}

impl Shape for UuidShape {
    fn schema() -> MetaSchema {
        MetaSchema::new_with_format("string", "uuid")
    }
}

impl PathId {
    /// The UUID.
    ///
    /// # Errors
    /// A 400 [`Problem`] on `field` when the text is not a UUID.
    pub fn parse(&self, field: &str) -> Result<Uuid, Problem> {
        self.0.parse().map_err(|_| Problem::invalid(field, "must be a UUID"))
    }
}

/// A string documented with the pattern of `S`. It is carried as sent: the domain type it becomes
/// validates it and names the field at fault, and `S` describes exactly what that type accepts.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pattern<S>(String, #[serde(skip)] PhantomData<S>);

/// Text the domain trims and then requires to be 1 to `MAX` characters without control characters; with
/// `BLANK`, empty or blank text is accepted too (and means "none").
pub type Text<const MAX: usize, const BLANK: bool = false> = Pattern<FreeText<MAX, BLANK>>;

/// The [`Shape`] of [`Text`].
pub enum FreeText<const MAX: usize, const BLANK: bool> {}

impl<const MAX: usize, const BLANK: bool> FreeText<MAX, BLANK> {
    fn pattern() -> String {
        let space = format!("[{SPACE}]*");
        let edge = format!("[^{CONTROL}{SPACE}]");
        let inner = MAX.saturating_sub(2);
        let text = if MAX >= 2 { format!("{edge}(?:[^{CONTROL}]{{0,{inner}}}{edge})?") } else { edge.clone() };
        if BLANK { format!("^{space}(?:{text}{space})?$") } else { format!("^{space}{text}{space}$") }
    }
}

impl<const MAX: usize, const BLANK: bool> Shape for FreeText<MAX, BLANK> {
    fn schema() -> MetaSchema {
        with_pattern(Self::pattern())
    }
}

/// The pattern of a value the domain trims before matching `inner` (a regular expression without anchors).
pub fn trimmed(inner: &str) -> String {
    format!("^[{SPACE}]*{inner}[{SPACE}]*$")
}

impl<S> Pattern<S> {
    /// The string as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// By hand: derives would demand the same of the marker `S`.
impl<S> Clone for Pattern<S> {
    fn clone(&self) -> Self {
        self.0.clone().into()
    }
}

impl<S> std::fmt::Debug for Pattern<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<S> From<String> for Pattern<S> {
    fn from(text: String) -> Self {
        Self(text, PhantomData)
    }
}

impl<S: Shape> Type for Pattern<S> {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(S::schema()))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl<S: Shape> ParseFromJSON for Pattern<S> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(text.into()),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<S: Shape> ParseFromParameter for Pattern<S> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(value.to_owned().into())
    }
}

impl<S: Shape> ToJSON for Pattern<S> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use orderflow_domain::{Address, RawAddress};
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;

    /// The domain's text check, through the address fields that apply it: the postal code (at most 20
    /// characters) or, with `optional`, the second line (at most 200, blank meaning none).
    fn domain_accepts(text: &str, optional: bool) -> bool {
        let address = |postal_code: &str, line2: Option<&str>| {
            Address::parse(RawAddress { name: "n", line1: "l", line2, city: "c", postal_code, country: "DE" })
        };
        if optional { address("1", Some(text)).is_ok() } else { address(text, None).is_ok() }
    }

    fn any_text() -> impl Strategy<Value = String> {
        let chars = prop_oneof![
            Just(' '),
            Just('\t'),
            Just('\n'),
            Just('\u{85}'),
            Just('\u{a0}'),
            Just('\u{3000}'),
            Just('\u{7}'),
            Just('\u{9f}'),
            Just('\u{1c}'),
            Just('a'),
            Just('Z'),
            Just('é'),
            Just('😀'),
            any::<char>(),
        ];
        proptest::collection::vec(chars, 0..26).prop_map(|chars| chars.into_iter().collect())
    }

    #[test]
    fn a_trimmed_code_may_have_spaces_around_it_only() {
        let pattern = Regex::new(&trimmed("[A-Z]{2}")).expect("the pattern compiles");
        for (code, documented) in [("DE", true), (" DE\t", true), ("D E", false), ("de", false), ("DEU", false)] {
            assert_eq!(pattern.is_match(code), documented, "{code:?}");
            let address = RawAddress { name: "n", line1: "l", line2: None, city: "c", postal_code: "1", country: code };
            assert_eq!(Address::parse(address).is_ok(), documented, "{code:?}");
        }
    }

    proptest! {
        #[test]
        fn the_documented_pattern_admits_exactly_the_text_the_domain_accepts(text in any_text()) {
            let pattern = Regex::new(&FreeText::<20, false>::pattern()).expect("the pattern compiles");
            prop_assert_eq!(pattern.is_match(&text), domain_accepts(&text, false), "{:?}", text);
        }

        #[test]
        fn the_pattern_of_optional_text_also_admits_blank_text(text in any_text()) {
            let pattern = Regex::new(&FreeText::<200, true>::pattern()).expect("the pattern compiles");
            prop_assert_eq!(pattern.is_match(&text), domain_accepts(&text, true), "{:?}", text);
        }
    }
}
