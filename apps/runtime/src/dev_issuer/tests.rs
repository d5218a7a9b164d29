//! Real HTTP between [`JwksVerifier`] and a started [`DevIssuer`], plus hand-made malicious tokens; and the
//! authorization-code grant driven as the delivery console and a browser drive it (`oauth2` and reqwest).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType};
use oauth2::url::Url;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use orderflow_ports::auth::{AuthError, TokenVerifier};
use regex::Regex;
use serde_json::{Value, json};

use orderflow_adapters::auth::{JwksVerifier, VerifierSettings};

use super::{CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET, DevClient, DevIssuer, DevUser, RunningIssuer};

const AUDIENCE: &str = "orderflow-api";

/// TEST-ONLY RSA key, generated for these tests and used nowhere else: the dev issuer signs with ES256 only, but
/// production issuers (Keycloak, Auth0) default to RS256, so the RSA paths need a key too and ring cannot make one.
const TEST_RSA_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCspzsEFvN5nR9V
7Wt0mWeVxyuf2FkjZ0PQDxiv8uGkFTx6QIez4YtuTHULPDXsyZiraPfmnV/TW7tZ
dKp4yMX+KI62tQxeqevOI7dRBkjSjKUQemWvOI1W2vAVFfPnoOo+RQpN84DgYsBB
KpD01YDrwH1gXMXLVOPRUhRP8KOux7Fd7eYAFOSZ5/J1d+MPeLe0KcNFwFJekem3
OUZp+Dj6DCqBgquyp59N48DKWeJ5CLXGSODcxfYhuPP/Q8c4/owz+fT7rCGbIj4a
bqu4JXWSxm4u73UqiQKi+GBVwCrs3mDeMQY1W9Ecyd3cE8TUyolQHrT7zs3U35Vk
avIkc39XAgMBAAECggEAA621zTAr/y2rgD+EaEHoehbPRXhCQJsvpQbdUMpiUluo
I+FXbYFjC3Y85tYL6Wqg18NvHLkXqeosw2Aqov4sHG6CyT5xmrFmIR3pBvnqTUof
2N+yu5lUhu2NQKBsx5pJw1/h3f1P2U1hU+zIlTQuAK046U0GDdSrh0cyFZib9C+r
V6a9WgxNTgrKo8OXFlAxQCZUNRdPEo4ccd41dWMdtjPguLqVLqnqOB025n5KguXR
he+7AkrwR9L5xPpOc7Rebtg6pZ4i09p+TBuPsLTx39FQxdldLoT9Q9yqrqEcLkf2
WHMhYHhOjDsI4XNlgg4u6Cl/33TtRBaXAH2hSp3XmQKBgQDrGkNgSrLo1EBC9C2j
Ay/78L4jAB+fZuYkaTr6LSBStsvkMm9oQc/QGL+QiXomTS5f03Zfvsu9i9f2S9ka
DcKJrfYg8sY2CfCKQmxBzUGz3MmSTCcA4laCWjvcSJwvsa5fnU8ntBb4C3V2sviQ
tm/WLyu9mftXtjv5Afqi4tb+SwKBgQC7//BAQzoidEvz+KleUPv+vbEbRoLI/i0l
UO3cG/tTmHS5FsvHNxLtNV4PLx3DaLi1NOZA8d0mDQBLQtVsFQW3f9frpvmESgAc
2NRu4S236lOHw9XFZktaLV7aWVMiRX1CI/MyHnJvPqEjyWobd/DMfPiVD2wMg77Z
ugTp8qErpQKBgGuZJ4Dobx1UFt0Nt91FVi6uLbcDFXX0uBut9YoOIR75/jLASnCi
viN1UCcsZDUnWbQNqb2EKubjG8HjUMc1yPUOIvlNYx3USrxcTgOHlyxkPfSw2aDz
9bfO6FqW+LRzU2T7MADx0RlQ1T+wBUbl2CVkjVZHJNst0iDSoQzvWIolAoGAf/0R
Sh66kEROhS0P2VcXB+mKjoAlf8KTZ6k+FjCynMnZBT1AxEJ5Tyaa/4lbIPLFdRAr
haFjpokJXzOD6s4xEyklDZiinG5ovzra/RWuM1yDO5WWjopC2IS048AWOenHCeVB
pyhVTej8eUmhREwWkpCuB4T1UVvL7ZyXxdHZ6cUCgYEApTL+UUZ4ezzwu3XMnNj5
lL/3BuE4epYCGn0ZriDQ+VuPmxLnJYZiHmynj6f8jAw+SSfIzEn6SSEXytgDH8xQ
5F2VJZU/APPUoKdtaRiH0yl6E26OEiKSAWRSkwzlY4LUU9VJBJXy7Z6vRiC+oxzp
Yoot5eKkmNYcVMEv4Amrm6o=
-----END PRIVATE KEY-----
";
/// The modulus of [`TEST_RSA_PRIVATE_KEY`], base64url.
const TEST_RSA_MODULUS: &str = "rKc7BBbzeZ0fVe1rdJlnlccrn9hZI2dD0A8Yr_LhpBU8ekCHs-GLbkx1Czw17MmYq2j35p1f01u7WXSqeMjF_iiOtrUMXqnrziO3UQZI0oylEHplrziNVtrwFRXz56DqPkUKTfOA4GLAQSqQ9NWA68B9YFzFy1Tj0VIUT_CjrsexXe3mABTkmefydXfjD3i3tCnDRcBSXpHptzlGafg4-gwqgYKrsqefTePAylnieQi1xkjg3MX2Ibjz_0PHOP6MM_n0-6whmyI-Gm6ruCV1ksZuLu91KokCovhgVcAq7N5g3jEGNVvRHMnd3BPE1MqJUB60-87N1N-VZGryJHN_Vw";

async fn start_issuer() -> Result<RunningIssuer> {
    Ok(DevIssuer::start("127.0.0.1:0".parse()?, AUDIENCE, DevClient::defaults()).await?)
}

