//! Shared helpers of the end-to-end tests: start the dev stack, fetch tokens from the issuer's real
//! `/token` endpoint, seed products, place orders, and poll for eventual state within a bounded deadline.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use orderflow::dev::{DevOptions, DevStack};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

/// How long any eventual state may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The SKU most tests order.
pub const SKU: &str = "SKU-TEST-1";

/// A running stack plus an HTTP client and one token per dev client.
pub struct Harness {
    /// The stack under test.
    pub stack: DevStack,
    /// One client for every request.
    pub http: reqwest::Client,
    /// `sales-client`: orders:read orders:write.
    pub sales_token: String,
    /// `delivery-staff`: shipments:read shipments:write.
    pub staff_token: String,
    /// `admin`: admin and every other scope.
    pub admin_token: String,
}

impl Harness {
    /// Starts a stack with the test defaults.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(DevOptions::for_tests()).await
    }

    /// Starts a stack with `options` and fetches a token for each client we use.
    pub async fn start_with(options: DevOptions) -> anyhow::Result<Self> {
        let stack = DevStack::start(options).await.context("starting the dev stack")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let token_url = stack.issuer.token_url();
        let sales_token = fetch_token(&http, &token_url, "sales-client", "dev-secret-sales").await?;
        let staff_token = fetch_token(&http, &token_url, "delivery-staff", "dev-secret-delivery").await?;
        let admin_token = fetch_token(&http, &token_url, "admin", "dev-secret-admin").await?;
        Ok(Self { stack, http, sales_token, staff_token, admin_token })
    }

    /// `http://{sales addr}{path}`.
    pub fn sales_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.stack.sales.addr())
    }

    /// `http://{delivery addr}{path}`.
    pub fn delivery_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.stack.delivery.addr())
    }

    /// A Sales request authenticated as `sales-client`.
    pub fn sales(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.sales_url(path)).bearer_auth(&self.sales_token)
    }

    /// A Delivery request authenticated as `delivery-staff`.
    pub fn staff(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.delivery_url(path)).bearer_auth(&self.staff_token)
    }

    /// Creates or updates a product (as admin) priced `price_minor` EUR with `stock` units.
    pub async fn put_product(&self, sku: &str, price_minor: i64, stock: i64) -> anyhow::Result<()> {
        let response = self
            .http
            .put(self.sales_url(&format!("/products/{sku}")))
            .bearer_auth(&self.admin_token)
            .json(&json!({
                "name": format!("Test product {sku}"),
                "price": { "amount_minor": price_minor, "currency": "EUR" },
                "stock": stock,
            }))
            .send()
            .await?;
        expect_status(response, StatusCode::OK).await.map(drop)
    }

    /// The product as `GET /products/{sku}` shows it (with `stock` and `reserved`).
    pub async fn product(&self, sku: &str) -> anyhow::Result<Value> {
        let response = self.sales(Method::GET, &format!("/products/{sku}")).send().await?;
        expect_status(response, StatusCode::OK).await
    }

    /// `(stock, reserved)` of a product.
    pub async fn stock(&self, sku: &str) -> anyhow::Result<(u64, u64)> {
        let product = self.product(sku).await?;
        Ok((number(&product["stock"])?, number(&product["reserved"])?))
    }

    /// Sends `POST /orders` as `sales-client` and returns the raw response.
    pub async fn place_raw(&self, body: &Value, key: Option<&str>) -> anyhow::Result<Response> {
        let mut request = self.sales(Method::POST, "/orders").json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        Ok(request.send().await?)
    }

    /// Places an order for `quantity` of `sku` and returns the created order.
    pub async fn place(&self, customer: &str, sku: &str, quantity: i64) -> anyhow::Result<Value> {
        let response = self.place_raw(&order_body(customer, &[(sku, quantity)]), None).await?;
        expect_status(response, StatusCode::CREATED).await
    }

    /// `GET /orders/{id}`.
    pub async fn order(&self, id: &str) -> anyhow::Result<Value> {
        let response = self.sales(Method::GET, &format!("/orders/{id}")).send().await?;
        expect_status(response, StatusCode::OK).await
    }

    /// The orders of `customer` (first page).
    pub async fn orders_of(&self, customer: &str) -> anyhow::Result<Vec<Value>> {
        let response = self.sales(Method::GET, "/orders").query(&[("customer_id", customer)]).send().await?;
        let page = expect_status(response, StatusCode::OK).await?;
        page["items"].as_array().cloned().context("`items` is not an array")
    }

    /// The event types of the order's timeline, oldest first.
    pub async fn timeline(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let response = self.sales(Method::GET, &format!("/orders/{id}/events")).send().await?;
        let timeline = expect_status(response, StatusCode::OK).await?;
        let items = timeline["items"].as_array().context("`items` is not an array")?;
        items.iter().map(|e| e["type"].as_str().map(str::to_owned).context("an event without `type`")).collect()
    }

    /// `POST /orders/{id}/cancel` as the customer; the raw response.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<Response> {
        Ok(self.sales(Method::POST, &format!("/orders/{id}/cancel")).send().await?)
    }

    /// Polls the order until its status is `status`; fails with the last status seen at the deadline.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> anyhow::Result<Value> {
        let found = eventually(&format!("order {id} to become {status}"), || async move {
            let order = self.order(id).await?;
            Ok((order["status"] == status).then_some(order))
        })
        .await;
        match found {
            Ok(order) => Ok(order),
            Err(error) => {
                let last = self.order(id).await.map(|o| o["status"].clone()).unwrap_or_default();
                Err(error.context(format!("the order's last status was {last}")))
            }
        }
    }

    /// Waits for Delivery to create the order's shipment and returns it.
    pub async fn shipment_of(&self, order_id: &str) -> anyhow::Result<Value> {
        eventually(&format!("a shipment for order {order_id}"), || async move {
            let response = self.staff(Method::GET, &format!("/shipments/by-order/{order_id}")).send().await?;
            match response.status() {
                StatusCode::OK => Ok(Some(response.json::<Value>().await?)),
                StatusCode::NOT_FOUND => Ok(None),
                other => bail!("GET /shipments/by-order answered {other}: {}", response.text().await?),
            }
        })
        .await
    }

    /// Polls the order's shipment until its status is `status`.
    pub async fn wait_for_shipment_status(&self, order_id: &str, status: &str) -> anyhow::Result<Value> {
        eventually(&format!("the shipment of {order_id} to become {status}"), || async move {
            let response = self.staff(Method::GET, &format!("/shipments/by-order/{order_id}")).send().await?;
            if response.status() != StatusCode::OK {
                return Ok(None);
            }
            let shipment = response.json::<Value>().await?;
            Ok((shipment["status"] == status).then_some(shipment))
        })
        .await
    }

    /// Staff hand the shipment to a carrier.
    pub async fn ship(&self, shipment_id: &str) -> anyhow::Result<Value> {
        let response = self
            .staff(Method::POST, &format!("/shipments/{shipment_id}/ship"))
            .json(&json!({ "carrier": "DHL", "tracking_number": "TRACK-0001" }))
            .send()
            .await?;
        expect_status(response, StatusCode::OK).await
    }

    /// Staff confirm the delivery.
    pub async fn deliver(&self, shipment_id: &str) -> anyhow::Result<Value> {
        let response = self.staff(Method::POST, &format!("/shipments/{shipment_id}/deliver")).send().await?;
        expect_status(response, StatusCode::OK).await
    }

    /// Places an order and waits until it is paid and Delivery has its shipment: `(order id, shipment id)`.
    pub async fn paid_order_with_shipment(
        &self,
        customer: &str,
        sku: &str,
        quantity: i64,
    ) -> anyhow::Result<(String, String)> {
        let order = self.place(customer, sku, quantity).await?;
        let id = string(&order["id"])?;
        self.wait_for_status(&id, "pending_shipment").await?;
        let shipment = self.shipment_of(&id).await?;
        Ok((id, string(&shipment["id"])?))
    }
}

