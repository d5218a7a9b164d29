//! The Redis order read cache: one hash per order holding its JSON and version, written only through a Lua
//! script that compares versions, so a slow reader can never put back a state older than a committed one.

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;
use orderflow_domain::{Order, OrderId};
use orderflow_ports::cache::{CacheError, OrderCache};

/// The hash field holding the order's JSON; the field `version` beside it lets the script compare versions
/// without decoding JSON (both names appear literally in [`PUT_IF_NEWER`]).
const ORDER_FIELD: &str = "order";

/// KEYS[1] the order's hash; ARGV[1] version, ARGV[2] JSON, ARGV[3] TTL in ms. Returns 1 when stored.
/// One script is atomic on the server, so two concurrent puts cannot both pass the comparison.
const PUT_IF_NEWER: &str = r"
local cached = redis.call('HGET', KEYS[1], 'version')
if cached and tonumber(cached) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'order', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Caches single orders in Redis under `{key_prefix}:order:{id}` for `ttl` after their last write.
#[derive(Clone)]
pub struct RedisOrderCache {
    connection: ConnectionManager,
    ttl_ms: u64,
    key_prefix: String,
    put_if_newer: Script,
}

impl RedisOrderCache {
    /// A cache over `manager` keeping entries for `ttl` (at least 1 ms) under keys starting with `key_prefix`
    /// (`orderflow` in production; tests use a unique one each).
    pub fn new(manager: ConnectionManager, ttl: Duration, key_prefix: impl Into<String>) -> Self {
        Self {
            connection: manager,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            key_prefix: key_prefix.into(),
            put_if_newer: Script::new(PUT_IF_NEWER),
        }
    }

    fn key(&self, id: OrderId) -> String {
        format!("{}:order:{id}", self.key_prefix)
    }
}

fn unexpected(error: impl std::error::Error + Send + Sync + 'static) -> CacheError {
    CacheError::Unexpected(Box::new(error))
}

#[async_trait]
impl OrderCache for RedisOrderCache {
    async fn get(&self, id: OrderId) -> Result<Option<Order>, CacheError> {
        let key = self.key(id);
        let mut connection = self.connection.clone();
        let json: Option<Vec<u8>> = connection.hget(&key, ORDER_FIELD).await.map_err(unexpected)?;
        let Some(json) = json else { return Ok(None) };
        match serde_json::from_slice(&json) {
            Ok(order) => Ok(Some(order)),
            Err(error) => {
                // An entry this build cannot read (written by another version of the service): a miss, and
                // dropped so the store's state replaces it instead of failing every read until it expires.
                tracing::warn!(%error, order_id = %id, "dropping an undecodable cached order");
                let _: Result<(), _> = connection.del(&key).await;
                Ok(None)
            }
        }
    }

    async fn put_if_newer(&self, order: &Order) -> Result<(), CacheError> {
        let json = serde_json::to_vec(order).map_err(unexpected)?;
        let mut connection = self.connection.clone();
        let _stored: i64 = self
            .put_if_newer
            .key(self.key(order.id))
            .arg(order.version)
            .arg(json)
            .arg(self.ttl_ms)
            .invoke_async(&mut connection)
            .await
            .map_err(unexpected)?;
        Ok(())
    }

    async fn put_all_if_newer(&self, orders: &[Order]) -> Result<(), CacheError> {
        if orders.is_empty() {
            return Ok(());
        }
        let mut invocations = Vec::with_capacity(orders.len());
        for order in orders {
            let json = serde_json::to_vec(order).map_err(unexpected)?;
            let mut invocation = self.put_if_newer.key(self.key(order.id));
            invocation.arg(order.version).arg(json).arg(self.ttl_ms);
            invocations.push(invocation);
        }
        // A pipeline does not load a script the server lacks (after a restart or `SCRIPT FLUSH`), so it
        // loads it first: one command more, in the same round trip.
        let mut pipeline = ::redis::pipe();
        pipeline.load_script(&self.put_if_newer).ignore();
        for invocation in &invocations {
            pipeline.invoke_script(invocation).ignore();
        }
        let mut connection = self.connection.clone();
        pipeline.query_async::<()>(&mut connection).await.map_err(unexpected)
    }

    async fn invalidate(&self, id: OrderId) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        let _removed: i64 = connection.del(self.key(id)).await.map_err(unexpected)?;
        Ok(())
    }
}
