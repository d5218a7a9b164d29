//! Delivery's web console in a real browser: a headless Chromium, driven through chromedriver (WebDriver),
//! signs in at the issuer, sees an order arrive live, ships and delivers it. Each page is screenshotted.
//!
//! Needs `chromium` and `chromedriver` on PATH (`bash infra/scripts/browser.sh --install`) and the
//! workspace's binaries (`cargo build --workspace --bins`). The screenshots go to
//! `<target dir>/test-output/console/<test name>/NN-what.png`.

mod processes;
mod support;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use processes::{Options, Services, free_port};
use reqwest::StatusCode;
use reqwest::header::COOKIE;
use serde_json::{Value, json};
use support::{eventually, eventually_within, expect_status, fetch_token, order_body, string};
use tokio::process::{Child, Command};

/// How long the page may take to show what a test waits for once it asked (a page load, a redirect).
const PAGE: Duration = Duration::from_secs(15);

/// How long an order may take to reach the console's lists, and a delivery to reach Sales.
const PIPELINE: Duration = Duration::from_secs(30);

/// How long the oidc-provider server may take to answer after it is started. It generates its signing keys
/// (an RSA key among them) before it listens, competing for two cores with the rest of the suite: once in a
/// CI run it had not answered after 30 s.
const PROVIDER_START: Duration = Duration::from_secs(90);

/// The console's session cookie.
const SESSION_COOKIE: &str = "orderflow_console";

/// Calls `probe` every 250 ms until it yields `Some`, for at most `limit`.
async fn within<T, F, Fut>(limit: Duration, what: &str, probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    eventually_within(limit, Duration::from_millis(250), what, probe).await
}

/// The root of the workspace.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where this test's screenshots go: `<target dir>/test-output/console/<test>`, emptied.
fn screenshot_dir(test: &str) -> anyhow::Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    let dir = target.join("test-output").join("console").join(test);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The `chromium` on PATH.
fn chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .context("no `chromium` on PATH: run `bash infra/scripts/browser.sh --install`")
}

/// A headless Chromium driven through a chromedriver of its own, which saves a screenshot of each page.
struct Browser {
    client: Client,
    /// Killed with the test, should it end before [`Browser::finish`].
    driver: Child,
    shots: PathBuf,
    taken: usize,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session; screenshots go to [`screenshot_dir`].
    async fn start(test: &str) -> anyhow::Result<Self> {
        let shots = screenshot_dir(test)?;
        println!("screenshots of {test}: {}", shots.display());
        let binary = chromium()?;
        let port = free_port()?;
        let log = std::fs::File::create(shots.join("chromedriver.log"))?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver: run `bash infra/scripts/browser.sh --install`")?;
        let webdriver = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        within(PAGE, "chromedriver to be ready", || async {
            let Ok(response) = http.get(format!("{webdriver}/status")).send().await else { return Ok(None) };
            let status: Value = response.json().await.unwrap_or_default();
            Ok((status["value"]["ready"] == true).then_some(()))
        })
        .await?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".to_owned(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .context("opening a Chromium session")?;
        Ok(Self { client, driver, shots, taken: 0 })
    }

    /// Saves the page as it is now as `NN-what.png`.
    async fn shot(&mut self, what: &str) -> anyhow::Result<()> {
        self.taken += 1;
        let png = self.client.screenshot().await.with_context(|| format!("screenshot {what}"))?;
        std::fs::write(self.shots.join(format!("{:02}-{what}.png", self.taken)), png)?;
        Ok(())
    }

    /// Ends the session (Chromium quits) and chromedriver, and passes the test's `result` on. A failure
    /// gets a last screenshot and the page's HTML (`failure.html`), and names the screenshots' directory.
    async fn finish(mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        if result.is_err() {
            let _ = self.shot("failure").await;
            if let Ok(html) = self.client.source().await {
                let _ = std::fs::write(self.shots.join("failure.html"), html);
            }
        }
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
        result.with_context(|| format!("screenshots in {}", self.shots.display()))
    }

    /// The first element `css` selects, once there is one.
    async fn wait_for(&self, css: &str) -> anyhow::Result<Element> {
        within(PAGE, css, || async { Ok(self.client.find(Locator::Css(css)).await.ok()) }).await
    }

    /// Whether `css` selects anything now.
    async fn has(&self, css: &str) -> anyhow::Result<bool> {
        Ok(!self.client.find_all(Locator::Css(css)).await?.is_empty())
    }

