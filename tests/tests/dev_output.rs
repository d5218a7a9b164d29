//! `orderflow dev` as a user runs it: the binary, on free ports. The notification e-mail it would send
//! is printed in its output, one per notification of an order that names a contact.

mod support;

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use support::{eventually, expect_status, fetch_token, order_body, string};

fn free_address() -> anyhow::Result<String> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderflow_dev_prints_the_e_mail_it_would_send() -> anyhow::Result<()> {
    let (sales, delivery, issuer) = (free_address()?, free_address()?, free_address()?);
    let output = std::env::temp_dir().join(format!("orderflow-dev-{}.log", uuid::Uuid::new_v4().simple()));
    let log = std::fs::File::create(&output)?;
    let mut dev = tokio::process::Command::new(support::workspace_binary("orderflow")?)
        .args(["dev", "--sales-addr", &sales, "--delivery-addr", &delivery, "--issuer-addr", &issuer])
        .args(["--ship-after", "100ms", "--deliver-after", "100ms"])
        .env("NO_COLOR", "1")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting orderflow dev")?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let token_url = format!("http://{issuer}/token");
    let token = eventually("the dev issuer", || async {
        Ok(fetch_token(&http, &token_url, "sales-client", "dev-secret-sales").await.ok())
    })
    .await?;
    // The issuer starts first; Sales answers once its catalogue is in.
    eventually("Sales ready", || async {
        let ready = http.get(format!("http://{sales}/health/ready")).send().await;
        Ok(ready.is_ok_and(|r| r.status().is_success()).then_some(()))
    })
    .await?;
    let mut body = order_body("cust-dev-mail", &[("SKU-001", 1)]);
    body["contact_email"] = "ada@example.com".into();
    let placed = http.post(format!("http://{sales}/orders")).bearer_auth(&token).json(&body).send().await?;
    let id = string(&expect_status(placed, StatusCode::CREATED).await?["id"])?;

    let printed = eventually("three e-mails in the output", || async {
        let text = std::fs::read_to_string(&output)?;
        let mails = text.matches("e-mail not sent").count();
        Ok((mails >= 3).then_some(text))
    })
    .await;
    dev.kill().await.ok();
    let printed = printed.with_context(|| std::fs::read_to_string(&output).unwrap_or_default())?;
    let _ = std::fs::remove_file(&output);
    for subject in ["Your order is confirmed", "Your order is on its way", "Your order was delivered"] {
        let field = format!("subject={subject} ");
        assert_eq!(printed.matches(&field).count(), 1, "{subject} once:\n{printed}");
    }
    assert!(printed.contains("to=ada@example.com") && printed.contains(&id), "to the contact, about the order");
    assert!(printed.contains("Tracking number: AUTO-"), "the body, as the customer would read it:\n{printed}");
    Ok(())
}
