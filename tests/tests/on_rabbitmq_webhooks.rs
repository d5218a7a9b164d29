//! Webhooks on the real servers: both binaries, and a receiver in the test. Deliveries verify with the
//! secret shown at registration; a receiver that was down gets every event once it is back, each order's
//! events in order; one that keeps failing ends dead-lettered with every attempt in its log and is
//! delivered again on request; a URL on a private address is refused.

mod processes;
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use orderflow_adapters::contract::fixtures::LIFECYCLE_AUDIT;
use poem::http::StatusCode as PoemStatus;
use poem::web::Data;
use poem::{EndpointExt, Request, Route, Server, handler, post};
use processes::{Options, Services};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{eventually, expect_status, string};

const SKU: &str = "SKU-HOOK-1";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// What the receiver answers (its status) and what it got.
#[derive(Default)]
struct Receiver {
    status: AtomicU16,
    received: Mutex<Vec<Received>>,
}

#[handler]
async fn hook(request: &Request, body: String, receiver: Data<&Arc<Receiver>>) -> PoemStatus {
    let header = |name: &str| request.header(name).unwrap_or_default().to_owned();
    let status = receiver.status.load(Ordering::SeqCst);
    if status == 200 {
        let received = Received {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
        };
        receiver.received.lock().map(|mut r| r.push(received)).ok();
    }
    PoemStatus::from_u16(status).unwrap_or(PoemStatus::INTERNAL_SERVER_ERROR)
}

/// Starts a receiver answering `status`; returns it and its URL.
async fn receiver(status: u16) -> anyhow::Result<(Arc<Receiver>, String)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let state = Arc::new(Receiver { status: AtomicU16::new(status), ..Receiver::default() });
    let app = Route::new().at("/hook", post(hook)).data(state.clone());
    tokio::spawn(Server::new(poem::listener::TcpListener::bind(format!("127.0.0.1:{port}"))).run(app));
    let url = format!("http://127.0.0.1:{port}/hook");
    eventually("the receiver to listen", || async {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok().then_some(()))
    })
    .await?;
    Ok((state, url))
}

/// Whether `received` is signed with `secret` as Standard Webhooks say.
fn verifies(secret: &str, received: &Received) -> anyhow::Result<bool> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").context("a whsec_ secret")?)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let signed = format!("{}.{}.{}", received.id, received.timestamp, received.body);
    let Some(tag) = received.signature.strip_prefix("v1,") else { return Ok(false) };
    Ok(ring::hmac::verify(&key, signed.as_bytes(), &STANDARD.decode(tag)?).is_ok())
}

fn options(ladder: &'static str) -> Options {
    Options {
        autopilot: Some(("100ms", "100ms")),
        env: vec![("WEBHOOK_ALLOW_LOOPBACK", "true".to_owned()), ("WEBHOOK_RETRY_DELAYS", ladder.to_owned())],
        ..Options::default()
    }
}

async fn register(s: &Services, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(s.sales_admin(Method::POST, "/admin/webhooks").json(&body).send().await?)
}

