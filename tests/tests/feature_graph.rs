//! What goes into each crate and binary: the service binaries must not carry the dev issuer, whose client
//! secrets and signing endpoints are public, while `orderflow dev` needs it; the adapters serve no HTTP.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};

/// The features cargo enables on `orderflow-runtime` when it builds `package` on its own, as the Dockerfile
/// and `stack.sh` build the services (built together with `orderflow`, cargo would unify them).
fn runtime_features_of(package: &str) -> anyhow::Result<Vec<String>> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("tests/ has a parent")?;
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args(["tree", "--locked", "-p", package, "-e", "features", "-i", "orderflow-runtime"])
        .args(["--prefix", "none", "--format", "{p} {f}"])
        .output()
        .context("running cargo tree")?;
    ensure!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout)?;
    ensure!(
        tree.lines().any(|line| line.starts_with("orderflow-runtime v")),
        "{package} does not use the runtime: {tree}"
    );
    let features = tree
        .lines()
        .filter_map(|line| line.strip_prefix("orderflow-runtime feature \""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    Ok(features)
}

#[test]
fn the_service_binaries_are_built_without_the_dev_issuer() -> anyhow::Result<()> {
    for service in ["sales-api", "delivery-api"] {
        let features = runtime_features_of(service)?;
        ensure!(!features.iter().any(|f| f == "dev-issuer"), "{service} is built with the dev issuer: {features:?}");
    }
    Ok(())
}

#[test]
fn orderflow_dev_is_built_with_the_dev_issuer() -> anyhow::Result<()> {
    let features = runtime_features_of("orderflow")?;
    ensure!(features.iter().any(|f| f == "dev-issuer"), "orderflow lacks the dev issuer: {features:?}");
    Ok(())
}

/// Adapters implement ports for one technology each; serving HTTP belongs to the runtime the apps share.
#[test]
fn the_adapters_do_not_serve_http() -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("tests/ has a parent")?;
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args(["tree", "--locked", "-p", "orderflow-adapters", "--all-features", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .context("running cargo tree")?;
    ensure!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout)?;
    ensure!(
        tree.lines().any(|line| line.starts_with("lapin ")),
        "no lapin among the adapters' dependencies: the query is off"
    );
    let servers: Vec<&str> = tree.lines().filter(|line| line.starts_with("poem")).collect();
    ensure!(servers.is_empty(), "the adapters depend on {servers:?}");
    Ok(())
}
