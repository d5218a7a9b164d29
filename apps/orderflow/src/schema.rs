//! `orderflow schema events`: the JSON Schema of every event payload, keyed by its CloudEvents type — what
//! analysts and other teams validate the audit stream and the commands against.

/// The schemas as one pretty-printed JSON object.
///
/// # Errors
/// Never in practice: the schemas are plain JSON values.
pub fn events() -> serde_json::Result<String> {
    serde_json::to_string_pretty(&orderflow_messages::payload_schemas())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_schemas_of_all_payloads_are_printed_by_type() {
        let printed: serde_json::Value = serde_json::from_str(&super::events().unwrap()).unwrap();
        for event_type in
            ["orderflow.order.placed.v1", "orderflow.shipment.cancelled.v1", "orderflow.payment.requested.v1"]
        {
            assert_eq!(printed[event_type]["type"], "object", "{event_type}");
        }
    }
}
