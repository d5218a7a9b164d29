//! The sales-api service: reads its configuration from the environment, connects its real
//! dependencies and serves until SIGTERM or Ctrl-C.

use orderflow_runtime::config::{Env, init_tracing};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let lookup = |name: &str| std::env::var(name).ok();
    let config = sales_api::config::SalesConfig::from_env(&Env::new(&lookup))?;
    init_tracing(config.runtime.log_format);
    sales_api::Application::connect(config).await?.run_until_stopped().await
}
