//! The `WebhookStore` contract, on a Sales store that implements it: every order event a change records
//! is owed to each enabled endpoint subscribed to its type, and deliveries are taken one order at a time
//! per endpoint, in order, leased, retried, given up, redelivered. Each check takes a fresh, empty store.

use std::sync::Arc;
use std::time::Duration;

use orderflow_domain::{Order, PaymentOutcome};
use orderflow_ports::sales::{PlaceOutcome, SalesStore};
use orderflow_ports::webhooks::{Attempt, DeliveryStatus, DueDelivery, Settlement, WebhookEndpoint, WebhookStore};
use uuid::Uuid;

use super::fixtures::{OrderDraft, change_of, eur, later, name, now, sku};

const LEASE: Duration = Duration::from_secs(30);
const PLACED: &str = "orderflow.order.placed.v1";
const PAID: &str = "orderflow.order.paid.v1";

async fn endpoint<S: WebhookStore>(store: &S, types: Option<&[&str]>) -> WebhookEndpoint {
    let endpoint = WebhookEndpoint {
        id: Uuid::now_v7(),
        url: "http://127.0.0.1:1/hook".to_owned(),
        event_types: types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
        secret: "whsec_c2VjcmV0".to_owned(),
        created_at: now(),
        failing_since: None,
        disabled: None,
    };
    store.add_endpoint(&endpoint).await.expect("the endpoint is stored");
    endpoint
}

/// Places an order and records its payment: two events, `placed` then `paid`.
async fn paid_order<S: SalesStore>(store: &S, customer: &str) -> Order {
    store.put_product(sku("W-1"), name("Hook"), eur(100), 100).await.expect("product stored");
    let placement = OrderDraft::new(customer).line("W-1", 1).placement();
    let PlaceOutcome::Created(order) = store.place_order(placement).await.expect("placed") else {
        panic!("a new order was replayed")
    };
    let pay = change_of(&order, order.clone().settle_payment(&PaymentOutcome::Completed, now()), now());
    store.apply(pay.clone()).await.expect("paid");
    pay.order
}

async fn take<S: WebhookStore>(store: &S) -> Vec<DueDelivery> {
    store.take_due(later(now(), 1), LEASE, 100).await.expect("due deliveries read")
}

fn attempt(status_code: Option<u16>) -> Attempt {
    Attempt { at: now(), status_code, error: status_code.is_none().then(|| "connection refused".to_owned()) }
}

/// An order event is owed to every enabled endpoint subscribed to its type, with a body of its type,
/// time and data; an endpoint filtering on types gets only those.
pub async fn each_order_event_is_owed_to_every_endpoint_subscribed_to_it<S: SalesStore + WebhookStore>(store: Arc<S>) {
    let all = endpoint(store.as_ref(), None).await;
    let paid_only = endpoint(store.as_ref(), Some(&[PAID])).await;

    let order = paid_order(store.as_ref(), "hooked").await;

    let to_all = store.deliveries(all.id, 10).await.expect("read").expect("the endpoint exists");
    let types: Vec<&str> = to_all.iter().rev().map(|d| d.event_type.as_str()).collect();
    assert_eq!(types, [PLACED, PAID], "every event, newest first in the log");
    let body: serde_json::Value = serde_json::from_str(&to_all[0].body).expect("the body is JSON");
    assert_eq!(body["type"], PAID);
    assert_eq!(body["data"]["order_id"], order.id.to_string());
    assert!(body["timestamp"].is_string(), "the event's time: {body}");
    assert!(to_all.iter().all(|d| d.status == DeliveryStatus::Pending && d.order_id == order.id));
    let to_paid_only = store.deliveries(paid_only.id, 10).await.expect("read").expect("the endpoint exists");
    assert_eq!(to_paid_only.iter().map(|d| d.event_type.as_str()).collect::<Vec<_>>(), [PAID]);
    assert_eq!(store.deliveries(Uuid::now_v7(), 10).await.expect("read"), None, "no such endpoint");
}

