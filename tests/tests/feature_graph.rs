//! What goes into each binary: the service binaries must not carry the dev issuer, whose client secrets
//! and signing endpoints are public, while `orderflow dev` needs it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};

/// The features cargo enables on `orderflow-adapters` when it builds `package` on its own, as the Dockerfile
/// and `stack.sh` build the services (built together with `orderflow`, cargo would unify them).
fn adapter_features_of(package: &str) -> anyhow::Result<Vec<String>> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("tests/ has a parent")?;
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args(["tree", "--locked", "-p", package, "-e", "features", "-i", "orderflow-adapters"])
        .args(["--prefix", "none", "--format", "{p} {f}"])
        .output()
        .context("running cargo tree")?;
    ensure!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let tree = String::from_utf8(output.stdout)?;
    let features = tree
        .lines()
        .filter_map(|line| line.strip_prefix("orderflow-adapters feature \""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    Ok(features)
}

#[test]
fn the_service_binaries_are_built_without_the_dev_issuer() -> anyhow::Result<()> {
    for service in ["sales-api", "delivery-api"] {
        let features = adapter_features_of(service)?;
        ensure!(features.iter().any(|f| f == "auth"), "{service}: no `auth` feature in {features:?}: the query is off");
        ensure!(!features.iter().any(|f| f == "dev-issuer"), "{service} is built with the dev issuer: {features:?}");
    }
    Ok(())
}

#[test]
fn orderflow_dev_is_built_with_the_dev_issuer() -> anyhow::Result<()> {
    let features = adapter_features_of("orderflow")?;
    ensure!(features.iter().any(|f| f == "dev-issuer"), "orderflow lacks the dev issuer: {features:?}");
    Ok(())
}