async fn deliveries(s: &Services, endpoint: &str) -> anyhow::Result<Vec<Value>> {
    let response = s.sales_admin(Method::GET, &format!("/admin/webhooks/{endpoint}/deliveries")).send().await?;
    Ok(expect_status(response, StatusCode::OK).await?["items"].as_array().context("items")?.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_verify_with_the_secret_and_a_receiver_down_for_a_while_gets_each_order_s_events_in_order()
-> anyhow::Result<()> {
    let s = Services::start(options("300ms,600ms,1200ms,2400ms,4800ms")).await?;
    s.put_product(SKU, 500, 100).await?;
    let (receiver, url) = receiver(503).await?;
    let created = expect_status(register(&s, json!({ "url": url })).await?, StatusCode::CREATED).await?;
    let secret = string(&created["secret"])?;
    let listed = expect_status(s.sales_admin(Method::GET, "/admin/webhooks").send().await?, StatusCode::OK).await?;
    assert_eq!(listed["items"][0]["url"], url.as_str());
    assert!(listed["items"][0].get("secret").is_none(), "the secret is shown once: {listed}");

    let orders = s.place_many(5, "hooked", SKU).await?;
    s.wait_all_delivered(&orders, Duration::from_secs(30)).await?;
    receiver.status.store(200, Ordering::SeqCst);

    let received = eventually("every event of every order", || async {
        let received = receiver.received.lock().map(|r| r.clone()).unwrap_or_default();
        Ok((received.len() >= orders.len() * LIFECYCLE_AUDIT.len()).then_some(received))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received.lock().map(|r| r.len()).unwrap_or_default(), orders.len() * LIFECYCLE_AUDIT.len());
    let mut trails: HashMap<String, Vec<String>> = HashMap::new();
    for delivery in &received {
        ensure!(verifies(&secret, delivery)?, "the signature verifies with the secret: {delivery:?}");
        let body: Value = serde_json::from_str(&delivery.body)?;
        assert!(body["timestamp"].is_string(), "{body}");
        trails.entry(string(&body["data"]["order_id"])?).or_default().push(string(&body["type"])?);
    }
    for order in &orders {
        assert_eq!(
            trails.get(order).map(Vec::as_slice),
            Some(&LIFECYCLE_AUDIT.map(str::to_owned)[..]),
            "order {order}"
        );
    }
    let ids: std::collections::HashSet<_> = received.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), received.len(), "each delivery has its own webhook-id");

    let log = deliveries(&s, &string(&created["id"])?).await?;
    assert!(log.iter().all(|d| d["status"] == "delivered"), "{log:?}");
    assert!(
        log.iter().any(|d| d["attempts"].as_array().is_some_and(|a| a.len() > 1 && a[0]["status_code"] == 503)),
        "the log shows the attempts the receiver refused: {log:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_endpoint_dead_letters_with_each_attempt_logged_and_a_private_url_is_refused() -> anyhow::Result<()> {
    let s = Services::start(options("200ms,400ms,800ms")).await?;
    s.put_product(SKU, 500, 100).await?;

    let private = register(&s, json!({ "url": "http://10.1.2.3/hook" })).await?;
    let problem = expect_status(private, StatusCode::UNPROCESSABLE_ENTITY).await?;
    assert_eq!(problem["type"], "/problems/webhook-url-refused");
    assert_eq!(problem["field"], "url");

    let (receiver, url) = receiver(500).await?;
    let body = json!({ "url": url, "event_types": ["orderflow.order.paid.v1"] });
    let endpoint = string(&expect_status(register(&s, body).await?, StatusCode::CREATED).await?["id"])?;
    let order = s.place("failing", SKU, 1).await?;
    let dead = eventually("the delivery to be dead-lettered", || async {
        let log = deliveries(&s, &endpoint).await?;
        Ok(log.into_iter().find(|d| d["status"] == "dead_lettered"))
    })
    .await?;
    assert_eq!(dead["order_id"], order.as_str());
    assert_eq!(dead["event_type"], "orderflow.order.paid.v1", "only the subscribed type");
    let attempts = dead["attempts"].as_array().context("attempts")?;
    assert_eq!(attempts.len(), 4, "the first try and three retries: {dead}");
    assert!(attempts.iter().all(|a| a["status_code"] == 500), "{dead}");
    assert_eq!(deliveries(&s, &endpoint).await?.len(), 1, "no other event type was owed");

    receiver.status.store(200, Ordering::SeqCst);
    let path = format!("/admin/webhooks/{endpoint}/deliveries/{}/redeliver", string(&dead["id"])?);
    expect_status(s.sales_admin(Method::POST, &path).send().await?, StatusCode::ACCEPTED).await?;
    eventually("the redelivery", || async {
        Ok(receiver.received.lock().map(|r| r.len()).unwrap_or_default().eq(&1).then_some(()))
    })
    .await?;

    let removed = s.sales_admin(Method::DELETE, &format!("/admin/webhooks/{endpoint}")).send().await?;
    expect_status(removed, StatusCode::NO_CONTENT).await?;
    let gone = s.sales_admin(Method::GET, &format!("/admin/webhooks/{endpoint}/deliveries")).send().await?;
    expect_status(gone, StatusCode::NOT_FOUND).await?;
    Ok(())
}
