//! Both service binaries, on PostgreSQL, RabbitMQ, Kafka and Redis, fuzzed against their own OpenAPI
//! documents by schemathesis with every check on (`infra/scripts/api-fuzz.sh`): every answer is documented
//! with its status, content type and schema, every schema-valid request is accepted, every schema-invalid
//! one refused, and none ends in a 5xx.

mod processes;
mod support;

use std::process::Command;

use anyhow::{Context, ensure};
use processes::{Options, Services};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fuzzing_both_apis_against_their_documents_finds_no_answer_the_documents_do_not_promise() -> anyhow::Result<()>
{
    let s = Services::start(Options::default()).await?;
    // A catalogue to order from, so generated orders reach the stock and payment paths too.
    for sku in ["0", "A", "SKU-001"] {
        s.put_product(sku, 1999, 1_000_000).await?;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/scripts/api-fuzz.sh");
    let fuzzed = tokio::task::spawn_blocking({
        let (sales, delivery, token) = (s.sales_url(""), s.delivery_url(""), s.admin_token.clone());
        move || Command::new("bash").arg(script).arg(sales).arg(delivery).env("FUZZ_TOKEN", token).output()
    })
    .await?
    .context("running api-fuzz.sh")?;
    let report = format!("{}\n{}", String::from_utf8_lossy(&fuzzed.stdout), String::from_utf8_lossy(&fuzzed.stderr));
    ensure!(fuzzed.status.success(), "schemathesis found failures:\n{report}");
    println!("{report}");
    Ok(())
}
