//! The metrics of the real binaries as an operator's Prometheus sees them: a real Prometheus scrapes both
//! services with the alert rules loaded, and every expression of the Grafana dashboard and every metric
//! the alerts use returns data (`infra/scripts/prometheus-check.sh`), so no panel silently shows nothing.

mod processes;
mod support;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use processes::{Options, Services};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scraping_both_services_finds_data_for_every_dashboard_panel_and_alert_metric() -> anyhow::Result<()>
{
    let s = Services::start(Options::default()).await?;
    s.put_product("SKU-METRICS", 1999, 10).await?;
    // Traffic that makes every metric appear: an order placed, read (the cache), shipped and delivered.
    let id = s.place("cust-metrics", "SKU-METRICS", 1).await?;
    s.wait_for_status(&id, "pending_shipment", Duration::from_secs(30)).await?;
    let read = s.sales(Method::GET, &format!("/orders/{id}")).send().await?;
    ensure!(read.status().is_success(), "GET /orders/{id} answered {}", read.status());
    let shipment = support::string(&s.shipment_of(&id).await?["id"])?;
    for step in ["ship", "deliver"] {
        let request = s.staff(Method::POST, &format!("/shipments/{shipment}/{step}"));
        let request = match step {
            "ship" => request.json(&serde_json::json!({ "carrier": "DHL", "tracking_number": "TRACK-METRICS" })),
            _ => request,
        };
        let answered = request.send().await?;
        ensure!(answered.status().is_success(), "{step} answered {}", answered.status());
    }
    s.wait_for_status(&id, "delivered", Duration::from_secs(30)).await?;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/scripts/prometheus-check.sh");
    let checked = tokio::task::spawn_blocking({
        let (sales, delivery) = (s.sales_url(""), s.delivery_url(""));
        move || Command::new("bash").arg(script).arg(sales).arg(delivery).env("CHECK_SCRAPE_SECONDS", "20").output()
    })
    .await?
    .context("running prometheus-check.sh")?;
    let report = format!("{}\n{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    ensure!(checked.status.success(), "prometheus-check.sh failed:\n{report}");
    Ok(())
}