/// A client-credentials token from the issuer's `/token` endpoint (HTTP Basic client authentication).
pub async fn fetch_token(http: &reqwest::Client, token_url: &str, id: &str, secret: &str) -> anyhow::Result<String> {
    let response = http
        .post(token_url)
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .context("calling /token")?;
    let body = expect_status(response, StatusCode::OK).await?;
    string(&body["access_token"])
}

/// A binary of this workspace, next to the test executable's directory (`target/debug`); the test
/// command builds every binary before the tests run.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|deps| deps.parent()).context("no target directory")?;
    let path = dir.join(name);
    ensure!(path.exists(), "{} is not built: run `cargo build --workspace --bins` first", path.display());
    Ok(path)
}

/// A valid `POST /orders` body.
pub fn order_body(customer: &str, lines: &[(&str, i64)]) -> Value {
    json!({
        "customer_id": customer,
        "lines": lines.iter().map(|(sku, quantity)| json!({ "sku": sku, "quantity": quantity })).collect::<Vec<_>>(),
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 Analytical Street",
            "city": "London",
            "postal_code": "NW1 6XE",
            "country": "GB",
        },
    })
}

/// Checks the status and returns the JSON body; the error shows the body otherwise.
pub async fn expect_status(response: Response, expected: StatusCode) -> anyhow::Result<Value> {
    let status = response.status();
    let url = response.url().clone();
    let text = response.text().await?;
    ensure!(status == expected, "{url} answered {status}, expected {expected}: {text}");
    if text.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_str(&text).with_context(|| format!("{url}: {text}"))
    }
}

/// Calls `probe` until it yields `Some`, every 25 ms, for at most [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    eventually_within(DEADLINE, Duration::from_millis(25), what, probe).await
}

/// Calls `probe` until it yields `Some`, every `every`, for at most `limit`.
pub async fn eventually_within<T, F, Fut>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A JSON string value.
pub fn string(value: &Value) -> anyhow::Result<String> {
    value.as_str().map(str::to_owned).with_context(|| format!("expected a string, got {value}"))
}

/// A JSON non-negative integer.
pub fn number(value: &Value) -> anyhow::Result<u64> {
    value.as_u64().with_context(|| format!("expected a non-negative integer, got {value}"))
}

/// How long one run of the `orderflow` CLI may take before the test fails (and the process is killed).
const CLI_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `orderflow args…` to completion without the variables `unset` in its environment (so the flags a
/// test passes are all it is told), failing when it takes longer than [`CLI_DEADLINE`].
pub async fn run_cli(args: &[&str], unset: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut command = tokio::process::Command::new(workspace_binary("orderflow")?);
    command.args(args).env("RUST_BACKTRACE", "0").stdin(std::process::Stdio::null()).kill_on_drop(true);
    for name in unset {
        command.env_remove(name);
    }
    tokio::time::timeout(CLI_DEADLINE, command.output())
        .await
        .with_context(|| format!("`orderflow {}` did not finish within {CLI_DEADLINE:?}", args.join(" ")))?
        .context("running orderflow")
}

/// Runs `orderflow args…` as [`run_cli`] does, expecting it to succeed; returns what it printed.
pub async fn cli_output(args: &[&str], unset: &[&str]) -> anyhow::Result<String> {
    let output = run_cli(args, unset).await?;
    ensure!(
        output.status.success(),
        "`orderflow {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}
