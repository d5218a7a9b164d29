//! A JSON request body that is strict (unknown fields are rejected) and, when it does not parse, says
//! which field is at fault (`lines[2].quantity`), unlike a generic decoding error.

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use serde::de::DeserializeOwned;

use super::Problem;

/// A request body parsed with serde (`T` also derives `poem_openapi::Object` for the documented schema).
pub struct StrictJson<T>(pub T);

impl<T: Type + Send> Payload for StrictJson<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        content_type.parse::<mime::Mime>().is_ok_and(|m| {
            m.type_() == "application" && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
        })
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: DeserializeOwned + Send> ParsePayload for StrictJson<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = Vec::<u8>::from_request(request, body).await?;
        if bytes.is_empty() {
            return Err(Problem::invalid("", "a JSON request body is required").into());
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let detail = e.inner().to_string();
            Problem::invalid(field_at_fault(&e.path().to_string(), &detail), detail)
        })?;
        deserializer.end().map_err(|e| Problem::invalid("", e.to_string()))?;
        Ok(Self(value))
    }
}

/// The path serde reports for a missing field is the object that lacks it; the client needs the field.
fn field_at_fault(path: &str, detail: &str) -> String {
    let missing = detail.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (path, None) => path.to_owned(),
    }
}

poem_openapi::impl_apirequest_for_payload!(StrictJson<T>, T: Type + DeserializeOwned + Send);

#[cfg(test)]
mod tests {
    use super::field_at_fault;

    #[test]
    fn a_missing_field_is_named_under_its_parent() {
        assert_eq!(field_at_fault(".", "missing field `customer_id` at line 1 column 2"), "customer_id");
        assert_eq!(field_at_fault("lines[0]", "missing field `quantity` at line 1 column 9"), "lines[0].quantity");
        assert_eq!(field_at_fault("lines[0].quantity", "invalid type: string"), "lines[0].quantity");
    }
}
