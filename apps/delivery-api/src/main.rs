//! The delivery-api service: reads its configuration from the environment (or flags), connects its
//! real dependencies and serves until SIGTERM or Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: delivery_api::config::DeliveryConfig = orderflow_runtime::config::parse();
    let telemetry = orderflow_runtime::telemetry::init(
        config.shared.log_format,
        "delivery-api",
        orderflow_runtime::telemetry::SERVICE_LOG_FILTER,
    )?;
    let ran = async { delivery_api::Application::build(config.setup()).await?.run_until_stopped().await }.await;
    telemetry.shutdown().await;
    ran
}
