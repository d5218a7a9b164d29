-- Sales: catalogue with stock, orders with their lines and timeline, idempotency keys, inbox, outbox.
-- Every table lives in the service's own schema (search_path is set per connection).

CREATE TABLE products (
    sku          text PRIMARY KEY,
    name         text    NOT NULL,
    price_minor  bigint  NOT NULL CHECK (price_minor >= 0),
    currency     text    NOT NULL,
    stock        integer NOT NULL CHECK (stock >= 0),
    -- Units held by open orders; the CHECK makes overselling impossible whatever the interleaving.
    reserved     integer NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= stock)
);

CREATE TABLE orders (
    id               uuid PRIMARY KEY,          -- UUIDv7: ordering by id is ordering by creation
    customer_id      text        NOT NULL,
    status           text        NOT NULL,
    total_minor      bigint      NOT NULL,
    currency         text        NOT NULL,
    shipping_address jsonb       NOT NULL,
    version          integer     NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
-- Keyset pagination newest first, by customer and by status.
CREATE INDEX orders_by_customer ON orders (customer_id, id DESC);
CREATE INDEX orders_by_status ON orders (status, id DESC);

CREATE TABLE order_lines (
    order_id          uuid     NOT NULL,
    position          smallint NOT NULL,
    sku               text     NOT NULL,
    quantity          integer  NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint   NOT NULL,
    currency          text     NOT NULL,
    PRIMARY KEY (order_id, position)
);

-- Each order's audit events, for GET /orders/{id}/events; kept after the outbox row is purged.
CREATE TABLE order_events (
    seq       bigint GENERATED ALWAYS AS IDENTITY,
    order_id  uuid  NOT NULL,
    event     jsonb NOT NULL,
    PRIMARY KEY (order_id, seq)
);

CREATE TABLE idempotency_keys (
    client        text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    response      jsonb       NOT NULL,   -- the order as first returned
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (client, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

CREATE TABLE inbox (
    message_id    text        NOT NULL,
    consumer      text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, consumer)
);
CREATE INDEX inbox_by_age ON inbox (processed_at);

CREATE TABLE outbox (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- commit order
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