fn verifier_for(issuer: &RunningIssuer, settings: VerifierSettings) -> Result<JwksVerifier> {
    Ok(JwksVerifier::new(issuer.issuer_url(), AUDIENCE, settings)?)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims the verifier accepts from `issuer`; tests override one at a time.
fn good_claims(issuer: &RunningIssuer) -> Value {
    json!({
        "iss": issuer.issuer_url(),
        "sub": "sales-client",
        "client_id": "sales-client",
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 300,
        "scope": "orders:read",
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    if let Some(object) = claims.as_object_mut() {
        object.insert(name.to_owned(), value);
    }
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    if let Some(object) = claims.as_object_mut() {
        object.remove(name);
    }
    claims
}

/// A JWT assembled by hand, with whatever header and signature an attacker likes.
fn handmade_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn assert_invalid(result: Result<orderflow_ports::auth::Principal, AuthError>, what: &str) -> Result<String> {
    match result {
        Err(AuthError::InvalidToken(reason)) => Ok(reason),
        other => bail!("{what}: expected InvalidToken, got {other:?}"),
    }
}

async fn request_token(
    issuer: &RunningIssuer,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Result<(u16, Value)> {
    let mut request = reqwest::Client::new().post(issuer.token_url()).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

#[tokio::test]
async fn a_token_from_the_token_endpoint_verifies_and_yields_its_scopes_and_client() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;

    let (status, body) =
        request_token(&issuer, &[("grant_type", "client_credentials")], Some(("sales-client", "dev-secret-sales")))
            .await?;
    ensure!(status == 200, "status {status}: {body}");
    ensure!(body["token_type"] == "Bearer" && body["expires_in"] == 3600, "{body}");
    ensure!(body["scope"] == "orders:read orders:write", "{body}");
    let token = body["access_token"].as_str().context("no access_token")?;
    let principal = verifier.verify(token).await?;

    assert_eq!(principal.client_id, "sales-client");
    assert_eq!(principal.subject, "sales-client");
    assert_eq!(principal.scopes, BTreeSet::from(["orders:read".to_owned(), "orders:write".to_owned()]));
    assert_eq!(issuer.jwks_fetches(), 1);
    Ok(())
}

#[tokio::test]
async fn client_secret_post_with_a_subset_of_scopes_gets_exactly_that_subset() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;

    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "admin"),
        ("client_secret", "dev-secret-admin"),
        ("scope", "admin shipments:read"),
    ];
    let (status, body) = request_token(&issuer, &form, None).await?;
    ensure!(status == 200, "status {status}: {body}");
    let principal = verifier.verify(body["access_token"].as_str().context("no access_token")?).await?;

    assert_eq!(principal.client_id, "admin");
    assert_eq!(principal.scopes, BTreeSet::from(["admin".to_owned(), "shipments:read".to_owned()]));
    Ok(())
}

#[tokio::test]
async fn a_missing_or_garbage_token_is_refused_without_fetching_keys() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;

    for token in ["", "garbage", "a.b.c", "eyJhbGciOiJFUzI1NiJ9..", "..."] {
        assert_invalid(verifier.verify(token).await, token)?;
    }
    assert_eq!(issuer.jwks_fetches(), 0);
    Ok(())
}

#[tokio::test]
async fn an_alg_none_token_is_refused() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let header = json!({ "alg": "none", "typ": "JWT", "kid": issuer.current_kid() });

    for alg in ["none", "None", "NONE"] {
        let token = handmade_token(&with(header.clone(), "alg", json!(alg)), &good_claims(&issuer), b"");
        assert_invalid(verifier.verify(&token).await, alg)?;
    }
    Ok(())
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_published_public_key_is_refused() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let jwks: Value = reqwest::get(issuer.jwks_url()).await?.json().await?;
    let jwk = &jwks["keys"][0];
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().context("no x")?)?;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(issuer.current_kid());

    // Whatever bytes of the public key a confused verifier might use as the HMAC secret.
    for secret in [jwk.to_string().into_bytes(), x] {
        let token = jsonwebtoken::encode(&header, &good_claims(&issuer), &EncodingKey::from_secret(&secret))?;
        let reason = assert_invalid(verifier.verify(&token).await, "HS256")?;
        assert!(reason.contains("not allowed"), "{reason}");
    }
    Ok(())
}

