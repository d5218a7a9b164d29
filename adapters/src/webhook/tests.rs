//! Which addresses webhooks may reach, which URLs may be registered, and the signature.

use std::net::IpAddr;

use orderflow_ports::webhooks::{SendError, WebhookSender};

use super::{HttpWebhookSender, reachable, signature};

#[test]
fn private_link_local_and_reserved_addresses_are_unreachable_and_loopback_only_when_allowed() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
    for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
        assert!(reachable(ip(public), false), "{public}");
    }
    for private in [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "fe80::1",
        "fc00::1",
        "::",
        "::ffff:10.0.0.1",
        "2001:db8::1",
    ] {
        assert!(!reachable(ip(private), true), "{private}");
    }
    for loopback in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        assert!(!reachable(ip(loopback), false), "{loopback} is refused by default");
        assert!(reachable(ip(loopback), true), "{loopback} when allowed");
    }
}

#[tokio::test]
async fn urls_to_private_addresses_other_schemes_or_with_credentials_are_refused() {
    let strict = HttpWebhookSender::new(false).expect("a sender");
    for refused in [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/",
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
        "not a url",
    ] {
        let verdict = strict.check_url(refused).await;
        assert!(matches!(verdict, Err(SendError::Forbidden(_))), "{refused}: {verdict:?}");
    }
    let loopback = HttpWebhookSender::new(true).expect("a sender");
    loopback.check_url("http://127.0.0.1:9/hook").await.expect("loopback, when allowed");
    loopback.check_url("http://localhost:9/hook").await.expect("a name resolving to loopback, when allowed");
}

#[test]
fn the_signature_is_the_standard_webhooks_one() {
    // The example of the Standard Webhooks specification.
    let signed = signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1_614_265_330,
        r#"{"test": 2432232314}"#,
    )
    .expect("a valid secret");
    assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}
