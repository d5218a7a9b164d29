//! The OpenAPI document as served: poem-openapi's, with what it cannot express added — request bodies are
//! strict (unknown fields are refused), so their schemas say `additionalProperties: false`; and tokens
//! come from the configured issuer, whose discovery document the security scheme names.

use std::collections::BTreeSet;

use serde_json::Value;

/// `spec` (JSON) with every schema a request body uses, directly or nested, closed to other properties,
/// and the OpenID Connect scheme pointing at `issuer`'s discovery document. A document that does not parse
/// is returned as it is.
pub fn exact_document(spec: &str, issuer: &str) -> String {
    let Ok(mut document) = serde_json::from_str::<Value>(spec) else { return spec.to_owned() };
    let discovery = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    for scheme in document["components"]["securitySchemes"].as_object_mut().into_iter().flat_map(|s| s.values_mut()) {
        if scheme["type"] == "openIdConnect" {
            scheme["openIdConnectUrl"] = Value::String(discovery.clone());
        }
    }
    let mut pending: Vec<String> = Vec::new();
    for operation in document["paths"].as_object().into_iter().flat_map(|paths| paths.values()) {
        for method in operation.as_object().into_iter().flat_map(|methods| methods.values()) {
            references(&method["requestBody"], &mut pending);
        }
    }
    let mut closed = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !closed.insert(name.clone()) {
            continue;
        }
        let schema = &mut document["components"]["schemas"][&name];
        references(schema, &mut pending);
        if let Some(schema) = schema.as_object_mut() {
            schema.insert("additionalProperties".to_owned(), Value::Bool(false));
        }
    }
    serde_json::to_string_pretty(&document).unwrap_or_else(|_| spec.to_owned())
}

/// The component schemas `value` refers to, anywhere inside it.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(members) => {
            if let Some(name) =
                members.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                found.push(name.to_owned());
            }
            members.values().for_each(|member| references(member, found));
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_schemas_of_request_bodies_are_closed_and_the_others_left_open() {
        let spec = json!({
            "paths": {"/orders": {"post": {
                "security": [{"BearerAuth": ["orders:write"]}],
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Place"}}}},
                "responses": {"201": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}}}}
            }}},
            "components": {"schemas": {
                "Place": {"type": "object", "properties": {"lines": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}}}},
                "Line": {"type": "object", "properties": {"sku": {"type": "string"}}},
                "Order": {"type": "object", "properties": {"lines": {"type": "array", "items": {"$ref": "#/components/schemas/Line"}}}}
            },
            "securitySchemes": {"BearerAuth": {"type": "openIdConnect", "openIdConnectUrl": "/.well-known/openid-configuration"}}}
        });
        let exact: Value =
            serde_json::from_str(&exact_document(&spec.to_string(), "http://issuer:9000/")).expect("JSON");
        assert_eq!(
            exact["components"]["securitySchemes"]["BearerAuth"]["openIdConnectUrl"],
            json!("http://issuer:9000/.well-known/openid-configuration")
        );
        let schemas = &exact["components"]["schemas"];
        assert_eq!(schemas["Place"]["additionalProperties"], json!(false));
        assert_eq!(schemas["Line"]["additionalProperties"], json!(false), "nested in a request body");
        assert_eq!(schemas["Order"].get("additionalProperties"), None, "only in responses");
    }
}