#[tokio::test]
async fn a_header_alg_that_does_not_match_the_key_is_refused() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": issuer.current_kid() });

    let token = handmade_token(&header, &good_claims(&issuer), &[0; 256]);

    let reason = assert_invalid(verifier.verify(&token).await, "RS256 on an EC key")?;
    assert!(reason.contains("does not match"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn a_token_without_a_kid_is_refused() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let signed = issuer.sign(&good_claims(&issuer))?;
    let (_, rest) = signed.split_once('.').context("not a JWT")?;

    let token = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(json!({ "alg": "ES256", "typ": "JWT" }).to_string()));

    let reason = assert_invalid(verifier.verify(&token).await, "no kid")?;
    assert!(reason.contains("kid"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() -> Result<()> {
    let issuer = start_issuer().await?;
    let other = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;

    let foreign = other.mint("sales-client", &["orders:read"], Duration::from_secs(300))?;
    assert_invalid(verifier.verify(&foreign).await, "token minted by another issuer")?;

    let wrong_iss = issuer.sign(&with(good_claims(&issuer), "iss", json!(other.issuer_url())))?;
    let reason = assert_invalid(verifier.verify(&wrong_iss).await, "iss of another issuer")?;
    assert!(reason.contains("issuer"), "{reason}");

    let iss_array =
        issuer.sign(&with(good_claims(&issuer), "iss", json!([issuer.issuer_url(), other.issuer_url()])))?;
    assert_invalid(verifier.verify(&iss_array).await, "iss array")?;

    let no_iss = issuer.sign(&without(good_claims(&issuer), "iss"))?;
    assert_invalid(verifier.verify(&no_iss).await, "no iss")?;
    Ok(())
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused_and_an_audience_list_naming_us_is_accepted() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;

    for aud in [json!("someone-else"), json!(["someone-else", "another"]), json!([])] {
        let token = issuer.sign(&with(good_claims(&issuer), "aud", aud.clone()))?;
        let reason = assert_invalid(verifier.verify(&token).await, &aud.to_string())?;
        assert!(reason.contains("audience"), "{reason}");
    }
    let no_aud = issuer.sign(&without(good_claims(&issuer), "aud"))?;
    assert_invalid(verifier.verify(&no_aud).await, "no aud")?;

    let listed = issuer.sign(&with(good_claims(&issuer), "aud", json!(["someone-else", AUDIENCE])))?;
    verifier.verify(&listed).await?;
    Ok(())
}

#[tokio::test]
async fn a_token_expired_beyond_the_leeway_is_refused_but_one_within_it_is_accepted() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;

    let expired = issuer.sign(&with(good_claims(&issuer), "exp", json!(now() - 60)))?;
    let reason = assert_invalid(verifier.verify(&expired).await, "expired")?;
    assert!(reason.contains("expired"), "{reason}");

    let within_leeway = issuer.sign(&with(good_claims(&issuer), "exp", json!(now() - 10)))?;
    verifier.verify(&within_leeway).await?;

    let no_exp = issuer.sign(&without(good_claims(&issuer), "exp"))?;
    assert_invalid(verifier.verify(&no_exp).await, "no exp")?;
    Ok(())
}

#[tokio::test]
async fn a_verified_token_is_not_accepted_past_its_expiry() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings { leeway: Duration::ZERO, ..VerifierSettings::default() })?;
    let token = issuer.sign(&with(good_claims(&issuer), "exp", json!(now() + 2)))?;
    verifier.verify(&token).await.context("before its expiry")?;
    verifier.verify(&token).await.context("again, before its expiry")?;

    tokio::time::sleep(Duration::from_millis(3100)).await;

    let reason = assert_invalid(verifier.verify(&token).await, "after its expiry")?;
    assert!(reason.contains("expired"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn a_token_whose_nbf_is_in_the_future_is_refused() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;

    let premature = issuer.sign(&with(good_claims(&issuer), "nbf", json!(now() + 120)))?;

    let reason = assert_invalid(verifier.verify(&premature).await, "nbf in the future")?;
    assert!(reason.contains("not valid yet"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn registered_claims_of_the_wrong_type_or_missing_are_refused() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let good = good_claims(&issuer);
    let later = now() + 3600;
    let cases = [
        // The CVE-2026-25537 token: a not-before an hour ahead, written as a string.
        ("a string nbf in the future", with(good.clone(), "nbf", json!(later.to_string()))),
        ("a string nbf in the past", with(good.clone(), "nbf", json!((now() - 60).to_string()))),
        ("a null nbf", with(good.clone(), "nbf", Value::Null)),
        ("a string exp", with(good.clone(), "exp", json!(later.to_string()))),
        ("a boolean exp", with(good.clone(), "exp", json!(true))),
        ("a null exp", with(good.clone(), "exp", Value::Null)),
        ("no exp", without(good.clone(), "exp")),
        ("a string iat", with(good.clone(), "iat", json!(now().to_string()))),
        ("an object iat", with(good.clone(), "iat", json!({"at": now()}))),
        ("a numeric aud", with(good.clone(), "aud", json!(42))),
        ("an aud array holding a number", with(good.clone(), "aud", json!([AUDIENCE, 42]))),
        ("no aud", without(good.clone(), "aud")),
        ("a scope array", with(good.clone(), "scope", json!(["orders:read"]))),
        ("a numeric scope", with(good.clone(), "scope", json!(7))),
        ("a null scope", with(good.clone(), "scope", Value::Null)),
        ("a numeric sub", with(good.clone(), "sub", json!(12))),
        ("an array iss", with(good.clone(), "iss", json!([issuer.issuer_url()]))),
    ];
    for (what, claims) in cases {
        assert_invalid(verifier.verify(&issuer.sign(&claims)?).await, what)?;
    }

    // NumericDate may be fractional (RFC 7519 §2), and a token without the optional claims is fine.
    let fractional = with(good.clone(), "exp", json!(now() as f64 + 300.5));
    verifier.verify(&issuer.sign(&fractional)?).await.context("a fractional exp")?;
    let minimal = without(without(good, "iat"), "scope");
    verifier.verify(&issuer.sign(&minimal)?).await.context("no iat, nbf or scope")?;
    Ok(())
}

#[tokio::test]
async fn a_tampered_payload_is_refused() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let token = issuer.mint("analyst", &["orders:read"], Duration::from_secs(300))?;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.get(1).context("no payload")?)?)?;
    claims["scope"] = json!("orders:read orders:write admin");

    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);

    let reason = assert_invalid(verifier.verify(&forged).await, "tampered")?;
    assert!(reason.contains("signature"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn scp_azp_and_a_missing_sub_are_read_like_other_servers_send_them() -> Result<()> {
    let issuer = start_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let claims = without(without(without(good_claims(&issuer), "scope"), "sub"), "client_id");

    let token = issuer.sign(&with(
        with(claims.clone(), "scp", json!(["orders:read", "shipments:read"])),
        "azp",
        json!("analyst"),
    ))?;
    let principal = verifier.verify(&token).await?;
    assert_eq!((principal.subject.as_str(), principal.client_id.as_str()), ("analyst", "analyst"));
    assert_eq!(principal.scopes, BTreeSet::from(["orders:read".to_owned(), "shipments:read".to_owned()]));

    let token = issuer.sign(&with(with(claims.clone(), "scp", json!("a b")), "sub", json!("user-1")))?;
    let principal = verifier.verify(&token).await?;
    assert_eq!((principal.subject.as_str(), principal.client_id.as_str()), ("user-1", "user-1"));
    assert_eq!(principal.scopes, BTreeSet::from(["a".to_owned(), "b".to_owned()]));

    let anonymous = issuer.sign(&claims)?;
    assert_invalid(verifier.verify(&anonymous).await, "neither sub nor client")?;
    Ok(())
}

#[tokio::test]
async fn an_unknown_kid_is_refused_without_refetching_the_jwks_within_the_refresh_interval() -> Result<()> {
    let issuer = start_issuer().await?;
    let stranger = start_issuer().await?;
    let verifier = Arc::new(verifier_for(&issuer, VerifierSettings::default())?);
    verifier.verify(&issuer.mint("analyst", &[], Duration::from_secs(300))?).await?;
    assert_eq!(issuer.jwks_fetches(), 1);

    // Right issuer and audience, but signed by a key the issuer never published, each with a fresh kid.
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..20 {
        stranger.rotate_key()?;
        let token = stranger.sign(&good_claims(&issuer))?;
        let verifier = Arc::clone(&verifier);
        attempts.spawn(async move { verifier.verify(&token).await });
    }
    for result in attempts.join_all().await {
        let reason = assert_invalid(result, "unknown kid")?;
        assert!(reason.contains("unknown signing key"), "{reason}");
    }

    assert_eq!(issuer.jwks_fetches(), 1);
    Ok(())
}

#[tokio::test]
async fn concurrent_unknown_kids_after_the_refresh_interval_cause_exactly_one_refetch() -> Result<()> {
    let issuer = start_issuer().await?;
    let stranger = start_issuer().await?;
    let settings = VerifierSettings { min_refresh_interval: Duration::from_secs(1), ..VerifierSettings::default() };
    let verifier = Arc::new(verifier_for(&issuer, settings)?);
    verifier.verify(&issuer.mint("analyst", &[], Duration::from_secs(300))?).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let token = stranger.sign(&good_claims(&issuer))?;
        let verifier = Arc::clone(&verifier);
        attempts.spawn(async move { verifier.verify(&token).await });
    }
    for result in attempts.join_all().await {
        assert_invalid(result, "unknown kid")?;
    }

    assert_eq!(issuer.jwks_fetches(), 2);
    Ok(())
}

#[tokio::test]
async fn a_key_rotated_at_the_issuer_is_picked_up_without_restarting_the_verifier() -> Result<()> {
    let issuer = start_issuer().await?;
    let settings = VerifierSettings { min_refresh_interval: Duration::from_millis(200), ..VerifierSettings::default() };
    let verifier = verifier_for(&issuer, settings)?;
    let before = issuer.mint("analyst", &["orders:read"], Duration::from_secs(300))?;
    verifier.verify(&before).await?;

    let new_kid = issuer.rotate_key()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = issuer.mint("analyst", &["orders:read"], Duration::from_secs(300))?;

    assert_eq!(jsonwebtoken::decode_header(&after)?.kid, Some(new_kid));
    assert_eq!(verifier.verify(&after).await?.client_id, "analyst");
    assert_eq!(verifier.verify(&before).await?.client_id, "analyst");
    assert_eq!(issuer.jwks_fetches(), 2);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_issuer_is_an_unexpected_error_not_an_invalid_token() -> Result<()> {
    let issuer = start_issuer().await?;
    let token = issuer.mint("analyst", &[], Duration::from_secs(300))?;
    let url = issuer.issuer_url().to_owned();
    drop(issuer);
    let verifier = JwksVerifier::new(url, AUDIENCE, VerifierSettings::default())?;

    for _ in 0..2 {
        let result = verifier.verify(&token).await;
        assert!(matches!(result, Err(AuthError::Unexpected(_))), "{result:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_client_secret_gets_401_invalid_client() -> Result<()> {
    let issuer = start_issuer().await?;
    let grant = [("grant_type", "client_credentials")];

    for (id, secret) in [("sales-client", "dev-secret-admin"), ("sales-client", ""), ("nobody", "dev-secret-sales")] {
        let (status, body) = request_token(&issuer, &grant, Some((id, secret))).await?;
        assert_eq!((status, &body["error"]), (401, &json!("invalid_client")), "{id}:{secret}");
    }
    let (status, body) = request_token(&issuer, &grant, None).await?;
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")), "no credentials");
    let post = [("grant_type", "client_credentials"), ("client_id", "analyst"), ("client_secret", "nope")];
    let (status, body) = request_token(&issuer, &post, None).await?;
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")), "client_secret_post");
    Ok(())
}

#[tokio::test]
async fn asking_for_a_scope_the_client_lacks_gets_invalid_scope() -> Result<()> {
    let issuer = start_issuer().await?;

    let form = [("grant_type", "client_credentials"), ("scope", "orders:read admin")];
    let (status, body) = request_token(&issuer, &form, Some(("analyst", "dev-secret-analyst"))).await?;

    assert_eq!((status, &body["error"]), (400, &json!("invalid_scope")), "{body}");
    Ok(())
}

#[tokio::test]
async fn another_grant_type_gets_unsupported_grant_type() -> Result<()> {
    let issuer = start_issuer().await?;

    let form = [("grant_type", "password"), ("username", "u"), ("password", "p")];
    let (status, body) = request_token(&issuer, &form, Some(("analyst", "dev-secret-analyst"))).await?;

    assert_eq!((status, &body["error"]), (400, &json!("unsupported_grant_type")), "{body}");
    Ok(())
}

#[tokio::test]
async fn the_discovery_document_points_at_the_token_and_jwks_endpoints() -> Result<()> {
    let issuer = start_issuer().await?;

    let url = format!("{}/.well-known/openid-configuration", issuer.issuer_url());
    let doc: Value = reqwest::get(url).await?.json().await?;

    assert_eq!(doc["issuer"], json!(issuer.issuer_url()));
    assert_eq!(doc["token_endpoint"], json!(issuer.token_url()));
    assert_eq!(doc["jwks_uri"], json!(issuer.jwks_url()));
    assert_eq!(doc["grant_types_supported"], json!(["client_credentials", "authorization_code"]));
    assert_eq!(doc["token_endpoint_auth_methods_supported"], json!(["client_secret_basic", "client_secret_post"]));
    Ok(())
}

/// Serves a fixed discovery document and `jwks` on port 0, for key types the dev issuer does not make.
async fn start_static_issuer(keys: Value) -> Result<(String, tokio::task::JoinHandle<()>)> {
    use poem::{Route, Server, endpoint::make_sync, get, listener::TcpAcceptor, web::Json};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let discovery = json!({ "issuer": url, "jwks_uri": format!("{url}/jwks") });
    let jwks = json!({ "keys": keys });
    let app = Route::new()
        .at("/.well-known/openid-configuration", get(make_sync(move |_| Json(discovery.clone()))))
        .at("/jwks", get(make_sync(move |_| Json(jwks.clone()))));
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    let server = tokio::spawn(async move {
        let _ = Server::new_with_acceptor(acceptor).run(app).await;
    });
    Ok((url, server))
}

fn rsa_jwk(kid: &str, extra: &[(&str, &str)]) -> Value {
    let mut jwk = json!({ "kty": "RSA", "kid": kid, "n": TEST_RSA_MODULUS, "e": "AQAB" });
    for (name, value) in extra {
        jwk = with(jwk, name, json!(value));
    }
    jwk
}

fn rsa_signed(url: &str, alg: Algorithm, kid: &str) -> Result<String> {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let claims = json!({ "iss": url, "sub": "svc", "aud": AUDIENCE, "exp": now() + 300, "scope": "orders:read" });
    Ok(jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(TEST_RSA_PRIVATE_KEY.as_bytes())?)?)
}

#[tokio::test]
async fn rsa_keys_verify_rs256_and_ps256_as_their_jwk_allows() -> Result<()> {
    let keys = json!([
        rsa_jwk("any-rsa", &[("use", "sig")]),
        rsa_jwk("rs-only", &[("alg", "RS256")]),
        rsa_jwk("encryption", &[("use", "enc")]),
        rsa_jwk("rs512", &[("alg", "RS512")]),
        // An HMAC secret published by mistake must never become a verification key.
        { "kty": "oct", "kid": "shared", "k": URL_SAFE_NO_PAD.encode(b"secret") },
        // A key we cannot parse must not hide the others.
        { "kty": "EC", "kid": "broken", "crv": "P-256" },
    ]);
    let (url, server) = start_static_issuer(keys).await?;
    let verifier = JwksVerifier::new(url.as_str(), AUDIENCE, VerifierSettings::default())?;

    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let principal = verifier.verify(&rsa_signed(&url, alg, "any-rsa")?).await?;
        assert_eq!(principal.client_id, "svc", "{alg:?}");
    }
    verifier.verify(&rsa_signed(&url, Algorithm::RS256, "rs-only")?).await?;
    let reason = assert_invalid(verifier.verify(&rsa_signed(&url, Algorithm::PS256, "rs-only")?).await, "PS256")?;
    assert!(reason.contains("does not match"), "{reason}");
    for kid in ["encryption", "rs512"] {
        let reason = assert_invalid(verifier.verify(&rsa_signed(&url, Algorithm::RS256, kid)?).await, kid)?;
        assert!(reason.contains("unknown signing key"), "{kid}: {reason}");
    }
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("shared".to_owned());
    let claims = json!({ "iss": url, "sub": "svc", "aud": AUDIENCE, "exp": now() + 300 });
    let hs256 = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(b"secret"))?;
    assert_invalid(verifier.verify(&hs256).await, "HS256 with a published oct key")?;

    server.abort();
    Ok(())
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_not_trusted() -> Result<()> {
    let (url, server) = start_static_issuer(json!([rsa_jwk("any-rsa", &[])])).await?;
    let token = rsa_signed(&format!("{url}/"), Algorithm::RS256, "any-rsa")?;
    let verifier = JwksVerifier::new(format!("{url}/"), AUDIENCE, VerifierSettings::default())?;

    let result = verifier.verify(&token).await;

    assert!(matches!(result, Err(AuthError::Unexpected(_))), "{result:?}");
    server.abort();
    Ok(())
}

// The authorization-code grant with PKCE, as the delivery console and a browser use it.

/// Where the console wants the browser back; nothing listens there, since the browser here follows no redirect.
const CONSOLE_REDIRECT: &str = "http://127.0.0.1:5173/auth/callback";

/// The console as an `oauth2` client: authorization and token endpoints set.
type Console = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// An issuer knowing the machine clients, the console and the default users.
fn console_issuer() -> DevIssuer {
    let mut clients = DevClient::defaults();
    clients.push(DevClient::console(CONSOLE_REDIRECT));
    DevIssuer::new(AUDIENCE, clients).with_users(DevUser::defaults())
}

async fn start_console_issuer() -> Result<RunningIssuer> {
    Ok(console_issuer().bind("127.0.0.1:0".parse()?).await?)
}

fn console_for(issuer: &RunningIssuer, client_id: &str, secret: &str) -> Result<Console> {
    Ok(BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_client_secret(ClientSecret::new(secret.to_owned()))
        .set_auth_uri(AuthUrl::new(issuer.authorize_url())?)
        .set_token_uri(TokenUrl::new(issuer.token_url())?)
        .set_redirect_uri(RedirectUrl::new(CONSOLE_REDIRECT.to_owned())?))
}

fn console(issuer: &RunningIssuer) -> Result<Console> {
    console_for(issuer, CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET)
}

/// A browser, and the console's HTTP client, that follow no redirect, so tests see where the issuer sends them.
fn browser() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?)
}

/// An authorization request as the console makes it: the URL, its state and the PKCE verifier.
fn authorization_request(console: &Console, scopes: &[&str]) -> (Url, CsrfToken, PkceCodeVerifier) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = console
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.iter().map(|scope| Scope::new((*scope).to_owned())))
        .set_pkce_challenge(challenge)
        .url();
    (url, state, verifier)
}

