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
            let field = e.path().to_string();
            Problem::invalid(field, e.inner().to_string())
        })?;
        deserializer.end().map_err(|e| Problem::invalid("", e.to_string()))?;
        Ok(Self(value))
    }
}

poem_openapi::impl_apirequest_for_payload!(StrictJson<T>, T: Type + DeserializeOwned + Send);
