//! The sales-api service: reads its configuration from the environment (or flags), connects its real
//! dependencies and serves until SIGTERM or Ctrl-C.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use orderflow_runtime::telemetry;
    let config: sales_api::config::SalesConfig = orderflow_runtime::config::parse();
    let serve = async { sales_api::Application::build(config.setup()).await?.run_until_stopped().await };
    telemetry::traced(config.shared.log_format, "sales-api", telemetry::SERVICE_LOG_FILTER, serve).await
}
