-- Each destination of an outbox row is claimed on its own, so a broker that is down holds back only
-- its own destination: RabbitMQ commands keep flowing while Kafka is away, and the other way round.
ALTER TABLE outbox RENAME COLUMN claimed_until TO command_claimed_until;
ALTER TABLE outbox ADD COLUMN audit_claimed_until timestamptz;
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_command_owed ON outbox (seq) WHERE command_pending;
CREATE INDEX outbox_audit_owed ON outbox (seq) WHERE audit_pending;
