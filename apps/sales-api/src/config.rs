//! The `sales-api` binary's configuration, from the environment or the same-named flags: the variables
//! both services share plus the simulated payment gateway's and back-pressure's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use orderflow_adapters::simulated::{PaymentSettings, SimulatedPaymentGateway};
use orderflow_runtime::config::{SharedConfig, duration};

use crate::pressure::PressureLimits;
use crate::startup::{Mail, SalesSettings, SalesSetup};
use crate::webhooks::WebhookSettings;

/// Everything the `sales-api` binary reads.
#[derive(Debug, Clone, Parser)]
#[command(name = "sales-api", version, about = "orderflow's Sales API: orders, products, payments")]
pub struct SalesConfig {
    /// The variables both services read.
    #[command(flatten)]
    pub shared: SharedConfig,
    /// Where to listen.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// The service's schema.
    #[arg(long, env = "DATABASE_SCHEMA", default_value = "sales")]
    pub database_schema: String,
    /// The simulated gateway declines totals above this many minor units.
    #[arg(long, env = "PAYMENT_DECLINE_ABOVE_MINOR", default_value_t = 1_000_000)]
    pub payment_decline_above_minor: i64,
    /// How long each gateway call takes.
    #[arg(long, env = "PAYMENT_LATENCY", default_value = "0ms", value_parser = duration)]
    pub payment_latency: Duration,
    /// Fraction (0–1) of gateway calls that fail transiently.
    #[arg(long, env = "PAYMENT_TRANSIENT_FAILURE_RATE", default_value_t = 0.0, value_parser = fraction)]
    pub payment_transient_failure_rate: f64,
    /// Back-pressure: refuse new orders while more commands than this are owed to the broker.
    #[arg(long, env = "OUTBOX_BACKLOG_LIMIT")]
    pub outbox_backlog_limit: Option<u64>,
    /// Back-pressure: refuse new orders while the oldest owed command has waited longer than this.
    #[arg(long, env = "OUTBOX_MAX_AGE", value_parser = duration)]
    pub outbox_max_age: Option<Duration>,
    /// Back-pressure: refuse new orders while more messages than this wait in the queues Sales consumes.
    #[arg(long, env = "QUEUE_BACKLOG_LIMIT")]
    pub queue_backlog_limit: Option<u64>,
    /// The SMTP server notification e-mail goes through (`smtp://host:port`, `smtps://…`, with
    /// `user:password@` for a login); unset, e-mail is written to the log instead.
    #[arg(long, env = "SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The sender of notification e-mail.
    #[arg(long, env = "NOTIFY_FROM", default_value = "orderflow <notifications@orderflow.example>")]
    pub notify_from: String,
    /// The waits after each failed webhook delivery; after the last one it is dead-lettered.
    #[arg(
        long,
        env = "WEBHOOK_RETRY_DELAYS",
        default_value = "1s,5s,25s,2m,10m,1h,6h",
        value_delimiter = ',',
        value_parser = duration
    )]
    pub webhook_retry_delays: Vec<Duration>,
    /// Whether webhook endpoints on loopback addresses may be registered (development and tests only).
    #[arg(long, env = "WEBHOOK_ALLOW_LOOPBACK", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_loopback: bool,
}

fn fraction(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        Ok(rate) => Err(format!("{rate} is not between 0 and 1")),
        Err(e) => Err(e.to_string()),
    }
}

impl SalesConfig {
    /// The service these variables describe: every port on its real server.
    pub fn setup(&self) -> SalesSetup {
        SalesSetup {
            settings: SalesSettings {
                http_addr: self.http_addr,
                pressure: PressureLimits {
                    backlog: self.outbox_backlog_limit,
                    max_age: self.outbox_max_age,
                    queued: self.queue_backlog_limit,
                },
                webhooks: WebhookSettings {
                    retry_delays: self.webhook_retry_delays.clone(),
                    allow_loopback: self.webhook_allow_loopback,
                    ..WebhookSettings::default()
                },
                ..SalesSettings::default()
            },
            wiring: self.shared.wiring(&self.database_schema),
            payments: Arc::new(SimulatedPaymentGateway::new(PaymentSettings {
                decline_above_minor: self.payment_decline_above_minor,
                latency: self.payment_latency,
                transient_failure_rate: self.payment_transient_failure_rate,
                ..PaymentSettings::default()
            })),
            mail: match &self.smtp_url {
                Some(url) => Mail::Smtp { url: url.clone(), from: self.notify_from.clone() },
                None => Mail::Log,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use orderflow_runtime::config::ParseLocally;

    use super::*;

    #[test]
    fn an_smtp_url_sends_e_mail_from_notify_from() {
        let config =
            SalesConfig::parse_locally(&["--smtp-url=smtp://127.0.0.1:2525", "--notify-from=Shop <shop@example.com>"])
                .unwrap();
        assert_eq!(
            config.setup().mail,
            Mail::Smtp { url: "smtp://127.0.0.1:2525".into(), from: "Shop <shop@example.com>".into() }
        );
    }

    #[test]
    fn a_failure_rate_outside_zero_to_one_is_refused_by_name() {
        for rate in ["1.5", "-0.1", "often"] {
            let flag = format!("--payment-transient-failure-rate={rate}");
            let error = SalesConfig::parse_locally(&[&flag]).err().unwrap();
            assert!(error.to_string().contains("PAYMENT_TRANSIENT_FAILURE_RATE"), "{error}");
        }
    }

    #[test]
    fn a_malformed_address_is_refused_by_name() {
        let error = SalesConfig::parse_locally(&["--http-addr=localhost"]).err().unwrap();
        assert!(error.to_string().contains("HTTP_ADDR"), "{error}");
    }
}