/// A response read whole: status, headers and body.
struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    async fn read(response: reqwest::Response) -> Result<Page> {
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        Ok(Page { status, headers, body: response.text().await? })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The hidden fields of the sign-in form, decoded as a browser decodes them.
    fn hidden_fields(&self) -> Result<Vec<(String, String)>> {
        let field = Regex::new(r#"<input type="hidden" name="([^"]*)" value="([^"]*)">"#)?;
        Ok(field.captures_iter(&self.body).map(|c| (html_unescape(&c[1]), html_unescape(&c[2]))).collect())
    }
}

/// Undoes askama's escaping (`&#38;` last, so an escaped entity is not decoded twice).
fn html_unescape(text: &str) -> String {
    text.replace("&#34;", "\"").replace("&#39;", "'").replace("&#60;", "<").replace("&#62;", ">").replace("&#38;", "&")
}

async fn open(browser: &reqwest::Client, url: &str) -> Result<Page> {
    Page::read(browser.get(url).send().await?).await
}

/// Submits the sign-in form of `page` as a browser would, with `fields` changed or added.
async fn submit(
    browser: &reqwest::Client,
    issuer: &RunningIssuer,
    page: &Page,
    fields: &[(&str, &str)],
) -> Result<Page> {
    ensure!(page.body.contains(r#"<form method="post" action="/authorize">"#), "no sign-in form: {}", page.body);
    let mut form: Vec<(String, String)> = page
        .hidden_fields()?
        .into_iter()
        .filter(|(name, _)| fields.iter().all(|(changed, _)| name != changed))
        .collect();
    form.extend(fields.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())));
    Page::read(browser.post(issuer.authorize_url()).form(&form).send().await?).await
}

/// The query parameters of the 303 that sends the browser back to the console.
fn redirect_params(page: &Page) -> Result<HashMap<String, String>> {
    ensure!(page.status == 303, "status {}, not a 303: {}", page.status, page.body);
    let location = Url::parse(page.header("location").context("a 303 without Location")?)?;
    ensure!(location.as_str().starts_with(&format!("{CONSOLE_REDIRECT}?")), "redirected to {location}");
    Ok(location.query_pairs().into_owned().collect())
}

/// Signs `username` in through the console's authorization request and returns the code and its verifier.
async fn sign_in(
    issuer: &RunningIssuer,
    console: &Console,
    scopes: &[&str],
    username: &str,
    password: &str,
) -> Result<(AuthorizationCode, PkceCodeVerifier)> {
    let browser = browser()?;
    let (url, state, verifier) = authorization_request(console, scopes);
    let page = open(&browser, url.as_str()).await?;
    ensure!(page.status == 200, "status {}: {}", page.status, page.body);

    let back = submit(&browser, issuer, &page, &[("username", username), ("password", password)]).await?;

    let params = redirect_params(&back)?;
    ensure!(params.get("state") == Some(state.secret()), "state not passed through: {params:?}");
    let code = params.get("code").with_context(|| format!("no code: {params:?}"))?;
    Ok((AuthorizationCode::new(code.clone()), verifier))
}

fn expect_invalid_grant<T: Debug, E: std::error::Error + 'static>(
    result: std::result::Result<T, RequestTokenError<E, BasicErrorResponse>>,
    what: &str,
) -> Result<()> {
    match result {
        Err(RequestTokenError::ServerResponse(error)) if *error.error() == BasicErrorResponseType::InvalidGrant => {
            Ok(())
        }
        other => bail!("{what}: expected invalid_grant, got {other:?}"),
    }
}

