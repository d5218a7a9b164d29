//! Security of the two services as real processes, with tokens from the real OAuth2 server (`oidc-provider`,
//! `infra/oauth`) and the real Redis: each scope allows exactly its endpoints, foreign, expired and other
//! issuers' tokens are refused, a key rotation at the issuer is picked up without a restart, the rate limit
//! answers 429 with `Retry-After` and `RateLimit-*` to the client over it alone, every response carries the
//! security headers, and Redis going away and coming back costs no request.
//!
//! The services need the whole stack (PostgreSQL, RabbitMQ, Kafka, Redis, `bash infra/scripts/oauth.sh start`);
//! the tests that need a Redis or an issuer to die start private ones (`redis-server`, a second `oidc-provider`
//! on a free port) and stop them at the end. They run in the broker's nextest group, one at a time.

mod processes;
mod support;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use orderflow_runtime::dev_issuer::{DevClient, DevIssuer};
use processes::{Options, Services};
use reqwest::header::{HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{eventually, expect_status, order_body, string};
use uuid::Uuid;

/// The dev clients of `infra/oauth/server.js` and their secrets.
const CLIENTS: [(&str, &str); 4] = [
    ("sales-client", "dev-secret-sales"),
    ("delivery-staff", "dev-secret-delivery"),
    ("analyst", "dev-secret-analyst"),
    ("admin", "dev-secret-admin"),
];

/// The scopes each dev client has (README.md "A real OAuth2 provider").
fn scopes_of(client: &str) -> &'static [&'static str] {
    match client {
        "sales-client" => &["orders:read", "orders:write"],
        "delivery-staff" => &["shipments:read", "shipments:write"],
        "analyst" => &["orders:read", "shipments:read"],
        "admin" => &["admin", "orders:read", "orders:write", "shipments:read", "shipments:write"],
        _ => &[],
    }
}

async fn token_from(issuer: &str, client_id: &str) -> anyhow::Result<String> {
    let (_, secret) = CLIENTS.iter().find(|(id, _)| *id == client_id).context("unknown dev client")?;
    orderflow::token::fetch(issuer, client_id, secret, &[]).await.with_context(|| format!("a token for {client_id}"))
}

