//! The [`WebhookSender`] over HTTP (reqwest): each delivery a POST of its body, signed as Standard Webhooks
//! say (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` of
//! `id.timestamp.body` with the endpoint's secret), with a short timeout and no redirects. Names resolve
//! only to addresses a webhook may reach: never private, link-local, unspecified, multicast or reserved
//! ranges, and loopback only when allowed (the dev and test setup), so a registered URL cannot be turned
//! against the services' own network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use orderflow_domain::Timestamp;
use orderflow_ports::webhooks::{DueDelivery, SendError, WebhookSender};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Url, redirect};

#[cfg(test)]
mod tests;

/// How long an endpoint has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long registering waits for the URL's name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a webhook may be sent to `ip`.
pub fn reachable(ip: IpAddr, allow_loopback: bool) -> bool {
    let v4 = |ip: Ipv4Addr| {
        let [a, b, ..] = ip.octets();
        let reserved = a == 0                       // "this network"
            || (a == 100 && (64..128).contains(&b)) // shared address space (carrier-grade NAT)
            || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
            || (a == 198 && (18..20).contains(&b))  // benchmarking
            || a >= 240; // reserved, and broadcast
        if ip.is_loopback() {
            return allow_loopback;
        }
        !(ip.is_private()
            || ip.is_link_local()
            || ip.is_unspecified()
            || ip.is_multicast()
            || ip.is_documentation()
            || reserved)
    };
    match ip {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => v4(mapped),
            None if ip.is_loopback() => allow_loopback,
            None => {
                let documentation = ip.segments()[0] == 0x2001 && ip.segments()[1] == 0x0db8;
                !(ip.is_unspecified()
                    || ip.is_multicast()
                    || ip.is_unique_local()
                    || ip.is_unicast_link_local()
                    || documentation)
            }
        },
    }
}

/// Resolves names to the addresses webhooks may reach, and fails when none is left.
struct GuardedResolver {
    allow_loopback: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved.into_iter().filter(|a| reachable(a.ip(), allow_loopback)).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no address webhooks may reach").into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the webhook HTTP client failed")]
pub struct WebhookSetupError(#[source] reqwest::Error);

/// Sends webhooks over HTTP.
pub struct HttpWebhookSender {
    client: reqwest::Client,
    allow_loopback: bool,
}

impl HttpWebhookSender {
    /// A sender that reaches public addresses only, and loopback too when `allow_loopback`.
    ///
    /// # Errors
    /// [`WebhookSetupError`] when the TLS stack cannot be set up.
    pub fn new(allow_loopback: bool) -> Result<Self, WebhookSetupError> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(redirect::Policy::none())
            .user_agent(concat!("orderflow-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver { allow_loopback }))
            .build()
            .map_err(WebhookSetupError)?;
        Ok(Self { client, allow_loopback })
    }

    /// The URL, if it is one webhooks may be sent to; an address written in the URL is checked here, as
    /// the resolver never sees it.
    fn target(&self, raw: &str) -> Result<Url, SendError> {
        let url = Url::parse(raw).map_err(|e| SendError::Forbidden(format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::Forbidden("only http and https URLs are allowed".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SendError::Forbidden("a URL may not carry credentials; the signature authenticates".into()));
        }
        let literal = match url.host() {
            None => return Err(SendError::Forbidden("the URL has no host".into())),
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
        };
        if let Some(ip) = literal.filter(|ip| !reachable(*ip, self.allow_loopback)) {
            return Err(SendError::Forbidden(format!("{ip} is not an address webhooks may reach")));
        }
        Ok(url)
    }
}

/// The `webhook-signature` of `body` for delivery `id` at `timestamp` with `secret` (`whsec_<base64>`).
///
/// # Errors
/// When the secret is not `whsec_` and base64.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, base64::DecodeError> {
    let key = STANDARD.decode(secret.trim_start_matches("whsec_"))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let tag = ring::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", STANDARD.encode(tag.as_ref())))
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn send(&self, due: &DueDelivery, now: Timestamp) -> Result<u16, SendError> {
        let url = self.target(&due.url)?;
        let id = due.delivery.id.to_string();
        let timestamp = now.timestamp();
        let signed = signature(&due.secret, &id, timestamp, &due.delivery.body)
            .map_err(|e| SendError::Unexpected(Box::new(e)))?;
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signed)
            .body(due.delivery.body.clone())
            .send()
            .await
            .map_err(|e| SendError::Unexpected(Box::new(e)))?;
        let status = response.status().as_u16();
        if response.status().is_success() { Ok(status) } else { Err(SendError::Status(status)) }
    }

    async fn check_url(&self, raw: &str) -> Result<(), SendError> {
        let url = self.target(raw)?;
        let Some(url::Host::Domain(host)) = url.host() else { return Ok(()) };
        let port = url.port_or_known_default().unwrap_or(80);
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| SendError::Forbidden(format!("{host} was not resolved within {RESOLVE_TIMEOUT:?}")))?;
        let resolved: Vec<SocketAddr> =
            lookup.map_err(|e| SendError::Forbidden(format!("{host} cannot be resolved: {e}")))?.collect();
        match resolved.iter().find(|a| !reachable(a.ip(), self.allow_loopback)) {
            Some(address) => {
                Err(SendError::Forbidden(format!("{host} resolves to {}, which webhooks may not reach", address.ip())))
            }
            None if resolved.is_empty() => Err(SendError::Forbidden(format!("{host} resolves to no address"))),
            None => Ok(()),
        }
    }
}
