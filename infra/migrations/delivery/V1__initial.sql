-- Delivery: shipments, inbox, outbox. Every table lives in the service's own schema.

CREATE TABLE shipments (
    id               uuid PRIMARY KEY,          -- UUIDv7
    order_id         uuid        NOT NULL UNIQUE,   -- one shipment per order, whatever the redeliveries
    status           text        NOT NULL,
    carrier          text,
    tracking_number  text,
    order_data       jsonb       NOT NULL,      -- the orders.created payload: lines and address
    version          integer     NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX shipments_by_status ON shipments (status, id DESC);
CREATE INDEX shipments_due ON shipments (status, updated_at);

CREATE TABLE inbox (
    message_id    text        NOT NULL,
    consumer      text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, consumer)
);
CREATE INDEX inbox_by_age ON inbox (processed_at);

CREATE TABLE outbox (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               uuid        NOT NULL UNIQUE,
    event            jsonb       NOT NULL,
    routing_key      text,
    command_pending  boolean     NOT NULL,
    audit_pending    boolean     NOT NULL,
    claimed_until    timestamptz,
    published_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE command_pending OR audit_pending;
CREATE INDEX outbox_published ON outbox (published_at) WHERE NOT (command_pending OR audit_pending);
-- Relays are woken by NOTIFY "<schema>_outbox", sent by the application after commit: a NOTIFY inside
-- the writing transaction would hold PostgreSQL's notify lock through every commit's WAL flush and
-- serialise all writers.