#[tokio::test]
async fn a_staff_member_signs_in_through_the_console_and_gets_a_token_of_their_own() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let console = console(&issuer)?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let (code, pkce_verifier) = sign_in(&issuer, &console, &[], "staff", "dev-password-staff").await?;

    let token = console.exchange_code(code).set_pkce_verifier(pkce_verifier).request_async(&browser()?).await?;

    let scopes: Vec<&str> = token.scopes().context("no scope in the response")?.iter().map(|s| s.as_str()).collect();
    assert_eq!(scopes, ["shipments:read", "shipments:write"]);
    let principal = verifier.verify(token.access_token().secret()).await?;
    assert_eq!(principal.subject, "staff");
    assert_eq!(principal.client_id, CONSOLE_CLIENT_ID);
    assert_eq!(principal.scopes, BTreeSet::from(["shipments:read".to_owned(), "shipments:write".to_owned()]));
    Ok(())
}

#[tokio::test]
async fn a_viewer_gets_only_the_scopes_a_viewer_has() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let console = console(&issuer)?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;
    let scopes = ["shipments:read", "shipments:write"];
    let (code, pkce_verifier) = sign_in(&issuer, &console, &scopes, "viewer", "dev-password-viewer").await?;

    let token = console.exchange_code(code).set_pkce_verifier(pkce_verifier).request_async(&browser()?).await?;

    let principal = verifier.verify(token.access_token().secret()).await?;
    assert_eq!((principal.subject.as_str(), principal.client_id.as_str()), ("viewer", CONSOLE_CLIENT_ID));
    assert_eq!(principal.scopes, BTreeSet::from(["shipments:read".to_owned()]));
    Ok(())
}

