-- The W3C trace context of the change that created each shipment (what its creation's messages carried),
-- so the autopilot's later steps, which no request or message starts, continue the order's trace.
ALTER TABLE shipments ADD COLUMN traceparent text;