    /// The text of the first element `css` selects, once there is one.
    async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.wait_for(css).await?.text().await?)
    }

    /// Waits until the element `css` selects says `expected` (the page may be replaced meanwhile).
    async fn wait_for_text(&self, css: &str, expected: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PAGE;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.ok(),
                Err(_) => None,
            };
            if text.as_deref().map(str::trim) == Some(expected) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{css} said {text:?}, not {expected:?}, after {PAGE:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Clicks the first element `css` selects, finding it again should the live lists have replaced it.
    async fn click(&self, css: &str) -> anyhow::Result<()> {
        within(PAGE, &format!("a click on {css}"), || async {
            let Ok(element) = self.client.find(Locator::Css(css)).await else { return Ok(None) };
            Ok(element.click().await.ok())
        })
        .await
    }

    /// Types `text` into the field `css` selects, replacing what it held.
    async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let field = self.wait_for(css).await?;
        field.clear().await?;
        field.send_keys(text).await?;
        Ok(())
    }

    /// The path of the page the browser shows.
    async fn path(&self) -> anyhow::Result<String> {
        Ok(self.client.current_url().await?.path().to_owned())
    }

    /// The session's CSRF token, as every form of the page carries it.
    async fn csrf(&self) -> anyhow::Result<String> {
        let field = self.wait_for("form#sign-out input[name=\"csrf\"]").await?;
        field.attr("value").await?.context("the session's CSRF token")
    }

    /// The console's session cookie, as the browser holds it.
    async fn session_cookie(&self) -> anyhow::Result<String> {
        let cookies = self.client.get_all_cookies().await?;
        let cookie = cookies.iter().find(|c| c.name() == SESSION_COOKIE);
        cookie.map(|c| c.value().to_owned()).with_context(|| format!("no {SESSION_COOKIE} cookie in the browser"))
    }
}

/// The Sales API as a shop uses it: one client's token.
struct Sales {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Sales {
    /// Places an order of one `sku` and returns its id.
    async fn place(&self, customer: &str, sku: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/orders", self.base))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&order_body(customer, &[(sku, 2)]))
            .send()
            .await?;
        string(&expect_status(response, StatusCode::CREATED).await?["id"])
    }