#[tokio::test]
async fn a_user_with_none_of_the_requested_scopes_is_sent_back_with_access_denied() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let browser = browser()?;
    let (url, state, _) = authorization_request(&console(&issuer)?, &["shipments:write"]);
    let page = open(&browser, url.as_str()).await?;

    let back = submit(&browser, &issuer, &page, &[("username", "viewer"), ("password", "dev-password-viewer")]).await?;

    let params = redirect_params(&back)?;
    assert_eq!(params.get("error").map(String::as_str), Some("access_denied"), "{params:?}");
    assert_eq!(params.get("state"), Some(state.secret()));
    assert!(!params.contains_key("code"), "{params:?}");
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_or_an_unknown_user_shows_the_page_again_with_401_and_no_redirect() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let browser = browser()?;
    let (url, state, _) = authorization_request(&console(&issuer)?, &[]);
    let page = open(&browser, url.as_str()).await?;
    ensure!(!page.body.contains("role=\"alert\""), "an error before any attempt: {}", page.body);

    for (username, password) in
        [("staff", "dev-password-viewer"), ("staff", ""), ("nobody", "dev-password-staff"), ("", "")]
    {
        let again = submit(&browser, &issuer, &page, &[("username", username), ("password", password)]).await?;

        let case = format!("{username:?}/{password:?}");
        assert_eq!(again.status, 401, "{case}: {}", again.body);
        assert_eq!(again.header("location"), None, "{case}");
        assert!(again.body.contains(r#"<p role="alert" id="error">Wrong username or password.</p>"#), "{case}");
        assert_eq!(again.hidden_fields()?, page.hidden_fields()?, "{case}: the request is not carried on");
    }
    let failed = submit(&browser, &issuer, &page, &[("username", "staff"), ("password", "wrong")]).await?;
    let back = submit(&browser, &issuer, &failed, &[("username", "staff"), ("password", "dev-password-staff")]).await?;
    assert_eq!(redirect_params(&back)?.get("state"), Some(state.secret()), "signing in after a failure");
    Ok(())
}

#[tokio::test]
async fn an_authorization_code_is_redeemed_only_once() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let console = console(&issuer)?;
    let http = browser()?;
    let (code, pkce_verifier) = sign_in(&issuer, &console, &[], "staff", "dev-password-staff").await?;
    let verifier_again = PkceCodeVerifier::new(pkce_verifier.secret().clone());

    console.exchange_code(code.clone()).set_pkce_verifier(pkce_verifier).request_async(&http).await?;
    let second = console.exchange_code(code).set_pkce_verifier(verifier_again).request_async(&http).await;

    expect_invalid_grant(second, "the second redemption")
}