/// `http://127.0.0.1:<port>` of Sales and of Delivery (the harness keeps its services' ports to itself, but
/// the URLs of its request builders tell them).
fn origins(s: &Services) -> anyhow::Result<(String, String)> {
    let origin = |request: reqwest::RequestBuilder| -> anyhow::Result<String> {
        Ok(request.build()?.url().origin().ascii_serialization())
    };
    Ok((origin(s.sales(Method::GET, "/"))?, origin(s.staff(Method::GET, "/"))?))
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/scripts")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A second, private `oidc-provider` (the same `infra/oauth` server as the shared one) on a free port, with a
/// state directory of its own; stopped when dropped.
struct PrivateIssuer {
    port: u16,
    state: PathBuf,
}

impl PrivateIssuer {
    fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let state = std::env::temp_dir().join(format!("orderflow-e2e-oauth-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&state)?;
        let issuer = Self { port, state };
        issuer.script("start")?;
        Ok(issuer)
    }

    fn script(&self, command: &str) -> anyhow::Result<()> {
        let output = Command::new("bash")
            .arg(scripts().join("oauth.sh"))
            .arg(command)
            .env("OAUTH_PORT", self.port.to_string())
            .env("ORDERFLOW_STATE_DIR", &self.state)
            .stdin(Stdio::null())
            .output()
            .context("running infra/scripts/oauth.sh")?;
        ensure!(
            output.status.success(),
            "oauth.sh {command} on port {} failed:\n{}{}",
            self.port,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Restarts the server: `infra/oauth` generates fresh signing keys (new `kid`s) at every start.
    fn restart(&self) -> anyhow::Result<()> {
        self.script("stop")?;
        self.script("start")
    }

    /// The `kid` of the ES256 key access tokens are signed with.
    async fn signing_kid(&self) -> anyhow::Result<String> {
        let jwks: Value = reqwest::get(format!("{}/jwks", self.url())).await?.error_for_status()?.json().await?;
        let keys = jwks["keys"].as_array().context("no keys in the JWKS")?;
        let key = keys.iter().find(|k| k["kty"] == "EC").context("no EC key in the JWKS")?;
        string(&key["kid"])
    }
}

impl Drop for PrivateIssuer {
    fn drop(&mut self) {
        let _ = self.script("stop");
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A private `redis-server` on a free port (no persistence), so a test can kill it and start it again without
/// touching the shared one; killed when dropped.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("orderflow-e2e-redis-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let redis = Self { port: free_port()?, dir };
        redis.spawn()?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("redis.pid")
    }

    /// Starts the server (again) on its port and waits until it answers.
    fn spawn(&self) -> anyhow::Result<()> {
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "yes", "--pidfile"])
            .arg(self.pid_file())
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status()
            .context("running redis-server (apt-get install redis-server)")?;
        ensure!(status.success(), "redis-server on port {} failed to start", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["ping"]).ok().as_deref() != Some("PONG") {
            ensure!(Instant::now() < deadline, "the private Redis on port {} does not answer", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILL, as a crash would; waits until the port is closed.
    fn kill(&self) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(self.pid_file()).context("the private Redis's pid file")?;
        let status = Command::new("kill").args(["-KILL", pid.trim()]).status()?;
        ensure!(status.success(), "kill -KILL {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            ensure!(Instant::now() < deadline, "the private Redis on port {} does not die", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.pid_file());
        Ok(())
    }

    /// `redis-cli -p <port> <args>`'s output, trimmed.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("redis-cli").arg("-p").arg(self.port.to_string()).args(args).output()?;
        ensure!(output.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.pid_file().exists() {
            let _ = self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One operation of either API: where it is, the scope it needs, and a request body that is valid, so nothing
/// but the token decides between 401, 403 and the rest.
struct Route {
    sales: bool,
    method: Method,
    /// As in the OpenAPI document.
    template: &'static str,
    path: String,
    scope: &'static str,
    body: Option<Value>,
}

fn route(sales: bool, method: Method, template: &'static str, path: String, scope: &'static str) -> Route {
    Route { sales, method, template, path, scope, body: None }
}

fn every_route() -> Vec<Route> {
    let (order, shipment) = (Uuid::new_v4(), Uuid::new_v4());
    let sku = "SKU-SEC-1";
    let product = json!({ "name": "Scope test", "price": { "amount_minor": 500, "currency": "EUR" }, "stock": 3 });
    let ship = json!({ "carrier": "DHL", "tracking_number": "JD0123" });
    let (sales, delivery) = (true, false);
    let mut routes = vec![
        route(sales, Method::GET, "/products", "/products".into(), "orders:read"),
        route(sales, Method::GET, "/products/{sku}", format!("/products/{sku}"), "orders:read"),
        Route {
            body: Some(product),
            ..route(sales, Method::PUT, "/products/{sku}", format!("/products/{sku}"), "admin")
        },
        Route {
            body: Some(order_body("cust-scopes", &[(sku, 1)])),
            ..route(sales, Method::POST, "/orders", "/orders".into(), "orders:write")
        },
        route(sales, Method::GET, "/orders", "/orders".into(), "orders:read"),
        route(sales, Method::GET, "/orders/{id}", format!("/orders/{order}"), "orders:read"),
        route(sales, Method::GET, "/orders/{id}/events", format!("/orders/{order}/events"), "orders:read"),
        route(sales, Method::POST, "/orders/{id}/cancel", format!("/orders/{order}/cancel"), "orders:write"),
        route(delivery, Method::GET, "/shipments", "/shipments".into(), "shipments:read"),
        route(delivery, Method::GET, "/shipments/{id}", format!("/shipments/{shipment}"), "shipments:read"),
        route(
            delivery,
            Method::GET,
            "/shipments/by-order/{order_id}",
            format!("/shipments/by-order/{order}"),
            "shipments:read",
        ),
        Route {
            body: Some(ship),
            ..route(
                delivery,
                Method::POST,
                "/shipments/{id}/ship",
                format!("/shipments/{shipment}/ship"),
                "shipments:write",
            )
        },
        route(
            delivery,
            Method::POST,
            "/shipments/{id}/deliver",
            format!("/shipments/{shipment}/deliver"),
            "shipments:write",
        ),
    ];
    let (hook, delivery_id) = (Uuid::new_v4(), Uuid::new_v4());
    routes.extend([
        Route {
            body: Some(json!({ "url": "https://hooks.example.com/orderflow" })),
            ..route(sales, Method::POST, "/admin/webhooks", "/admin/webhooks".into(), "admin")
        },
        route(sales, Method::GET, "/admin/webhooks", "/admin/webhooks".into(), "admin"),
        route(sales, Method::DELETE, "/admin/webhooks/{id}", format!("/admin/webhooks/{hook}"), "admin"),
        route(
            sales,
            Method::GET,
            "/admin/webhooks/{id}/deliveries",
            format!("/admin/webhooks/{hook}/deliveries"),
            "admin",
        ),
        route(
            sales,
            Method::POST,
            "/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            format!("/admin/webhooks/{hook}/deliveries/{delivery_id}/redeliver"),
            "admin",
        ),
    ]);
    for (api, queue) in [(sales, "payments.requested"), (delivery, "orders.created")] {
        routes.extend([
            route(api, Method::GET, "/admin/dlq", "/admin/dlq".into(), "admin"),
            route(api, Method::GET, "/admin/dlq/{queue}", format!("/admin/dlq/{queue}"), "admin"),
            route(api, Method::POST, "/admin/dlq/{queue}/replay", format!("/admin/dlq/{queue}/replay"), "admin"),
            route(api, Method::DELETE, "/admin/dlq/{queue}", format!("/admin/dlq/{queue}"), "admin"),
        ]);
    }
    routes
}

/// Every `(METHOD, path template)` of a service's OpenAPI document.
async fn documented_operations(http: &reqwest::Client, origin: &str) -> anyhow::Result<BTreeSet<(String, String)>> {
    let spec: Value = http.get(format!("{origin}/openapi.json")).send().await?.error_for_status()?.json().await?;
    let paths = spec["paths"].as_object().context("no paths in the OpenAPI document")?;
    Ok(paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_scope_allows_exactly_its_endpoints() -> anyhow::Result<()> {
    let s = Services::start(Options::default()).await?;
    let (sales, delivery) = origins(&s)?;
    let routes = every_route();

    // The table is every operation the services document, no more, no less.
    for (is_sales, origin) in [(true, &sales), (false, &delivery)] {
        let documented = documented_operations(&s.http, origin).await?;
        let tabled: BTreeSet<(String, String)> = routes
            .iter()
            .filter(|r| r.sales == is_sales)
            .map(|r| (r.method.to_string(), r.template.to_owned()))
            .collect();
        ensure!(documented == tabled, "{origin} documents {documented:?}, the table has {tabled:?}");
    }

    let issuer = processes::issuer();
    let mut callers: Vec<(&str, Option<String>)> = vec![("(no token)", None)];
    for (client, _) in CLIENTS {
        callers.push((client, Some(token_from(&issuer, client).await?)));
    }

    let mut matrix = format!("{:<48}", "route \\ client");
    for (name, _) in &callers {
        let _ = write!(matrix, "{name:>16}");
    }
    matrix.push('\n');
    let mut wrong = Vec::new();
    for route in &routes {
        let origin = if route.sales { &sales } else { &delivery };
        let api = if route.sales { "sales" } else { "delivery" };
        let _ = write!(matrix, "{:<48}", format!("{api} {} {} [{}]", route.method, route.template, route.scope));
        for (name, token) in &callers {
            let mut request = s.http.request(route.method.clone(), format!("{origin}{}", route.path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &route.body {
                request = request.json(body);
            }
            let response = request.send().await?;
            let status = response.status();
            let challenge = header(response.headers(), WWW_AUTHENTICATE.as_str()).unwrap_or_default().to_owned();
            let body = response.text().await?;
            let verdict = match token {
                None => (status == StatusCode::UNAUTHORIZED && challenge.starts_with("Bearer"))
                    .then_some(())
                    .ok_or("expected 401 with a Bearer challenge"),
                Some(_) if scopes_of(name).contains(&route.scope) => {
                    (status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN && !status.is_server_error())
                        .then_some(())
                        .ok_or("expected it to be allowed")
                }
                Some(_) => (status == StatusCode::FORBIDDEN
                    && challenge.contains("error=\"insufficient_scope\"")
                    && challenge.contains(route.scope)
                    && body.contains("/problems/insufficient-scope"))
                .then_some(())
                .ok_or("expected 403 insufficient_scope"),
            };
            let mark = if verdict.is_ok() { "" } else { " !!" };
            let _ = write!(matrix, "{:>16}", format!("{}{mark}", status.as_u16()));
            if let Err(expected) = verdict {
                wrong.push(format!("{name} {} {}: {status} ({expected}) {challenge} {body}", route.method, route.path));
            }
        }
        matrix.push('\n');
    }
    ensure!(wrong.is_empty(), "{} wrong answers:\n{}\n\n{matrix}", wrong.len(), wrong.join("\n"));
    Ok(())
}

async fn assert_refused(s: &Services, origin: &str, token: &str, what: &str) -> anyhow::Result<()> {
    assert_refused_at(s, &format!("{origin}/products"), token, what).await
}

/// Sales and Delivery verify tokens each on its own: both must refuse.
async fn assert_refused_by_both(s: &Services, token: &str, what: &str) -> anyhow::Result<()> {
    let (sales, delivery) = origins(s)?;
    assert_refused_at(s, &format!("{sales}/orders"), token, &format!("sales-api: {what}")).await?;
    assert_refused_at(s, &format!("{delivery}/shipments"), token, &format!("delivery-api: {what}")).await
}

async fn assert_refused_at(s: &Services, url: &str, token: &str, what: &str) -> anyhow::Result<()> {
    let response = s.http.get(url).bearer_auth(token).send().await?;
    let status = response.status();
    let challenge = header(response.headers(), WWW_AUTHENTICATE.as_str()).unwrap_or_default().to_owned();
    let body = response.text().await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED && challenge == "Bearer error=\"invalid_token\"",
        "{what}: expected 401 invalid_token, got {status} {challenge:?} {body}"
    );
    Ok(())
}

async fn assert_accepted(s: &Services, origin: &str, token: &str, what: &str) -> anyhow::Result<()> {
    let response = s.http.get(format!("{origin}/products")).bearer_auth(token).send().await?;
    expect_status(response, StatusCode::OK).await.with_context(|| what.to_owned()).map(drop)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_expired_and_other_issuer_tokens_are_refused() -> anyhow::Result<()> {
    // 1. Services trusting the shared oidc-provider, as every other test runs them.
    let s = Services::start(Options::default()).await?;
    let (sales, _) = origins(&s)?;
    assert_accepted(&s, &sales, &s.sales_token, "the trusted issuer's own token").await?;

    // Another issuer: a second oidc-provider (the same server, on another port: another `iss`, other keys),
    // granting the same client the same scopes for the same audience. Only the issuer differs.
    let other = PrivateIssuer::start()?;
    let foreign_issuer = token_from(&other.url(), "sales-client").await?;
    assert_refused(&s, &sales, &foreign_issuer, "a token from another oidc-provider").await?;

    // A token that names the trusted issuer in `iss` but is signed by a key the issuer never published.
    let impostor = DevIssuer::new("orderflow", DevClient::defaults()).bind(([127, 0, 0, 1], 0).into()).await?;
    let now = unix_now();
    let forged = impostor.sign(&json!({
        "iss": processes::issuer(), "sub": "sales-client", "client_id": "sales-client", "aud": "orderflow",
        "iat": now, "nbf": now, "exp": now + 300, "scope": "orders:read",
    }))?;
    assert_refused(&s, &sales, &forged, "a token claiming the trusted issuer, signed with a foreign key").await?;
    assert_refused(&s, &sales, "not-a-jwt", "a token that is no JWT").await?;
    drop(s);

    // 2. Expired tokens and tokens for another audience, with a valid signature of the trusted issuer:
    // oidc-provider (infra/oauth) cannot make them — its lifetime is a fixed hour and its one audience is
    // `orderflow` — so these services trust a `DevIssuer` instead: a real authorization server of its own
    // (OIDC discovery, JWKS, client-credentials `/token`, in this process) that can sign any claims. Every
    // token below differs from an accepted one in one claim only.
    let trusted = DevIssuer::new("orderflow", DevClient::defaults()).bind(([127, 0, 0, 1], 0).into()).await?;
    let issuer = trusted.issuer_url().to_owned();
    let s = Services::start(Options { issuer: Some(issuer.clone()), ..Options::default() }).await?;
    let (sales, _) = origins(&s)?;
    let claims = |changes: &[(&str, Value)]| {
        let now = unix_now();
        let mut claims = json!({
            "iss": issuer, "sub": "sales-client", "client_id": "sales-client", "aud": "orderflow",
            "iat": now - 5, "nbf": now - 5, "exp": now + 300, "scope": "orders:read orders:write",
        });
        for (name, value) in changes {
            claims[*name] = value.clone();
        }
        claims
    };
    assert_accepted(&s, &sales, &s.sales_token, "a token from the DevIssuer's /token").await?;
    assert_accepted(&s, &sales, &trusted.sign(&claims(&[]))?, "the control token").await?;
    let now = unix_now();
    for (what, changes) in [
        // The verifier allows 30 s of clock skew: two minutes is expired by any measure.
        ("an expired token", vec![("exp", json!(now - 120)), ("iat", json!(now - 420)), ("nbf", json!(now - 420))]),
        ("a token for another audience", vec![("aud", json!("billing-api"))]),
        ("a token for several other audiences", vec![("aud", json!(["billing-api", "reports"]))]),
        ("a token not valid yet", vec![("nbf", json!(now + 600)), ("iat", json!(now + 600))]),
        ("a token of another issuer signed with the trusted key", vec![("iss", json!("https://elsewhere.example"))]),
    ] {
        assert_refused(&s, &sales, &trusted.sign(&claims(&changes))?, what).await?;
    }
    // Registered claims of the wrong type, or missing, with every value otherwise acceptable: each service
    // must refuse them itself (CVE-2026-25537 let a string `nbf` through).
    let later = now + 3600;
    let admin = ("scope", json!("orders:read shipments:read admin"));
    let control = trusted.sign(&claims(std::slice::from_ref(&admin)))?;
    let (_, delivery) = origins(&s)?;
    for url in [format!("{sales}/orders"), format!("{delivery}/shipments")] {
        let response = s.http.get(&url).bearer_auth(&control).send().await?;
        expect_status(response, StatusCode::OK).await.with_context(|| format!("the control token at {url}"))?;
    }
    for (what, changes) in [
        ("a string nbf an hour ahead", vec![("nbf", json!(later.to_string()))]),
        ("a string nbf in the past", vec![("nbf", json!((now - 5).to_string()))]),
        ("a null nbf", vec![("nbf", Value::Null)]),
        ("a string exp", vec![("exp", json!(later.to_string()))]),
        ("a string iat", vec![("iat", json!(now.to_string()))]),
        ("a numeric aud", vec![("aud", json!(7))]),
        ("an aud array holding a number", vec![("aud", json!(["orderflow", 7]))]),
        ("a scope array", vec![("scope", json!(["orders:read", "shipments:read"]))]),
    ] {
        assert_refused_by_both(&s, &trusted.sign(&claims(&[vec![admin.clone()], changes].concat()))?, what).await?;
    }
    let mut no_exp = claims(std::slice::from_ref(&admin));
    no_exp.as_object_mut().context("claims are an object")?.remove("exp");
    assert_refused_by_both(&s, &trusted.sign(&no_exp)?, "a token without exp").await?;
    // And the shared oidc-provider's tokens are another issuer's here.
    let shared = token_from(&processes::issuer(), "sales-client").await?;
    assert_refused(&s, &sales, &shared, "a token from the shared oidc-provider").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rotation_at_the_issuer_is_picked_up_without_a_restart() -> anyhow::Result<()> {
    let issuer = PrivateIssuer::start()?;
    let s = Services::start(Options { issuer: Some(issuer.url()), ..Options::default() }).await?;
    let (sales, delivery) = origins(&s)?;
    assert_accepted(&s, &sales, &s.sales_token, "a token signed with the first key").await?;
    let first_kid = issuer.signing_kid().await?;

    // infra/oauth generates new keys at every start: restarting it is its key rotation.
    issuer.restart()?;
    let second_kid = issuer.signing_kid().await?;
    ensure!(first_kid != second_kid, "the restarted issuer still signs with {first_kid}");
    let token = token_from(&issuer.url(), "sales-client").await?;
    let staff = token_from(&issuer.url(), "delivery-staff").await?;

    // The verifier refetches the JWKS on an unknown `kid`, at most once per 10 s: the new key must be in
    // use within that interval (plus slack for a loaded machine), with the services still the same processes.
    let started = Instant::now();
    loop {
        let sales_status = s.http.get(format!("{sales}/products")).bearer_auth(&token).send().await?.status();
        let delivery_status = s.http.get(format!("{delivery}/shipments")).bearer_auth(&staff).send().await?.status();
        if sales_status == StatusCode::OK && delivery_status == StatusCode::OK {
            break;
        }
        ensure!(
            sales_status == StatusCode::UNAUTHORIZED || sales_status == StatusCode::OK,
            "sales answered {sales_status} while the new key was unknown"
        );
        if started.elapsed() > Duration::from_secs(25) {
            bail!("the new key ({second_kid}) was not picked up after {:?}", started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_above_the_rate_limit_gets_429_with_retry_after_and_other_clients_are_unaffected() -> anyhow::Result<()>
{
    // A private Redis, so no other run's counters for these clients can interfere.
    let redis = PrivateRedis::start()?;
    let options = Options { redis_url: Some(redis.url()), rate_limit: Some((60, 5)), ..Options::default() };
    let s = Services::start(options).await?;
    let (sales, delivery) = origins(&s)?;
    let analyst = token_from(&processes::issuer(), "analyst").await?;

    // 60 a minute with a burst of 5: five at once pass, the sixth is one too many.
    let started = Instant::now();
    for n in 1..=5 {
        let response = s.sales(Method::GET, "/products").send().await?;
        ensure!(response.status() == StatusCode::OK, "request {n} of the burst got {}", response.status());
    }
    let limited = s.sales(Method::GET, "/products").send().await?;
    let elapsed = started.elapsed();
    let headers = limited.headers().clone();
    let status = limited.status();
    let body = limited.text().await?;
    ensure!(
        status == StatusCode::TOO_MANY_REQUESTS,
        "the 6th request within {elapsed:?} got {status}: {body} (headers {headers:?})"
    );
    ensure!(body.contains("/problems/rate-limited"), "the 429 is no rate-limited problem: {body}");
    let retry_after: u64 = header(&headers, RETRY_AFTER.as_str()).context("no Retry-After")?.parse()?;
    ensure!((1..=2).contains(&retry_after), "Retry-After: {retry_after} (one request a second: 1, at most 2)");
    ensure!(header(&headers, "ratelimit-limit") == Some("5"), "RateLimit-Limit: {headers:?}");
    ensure!(header(&headers, "ratelimit-remaining") == Some("0"), "RateLimit-Remaining: {headers:?}");
    ensure!(
        header(&headers, "ratelimit-reset") == Some(retry_after.to_string().as_str()),
        "RateLimit-Reset is not Retry-After ({retry_after}): {headers:?}"
    );

    // Another client is unaffected, on either service (both count in the same Redis: 4 + 1 is its burst).
    for n in 1..=4 {
        let response = s.http.get(format!("{sales}/orders")).bearer_auth(&analyst).send().await?;
        ensure!(response.status() == StatusCode::OK, "the analyst's request {n} to Sales got {}", response.status());
    }
    let response = s.http.get(format!("{delivery}/shipments")).bearer_auth(&analyst).send().await?;
    ensure!(response.status() == StatusCode::OK, "the analyst's request to Delivery got {}", response.status());

    // Retry-After is honest: after waiting that long, the client gets through again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let response = s.sales(Method::GET, "/products").send().await?;
    ensure!(response.status() == StatusCode::OK, "after Retry-After the sales client still got {}", response.status());
    Ok(())
}

async fn readiness(s: &Services, origin: &str) -> anyhow::Result<(StatusCode, Value)> {
    let response = s.http.get(format!("{origin}/health/ready")).send().await?;
    Ok((response.status(), response.json().await?))
}

/// Proves `GET /orders/{id}` is answered from Redis: reads it (which caches it), rewrites the cached copy's
/// customer and reads it again. The order must be at rest (no transition may rewrite the cache meanwhile).
async fn read_is_served_from_cache(s: &Services, redis: &PrivateRedis, id: &str) -> anyhow::Result<()> {
    let order = expect_status(s.sales(Method::GET, &format!("/orders/{id}")).send().await?, StatusCode::OK).await?;
    let key = format!("orderflow:order:{id}");
    ensure!(redis.cli(&["exists", &key])? == "1", "{key} is not in Redis after a read");
    let customer = string(&order["customer_id"])?;
    let cached = redis.cli(&["hget", &key, "order"])?;
    ensure!(cached.contains(&customer), "the cached copy does not name {customer}: {cached}");
    let marked = cached.replace(&customer, "cust-from-the-cache");
    redis.cli(&["hset", &key, "order", &marked])?;
    let again = expect_status(s.sales(Method::GET, &format!("/orders/{id}")).send().await?, StatusCode::OK).await?;
    ensure!(again["customer_id"] == "cust-from-the-cache", "the second read did not come from the cache: {again}");
    // Put it back, so nothing after this sees the marker.
    redis.cli(&["hset", &key, "order", &cached])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_redis_mid_test_does_not_fail_requests_and_starting_it_restores_caching() -> anyhow::Result<()> {
    const SKU: &str = "SKU-SEC-REDIS";
    let redis = PrivateRedis::start()?;
    // Rate limiting on (well above this test's needs), so the limiter meets the dead Redis too.
    let options = Options { redis_url: Some(redis.url()), rate_limit: Some((6000, 1000)), ..Options::default() };
    let s = Services::start(options).await?;
    let (sales, delivery) = origins(&s)?;
    s.put_product(SKU, 1000, 100).await?;
    let first = s.place("cust-redis-1", SKU, 1).await?;
    s.wait_for_status(&first, "pending_shipment", Duration::from_secs(20)).await?;
    read_is_served_from_cache(&s, &redis, &first).await?;

    redis.kill()?;
    let down = Instant::now();
    // Reads and writes go on, straight to PostgreSQL, each promptly.
    for n in 0..3 {
        let started = Instant::now();
        let order = expect_status(s.sales(Method::GET, &format!("/orders/{first}")).send().await?, StatusCode::OK)
            .await
            .context("reading an order with Redis down")?;
        ensure!(order["customer_id"] == "cust-redis-1", "read {n} with Redis down: {order}");
        let placed = s.place(&format!("cust-redis-down-{n}"), SKU, 1).await.context("placing with Redis down")?;
        expect_status(s.sales(Method::GET, &format!("/orders/{placed}")).send().await?, StatusCode::OK).await?;
        expect_status(s.sales(Method::GET, "/orders?customer_id=cust-redis-1").send().await?, StatusCode::OK).await?;
        expect_status(s.staff(Method::GET, "/shipments").send().await?, StatusCode::OK).await?;
        ensure!(started.elapsed() < Duration::from_secs(5), "requests with Redis down took {:?}", started.elapsed());
    }
    let (status, body) = readiness(&s, &sales).await?;
    ensure!(status == StatusCode::SERVICE_UNAVAILABLE && body["checks"]["cache"] == false, "Sales ready: {body}");
    ensure!(body["checks"]["database"] == true, "only the cache is down: {body}");
    let (status, body) = readiness(&s, &delivery).await?;
    ensure!(status == StatusCode::SERVICE_UNAVAILABLE && body["checks"]["cache"] == false, "Delivery ready: {body}");
    ensure!(down.elapsed() < Duration::from_secs(30), "Redis-down phase took {:?}", down.elapsed());

    redis.spawn()?;
    eventually("Sales to be ready again", || async {
        Ok((readiness(&s, &sales).await?.0 == StatusCode::OK).then_some(()))
    })
    .await?;
    eventually("Delivery to be ready again", || async {
        Ok((readiness(&s, &delivery).await?.0 == StatusCode::OK).then_some(()))
    })
    .await?;
    // The restarted Redis is empty: a read fills it again and the next read is a hit.
    let key = format!("orderflow:order:{first}");
    ensure!(redis.cli(&["exists", &key])? == "0", "the new Redis already holds {key}");
    read_is_served_from_cache(&s, &redis, &first).await?;
    let second = s.place("cust-redis-2", SKU, 1).await?;
    s.wait_for_status(&second, "pending_shipment", Duration::from_secs(20)).await?;
    read_is_served_from_cache(&s, &redis, &second).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_response_carries_the_security_headers_and_the_docs_still_serve() -> anyhow::Result<()> {
    let s = Services::start(Options::default()).await?;
    let (sales, delivery) = origins(&s)?;
    let always =
        [("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer")];
    let api_only = [("cache-control", "no-store")];
    let mut requests = vec![
        ("an API answer", s.sales(Method::GET, "/products"), StatusCode::OK),
        ("a 404", s.sales(Method::GET, &format!("/orders/{}", Uuid::new_v4())), StatusCode::NOT_FOUND),
        ("an unknown route", s.sales(Method::GET, "/nowhere"), StatusCode::NOT_FOUND),
        ("a 401", s.http.get(format!("{sales}/orders")), StatusCode::UNAUTHORIZED),
        ("a 403", s.staff(Method::GET, "/admin/dlq"), StatusCode::FORBIDDEN),
        ("Delivery's answer", s.staff(Method::GET, "/shipments"), StatusCode::OK),
    ];
    for origin in [&sales, &delivery] {
        requests.push(("readiness", s.http.get(format!("{origin}/health/ready")), StatusCode::OK));
        requests.push(("the OpenAPI document", s.http.get(format!("{origin}/openapi.json")), StatusCode::OK));
    }
    for (what, request, expected) in requests {
        let response = request.send().await?;
        ensure!(response.status() == expected, "{what}: {} instead of {expected}", response.status());
        let headers = response.headers();
        for (name, value) in always.iter().chain(&api_only) {
            ensure!(header(headers, name) == Some(*value), "{what}: {name} is {:?}", header(headers, name));
        }
        let csp = header(headers, "content-security-policy").unwrap_or_default();
        ensure!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{what}: CSP {csp:?}");
    }
    // Swagger UI still serves: its HTML, with the inline script and styles a CSP would block, which is why
    // the docs get no CSP (and may be cached), only the headers that cannot break a page.
    for origin in [&sales, &delivery] {
        for path in ["/docs", "/docs/"] {
            let response = s.http.get(format!("{origin}{path}")).send().await?;
            ensure!(response.status() == StatusCode::OK, "{origin}{path}: {}", response.status());
            let headers = response.headers().clone();
            for (name, value) in always {
                ensure!(header(&headers, name) == Some(value), "{path}: {name} is {:?}", header(&headers, name));
            }
            ensure!(header(&headers, "content-security-policy").is_none(), "{path} has a CSP");
            let html = response.text().await?;
            ensure!(html.contains("SwaggerUIBundle") && html.contains("\"openapi\""), "{path} is no Swagger UI");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_limit_applies_to_its_route_only() -> anyhow::Result<()> {
    let redis = PrivateRedis::start()?;
    let options = Options {
        redis_url: Some(redis.url()),
        rate_limit: Some((6000, 100)),
        rate_limit_routes: Some("POST /orders=60/2"),
        ..Options::default()
    };
    let s = Services::start(options).await?;
    s.put_product("SKU-ROUTE-1", 100, 100).await?;

    for n in 1..=2 {
        let response = s.place_raw("cust-route", &[("SKU-ROUTE-1", 1)]).await?;
        ensure!(response.status() == StatusCode::CREATED, "order {n} of the burst got {}", response.status());
    }
    let limited = s.place_raw("cust-route", &[("SKU-ROUTE-1", 1)]).await?;
    ensure!(limited.status() == StatusCode::TOO_MANY_REQUESTS, "the third order got {}", limited.status());
    let headers = limited.headers().clone();
    ensure!(header(&headers, "ratelimit-limit") == Some("2"), "RateLimit-Limit is the route's: {headers:?}");
    for n in 1..=5 {
        let response = s.sales(Method::GET, "/orders?customer_id=cust-route").send().await?;
        ensure!(response.status() == StatusCode::OK, "read {n} is not held back by the route limit");
    }
    Ok(())
}
