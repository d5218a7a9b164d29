-- Webhooks: the endpoints admins register and the deliveries each order event owes them. A trigger on
-- order_events writes the deliveries, so every change that records an order event owes it to each
-- subscribed endpoint in the change's own transaction, whichever statement wrote the event.

CREATE TABLE webhook_endpoints (
    id             uuid PRIMARY KEY,
    url            text        NOT NULL,
    event_types    text[],                  -- NULL: every event type
    secret         text        NOT NULL,    -- whsec_<base64>
    created_at     timestamptz NOT NULL,
    failing_since  timestamptz,             -- the first failure since the last success
    disabled       text                     -- why it receives nothing any more
);

CREATE TABLE webhook_deliveries (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- commit order within an order
    id               uuid        NOT NULL UNIQUE,                      -- the webhook-id header
    endpoint_id      uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    order_id         uuid        NOT NULL,
    body             text        NOT NULL,                             -- {"type", "timestamp", "data"}
    status           text        NOT NULL DEFAULT 'pending',           -- pending, delivered, dead_lettered
    attempts         jsonb       NOT NULL DEFAULT '[]',
    next_attempt_at  timestamptz NOT NULL,
    created_at       timestamptz NOT NULL
);

-- What is due, and whether an order has an older pending delivery to the same endpoint.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, order_id, seq) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, seq);

CREATE FUNCTION owe_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, order_id, body, next_attempt_at, created_at)
    SELECT gen_random_uuid(), w.id, (e.event ->> 'id')::uuid, e.event ->> 'type', e.order_id,
           jsonb_build_object('type', e.event -> 'type', 'timestamp', e.event -> 'time', 'data', e.event -> 'data')::text,
           now(), now()
    FROM new_events e
    JOIN webhook_endpoints w
      ON w.disabled IS NULL AND (w.event_types IS NULL OR e.event ->> 'type' = ANY (w.event_types))
    ORDER BY e.seq, w.created_at, w.id;
    RETURN NULL;
END
$$;

-- The trigger itself exists only while an endpoint is registered: registering one creates it,
-- removing the last drops it (adapters/src/postgres/webhooks.rs). A trigger with a transition table,
-- even a disabled one, makes every insert into order_events capture its rows, which cost the order path
-- several percent of its throughput with no endpoint to deliver to.
