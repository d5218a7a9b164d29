//! Runs the real `sales-api` and `delivery-api` binaries as separate processes against the real
//! PostgreSQL, RabbitMQ, Kafka (tansu), Redis and OAuth2 server, each test in schemas, a vhost and a topic
//! of its own, and talks to them over HTTP with tokens from the OAuth2 server.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use orderflow_adapters::contract::postgres::{database_url, drop_schemas};

use crate::support::{eventually, expect_status, order_body, string, workspace_binary};

/// The OAuth2 server the test command starts (`infra/scripts/oauth.sh start`).
pub fn issuer() -> String {
    std::env::var("OAUTH_ISSUER").unwrap_or_else(|_| "http://127.0.0.1:9000".to_owned())
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let status =
        Command::new("rabbitmqctl").args(args).stdout(Stdio::null()).status().context("running rabbitmqctl")?;
    ensure!(status.success(), "rabbitmqctl {args:?} failed");
    Ok(())
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Settings of one test's pair of services.
#[derive(Debug, Clone)]
pub struct Options {
    /// `AUTOPILOT_SHIP_AFTER` / `AUTOPILOT_DELIVER_AFTER` of Delivery.
    pub autopilot: Option<(&'static str, &'static str)>,
    /// `PAYMENT_DECLINE_ABOVE_MINOR` of Sales.
    pub decline_above_minor: i64,
    /// `AMQP_RETRY_DELAYS` of both.
    pub retry_delays: &'static str,
    /// `KAFKA_BROKERS` of both, instead of `TEST_KAFKA_BROKERS` or `127.0.0.1:9092` (a test's private broker).
    pub kafka_brokers: Option<String>,
    /// `REDIS_URL` of both, instead of `TEST_REDIS_URL` or `127.0.0.1:6379` (a test's private Redis).
    pub redis_url: Option<String>,
    /// `RATE_LIMIT_PER_MINUTE` and `RATE_LIMIT_BURST` of both, instead of no rate limit.
    pub rate_limit: Option<(u32, u32)>,
    /// `RATE_LIMIT_ROUTES` of both services, when set.
    pub rate_limit_routes: Option<&'static str>,
    /// `OAUTH_ISSUER` of both, and where the test's tokens come from, instead of [`issuer`].
    pub issuer: Option<String>,
    /// More variables of both services (`OTEL_*`).
    pub env: Vec<(&'static str, String)>,
    /// Delivery's port, instead of a free one: for a test that must name it beforehand (the console's
    /// redirect URI at the OAuth2 server).
    pub delivery_port: Option<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            autopilot: None,
            decline_above_minor: 1_000_000,
            retry_delays: "200ms,400ms,800ms",
            kafka_brokers: None,
            redis_url: None,
            rate_limit: None,
            rate_limit_routes: None,
            issuer: None,
            env: Vec::new(),
            delivery_port: None,
        }
    }
}

struct Service {
    name: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(workspace_binary(self.name)?)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| k == "PATH" || k == "HOME"))
            .envs(self.env.iter().cloned())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Another process of the same service on a port of its own, logging to a file of its own.
    fn replica(&self, n: usize) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut env = self.env.clone();
        for (key, value) in &mut env {
            if key == "HTTP_ADDR" {
                *value = format!("127.0.0.1:{port}");
            }
        }
        let log = self.log.with_file_name(format!("{}-{n}.log", self.name));
        Ok(Self { name: self.name, port, env, log, child: None })
    }

    /// SIGKILL: no shutdown, no flush, no ack — a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Which service a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sales-api`.
    Sales,
    /// `delivery-api`.
    Delivery,
}

/// Both services of one test, their private resources, and tokens for each kind of client.
pub struct Services {
    sales: Service,
    delivery: Service,
    /// More processes of either service on the same schemas, vhost and topic.
    replicas: Vec<Service>,
    /// One client for every request.
    pub http: reqwest::Client,
    /// `sales-client`.
    pub sales_token: String,
    /// `delivery-staff`.
    pub staff_token: String,
    /// `admin`.
    pub admin_token: String,
    /// The test's vhost (part of `amqp_url`).
    pub vhost: String,
    /// The test's broker URL.
    pub amqp_url: String,
    schemas: Vec<String>,
    kafka_brokers: String,
    audit_topic: String,
    dir: PathBuf,
}

