//! What every orderflow service runs besides its own logic: the HTTP server (its API with docs, health,
//! metrics, authentication, body limit, security headers, correlation ids), the outbox relay, one consumer
//! per queue, and a shutdown that settles the messages in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use orderflow_adapters::metrics::{DLQ_DEPTH, OUTBOX_LAG_SECONDS};
use orderflow_messages::RoutingKey;
use orderflow_ports::BoxError;
use orderflow_ports::messaging::{CommandConsumer, DeadLetterAdmin, MessageHandler};
use orderflow_ports::outbox::{Destination, OutboxStore};
use orderflow_ports::system::HealthCheck;
use poem::endpoint::BoxEndpoint;
use poem::web::Data;
use poem::{EndpointExt, IntoResponse, Route, handler};
use poem_openapi::{OpenApi, OpenApiService};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::{
    BodyLimit, HttpMetrics, Observe, OperationScopes, RateLimitQuota, SecurityHeaders, counted_as, exact_document,
    readiness,
};
use crate::relay::{OutboxRelay, RelaySettings};
use crate::wiring::Connected;

/// How long a stopping service waits for the messages it is handling.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Everything a service hands over to run.
pub struct ServiceParts<A> {
    /// For logs, e.g. `Sales API`.
    pub name: &'static str,
    /// The OpenAPI document's version.
    pub version: &'static str,
    /// Where to listen (port 0 picks a free one).
    pub http_addr: SocketAddr,
    /// Request bodies above this are refused with 413.
    pub body_limit: usize,
    /// The service's operations.
    pub api: A,
    /// The ports it shares with the other service: broker, audit stream, token verification, rate limits.
    pub shared: Connected,
    /// What `/health/ready` checks besides the database (through the outbox) and the shared ports.
    pub health: Vec<Arc<dyn HealthCheck>>,
    /// The outbox the relay publishes.
    pub outbox: Arc<dyn OutboxStore>,
    /// The relay's tuning.
    pub relay: RelaySettings,
    /// The handler of each queue it consumes.
    pub handlers: Vec<(RoutingKey, Arc<dyn MessageHandler>)>,
    /// Other tasks to run for as long as the service runs, by name (e.g. Delivery's autopilot).
    pub tasks: Vec<(&'static str, BoxFuture<'static, ()>)>,
    /// Pages for people, outside the API and its document (e.g. Delivery's `/console`). They set their
    /// own `Content-Security-Policy`.
    pub pages: Vec<Pages>,
}