/// Deliveries are taken one order at a time per endpoint, oldest first, and leased: the next of an order
/// comes once the one before it is delivered or given up, and a failed one waits until its retry is due.
pub async fn one_order_s_deliveries_are_taken_in_order_one_at_a_time<S: SalesStore + WebhookStore>(store: Arc<S>) {
    let store = store.as_ref();
    endpoint(store, None).await;
    let first = paid_order(store, "first").await;
    let second = paid_order(store, "second").await;

    let due = take(store).await;
    let taken: Vec<_> = due.iter().map(|d| (d.delivery.order_id, d.delivery.event_type.as_str())).collect();
    assert_eq!(taken, [(first.id, PLACED), (second.id, PLACED)], "the oldest of each order only");
    assert!(take(store).await.is_empty(), "leased: nobody takes them again meanwhile");

    store.settle(&due[0].delivery, attempt(Some(204)), Settlement::Delivered, None).await.expect("settled");
    let retry_at = later(now(), 3600);
    store.settle(&due[1].delivery, attempt(None), Settlement::RetryAt(retry_at), None).await.expect("settled");
    let next = take(store).await;
    let taken: Vec<_> = next.iter().map(|d| (d.delivery.order_id, d.delivery.event_type.as_str())).collect();
    assert_eq!(taken, [(first.id, PAID)], "the first order moves on; the second waits for its retry");
    store.settle(&next[0].delivery, attempt(Some(200)), Settlement::Delivered, None).await.expect("settled");

    let late = store.take_due(later(retry_at, 1), LEASE, 100).await.expect("read");
    assert_eq!(late.len(), 1, "the retry is due: {late:?}");
    assert_eq!((late[0].delivery.order_id, late[0].delivery.event_type.as_str()), (second.id, PLACED));
    assert_eq!(late[0].delivery.attempts.len(), 1, "with the attempt before it");
}

/// A delivery given up lets the next of its order go; it can be delivered again on request, and
/// every attempt stays in the log; purging removes delivered deliveries only.
pub async fn a_dead_letter_lets_its_order_move_on_and_can_be_redelivered<S: SalesStore + WebhookStore>(store: Arc<S>) {
    let store = store.as_ref();
    let hook = endpoint(store, None).await;
    paid_order(store, "dead").await;
    let due = take(store).await;
    store.settle(&due[0].delivery, attempt(Some(500)), Settlement::DeadLettered, None).await.expect("settled");

    let next = take(store).await;
    assert_eq!(next.iter().map(|d| d.delivery.event_type.as_str()).collect::<Vec<_>>(), [PAID]);
    let log = store.deliveries(hook.id, 10).await.expect("read").expect("exists");
    let dead = log.iter().find(|d| d.id == due[0].delivery.id).expect("in the log");
    assert_eq!(dead.status, DeliveryStatus::DeadLettered);
    assert_eq!(dead.attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [Some(500)]);

    store.settle(&next[0].delivery, attempt(Some(200)), Settlement::Delivered, None).await.expect("settled");
    assert_eq!(store.purge_delivered(later(now(), -60)).await.expect("purged"), 0, "delivered just now: kept");
    assert_eq!(store.purge_delivered(later(now(), 60)).await.expect("purged"), 1, "the delivered one only");
    let log = store.deliveries(hook.id, 10).await.expect("read").expect("exists");
    assert_eq!(log.len(), 1, "the dead letter stays: {log:?}");

    assert!(store.redeliver(hook.id, dead.id, now()).await.expect("redelivered"), "it exists");
    assert!(!store.redeliver(hook.id, Uuid::now_v7(), now()).await.expect("answered"), "no such delivery");
    let again = store.take_due(later(now(), 60), LEASE, 100).await.expect("read");
    assert!(again.iter().any(|d| d.delivery.id == dead.id), "pending and due again: {again:?}");
}

/// A disabled endpoint is owed nothing new and nothing of it is taken; failures mark it failing, a
/// success clears that; removing an endpoint removes what it was owed, and one registered after the last
/// was removed is owed events again.
pub async fn a_disabled_endpoint_gets_nothing_and_a_removed_one_is_owed_nothing<S: SalesStore + WebhookStore>(
    store: Arc<S>,
) {
    let store = store.as_ref();
    let hook = endpoint(store, None).await;
    paid_order(store, "failing").await;
    let due = take(store).await;
    let failure = attempt(None);
    store
        .settle(&due[0].delivery, failure.clone(), Settlement::RetryAt(now()), Some("failing for a day".into()))
        .await
        .expect("settled");
    let listed = store.endpoints().await.expect("read");
    assert_eq!(listed[0].failing_since, Some(failure.at), "failing since its first failure");
    assert_eq!(listed[0].disabled.as_deref(), Some("failing for a day"));
    assert!(store.take_due(later(now(), 60), LEASE, 100).await.expect("read").is_empty(), "nothing is taken");
    paid_order(store, "after").await;
    assert_eq!(store.deliveries(hook.id, 10).await.expect("read").expect("exists").len(), 2, "nothing new is owed");

    assert!(store.remove_endpoint(hook.id).await.expect("removed"));
    assert!(!store.remove_endpoint(hook.id).await.expect("answered"), "already gone");
    assert_eq!(store.deliveries(hook.id, 10).await.expect("read"), None);
    assert!(store.endpoints().await.expect("read").is_empty());

    let again = endpoint(store, None).await;
    paid_order(store, "registered again").await;
    let owed = store.deliveries(again.id, 10).await.expect("read").expect("exists");
    assert_eq!(owed.len(), 2, "an endpoint registered after the last was removed is owed again");
}
