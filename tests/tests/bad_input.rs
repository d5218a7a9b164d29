//! Hostile and broken requests: every one gets a 4xx problem+json naming the field at fault, and none
//! changes anything. Also authentication (missing, garbage, expired, wrong-audience tokens, missing scope)
//! and the endpoints that need no token.

mod support;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Harness, SKU, order_body};

const CUSTOMER: &str = "cust-bad";

/// One bad request and what it must get.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    problem_type: Option<&'static str>,
    field: Option<&'static str>,
}

impl Case {
    fn new(name: &'static str, method: Method, path: impl Into<String>, status: u16) -> Self {
        Self {
            name,
            method,
            path: path.into(),
            content_type: None,
            body: None,
            headers: Vec::new(),
            status,
            problem_type: None,
            field: None,
        }
    }

    /// `POST /orders` with `body` as JSON.
    fn order(name: &'static str, body: &Value, status: u16) -> Self {
        Self::raw_order(name, body.to_string().into_bytes(), status)
    }

    /// `POST /orders` with these bytes as `application/json`.
    fn raw_order(name: &'static str, body: Vec<u8>, status: u16) -> Self {
        Self {
            content_type: Some("application/json"),
            body: Some(body),
            ..Self::new(name, Method::POST, "/orders", status)
        }
    }

    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    fn problem(mut self, problem_type: &'static str) -> Self {
        self.problem_type = Some(problem_type);
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// A valid order body with `edit` applied.
fn order_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut body = order_body(CUSTOMER, &[(SKU, 1)]);
    edit(&mut body);
    body
}

fn remove(value: &mut Value, key: &str) {
    if let Some(object) = value.as_object_mut() {
        object.remove(key);
    }
}

fn cases() -> Vec<Case> {
    const VALIDATION: &str = "/problems/validation-error";
    let many_lines: Vec<Value> = (0..10_000).map(|_| json!({ "sku": "A", "quantity": 1 })).collect();
    let mut one_megabyte = order_body(CUSTOMER, &[(SKU, 1)]);
    one_megabyte["shipping_address"]["line2"] = json!("x".repeat(1024 * 1024));
    vec![
        Case::order("quantity of the wrong type", &order_with(|b| b["lines"][0]["quantity"] = json!("two")), 400)
            .problem(VALIDATION)
            .field("lines[0].quantity"),
        Case::order("negative quantity", &order_with(|b| b["lines"][0]["quantity"] = json!(-1)), 400)
            .problem(VALIDATION)
            .field("lines[0].quantity"),
        Case::order("zero quantity", &order_with(|b| b["lines"][0]["quantity"] = json!(0)), 400)
            .problem(VALIDATION)
            .field("lines[0].quantity"),
        Case::order("quantity above the maximum", &order_with(|b| b["lines"][0]["quantity"] = json!(10_001)), 400)
            .problem(VALIDATION)
            .field("lines[0].quantity"),
        Case::order("fractional quantity", &order_with(|b| b["lines"][0]["quantity"] = json!(1.5)), 400)
            .problem(VALIDATION)
            .field("lines[0].quantity"),
        Case::order("customer id of the wrong type", &order_with(|b| b["customer_id"] = json!(42)), 400)
            .problem(VALIDATION)
            .field("customer_id"),
        Case::order("empty customer id", &order_with(|b| b["customer_id"] = json!("")), 400)
            .problem(VALIDATION)
            .field("customer_id"),
        Case::order("blank customer id", &order_with(|b| b["customer_id"] = json!("   ")), 400)
            .problem(VALIDATION)
            .field("customer_id"),
        Case::order("customer id too long", &order_with(|b| b["customer_id"] = json!("c".repeat(65))), 400)
            .problem(VALIDATION)
            .field("customer_id"),
        Case::order("no lines", &order_with(|b| b["lines"] = json!([])), 400).problem(VALIDATION).field("lines"),
        Case::order("10,000 lines", &order_with(|b| b["lines"] = json!(many_lines)), 400)
            .problem(VALIDATION)
            .field("lines"),
        Case::order(
            "the same SKU twice",
            &order_with(|b| b["lines"] = json!([{ "sku": SKU, "quantity": 1 }, { "sku": SKU, "quantity": 2 }])),
            400,
        )
        .problem(VALIDATION)
        .field("lines[1].sku"),
        Case::order("malformed SKU", &order_with(|b| b["lines"][0]["sku"] = json!("lower case")), 400)
            .problem(VALIDATION)
            .field("lines[0].sku"),
        Case::order("unknown SKU", &order_with(|b| b["lines"][0]["sku"] = json!("NO-SUCH-SKU")), 422)
            .problem("/problems/unknown-sku")
            .field("lines"),
        Case::order(
            "country that is not a code",
            &order_with(|b| b["shipping_address"]["country"] = json!("Germany")),
            400,
        )
        .problem(VALIDATION)
        .field("shipping_address.country"),
        Case::order("lower-case country", &order_with(|b| b["shipping_address"]["country"] = json!("de")), 400)
            .problem(VALIDATION)
            .field("shipping_address.country"),
        Case::order("empty city", &order_with(|b| b["shipping_address"]["city"] = json!("")), 400)
            .problem(VALIDATION)
            .field("shipping_address.city"),
        Case::order(
            "control characters in the name",
            &order_with(|b| b["shipping_address"]["name"] = json!("A\u{7}B")),
            400,
        )
        .problem(VALIDATION)
        .field("shipping_address.name"),
        Case::order("unknown top-level field", &order_with(|b| b["coupon"] = json!("FREE")), 400).problem(VALIDATION),
        Case::order("unknown nested field", &order_with(|b| b["lines"][0]["price"] = json!(1)), 400)
            .problem(VALIDATION),
        Case::order("lines not an array", &order_with(|b| b["lines"] = json!({ "sku": SKU })), 400)
            .problem(VALIDATION)
            .field("lines"),
        Case::order("missing customer id", &order_with(|b| remove(b, "customer_id")), 400).problem(VALIDATION),
        Case::order("missing lines", &order_with(|b| remove(b, "lines")), 400).problem(VALIDATION),
        Case::order("missing address", &order_with(|b| remove(b, "shipping_address")), 400).problem(VALIDATION),
        Case::order("missing country", &order_with(|b| remove(&mut b["shipping_address"], "country")), 400)
            .problem(VALIDATION),
        Case::order("a JSON array", &json!([1, 2, 3]), 400).problem(VALIDATION),
        Case::order("JSON null", &Value::Null, 400).problem(VALIDATION),
        Case::raw_order("invalid JSON", br#"{"customer_id": "cust-bad", "lines": ["#.to_vec(), 400).problem(VALIDATION),
        Case::raw_order("trailing garbage", format!("{} x", order_with(|_| ())).into_bytes(), 400).problem(VALIDATION),
        Case::raw_order("empty body", Vec::new(), 400),
        Case::raw_order("a 1 MB body", one_megabyte.to_string().into_bytes(), 413)
            .problem("/problems/payload-too-large"),
        Case { content_type: None, ..Case::order("no content type", &order_with(|_| ()), 415) },
        Case { content_type: Some("text/plain"), ..Case::order("wrong content type", &order_with(|_| ()), 415) },
        Case::order("idempotency key too long", &order_with(|_| ()), 400)
            .header("Idempotency-Key", "k".repeat(256))
            .problem(VALIDATION)
            .field("Idempotency-Key"),
        Case::order("idempotency key with spaces", &order_with(|_| ()), 400)
            .header("Idempotency-Key", "a key")
            .problem(VALIDATION)
            .field("Idempotency-Key"),
        Case::new("order id that is not a UUID", Method::GET, "/orders/not-a-uuid", 400)
            .problem(VALIDATION)
            .field("id"),
        Case::new("events of an id that is not a UUID", Method::GET, "/orders/not-a-uuid/events", 400)
            .problem(VALIDATION)
            .field("id"),
        Case::new("cancel of an id that is not a UUID", Method::POST, "/orders/not-a-uuid/cancel", 400)
            .problem(VALIDATION)
            .field("id"),
        Case::new("an order that does not exist", Method::GET, format!("/orders/{}", uuid::Uuid::now_v7()), 404)
            .problem("/problems/not-found"),
        Case::new(
            "cancel of an order that does not exist",
            Method::POST,
            format!("/orders/{}/cancel", uuid::Uuid::now_v7()),
            404,
        )
        .problem("/problems/not-found"),
        Case::new("a cursor we never issued", Method::GET, "/orders?cursor=garbage!!", 400)
            .problem(VALIDATION)
            .field("cursor"),
        Case::new("a well-encoded cursor holding no id", Method::GET, "/orders?cursor=bm90LWFuLWlk", 400)
            .problem(VALIDATION)
            .field("cursor"),
        Case::new("an unknown status filter", Method::GET, "/orders?status=lost", 400)
            .problem(VALIDATION)
            .field("status"),
        Case::new("limit 0", Method::GET, "/orders?limit=0", 400).problem(VALIDATION).field("limit"),
        Case::new("limit 1000", Method::GET, "/orders?limit=1000", 400).problem(VALIDATION).field("limit"),
        Case::new("limit -1", Method::GET, "/orders?limit=-1", 400).problem(VALIDATION).field("limit"),
        Case::new("limit not a number", Method::GET, "/orders?limit=ten", 400).problem(VALIDATION).field("limit"),
        Case::new("a product SKU that is malformed", Method::GET, "/products/lower-case", 400)
            .problem(VALIDATION)
            .field("sku"),
        Case::new("an unknown route", Method::GET, "/no-such-thing", 404).problem("/problems/not-found"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_a_problem_naming_the_field_and_change_nothing() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;

    let mut failures = Vec::new();
    for case in cases() {
        let mut request = h.sales(case.method.clone(), &case.path);
        if let Some(content_type) = case.content_type {
            request = request.header("Content-Type", content_type);
        }
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        if let Some(body) = case.body.clone() {
            request = request.body(body);
        }
        let response = request.send().await.with_context(|| case.name)?;
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = response.text().await?;
        let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut wrong = Vec::new();
        if status != case.status {
            wrong.push(format!("status {status}, expected {}", case.status));
        }
        if !(400..500).contains(&status) {
            wrong.push("not a 4xx".to_owned());
        }
        if content_type != "application/problem+json" {
            wrong.push(format!("content type {content_type:?}"));
        }
        if problem["status"] != status {
            wrong.push(format!("problem status {}", problem["status"]));
        }
        if !problem["type"].as_str().is_some_and(|t| t.starts_with("/problems/")) {
            wrong.push(format!("problem type {}", problem["type"]));
        }
        if let Some(expected) = case.problem_type
            && problem["type"] != expected
        {
            wrong.push(format!("problem type {}, expected {expected}", problem["type"]));
        }
        if let Some(expected) = case.field
            && problem["field"] != expected
        {
            wrong.push(format!("field {}, expected {expected}", problem["field"]));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {} — body: {}", case.name, wrong.join("; "), truncate(&text)));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));

    assert!(h.orders_of(CUSTOMER).await?.is_empty(), "no order was stored");
    let all = h.sales(Method::GET, "/orders").send().await?.json::<Value>().await?;
    assert_eq!(all["items"], json!([]), "no order at all was stored");
    assert_eq!(h.stock(SKU).await?, (10, 0), "nothing was reserved");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_sku_problem_lists_the_skus() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let body = order_body(CUSTOMER, &[(SKU, 1), ("NOPE-2", 1), ("NOPE-1", 1)]);
    let response = h.place_raw(&body, None).await?;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem = response.json::<Value>().await?;
    assert_eq!(problem["type"], "/problems/unknown-sku");
    let mut skus: Vec<&str> = problem["skus"].as_array().context("no skus")?.iter().filter_map(Value::as_str).collect();
    skus.sort_unstable();
    assert_eq!(skus, ["NOPE-1", "NOPE-2"]);
    assert_eq!(h.stock(SKU).await?, (10, 0));
    assert!(h.orders_of(CUSTOMER).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_field_is_named_in_the_problem() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut failures = Vec::new();
    for (missing, field) in [
        (order_with(|b| remove(b, "customer_id")), "customer_id"),
        (order_with(|b| remove(b, "lines")), "lines"),
        (order_with(|b| remove(&mut b["lines"][0], "quantity")), "lines[0].quantity"),
        (order_with(|b| remove(&mut b["shipping_address"], "country")), "shipping_address.country"),
    ] {
        let problem = h.place_raw(&missing, None).await?.json::<Value>().await?;
        if problem["field"] != field {
            failures.push(format!("missing {field}: field {} ({})", problem["field"], problem["detail"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_field_is_named_in_the_problem() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let mut failures = Vec::new();
    for (body, field) in [
        (order_with(|b| b["coupon"] = json!("FREE")), "coupon"),
        (order_with(|b| b["lines"][0]["price"] = json!(1)), "lines[0].price"),
    ] {
        let problem = h.place_raw(&body, None).await?.json::<Value>().await?;
        if problem["field"] != field {
            failures.push(format!("unknown {field}: field {} ({})", problem["field"], problem["detail"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

fn www_authenticate(response: &reqwest::Response) -> String {
    response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_without_a_valid_token_are_unauthorized() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let issuer = h.stack.issuer.issuer_url().to_owned();
    let now = chrono::Utc::now().timestamp();
    let claims = |aud: &str, iat: i64, exp: i64| {
        json!({
            "iss": issuer, "sub": "sales-client", "client_id": "sales-client", "aud": aud,
            "iat": iat, "nbf": iat, "exp": exp, "scope": "orders:read orders:write",
        })
    };
    let expired = h.stack.issuer.sign(&claims("orderflow", now - 7200, now - 3600))?;
    let other_audience = h.stack.issuer.sign(&claims("someone-else", now, now + 3600))?;
    let premature = h.stack.issuer.sign(&claims("orderflow", now + 3600, now + 7200))?;
    let mut other_issuer_claims = claims("orderflow", now, now + 3600);
    other_issuer_claims["iss"] = json!("http://127.0.0.1:1");
    let other_issuer = h.stack.issuer.sign(&other_issuer_claims)?;
    let valid = h.sales_token.clone();
    let tampered = format!("{}x", &valid[..valid.len() - 1]);

    let body = order_body(CUSTOMER, &[(SKU, 1)]);
    let tokens: [(&str, Option<String>); 7] = [
        ("no token", None),
        ("garbage token", Some("not-a-jwt".to_owned())),
        ("expired token", Some(expired)),
        ("token for another audience", Some(other_audience)),
        ("token not yet valid", Some(premature)),
        ("token from another issuer", Some(other_issuer)),
        ("token with a bad signature", Some(tampered)),
    ];
    for (name, token) in tokens {
        for (method, path) in [(Method::POST, "/orders"), (Method::GET, "/orders")] {
            let mut request = h.http.request(method.clone(), h.sales_url(path));
            if method == Method::POST {
                request = request.json(&body);
            }
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await?;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name} on {method} {path}");
            assert!(www_authenticate(&response).contains("invalid_token"), "{name}: {}", www_authenticate(&response));
            let content_type = response.headers().get("content-type").context("no content type")?.to_str()?.to_owned();
            assert_eq!(content_type, "application/problem+json", "{name}");
        }
        let response =
            h.http.get(h.delivery_url("/shipments")).bearer_auth(token.as_deref().unwrap_or("")).send().await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name} on Delivery");
    }
    assert!(h.orders_of(CUSTOMER).await?.is_empty());
    assert_eq!(h.stock(SKU).await?, (10, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_without_the_scope_is_forbidden() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.put_product(SKU, 1999, 10).await?;
    let body = order_body(CUSTOMER, &[(SKU, 1)]);

    let response = h.http.post(h.sales_url("/orders")).bearer_auth(&h.staff_token).json(&body).send().await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(www_authenticate(&response).contains("insufficient_scope"), "{}", www_authenticate(&response));
    let problem = response.json::<Value>().await?;
    assert_eq!(problem["status"], 403);

    let analyst = support::fetch_token(&h.http, &h.stack.issuer.token_url(), "analyst", "dev-secret-analyst").await?;
    let response = h.http.post(h.sales_url("/orders")).bearer_auth(&analyst).json(&body).send().await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "analysts read, they do not order");
    let response = h
        .http
        .put(h.sales_url(&format!("/products/{SKU}")))
        .bearer_auth(&h.sales_token)
        .json(&json!({ "name": "Cheap", "price": { "amount_minor": 1, "currency": "EUR" }, "stock": 1 }))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "only admins change the catalogue");
    let response = h.http.get(h.delivery_url("/shipments")).bearer_auth(&h.sales_token).send().await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "customers do not see the shipments list");

    assert!(h.orders_of(CUSTOMER).await?.is_empty());
    let product = h.product(SKU).await?;
    assert_eq!(product["price"]["amount_minor"], 1999);
    assert_eq!(product["stock"], 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_metrics_and_docs_need_no_token() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    for base in [h.sales_url(""), h.delivery_url("")] {
        for path in ["/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs"] {
            let response = h.http.get(format!("{base}{path}")).send().await?;
            assert_eq!(response.status(), StatusCode::OK, "{base}{path}");
        }
        let spec = h.http.get(format!("{base}/openapi.json")).send().await?.json::<Value>().await?;
        assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "{base}: {}", spec["openapi"]);
    }
    Ok(())
}

/// The last page of a list carries `"next_cursor": null`, so each document says the field may be null:
/// a client generated from it must accept the last page. And every `limit` states its range, so a
/// generated client or fuzzer does not send a page size the server refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_documents_say_a_lists_next_cursor_may_be_null_and_what_limit_accepts() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    for base in [h.sales_url(""), h.delivery_url("")] {
        let spec = h.http.get(format!("{base}/openapi.json")).send().await?.json::<Value>().await?;
        let schemas = spec["components"]["schemas"].as_object().context("the document's schemas")?;
        let lists: Vec<(&String, &Value)> =
            schemas.iter().filter(|(_, schema)| schema["properties"].get("next_cursor").is_some()).collect();
        assert!(!lists.is_empty(), "{base}: no list schema");
        for (name, schema) in lists {
            let cursor = &schema["properties"]["next_cursor"];
            assert_eq!(cursor["nullable"], Value::Bool(true), "{base}: {name}.next_cursor is {cursor}");
        }
        let operations = spec["paths"]
            .as_object()
            .context("the document's paths")?
            .values()
            .flat_map(|path| path.as_object().into_iter().flat_map(|methods| methods.values()));
        let limits: Vec<&Value> = operations
            .flat_map(|operation| operation["parameters"].as_array().into_iter().flatten())
            .filter(|parameter| parameter["name"] == "limit")
            .collect();
        assert!(!limits.is_empty(), "{base}: no limit parameter");
        for limit in limits {
            let schema = &limit["schema"];
            assert_eq!(schema["minimum"].as_f64(), Some(1.0), "{base}: limit {schema}");
            assert!(schema["maximum"].as_f64().is_some_and(|max| max >= 100.0), "{base}: limit {schema}");
        }
    }
    let products = h.http.get(h.sales_url("/products?limit=100")).bearer_auth(&h.admin_token).send().await?;
    let page: Value = products.json().await?;
    assert_eq!(page["next_cursor"], Value::Null, "the last page: {page}");
    Ok(())
}

/// Sends a request of `head` and a `body` of its announced length over a fresh connection, writing all of
/// it before reading anything (as Python's urllib does), and returns the status line of the answer.
async fn status_after_writing_everything(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await.context("writing the head")?;
    stream.write_all(body).await.context("writing the body (a broken pipe here means the server gave up)")?;
    let mut answer = Vec::new();
    let mut chunk = [0_u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.context("reading the answer")?;
        anyhow::ensure!(n > 0, "the connection closed before an answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_writes_a_whole_oversized_body_before_reading_always_gets_the_413() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let body = vec![b'x'; 2 * 1024 * 1024];
    let announced = format!(
        "POST /orders HTTP/1.1\r\nHost: sales\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        h.sales_token,
        body.len()
    );
    let chunked_head = format!(
        "POST /orders HTTP/1.1\r\nHost: sales\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        h.sales_token
    );
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    for attempt in 1..=20 {
        for (what, head, bytes) in [("announced", &announced, &body), ("chunked", &chunked_head, &chunked)] {
            let status = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                status_after_writing_everything(h.stack.sales.addr(), head, bytes),
            )
            .await
            .with_context(|| format!("attempt {attempt}, {what}: no answer in 20 s"))?
            .with_context(|| format!("attempt {attempt}, {what}"))?;
            anyhow::ensure!(status.starts_with("HTTP/1.1 413"), "attempt {attempt}, {what}: {status}");
        }
    }
    Ok(())
}