#[tokio::test]
async fn a_wrong_code_verifier_is_invalid_grant_and_spends_the_code() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let console = console(&issuer)?;
    let http = browser()?;
    let (code, pkce_verifier) = sign_in(&issuer, &console, &[], "staff", "dev-password-staff").await?;
    let (_, someone_elses) = PkceCodeChallenge::new_random_sha256();

    let wrong = console.exchange_code(code.clone()).set_pkce_verifier(someone_elses).request_async(&http).await;
    let right_but_late = console.exchange_code(code).set_pkce_verifier(pkce_verifier).request_async(&http).await;

    expect_invalid_grant(wrong, "a wrong verifier")?;
    expect_invalid_grant(right_but_late, "the right verifier after a wrong one")
}

#[tokio::test]
async fn a_code_is_refused_to_another_client_and_with_another_redirect_uri() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let console = console(&issuer)?;
    let http = browser()?;

    let (code, pkce_verifier) = sign_in(&issuer, &console, &[], "staff", "dev-password-staff").await?;
    let other_client = console_for(&issuer, "delivery-staff", "dev-secret-delivery")?;
    let stolen = other_client.exchange_code(code).set_pkce_verifier(pkce_verifier).request_async(&http).await;
    expect_invalid_grant(stolen, "redeemed by another client")?;

    let (code, pkce_verifier) = sign_in(&issuer, &console, &[], "staff", "dev-password-staff").await?;
    let elsewhere = RedirectUrl::new("http://127.0.0.1:5173/elsewhere".to_owned())?;
    let moved = console
        .exchange_code(code)
        .set_pkce_verifier(pkce_verifier)
        .set_redirect_uri(Cow::Owned(elsewhere))
        .request_async(&http)
        .await;
    expect_invalid_grant(moved, "another redirect_uri")
}

#[tokio::test]
async fn an_expired_code_is_invalid_grant() -> Result<()> {
    let mut config = console_issuer();
    config.code_lifetime = Duration::from_millis(300);
    let issuer = config.bind("127.0.0.1:0".parse()?).await?;
    let console = console(&issuer)?;
    let (code, pkce_verifier) = sign_in(&issuer, &console, &[], "staff", "dev-password-staff").await?;

    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = console.exchange_code(code).set_pkce_verifier(pkce_verifier).request_async(&browser()?).await;

    expect_invalid_grant(late, "an expired code")
}

#[tokio::test]
async fn an_unregistered_redirect_uri_or_client_gets_a_400_page_and_no_redirect() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let browser = browser()?;
    let console = console(&issuer)?;
    let evil = "https://evil.example/callback";
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let request = |client: &Console, redirect: &str| -> Result<Url> {
        Ok(client
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge.clone())
            .set_redirect_uri(Cow::Owned(RedirectUrl::new(redirect.to_owned())?))
            .url()
            .0)
    };
    let mut without_redirect = request(&console, CONSOLE_REDIRECT)?;
    let kept: Vec<(String, String)> =
        without_redirect.query_pairs().into_owned().filter(|(name, _)| name != "redirect_uri").collect();
    without_redirect.query_pairs_mut().clear().extend_pairs(kept);
    let cases = [
        ("an unregistered redirect_uri", request(&console, evil)?),
        ("a longer redirect_uri", request(&console, &format!("{CONSOLE_REDIRECT}/more"))?),
        ("a redirect_uri with a query", request(&console, &format!("{CONSOLE_REDIRECT}?next=https://evil.example"))?),
        ("no redirect_uri", without_redirect),
        ("an unknown client", request(&console_for(&issuer, "nobody", "none")?, CONSOLE_REDIRECT)?),
        ("a client without redirect URIs", request(&console_for(&issuer, "sales-client", "x")?, CONSOLE_REDIRECT)?),
    ];

    for (case, url) in cases {
        let page = open(&browser, url.as_str()).await?;

        assert_eq!(page.status, 400, "{case}: {}", page.body);
        assert_eq!(page.header("location"), None, "{case}");
        assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")), "{case}");
        assert!(!page.body.contains("<form"), "{case}: {}", page.body);
        assert!(!page.body.contains("evil.example"), "{case}: {}", page.body);
        let csp = page.header("content-security-policy").context("no CSP")?;
        assert!(csp.contains("form-action 'self';"), "{case}: {csp}");
    }

    // The form's hidden fields come from the browser: the sign-in itself checks them again.
    let (url, _, _) = authorization_request(&console, &[]);
    let page = open(&browser, url.as_str()).await?;
    let fields = [("redirect_uri", evil), ("username", "staff"), ("password", "dev-password-staff")];
    let tampered = submit(&browser, &issuer, &page, &fields).await?;
    assert_eq!((tampered.status, tampered.header("location")), (400, None), "{}", tampered.body);
    Ok(())
}

#[tokio::test]
async fn the_plain_challenge_method_or_no_challenge_is_sent_back_as_invalid_request() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let browser = browser()?;
    let console = console(&issuer)?;
    // oauth2 makes `plain` challenges only behind a feature, so the parameters are written by hand.
    let (with_plain, plain_state) = console
        .authorize_url(CsrfToken::new_random)
        .add_extra_param("code_challenge", "a".repeat(64))
        .add_extra_param("code_challenge_method", "plain")
        .url();
    let (without_pkce, bare_state) = console.authorize_url(CsrfToken::new_random).url();

    for (case, url, state) in [("plain", with_plain, plain_state), ("no PKCE", without_pkce, bare_state)] {
        let page = open(&browser, url.as_str()).await?;

        let params = redirect_params(&page).context(case)?;
        assert_eq!(params.get("error").map(String::as_str), Some("invalid_request"), "{case}: {params:?}");
        assert!(params.contains_key("error_description"), "{case}: {params:?}");
        assert_eq!(params.get("state"), Some(state.secret()), "{case}");
    }

    let (url, _, _) = authorization_request(&console, &[]);
    let page = open(&browser, url.as_str()).await?;
    let fields = [("code_challenge_method", "plain"), ("username", "staff"), ("password", "dev-password-staff")];
    let tampered = submit(&browser, &issuer, &page, &fields).await?;
    let params = redirect_params(&tampered)?;
    assert_eq!(params.get("error").map(String::as_str), Some("invalid_request"), "{params:?}");
    assert!(!params.contains_key("code"), "{params:?}");
    Ok(())
}

