//! The `orderflow` operator CLI.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use delivery_api::workers::AutopilotSettings;
use orderflow::dev::{DevOptions, DevStack};
use orderflow_adapters::simulated::PaymentSettings;
use orderflow_runtime::config::LogFormat;
use orderflow_runtime::telemetry;

#[derive(Parser)]
#[command(name = "orderflow", version, about = "Run, try and operate orderflow")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run both services, a dev token issuer and in-memory adapters in one process (nothing to install).
    Dev {
        /// Sales API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        sales_addr: SocketAddr,
        /// Delivery API address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        delivery_addr: SocketAddr,
        /// Dev token issuer address.
        #[arg(long, default_value = "127.0.0.1:8090")]
        issuer_addr: SocketAddr,
        /// Autopilot: ship pending shipments after this long ("off" to ship by hand).
        #[arg(long, env = "AUTOPILOT_SHIP_AFTER", default_value = "2s")]
        ship_after: String,
        /// Autopilot: deliver shipped shipments after this long.
        #[arg(long, env = "AUTOPILOT_DELIVER_AFTER", default_value = "3s")]
        deliver_after: String,
        /// Decline payments whose total exceeds this many minor units.
        #[arg(long, env = "PAYMENT_DECLINE_ABOVE_MINOR", default_value_t = 1_000_000)]
        decline_above_minor: i64,
    },
    /// Fetch an access token from an OAuth2 issuer (client-credentials grant) and print it.
    Token {
        /// The issuer URL (discovery at /.well-known/openid-configuration).
        #[arg(long, env = "OAUTH_ISSUER", default_value = "http://127.0.0.1:8090")]
        issuer: String,
        /// The client id.
        #[arg(long, default_value = "sales-client")]
        client_id: String,
        /// The client secret.
        #[arg(long, env = "OAUTH_CLIENT_SECRET", default_value = "dev-secret-sales")]
        client_secret: String,
        /// Scopes to ask for (default: all the client may have).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Benchmarks against a real database.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Dead-letter queues on RabbitMQ: list their depths, peek at, replay or purge their messages.
    Dlq(orderflow::dlq::DlqOptions),
    /// The Kafka audit stream: follow it (`tail`) or print one order's history (`timeline`).
    Audit(orderflow::audit::AuditOptions),
    /// JSON Schemas of the event payloads.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Print the JSON Schema of every event payload, keyed by its CloudEvents type.
    Events,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Place 2-line orders through the PostgreSQL Sales store with concurrent callers; print orders/s and
    /// latency percentiles. Uses (and drops) a scratch schema.
    PlaceOrders(orderflow::bench::PlaceOrdersOptions),
    /// Preload `orders.created` and drain it with one Delivery consumer; print messages/s and handling
    /// latency percentiles. Give it a vhost of its own in `--amqp-url`; uses (and drops) a scratch schema.
    DrainOrdersCreated(orderflow::bench_drain::DrainOptions),
    /// End to end against running services: `POST /orders` in, `delivered` out. Puts a catalogue, places
    /// 2-line orders (burst or open-loop rate), waits until PostgreSQL shows them delivered; prints front-door
    /// and end-to-end orders/s, latency percentiles, the largest outbox backlogs and peak RSS.
    E2e(orderflow::bench_e2e::E2eOptions),
}

fn autopilot(ship_after: &str, deliver_after: &str) -> anyhow::Result<Option<AutopilotSettings>> {
    if ship_after == "off" || deliver_after == "off" {
        return Ok(None);
    }
    let parse = |name: &str, v: &str| -> anyhow::Result<Duration> {
        humantime::parse_duration(v).map_err(|e| anyhow::anyhow!("{name}: {e} (use e.g. 200ms, 2s)"))
    };
    Ok(Some(AutopilotSettings {
        ship_after: parse("AUTOPILOT_SHIP_AFTER", ship_after)?,
        deliver_after: parse("AUTOPILOT_DELIVER_AFTER", deliver_after)?,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Dev { .. }) {
        // Both services' spans go out as one service, `orderflow` (or OTEL_SERVICE_NAME).
        let filter = "info,poem=warn,opentelemetry=warn";
        return telemetry::traced(LogFormat::Pretty, "orderflow", filter, run(cli.command)).await;
    }
    if matches!(cli.command, Command::Dlq(_) | Command::Audit(_)) {
        // The operator tools print their results on stdout: logs (warnings only by default; lapin repeats what
        // the error says) go to stderr.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,lapin=off".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,poem=warn".into()),
            )
            .init();
    }
    run(cli.command).await
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev { sales_addr, delivery_addr, issuer_addr, ship_after, deliver_after, decline_above_minor } => {
            let options = DevOptions {
                sales_addr,
                delivery_addr,
                issuer_addr,
                autopilot: autopilot(&ship_after, &deliver_after)?,
                payment: PaymentSettings { decline_above_minor, ..PaymentSettings::default() },
                ..DevOptions::default()
            };
            let stack = DevStack::start(options).await?;
            print_welcome(&stack);
            stack.run_until_stopped().await?;
            println!("stopped");
        }
        Command::Token { issuer, client_id, client_secret, scopes } => {
            println!("{}", orderflow::token::fetch(&issuer, &client_id, &client_secret, &scopes).await?);
        }
        Command::Bench { command: BenchCommand::PlaceOrders(options) } => {
            println!("{}", orderflow::bench::place_orders(options).await?);
        }
        Command::Bench { command: BenchCommand::DrainOrdersCreated(options) } => {
            println!("{}", orderflow::bench_drain::drain_orders_created(options).await?);
        }
        Command::Bench { command: BenchCommand::E2e(options) } => {
            println!("{}", orderflow::bench_e2e::e2e(options).await?);
        }
        Command::Dlq(options) => orderflow::dlq::run(options).await?,
        Command::Audit(options) => orderflow::audit::run(options).await?,
        Command::Schema { command: SchemaCommand::Events } => println!("{}", orderflow::schema::events()?),
    }
    Ok(())
}

fn print_welcome(stack: &DevStack) {
    let sales = stack.sales.addr();
    let delivery = stack.delivery.addr();
    let issuer = stack.issuer.issuer_url();
    println!(
        r#"
orderflow dev is running (in-memory adapters; everything is lost when it stops).

  Sales API     http://{sales}      docs: http://{sales}/docs
  Delivery API  http://{delivery}      docs: http://{delivery}/docs
  Token issuer  {issuer}   (dev clients: sales-client, delivery-staff, analyst, admin)
  Console       http://{delivery}/console   (sign in as staff / dev-password-staff,
                or viewer / dev-password-viewer to look without changing anything)

Get a token and place an order:

  TOKEN=$(curl -s -u sales-client:dev-secret-sales -d grant_type=client_credentials {issuer}/token | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -s -X POST http://{sales}/orders -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: $(date +%s%N)" \
    -d '{{"customer_id":"cust-42","contact_email":"ada@example.com","lines":[{{"sku":"SKU-001","quantity":2}}],"shipping_address":{{"name":"Ada Lovelace","line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}}}}'

The e-mail its contact would get is printed below (nothing is sent). Webhooks: POST /admin/webhooks
with an admin token (endpoints on this machine are allowed here).

Press Ctrl-C to stop.
"#
    );
}