/// Pages for people served beside the API under one path.
pub struct Pages {
    /// The path they are served under (`/console`).
    pub path: &'static str,
    /// Their routes below `path`, each a template (`/shipments/{id}`) with the methods it answers, so
    /// their requests' spans are named by route as the API's are.
    pub routes: Vec<(String, &'static str)>,
    /// What serves them.
    pub endpoint: BoxEndpoint<'static>,
}

/// A running service. Dropping it stops its tasks.
pub struct RunningService {
    addr: SocketAddr,
    workers: Vec<String>,
    server: Option<JoinHandle<()>>,
    relay: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    consumer: Arc<dyn CommandConsumer>,
    stop_http: watch::Sender<bool>,
    stop_relay: watch::Sender<bool>,
}

impl RunningService {
    /// Binds the listener and starts the server, the relay and the consumers.
    ///
    /// # Errors
    /// When the address cannot be bound or the metrics cannot be registered.
    pub async fn start<A: OpenApi + Send + Sync + 'static>(parts: ServiceParts<A>) -> Result<Self, BoxError> {
        let shared = parts.shared;
        let mut health: Vec<Arc<dyn HealthCheck>> = vec![Arc::new(Database(parts.outbox.clone()))];
        health.extend(parts.health);
        health.extend(shared.health);
        let registry = prometheus::Registry::new();
        let metrics = HttpMetrics::register(&registry)?;
        let listener = tokio::net::TcpListener::bind(parts.http_addr).await?;
        let addr = listener.local_addr()?;
        let api = OpenApiService::new(parts.api, parts.name, parts.version).server(format!("http://{addr}"));
        let raw = api.spec();
        let mut fixed: Vec<(String, &str)> =
            ["/openapi.json", "/health/live", "/health/ready", "/metrics"].map(|p| (p.to_owned(), "GET")).into();
        for pages in &parts.pages {
            for (route, methods) in &pages.routes {
                // Their root answers with and without the trailing slash.
                if route == "/" {
                    fixed.push((pages.path.to_owned(), methods));
                }
                fixed.push((format!("{}{route}", pages.path), methods));
            }
        }
        let observe = Observe::new(metrics, &raw, &fixed);
        // One document for clients and for the page that shows it to people.
        let document = exact_document(&raw, &shared.issuer);
        let docs_page = api.swagger_ui_html().replace(&raw, &document);
        let spec = poem::endpoint::make_sync(move |_| {
            poem::Response::builder().content_type("application/json").body(document.clone())
        });
        let docs = poem::endpoint::make_sync(move |_| poem::web::Html(docs_page.clone()));
        let mut mounted = Route::new().nest("/", api.with(BodyLimit { max: parts.body_limit }));
        for pages in parts.pages {
            mounted = mounted.nest(pages.path, pages.endpoint.with(BodyLimit { max: parts.body_limit }));
        }
        let mut routes = mounted
            .at("/openapi.json", counted_as("openapi_document", spec))
            .nest("/docs", counted_as("docs", docs))
            .at("/health/live", counted_as("health_live", live))
            .at("/health/ready", counted_as("health_ready", ready.data(Arc::new(health))))
            .at("/metrics", counted_as("metrics", metrics_text.data(Arc::new(registry))))
            .data(shared.auth)
            .data(Arc::new(OperationScopes::from_document(&raw)))
            .boxed();
        if let Some(burst) = shared.rate_limit_burst {
            routes = routes.data(RateLimitQuota { burst }).boxed();
        }
        // Observe turns every error into a problem first; the headers then go on whatever answer it made.
        let app = routes.with(observe).with(SecurityHeaders);

        let name = parts.name;
        let (stop_http, mut http_stopping) = watch::channel(false);
        let server = tokio::spawn(async move {
            match poem::listener::TcpAcceptor::from_tokio(listener) {
                Ok(acceptor) => {
                    let stopping = async move {
                        let _ = http_stopping.wait_for(|stop| *stop).await;
                    };
                    let served = poem::Server::new_with_acceptor(acceptor)
                        .run_with_graceful_shutdown(app, stopping, Some(SHUTDOWN_GRACE))
                        .await;
                    if let Err(error) = served {
                        tracing::error!(%error, service = name, "HTTP server stopped");
                    }
                }
                Err(error) => tracing::error!(%error, service = name, "HTTP listener unusable"),
            }
        });
        let (stop_relay, relay_stopping) = watch::channel(false);
        let relay = OutboxRelay::new(parts.outbox, shared.publisher, shared.audit, parts.relay).on_published(
            |destination, event| {
                let waited = (chrono::Utc::now() - event.time).to_std().unwrap_or_default();
                let destination = match destination {
                    Destination::Command => "command",
                    Destination::Audit => "audit",
                };
                OUTBOX_LAG_SECONDS.with_label_values(&[destination]).observe(waited.as_secs_f64());
            },
        );
        let relay = tokio::spawn(relay.run(relay_stopping));
        let consumed: Vec<RoutingKey> = parts.handlers.iter().map(|(queue, _)| *queue).collect();
        let mut tasks = vec![tokio::spawn(sample_dead_letters(Arc::clone(&shared.dead_letters), consumed))];
        let mut workers = vec!["outbox relay".to_owned(), "dead-letter gauge".to_owned()];
        for (queue, handler) in parts.handlers {
            workers.push(format!("consumer of {}", queue.as_str()));
            let consumer = Arc::clone(&shared.consumer);
            tasks.push(tokio::spawn(async move {
                if let Err(error) = consumer.consume(queue, handler).await {
                    tracing::error!(%error, queue = queue.as_str(), service = name, "consumer stopped");
                }
            }));
        }
        for (worker, task) in parts.tasks {
            workers.push(worker.to_owned());
            tasks.push(tokio::spawn(task));
        }
        tracing::info!(%addr, service = name, workers = ?workers, "listening");
        Ok(Self {
            addr,
            workers,
            server: Some(server),
            relay: Some(relay),
            tasks,
            consumer: shared.consumer,
            stop_http,
            stop_relay,
        })
    }