#[tokio::test]
async fn another_response_type_or_a_scope_the_client_lacks_is_sent_back_as_an_error() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let browser = browser()?;
    let console = console(&issuer)?;
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let (implicit, _) =
        console.authorize_url(CsrfToken::new_random).set_pkce_challenge(challenge).use_implicit_flow().url();
    let (foreign_scope, _, _) = authorization_request(&console, &["shipments:read", "orders:read"]);

    for (url, error) in [(implicit, "unsupported_response_type"), (foreign_scope, "invalid_scope")] {
        let page = open(&browser, url.as_str()).await?;

        let params = redirect_params(&page)?;
        assert_eq!(params.get("error").map(String::as_str), Some(error), "{params:?}");
    }
    Ok(())
}

#[tokio::test]
async fn the_hidden_fields_are_html_escaped_and_the_state_survives_the_round_trip() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let browser = browser()?;
    let hostile = r#""><script>alert('x')</script>&amp;"#;
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let (url, _) =
        console(&issuer)?.authorize_url(|| CsrfToken::new(hostile.to_owned())).set_pkce_challenge(challenge).url();

    let page = open(&browser, url.as_str()).await?;

    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("<script"), "{}", page.body);
    assert!(
        page.body.contains(
            r#"name="state" value="&#34;&#62;&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62;&#38;amp;">"#
        ),
        "{}",
        page.body
    );
    let back = submit(&browser, &issuer, &page, &[("username", "staff"), ("password", "dev-password-staff")]).await?;
    assert_eq!(redirect_params(&back)?.get("state").map(String::as_str), Some(hostile));
    Ok(())
}

#[tokio::test]
async fn the_sign_in_page_is_accessible_and_forbids_framing_caching_and_inline_code() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let browser = browser()?;
    let (url, _, _) = authorization_request(&console(&issuer)?, &[]);

    let page = open(&browser, url.as_str()).await?;

    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-security-policy"),
        Some(
            "default-src 'none'; style-src 'self'; form-action 'self' http://127.0.0.1:5173; \
             frame-ancestors 'none'; base-uri 'none'"
        )
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    for expected in [
        r#"<html lang="en">"#,
        "orderflow dev issuer",
        r#"<form method="post" action="/authorize">"#,
        r#"<label for="username">"#,
        r#"<input id="username" name="username" autocomplete="username""#,
        r#"<label for="password">"#,
        r#"<input id="password" name="password" type="password" autocomplete="current-password""#,
        r#"<button id="sign-in" type="submit">Sign in</button>"#,
    ] {
        assert!(page.body.contains(expected), "missing {expected}: {}", page.body);
    }
    for forbidden in ["<script", "style=", "<style", CONSOLE_CLIENT_SECRET, "dev-password", "dev-secret"] {
        assert!(!page.body.contains(forbidden), "found {forbidden:?}: {}", page.body);
    }
    assert!(!Regex::new(r"\son[a-z]+=")?.is_match(&page.body), "an inline event handler: {}", page.body);
    let css = open(&browser, &format!("{}/authorize.css", issuer.issuer_url())).await?;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").is_some_and(|t| t.starts_with("text/css")), "{:?}", css.headers);
    Ok(())
}

#[tokio::test]
async fn a_client_with_redirect_uris_can_still_use_the_client_credentials_grant() -> Result<()> {
    let issuer = start_console_issuer().await?;
    let verifier = verifier_for(&issuer, VerifierSettings::default())?;

    let grant = [("grant_type", "client_credentials"), ("scope", "shipments:read")];
    let (status, body) = request_token(&issuer, &grant, Some((CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET))).await?;

    ensure!(status == 200, "status {status}: {body}");
    let principal = verifier.verify(body["access_token"].as_str().context("no access_token")?).await?;
    assert_eq!((principal.subject.as_str(), principal.client_id.as_str()), (CONSOLE_CLIENT_ID, CONSOLE_CLIENT_ID));
    assert_eq!(principal.scopes, BTreeSet::from(["shipments:read".to_owned()]));
    Ok(())
}

#[tokio::test]
async fn the_discovery_document_announces_the_authorization_code_grant_with_s256_only() -> Result<()> {
    let issuer = start_console_issuer().await?;

    let url = format!("{}/.well-known/oauth-authorization-server", issuer.issuer_url());
    let doc: Value = reqwest::get(url).await?.json().await?;

    assert_eq!(doc["authorization_endpoint"], json!(issuer.authorize_url()));
    assert_eq!(doc["token_endpoint"], json!(issuer.token_url()));
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(doc["grant_types_supported"], json!(["client_credentials", "authorization_code"]));
    Ok(())
}

#[tokio::test]
async fn a_redirect_uri_that_is_not_an_absolute_url_without_fragment_fails_the_start() -> Result<()> {
    for uri in ["/relative/callback", "http://127.0.0.1:5173/callback#fragment", "not a url"] {
        let clients = vec![DevClient::console(uri)];

        let result = DevIssuer::new(AUDIENCE, clients).bind("127.0.0.1:0".parse()?).await;

        let error = result.err().with_context(|| format!("{uri} was accepted"))?;
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{uri}: {error}");
    }
    Ok(())
}

#[test]
fn debug_output_keeps_user_passwords_and_client_secrets_out() {
    let user = format!("{:?}", DevUser::defaults());
    let client = format!("{:?}", DevClient::console(CONSOLE_REDIRECT));

    assert!(user.contains("staff") && !user.contains("dev-password"), "{user}");
    assert!(client.contains(CONSOLE_CLIENT_ID) && !client.contains(CONSOLE_CLIENT_SECRET), "{client}");
}

#[test]
fn the_default_users_and_the_console_are_as_documented() {
    let defaults = DevUser::defaults();
    let users: Vec<(&str, &str, Vec<&str>)> = defaults
        .iter()
        .map(|u| (u.username.as_str(), u.password.as_str(), u.scopes.iter().map(String::as_str).collect()))
        .collect();
    let console = DevClient::console(CONSOLE_REDIRECT);

    assert_eq!(
        users,
        [
            ("staff", "dev-password-staff", vec!["shipments:read", "shipments:write"]),
            ("viewer", "dev-password-viewer", vec!["shipments:read"]),
        ]
    );
    assert_eq!((console.id.as_str(), console.secret.as_str()), ("delivery-console", "dev-secret-console"));
    assert_eq!(console.scopes, ["shipments:read", "shipments:write"]);
    assert_eq!(console.redirect_uris, [CONSOLE_REDIRECT]);
    assert!(DevClient::defaults().iter().all(|c| c.redirect_uris.is_empty()));
}
