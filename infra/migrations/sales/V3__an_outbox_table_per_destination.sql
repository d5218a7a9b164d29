-- An outbox table per destination, partitioned by order. A message is inserted once for each destination
-- owed it and deleted once that destination has it: taking rows writes nothing (no lease), and the only
-- index is the primary key, so publishing costs PostgreSQL no new row versions and no index updates.
-- `partition` spreads orders over relays: a relay takes rows only of partitions whose transaction-scoped
-- advisory lock it holds, so each order's rows are published by one relay at a time, in `seq` order,
-- however many replicas run.

-- Orders fall into this many partitions (the relay's `PARTITIONS` constant is the same number).
CREATE FUNCTION outbox_partitions() RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT 32';

-- The partition of an order, from the event's subject (the order id).
CREATE FUNCTION outbox_partition(subject text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS 'SELECT ((hashtext(subject) & 2147483647) % outbox_partitions())::smallint';

CREATE TABLE command_outbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- commit order within an order
    id           uuid        NOT NULL,                              -- the event id, the message id
    partition    smallint    NOT NULL,
    routing_key  text        NOT NULL,
    event        text        NOT NULL,                              -- the CloudEvent JSON, as sent
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_outbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           uuid        NOT NULL,
    partition    smallint    NOT NULL,
    event        text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Whatever the old table still owed, in its order.
INSERT INTO command_outbox (id, partition, routing_key, event, created_at)
SELECT id, outbox_partition(event->>'subject'), routing_key, event::text, created_at
FROM outbox WHERE command_pending AND routing_key IS NOT NULL ORDER BY seq;

INSERT INTO audit_outbox (id, partition, event, created_at)
SELECT id, outbox_partition(event->>'subject'), event::text, created_at
FROM outbox WHERE audit_pending ORDER BY seq;

DROP TABLE outbox;
