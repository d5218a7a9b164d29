//! The admin endpoints over a service's dead-letter queues: list with depths, peek, replay, purge.

use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use orderflow_messages::RoutingKey;
use orderflow_ports::messaging::{AdminError, DeadLetter, DeadLetterAdmin};
use poem::http::StatusCode;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::{BearerAuth, Problem, Problems, Scope};
use crate::refusals;

refusals!(
    /// Listing the dead-letter queues: nothing beyond what every operation can answer.
    Overview:
);
refusals!(
    /// Operating on one queue: none this service consumes.
    OneQueue: 404
);
refusals!(
    /// Operating on some letters of one queue: a malformed limit, or no such queue.
    SomeLetters: 400, 404
);

/// The dead-letter endpoints of one service, over the queues it consumes.
pub struct DlqApi {
    /// The broker's dead-letter operations.
    pub admin: Arc<dyn DeadLetterAdmin>,
    /// The queues this service consumes (the only ones it may operate on).
    pub queues: Vec<RoutingKey>,
}

/// A dead-letter queue and how many messages wait in it.
#[derive(Debug, Clone, Object)]
pub struct DlqDepth {
    /// The original queue, e.g. `orders.created` (its DLQ is `orders.created.dlq`).
    pub queue: String,
    /// Messages in its dead-letter queue.
    pub depth: u64,
}

/// The dead-letter queues.
#[derive(Debug, Clone, Object)]
pub struct DlqList {
    /// One entry per consumed queue.
    pub items: Vec<DlqDepth>,
}

/// One dead-lettered message.
#[derive(Debug, Clone, Object)]
pub struct DlqEntry {
    /// The message id (the event id).
    pub message_id: Option<String>,
    /// The CloudEvents type, when the body is a CloudEvent.
    #[oai(rename = "type")]
    pub event_type: Option<String>,
    /// The queue it failed on.
    pub original_queue: String,
    /// The last error.
    pub error: String,
    /// When it was dead-lettered.
    pub failed_at: DateTime<Utc>,
    /// Retries before it was given up.
    pub retries: u32,
    /// The body: JSON when it parses, else base64 of the raw bytes.
    pub body: serde_json::Value,
}

impl From<DeadLetter> for DlqEntry {
    fn from(d: DeadLetter) -> Self {
        let body = serde_json::from_slice::<serde_json::Value>(&d.body)
            .unwrap_or_else(|_| serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&d.body)));
        Self {
            message_id: d.message_id,
            event_type: body.get("type").and_then(|t| t.as_str()).map(str::to_owned),
            original_queue: d.original_queue.as_str().to_owned(),
            error: d.error,
            failed_at: d.failed_at,
            retries: d.retries,
            body,
        }
    }
}

/// Dead letters of one queue.
#[derive(Debug, Clone, Object)]
pub struct DlqEntries {
    /// Oldest first.
    pub items: Vec<DlqEntry>,
}

/// What a replay or purge did.
#[derive(Debug, Clone, Object)]
pub struct DlqOutcome {
    /// Messages moved back (replay) or deleted (purge).
    pub count: u64,
}

fn failed(error: &AdminError) -> Problem {
    Problem::unavailable(error)
}

impl DlqApi {
    fn queue(&self, name: &str) -> Result<RoutingKey, Problem> {
        self.queues.iter().copied().find(|q| q.as_str() == name).ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("this service consumes no queue {name}"),
            )
            .with_field("queue")
        })
    }
}

/// The `limit` of an admin listing: 1–1000, `default` when absent.
///
/// # Errors
/// A 400 [`Problem`] on `limit` outside 1–1000.
pub fn admin_limit(raw: Option<i64>, default: usize) -> Result<usize, Problem> {
    match raw {
        None => Ok(default),
        Some(n @ 1..=1000) => usize::try_from(n).map_err(|_| Problem::invalid("limit", "must be between 1 and 1000")),
        Some(_) => Err(Problem::invalid("limit", "must be between 1 and 1000")),
    }
}

#[OpenApi(prefix_path = "/admin/dlq")]
impl DlqApi {
    /// The dead-letter queues of this service with their depths (admin).
    #[oai(path = "/", method = "get", operation_id = "list_dlqs")]
    async fn list(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
    ) -> Result<Json<DlqList>, Problems<Overview>> {
        let queues = self.admin.queues(&self.queues).await.map_err(|e| failed(&e))?;
        Ok(Json(DlqList {
            items: queues
                .into_iter()
                .map(|q| DlqDepth { queue: q.queue.as_str().to_owned(), depth: q.depth })
                .collect(),
        }))
    }

    /// Dead letters of one queue, oldest first, left in place (admin).
    #[oai(path = "/:queue", method = "get", operation_id = "peek_dlq")]
    async fn peek(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
        queue: Path<String>,
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))] limit: Query<Option<i64>>,
    ) -> Result<Json<DlqEntries>, Problems<SomeLetters>> {
        let queue = self.queue(&queue.0)?;
        let letters = self.admin.peek(queue, admin_limit(limit.0, 20)?).await.map_err(|e| failed(&e))?;
        Ok(Json(DlqEntries { items: letters.into_iter().map(Into::into).collect() }))
    }

    /// Moves dead letters back to their queue with the retry count reset (admin).
    #[oai(path = "/:queue/replay", method = "post", operation_id = "replay_dlq")]
    async fn replay(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
        queue: Path<String>,
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))] limit: Query<Option<i64>>,
    ) -> Result<Json<DlqOutcome>, Problems<SomeLetters>> {
        let queue = self.queue(&queue.0)?;
        let replayed = self.admin.replay(queue, admin_limit(limit.0, 1000)?).await.map_err(|e| failed(&e))?;
        Ok(Json(DlqOutcome { count: replayed as u64 }))
    }

    /// Deletes every dead letter of a queue (admin).
    #[oai(path = "/:queue", method = "delete", operation_id = "purge_dlq")]
    async fn purge(
        &self,
        #[oai(scope = "Scope::Admin")] _auth: BearerAuth,
        queue: Path<String>,
    ) -> Result<Json<DlqOutcome>, Problems<OneQueue>> {
        let queue = self.queue(&queue.0)?;
        let purged = self.admin.purge(queue).await.map_err(|e| failed(&e))?;
        Ok(Json(DlqOutcome { count: purged }))
    }
}
