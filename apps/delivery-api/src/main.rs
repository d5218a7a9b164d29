//! The delivery-api service: reads its configuration from the environment (or flags), connects its
//! real dependencies and serves until SIGTERM or Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: delivery_api::config::DeliveryConfig = orderflow_runtime::config::parse();
    orderflow_runtime::telemetry::init(config.shared.log_format);
    delivery_api::Application::build(config.setup()).await?.run_until_stopped().await
}