    /// What runs besides the HTTP server, by name: the relay, one consumer per queue, and the other tasks.
    pub fn workers(&self) -> &[String] {
        &self.workers
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until SIGTERM or Ctrl-C (or until the server task ends, which it normally does not), then
    /// hands over to the other replicas, each step for up to [`SHUTDOWN_GRACE`]: the server stops accepting
    /// connections and answers the requests in flight; the consumers stop taking messages and settle those
    /// in flight (anything cut off was not acked, so the broker delivers it again); the relay publishes
    /// what those committed and releases its partitions.
    ///
    /// # Errors
    /// When the signal handler cannot be installed or the server panicked.
    pub async fn run_until_stopped(mut self) -> Result<(), BoxError> {
        let Some(server) = self.server.as_mut() else { return Ok(()) };
        tokio::select! {
            result = &mut *server => return Ok(result?),
            signal = shutdown_signal() => signal?,
        }
        tracing::info!("shutting down: answering the requests in flight");
        self.stop_http.send_replace(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
            tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; they are cut off");
        }
        tracing::info!("shutting down: settling the messages in flight");
        if tokio::time::timeout(SHUTDOWN_GRACE, self.consumer.shutdown()).await.is_err() {
            tracing::warn!("messages still in flight after {SHUTDOWN_GRACE:?}; the broker will redeliver them");
        }
        tracing::info!("shutting down: publishing what is owed and releasing the outbox partitions");
        self.stop_relay.send_replace(true);
        if let Some(relay) = self.relay.as_mut()
            && tokio::time::timeout(SHUTDOWN_GRACE, relay).await.is_err()
        {
            tracing::warn!("the relay still publishing after {SHUTDOWN_GRACE:?}; other replicas take over its rows");
        }
        Ok(())
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        for task in self.server.iter().chain(&self.relay).chain(&self.tasks) {
            task.abort();
        }
    }
}

/// Every 15 s, sets `orderflow_dlq_depth` of each consumed queue's dead-letter queue (alerts watch it).
async fn sample_dead_letters(admin: Arc<dyn DeadLetterAdmin>, queues: Vec<RoutingKey>) {
    let mut every = tokio::time::interval(Duration::from_secs(15));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match admin.queues(&queues).await {
            Ok(depths) => {
                for dlq in depths {
                    let depth = i64::try_from(dlq.depth).unwrap_or(i64::MAX);
                    DLQ_DEPTH.with_label_values(&[dlq.queue.as_str()]).set(depth);
                }
            }
            Err(error) => tracing::debug!(%error, "dead-letter depths unavailable"),
        }
    }
}

/// Resolves on SIGTERM (how orchestrators stop a container) or Ctrl-C.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            result = tokio::signal::ctrl_c() => result,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// Readiness of the service's database: it answers a cheap read of the outbox every service has.
struct Database(Arc<dyn OutboxStore>);

#[async_trait::async_trait]
impl HealthCheck for Database {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> bool {
        self.0.command_backlog().await.is_ok()
    }
}

#[handler]
fn live() -> &'static str {
    "ok"
}

#[handler]
async fn ready(checks: Data<&Arc<Vec<Arc<dyn HealthCheck>>>>) -> poem::Response {
    readiness(checks.0).await
}

#[handler]
fn metrics_text(registry: Data<&Arc<prometheus::Registry>>) -> poem::Response {
    // The service's own metrics and the process-wide ones the adapters record.
    let mut families = registry.gather();
    families.extend(prometheus::gather());
    let text = prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default();
    text.with_content_type("text/plain; version=0.0.4").into_response()
}