impl Services {
    /// Creates the test's schemas, vhost and topic, starts both binaries and waits until both are ready.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let tag = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let vhost = format!("e2e_{tag}");
        rabbitmqctl(&["add_vhost", &vhost])?;
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
        let amqp_url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        let kafka_brokers = options
            .kafka_brokers
            .clone()
            .unwrap_or_else(|| std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()));
        let audit_topic = format!("e2e-audit-{tag}");
        let dir = std::env::temp_dir().join(format!("orderflow-e2e-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let common = |schema: &str, port: u16| -> Vec<(String, String)> {
            [
                ("DATABASE_URL", database_url()),
                ("DATABASE_SCHEMA", schema.to_owned()),
                ("DATABASE_POOL_SIZE", "8".to_owned()),
                ("AMQP_URL", amqp_url.clone()),
                ("AMQP_RETRY_DELAYS", options.retry_delays.to_owned()),
                ("KAFKA_BROKERS", kafka_brokers.clone()),
                ("AUDIT_TOPIC", audit_topic.clone()),
                (
                    "REDIS_URL",
                    options.redis_url.clone().unwrap_or_else(|| {
                        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
                    }),
                ),
                ("OAUTH_ISSUER", options.issuer.clone().unwrap_or_else(issuer)),
                ("RATE_LIMIT_PER_MINUTE", options.rate_limit.map_or(0, |(per_minute, _)| per_minute).to_string()),
                ("RATE_LIMIT_BURST", options.rate_limit.map_or(1, |(_, burst)| burst).to_string()),
                ("RATE_LIMIT_ROUTES", options.rate_limit_routes.unwrap_or_default().to_owned()),
                ("HTTP_ADDR", format!("127.0.0.1:{port}")),
                ("LOG_FORMAT", "json".to_owned()),
                ("RUST_LOG", "info".to_owned()),
            ]
            .into_iter()
            .chain(options.env.iter().cloned())
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
        };
        let (sales_schema, delivery_schema) = (format!("e2e_sales_{tag}"), format!("e2e_delivery_{tag}"));
        let sales_port = free_port()?;
        let mut sales_env = common(&sales_schema, sales_port);
        sales_env.push(("PAYMENT_DECLINE_ABOVE_MINOR".to_owned(), options.decline_above_minor.to_string()));
        let delivery_port = match options.delivery_port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut delivery_env = common(&delivery_schema, delivery_port);
        if let Some((ship, deliver)) = options.autopilot {
            delivery_env.push(("AUTOPILOT_SHIP_AFTER".to_owned(), ship.to_owned()));
            delivery_env.push(("AUTOPILOT_DELIVER_AFTER".to_owned(), deliver.to_owned()));
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let issuer = options.issuer.clone().unwrap_or_else(issuer);
        let token = |id: &'static str, secret: &'static str| orderflow::token::fetch(&issuer, id, secret, &[]);
        let sales_token = token("sales-client", "dev-secret-sales")
            .await
            .context("no token from the OAuth2 server; start it with `bash infra/scripts/oauth.sh start`")?;
        let mut services = Self {
            sales: Service {
                name: "sales-api",
                port: sales_port,
                env: sales_env,
                log: dir.join("sales.log"),
                child: None,
            },
            delivery: Service {
                name: "delivery-api",
                port: delivery_port,
                env: delivery_env,
                log: dir.join("delivery.log"),
                child: None,
            },
            replicas: Vec::new(),
            http,
            sales_token,
            staff_token: token("delivery-staff", "dev-secret-delivery").await?,
            admin_token: token("admin", "dev-secret-admin").await?,
            vhost,
            amqp_url,
            schemas: vec![sales_schema, delivery_schema],
            kafka_brokers,
            audit_topic,
            dir,
        };
        services.sales.spawn()?;
        services.delivery.spawn()?;
        services.wait_ready(&services.sales).await?;
        services.wait_ready(&services.delivery).await?;
        Ok(services)
    }

    async fn wait_ready(&self, service: &Service) -> anyhow::Result<()> {
        let url = service.url("/health/ready");
        let ready = eventually(&format!("{} to be ready", service.name), || async {
            Ok(self.http.get(&url).send().await.ok().filter(|r| r.status() == StatusCode::OK).map(|_| ()))
        })
        .await;
        ready.with_context(|| format!("{} log:\n{}", service.name, service.log_tail()))
    }

    /// The Kafka brokers both services append audit events to.
    pub fn kafka_brokers(&self) -> &str {
        &self.kafka_brokers
    }

    /// The test's audit topic (`AUDIT_TOPIC` of both services).
    pub fn audit_topic(&self) -> &str {
        &self.audit_topic
    }

    /// The test's database schemas: Sales's, then Delivery's.
    pub fn schemas(&self) -> &[String] {
        &self.schemas
    }

    /// Kills Sales with SIGKILL, as a crash would.
    pub fn kill_sales(&mut self) {
        self.sales.kill();
    }

    /// Starts Sales again after [`Services::kill_sales`] and waits until it is ready.
    pub async fn restart_sales(&mut self) -> anyhow::Result<()> {
        self.sales.spawn()?;
        self.wait_ready(&self.sales).await
    }

    /// Kills Delivery with SIGKILL, as a crash would.
    pub fn kill_delivery(&mut self) {
        self.delivery.kill();
    }

    /// Starts Delivery again after [`Services::kill_delivery`] and waits until it is ready.
    pub async fn restart_delivery(&mut self) -> anyhow::Result<()> {
        self.delivery.spawn()?;
        self.wait_ready(&self.delivery).await
    }

    /// Starts another process of `kind` on the test's schemas, vhost and topic (a replica) and waits until
    /// it is ready; returns its index for the other replica methods.
    pub async fn add_replica(&mut self, kind: Kind) -> anyhow::Result<usize> {
        let first = match kind {
            Kind::Sales => &self.sales,
            Kind::Delivery => &self.delivery,
        };
        let mut replica = first.replica(self.replicas.len() + 2)?;
        replica.spawn()?;
        self.wait_ready(&replica).await?;
        self.replicas.push(replica);
        Ok(self.replicas.len() - 1)
    }

    /// `http://{replica}{path}`.
    pub fn replica_url(&self, replica: usize, path: &str) -> String {
        self.replicas[replica].url(path)
    }

    /// Kills a replica with SIGKILL, as a crash would.
    pub fn kill_replica(&mut self, replica: usize) {
        self.replicas[replica].kill();
    }

    /// Stops a replica: the returned future sends SIGTERM when first polled and resolves once the process
    /// has shut down. It borrows nothing, so requests can go on while it runs.
    pub fn stop_replica(&mut self, replica: usize) -> impl Future<Output = anyhow::Result<()>> + 'static {
        let child = self.replicas[replica].child.take();
        async move {
            let Some(mut child) = child else { return Ok(()) };
            tokio::task::spawn_blocking(move || {
                let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
                ensure!(status.success(), "kill -TERM {} failed", child.id());
                child.wait()?;
                Ok(())
            })
            .await?
        }
    }

    /// `http://{sales}{path}`.
    pub fn sales_url(&self, path: &str) -> String {
        self.sales.url(path)
    }

    /// `http://{delivery}{path}`.
    pub fn delivery_url(&self, path: &str) -> String {
        self.delivery.url(path)
    }

    /// Everything Sales and Delivery have logged, in that order.
    pub fn logs(&self) -> (String, String) {
        let read = |service: &Service| std::fs::read_to_string(&service.log).unwrap_or_default();
        (read(&self.sales), read(&self.delivery))
    }

    /// A request to Sales with the sales client's token.
    pub fn sales(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.sales.url(path)).bearer_auth(&self.sales_token)
    }

    /// A request to Sales with the admin's token.
    pub fn sales_admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.sales.url(path)).bearer_auth(&self.admin_token)
    }

    /// A request to Delivery with the staff token.
    pub fn staff(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.delivery.url(path)).bearer_auth(&self.staff_token)
    }

    /// Creates or updates a product.
    pub async fn put_product(&self, sku: &str, price_minor: i64, stock: i64) -> anyhow::Result<()> {
        let body = json!({ "name": sku, "price": { "amount_minor": price_minor, "currency": "EUR" }, "stock": stock });
        let response = self.sales_admin(Method::PUT, &format!("/products/{sku}")).json(&body).send().await?;
        expect_status(response, StatusCode::OK).await.map(drop)
    }

    /// `(stock, reserved)` of a product.
    pub async fn stock(&self, sku: &str) -> anyhow::Result<(u64, u64)> {
        let response = self.sales(Method::GET, &format!("/products/{sku}")).send().await?;
        let product = expect_status(response, StatusCode::OK).await?;
        Ok((product["stock"].as_u64().context("stock")?, product["reserved"].as_u64().context("reserved")?))
    }

    /// Places an order; returns the response.
    pub async fn place_raw(&self, customer: &str, lines: &[(&str, i64)]) -> anyhow::Result<reqwest::Response> {
        let key = Uuid::new_v4().to_string();
        Ok(self
            .sales(Method::POST, "/orders")
            .header("Idempotency-Key", key)
            .json(&order_body(customer, lines))
            .send()
            .await?)
    }

    /// Places an order and returns its id.
    pub async fn place(&self, customer: &str, sku: &str, quantity: i64) -> anyhow::Result<String> {
        let response = self.place_raw(customer, &[(sku, quantity)]).await?;
        string(&expect_status(response, StatusCode::CREATED).await?["id"])
    }

    /// Places `count` single-unit orders of `sku`, 16 at a time, and returns their ids.
    pub async fn place_many(&self, count: usize, prefix: &str, sku: &str) -> anyhow::Result<Vec<String>> {
        let results: Vec<anyhow::Result<String>> = futures::stream::iter(0..count)
            .map(|i| async move { self.place(&format!("{prefix}-{i}"), sku, 1).await })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Waits until every order is delivered, for at most `within` in all.
    pub async fn wait_all_delivered(&self, ids: &[String], within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        for id in ids {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.wait_for_status(id, "delivered", left).await.with_context(|| format!("order {id}"))?;
        }
        Ok(())
    }

    /// The order's status, as Sales reports it.
    pub async fn status(&self, id: &str) -> anyhow::Result<String> {
        let response = self.sales(Method::GET, &format!("/orders/{id}")).send().await?;
        string(&expect_status(response, StatusCode::OK).await?["status"])
    }

    /// Waits until the order has `status`, for at most `within`.
    pub async fn wait_for_status(&self, id: &str, status: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let current = self.status(id).await?;
            if current == status {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "order {id} is {current}, not {status}, after {within:?}\nsales log:\n{}\ndelivery log:\n{}",
                    self.sales.log_tail(),
                    self.delivery.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The order's timeline event types.
    pub async fn timeline(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let response = self.sales(Method::GET, &format!("/orders/{id}/events")).send().await?;
        let body = expect_status(response, StatusCode::OK).await?;
        body["items"].as_array().context("items")?.iter().map(|e| string(&e["type"])).collect()
    }

    /// The shipment of an order, once Delivery has it.
    pub async fn shipment_of(&self, order_id: &str) -> anyhow::Result<Value> {
        eventually("the shipment", || async {
            let response = self.staff(Method::GET, &format!("/shipments/by-order/{order_id}")).send().await?;
            Ok((response.status() == StatusCode::OK).then_some(response.json::<Value>().await?))
        })
        .await
    }

    /// The depth of a queue's dead-letter queue, through the admin API of the service consuming it.
    pub async fn dlq_depth(&self, queue: &str) -> anyhow::Result<u64> {
        let base = if queue.starts_with("orders.created") || queue.starts_with("orders.cancel") {
            &self.delivery
        } else {
            &self.sales
        };
        let response = self.http.get(base.url("/admin/dlq")).bearer_auth(&self.admin_token).send().await?;
        let body = expect_status(response, StatusCode::OK).await?;
        let entry = body["items"].as_array().context("items")?.iter().find(|q| q["queue"] == queue).cloned();
        entry.and_then(|q| q["depth"].as_u64()).with_context(|| format!("no DLQ for {queue}"))
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.sales.kill();
        self.delivery.kill();
        for replica in &mut self.replicas {
            replica.kill();
        }
        let _ = rabbitmqctl(&["delete_vhost", &self.vhost]);
        drop_schemas(std::mem::take(&mut self.schemas));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Restarts the RabbitMQ application (every connection drops; durable queues and their messages stay),
/// waiting until it accepts connections again.
pub async fn rabbitmqctl_restart() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"])?;
        std::thread::sleep(Duration::from_secs(2));
        rabbitmqctl(&["start_app"])?;
        rabbitmqctl(&["await_startup"])
    })
    .await?
}