    /// Waits until Sales reports the order as `status`.
    async fn wait_for_status(&self, id: &str, status: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PIPELINE;
        loop {
            let response = self.http.get(format!("{}/orders/{id}", self.base)).bearer_auth(&self.token).send().await?;
            let last = expect_status(response, StatusCode::OK).await?["status"].clone();
            if last == status {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("Sales reports order {id} {last}, not {status}, after {PIPELINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `orderflow dev` as a developer runs it, on free ports, with its autopilot off.
struct DevProcess {
    _process: Child,
    log: PathBuf,
    sales: String,
    delivery: String,
    issuer: String,
}

impl DevProcess {
    async fn start() -> anyhow::Result<Self> {
        let free = || -> anyhow::Result<String> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string()) };
        let (sales, delivery, issuer) = (free()?, free()?, free()?);
        let log = std::env::temp_dir().join(format!("orderflow-dev-console-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log)?;
        let process = Command::new(support::workspace_binary("orderflow")?)
            .args(["dev", "--sales-addr", &sales, "--delivery-addr", &delivery, "--issuer-addr", &issuer])
            .args(["--ship-after", "off"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting orderflow dev")?;
        let stack = Self {
            _process: process,
            log,
            sales: format!("http://{sales}"),
            delivery: format!("http://{delivery}"),
            issuer: format!("http://{issuer}"),
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        for url in [&stack.sales, &stack.delivery] {
            within(PIPELINE, &format!("{url} to be ready"), || async {
                let ready = http.get(format!("{url}/health/ready")).send().await;
                Ok(ready.is_ok_and(|r| r.status().is_success()).then_some(()))
            })
            .await
            .with_context(|| stack.output())?;
        }
        Ok(stack)
    }

    /// The Sales API with a token of `sales-client` from the dev issuer.
    async fn sales(&self) -> anyhow::Result<Sales> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let token_url = format!("{}/token", self.issuer);
        let token = eventually("a token from the dev issuer", || async {
            Ok(fetch_token(&http, &token_url, "sales-client", "dev-secret-sales").await.ok())
        })
        .await?;
        Ok(Sales { http, base: self.sales.clone(), token })
    }

    /// What `orderflow dev` printed.
    fn output(&self) -> String {
        format!("orderflow dev printed:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Opens the console signed out, which leads to the issuer's login page, and signs in as `user`; with
/// `wrong_password_first`, a wrong password first, which the login page refuses.
async fn sign_in(
    browser: &mut Browser,
    console: &str,
    user: &str,
    password: &str,
    wrong_password_first: bool,
) -> anyhow::Result<()> {
    browser.client.goto(&format!("{console}/console")).await?;
    browser.wait_for("button#sign-in").await?;
    browser.shot("login").await?;
    if wrong_password_first {
        browser.fill("input#username", user).await?;
        browser.fill("input#password", "not-the-password").await?;
        browser.click("button#sign-in").await?;
        let error = browser.text("p#error").await?;
        browser.shot("login-refused").await?;
        ensure!(error.contains("Wrong username or password"), "the refusal says why: {error}");
    }
    browser.fill("input#username", user).await?;
    browser.fill("input#password", password).await?;
    browser.click("button#sign-in").await?;
    browser.wait_for("div#lists ul#to-ship").await?;
    ensure!(browser.path().await? == "/console", "signed in, the console shows the lists");
    browser.shot("lists").await?;
    Ok(())
}

/// Waits until the row of `order_id` is in the list `list` (`to-ship`, `in-transit`, `delivered`) of the
/// page as it is: no reload, the live lists bring it.
async fn wait_for_row(browser: &Browser, list: &str, order_id: &str) -> anyhow::Result<()> {
    let css = format!("ul#{list} li[data-order-id=\"{order_id}\"]");
    within(PIPELINE, &format!("order {order_id} in #{list}"), || async {
        Ok((!browser.client.find_all(Locator::Css(&css)).await?.is_empty()).then_some(()))
    })
    .await
}

/// A staff member signs in, sees a new order appear, opens it, ships it and delivers it; Sales learns of
/// the delivery; a form posted without the session's CSRF token is refused; signing out ends the session,
/// for a copy of its cookie too.
async fn staff_ships_and_delivers(
    browser: &mut Browser,
    console: &str,
    sales: &Sales,
    sku: &str,
) -> anyhow::Result<()> {
    sign_in(browser, console, "staff", "dev-password-staff", true).await?;
    let user = browser.text("span#user").await?;
    ensure!(user.trim() == "staff", "the header names who is signed in: {user}");

    // The lists page is open; the order is placed only now, so it can only arrive live.
    let order_id = sales.place("cust-console-staff", sku).await?;
    wait_for_row(browser, "to-ship", &order_id).await?;
    browser.shot("lists-with-the-new-order").await?;
    browser.click(&format!("ul#to-ship li[data-order-id=\"{order_id}\"] a.open")).await?;

    browser.wait_for_text("dd#order-id", &order_id).await?;
    ensure!(browser.text("dd#status").await?.trim() == "pending", "a new shipment is pending");
    let lines = browser.text("table#lines").await?;
    ensure!(lines.contains(sku), "what to pack lists {sku}: {lines}");
    let address = browser.text("address#address").await?;
    ensure!(address.contains("12 Analytical Street") && address.contains("London"), "where to: {address}");
    browser.shot("shipment").await?;

    let tracking = format!("TRK-{}", &uuid::Uuid::new_v4().simple().to_string()[..10].to_uppercase());
    browser.fill("input#carrier", "DHL").await?;
    browser.fill("input#tracking-number", &tracking).await?;
    browser.click("button#ship").await?;
    browser.wait_for_text("dd#status", "shipped").await?;
    let message = browser.text("p#message").await?;
    ensure!(browser.text("dd#tracking-shown").await?.trim() == tracking, "the page shows the tracking number");
    browser.shot("shipped").await?;
    ensure!(!message.trim().is_empty(), "a message says what happened");
    ensure!(!browser.has("form#ship-form").await?, "a shipped parcel cannot be shipped again");

    browser.click("button#deliver").await?;
    browser.wait_for_text("dd#status", "delivered").await?;
    let message = browser.text("p#message").await?;
    browser.shot("delivered").await?;
    ensure!(!message.trim().is_empty(), "a message says what happened");
    ensure!(!browser.has("form#deliver-form").await? && !browser.has("form#ship-form").await?, "nothing left to do");
    sales.wait_for_status(&order_id, "delivered").await?;

    // The lists on a phone: the order is under "delivered", and nothing is wider than the screen.
    browser.client.goto(&format!("{console}/console")).await?;
    wait_for_row(browser, "delivered", &order_id).await?;
    browser.client.set_window_size(360, 800).await?;
    let widths = browser
        .client
        .execute("return [document.documentElement.scrollWidth, document.documentElement.clientWidth];", vec![])
        .await?;
    browser.shot("lists-360px").await?;
    browser.client.set_window_size(1280, 900).await?;
    let (scroll, client) = (widths[0].as_u64().unwrap_or(u64::MAX), widths[1].as_u64().unwrap_or(0));
    ensure!(scroll <= client, "at 360 px the lists fit the screen: {scroll} px of content in {client} px");

    // A form from elsewhere, posted with the session's cookie but without its CSRF token.
    let cookie = browser.session_cookie().await?;
    let shipment_id = browser
        .wait_for(&format!("ul#delivered li[data-order-id=\"{order_id}\"]"))
        .await?
        .attr("data-shipment-id")
        .await?
        .context("the row names its shipment")?;
    let forged = sales
        .http
        .post(format!("{console}/console/shipments/{shipment_id}/ship"))
        .header(COOKIE, format!("{SESSION_COOKIE}={cookie}"))
        .form(&[("carrier", "DHL"), ("tracking_number", "TRK-FORGED")])
        .send()
        .await?;
    ensure!(forged.status() == StatusCode::FORBIDDEN, "a form without the CSRF token is refused: {}", forged.status());

    // The same rules as the API, said on the page: a delivered parcel cannot ship again, and a field
    // left empty is named.
    let csrf = browser.csrf().await?;
    for (carrier, status, says) in
        [("UPS", StatusCode::CONFLICT, "Not allowed now"), ("", StatusCode::UNPROCESSABLE_ENTITY, "Carrier")]
    {
        let refused = sales
            .http
            .post(format!("{console}/console/shipments/{shipment_id}/ship"))
            .header(COOKIE, format!("{SESSION_COOKIE}={cookie}"))
            .form(&[("carrier", carrier), ("tracking_number", "TRK-AGAIN"), ("csrf", csrf.as_str())])
            .send()
            .await?;
        ensure!(refused.status() == status, "shipping with carrier {carrier:?} again: {}", refused.status());
        let page = refused.text().await?;
        ensure!(page.contains("id=\"message\"") && page.contains(says), "the page says why ({says}):\n{page}");
        ensure!(page.contains("data-status=\"delivered\""), "and nothing changed");
    }

    browser.click("form#sign-out button").await?;
    browser.wait_for("p#notice").await?;
    browser.shot("signed-out").await?;
    ensure!(browser.path().await? == "/console/signed-out", "signing out ends on the signed-out page");
    ensure!(browser.text("h1").await?.contains("Signed out"), "the page says so");
    ensure!(!browser.has("span#user").await?, "nobody is named in the header");
    ensure!(browser.session_cookie().await.is_err(), "the browser no longer holds the session cookie");

    // A copy of the cookie taken before signing out is signed out too.
    let copied = sales
        .http
        .post(format!("{console}/console/shipments/{shipment_id}/ship"))
        .header(COOKIE, format!("{SESSION_COOKIE}={cookie}"))
        .form(&[("carrier", "UPS"), ("tracking_number", "TRK-COPIED"), ("csrf", csrf.as_str())])
        .send()
        .await?;
    ensure!(copied.status() == StatusCode::UNAUTHORIZED, "a copied cookie is signed out: {}", copied.status());
    ensure!(copied.text().await?.contains("Signed out"), "and the page says so");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_ship_and_deliver_an_order_in_the_console_of_orderflow_dev() -> anyhow::Result<()> {
    let stack = DevProcess::start().await?;
    let sales = stack.sales().await?;
    let mut browser = Browser::start("staff_ship_and_deliver_an_order_in_the_console_of_orderflow_dev").await?;
    let result = staff_ships_and_delivers(&mut browser, &stack.delivery, &sales, "SKU-001").await;
    browser.finish(result).await.with_context(|| stack.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_shipments_but_no_actions_in_the_console_of_orderflow_dev() -> anyhow::Result<()> {
    let stack = DevProcess::start().await?;
    let sales = stack.sales().await?;
    let order_id = sales.place("cust-console-viewer", "SKU-001").await?;
    let mut browser = Browser::start("a_viewer_sees_shipments_but_no_actions_in_the_console_of_orderflow_dev").await?;
    let result = viewer_sees_no_actions(&mut browser, &stack.delivery, &sales.http, &order_id).await;
    browser.finish(result).await.with_context(|| stack.output())
}

/// A viewer signs in, finds the order and opens it: no form to ship or deliver; posting one anyway, with
/// the session's own CSRF token, is refused too, and the metrics count both pages by name.
async fn viewer_sees_no_actions(
    browser: &mut Browser,
    console: &str,
    http: &reqwest::Client,
    order_id: &str,
) -> anyhow::Result<()> {
    sign_in(browser, console, "viewer", "dev-password-viewer", false).await?;
    let user = browser.text("span#user").await?;
    ensure!(user.contains("read only"), "the header says the account is read only: {user}");
    wait_for_row(browser, "to-ship", order_id).await?;
    browser.click(&format!("ul#to-ship li[data-order-id=\"{order_id}\"] a.open")).await?;
    browser.wait_for_text("dd#order-id", order_id).await?;
    browser.wait_for("table#lines").await?;
    browser.wait_for("address#address").await?;
    browser.shot("read-only-shipment").await?;
    ensure!(browser.text("dd#status").await?.trim() == "pending", "the shipment waits to be shipped");
    for absent in ["form#ship-form", "form#deliver-form", "button#ship", "button#deliver"] {
        ensure!(!browser.has(absent).await?, "a viewer sees no {absent}");
    }

    let cookie = browser.session_cookie().await?;
    let csrf = browser.csrf().await?;
    let shipment_id = browser.text("dd#shipment-id").await?;
    let posted = http
        .post(format!("{console}/console/shipments/{}/ship", shipment_id.trim()))
        .header(COOKIE, format!("{SESSION_COOKIE}={cookie}"))
        .form(&[("carrier", "DHL"), ("tracking_number", "TRK-VIEWER"), ("csrf", csrf.as_str())])
        .send()
        .await?;
    ensure!(posted.status() == StatusCode::FORBIDDEN, "a viewer may not ship: {}", posted.status());
    browser.client.refresh().await?;
    browser.wait_for_text("dd#status", "pending").await?;

    let metrics = http.get(format!("{console}/metrics")).send().await?.text().await?;
    for counted in [
        r#"{method="GET",operation="console_shipment",status="200"}"#,
        r#"{method="POST",operation="console_ship",status="403"}"#,
    ] {
        ensure!(metrics.contains(&format!("http_requests_total{counted}")), "the metrics count {counted}:\n{metrics}");
    }
    Ok(())
}

/// The oidc-provider server of `infra/oauth` on a free port, for one test.
struct OidcProvider {
    _process: Child,
    log: PathBuf,
    issuer: String,
}

impl OidcProvider {
    /// Starts `node infra/oauth/server.js` with `redirect_uri` as the console's one redirect URI.
    async fn start(redirect_uri: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("oidc-provider-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log)?;
        let process = Command::new("node")
            .arg("infra/oauth/server.js")
            .current_dir(workspace_root())
            .env("OAUTH_PORT", port.to_string())
            .env("OAUTH_CONSOLE_REDIRECT_URIS", redirect_uri)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting node infra/oauth/server.js (run `npm ci` in infra/oauth)")?;
        let provider = Self { _process: process, log, issuer: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let metadata = format!("{}/.well-known/openid-configuration", provider.issuer);
        within(PROVIDER_START, "oidc-provider to answer", || async {
            let answer = http.get(&metadata).send().await;
            Ok(answer.is_ok_and(|r| r.status().is_success()).then_some(()))
        })
        .await
        .with_context(|| provider.output())?;
        Ok(provider)
    }

    fn output(&self) -> String {
        format!("oidc-provider printed:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_on_postgresql_with_the_oidc_provider_server() -> anyhow::Result<()> {
    let delivery_port = free_port()?;
    let provider = OidcProvider::start(&format!("http://127.0.0.1:{delivery_port}/console/callback")).await?;
    let services = Services::start(Options {
        issuer: Some(provider.issuer.clone()),
        env: vec![("CONSOLE_CLIENT_SECRET", "dev-secret-console".into())],
        delivery_port: Some(delivery_port),
        ..Options::default()
    })
    .await?;
    let sku = "SKU-CONSOLE-1";
    services.put_product(sku, 1250, 100).await?;
    let sales =
        Sales { http: services.http.clone(), base: services.sales_url(""), token: services.sales_token.clone() };
    let console = services.delivery_url("");
    let mut browser = Browser::start("the_console_works_on_postgresql_with_the_oidc_provider_server").await?;
    let result = staff_ships_and_delivers(&mut browser, &console, &sales, sku).await;
    browser.finish(result).await.with_context(|| {
        let (sales_log, delivery_log) = services.logs();
        let tail = |log: &str| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!("{}\nsales log:\n{}\ndelivery log:\n{}", provider.output(), tail(&sales_log), tail(&delivery_log))
    })
}
