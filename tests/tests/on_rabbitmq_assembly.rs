//! `orderflow dev` and the service binaries are assembled by the same builders: with the same settings
//! they run the same workers behind the same middleware, and differ only in the adapters they pick.

mod processes;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, ensure};
use delivery_api::config::DeliveryConfig;
use delivery_api::workers::AutopilotSettings;
use orderflow::dev::DevOptions;
use orderflow_runtime::config::{ParseLocally, RouteRule};
use orderflow_runtime::wiring::Limits;
use processes::{Options, Services};
use reqwest::{Response, StatusCode};
use sales_api::Mail;
use sales_api::config::SalesConfig;
use sales_api::webhooks::WebhookSettings;
use serde_json::Value;
use support::Harness;

/// The `workers` field of the `listening` line `service` logged, as the binary formats it.
fn logged_workers(log: &str, service: &str) -> anyhow::Result<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "listening" && line["service"] == service)
        .and_then(|line| line["workers"].as_str().map(str::to_owned))
        .with_context(|| format!("no `listening` line of {service} in\n{log}"))
}

/// What the middleware put on an answer: its status and the names of its headers (their values hold
/// times and ids, which differ by nature).
fn shape(response: &Response) -> (StatusCode, BTreeSet<String>) {
    let names = response.headers().keys().map(|name| name.as_str().to_owned());
    (response.status(), names.filter(|name| name != "date").collect())
}

#[test]
fn each_binary_listens_on_its_own_port_in_its_own_schema_with_its_extras_off() -> anyhow::Result<()> {
    let sales = SalesConfig::parse_locally(&[])?;
    assert_eq!(sales.http_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(sales.database_schema, "sales");
    assert!(!sales.setup().settings.pressure.any(), "back-pressure off");
    assert_eq!(sales.setup().mail, Mail::Log, "without SMTP_URL, e-mail goes to the log");
    assert_eq!(sales.setup().settings.webhooks, WebhookSettings::default(), "public endpoints, the full ladder");

    let delivery = DeliveryConfig::parse_locally(&[])?;
    assert_eq!(delivery.http_addr.to_string(), "127.0.0.1:8081");
    assert_eq!(delivery.database_schema, "delivery");
    assert!(delivery.setup().settings.autopilot.is_none(), "the autopilot off");
    Ok(())
}

#[tokio::test]
async fn dev_and_the_binaries_run_the_same_workers_behind_the_same_middleware() -> anyhow::Result<()> {
    let services = Services::start(Options {
        autopilot: Some(("1s", "1s")),
        rate_limit: Some((600, 50)),
        rate_limit_routes: Some("POST /orders=60/10"),
        ..Options::default()
    })
    .await?;
    let dev = Harness::start_with(DevOptions {
        autopilot: Some(AutopilotSettings {
            ship_after: Duration::from_secs(1),
            deliver_after: Duration::from_secs(1),
        }),
        limits: Limits {
            rate: Some((600, 50)),
            routes: vec!["POST /orders=60/10".parse::<RouteRule>().map_err(anyhow::Error::msg)?],
            ..Limits::default()
        },
        ..DevOptions::for_tests()
    })
    .await?;

    let (sales_log, delivery_log) = services.logs();
    let sales_workers = logged_workers(&sales_log, "orderflow Sales API")?;
    ensure!(sales_workers == format!("{:?}", dev.stack.sales.workers()), "{sales_workers} in the binary");
    let delivery_workers = logged_workers(&delivery_log, "orderflow Delivery API")?;
    ensure!(delivery_workers == format!("{:?}", dev.stack.delivery.workers()), "{delivery_workers} in the binary");
    ensure!(delivery_workers.contains("autopilot"), "the autopilot runs: {delivery_workers}");

    let http = &services.http;
    for path in ["/orders", "/orders?limit=0", "/health/live", "/nowhere"] {
        let binary = http.get(services.sales_url(path)).bearer_auth(&services.sales_token).send().await?;
        let embedded = http.get(dev.sales_url(path)).bearer_auth(&dev.sales_token).send().await?;
        ensure!(
            shape(&binary) == shape(&embedded),
            "GET {path}: {:?} from the binary, {:?} from dev",
            shape(&binary),
            shape(&embedded)
        );
        let binary = http.get(services.delivery_url(path)).send().await?;
        let embedded = http.get(dev.delivery_url(path)).send().await?;
        ensure!(
            shape(&binary) == shape(&embedded),
            "GET {path} unauthenticated on Delivery: {:?} vs {:?}",
            shape(&binary),
            shape(&embedded)
        );
    }
    Ok(())
}
