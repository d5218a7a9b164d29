//! The `delivery-api` binary's configuration, from the environment or the same-named flags: the
//! variables both services share plus the autopilot's.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use orderflow_runtime::config::{SharedConfig, duration};

use url::Url;

use crate::console::{ConsoleSettings, SessionKey};
use crate::startup::{DeliverySettings, DeliverySetup};
use crate::workers::AutopilotSettings;

/// Everything the `delivery-api` binary reads.
#[derive(Debug, Clone, Parser)]
#[command(name = "delivery-api", version, about = "orderflow's Delivery API: shipments")]
pub struct DeliveryConfig {
    /// The variables both services read.
    #[command(flatten)]
    pub shared: SharedConfig,
    /// Where to listen.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub http_addr: SocketAddr,
    /// The service's schema.
    #[arg(long, env = "DATABASE_SCHEMA", default_value = "delivery")]
    pub database_schema: String,
    /// Autopilot: ship pending shipments after this long (with AUTOPILOT_DELIVER_AFTER; off when unset).
    #[arg(long, env = "AUTOPILOT_SHIP_AFTER", value_parser = duration, requires = "autopilot_deliver_after")]
    pub autopilot_ship_after: Option<Duration>,
    /// Autopilot: deliver shipped shipments after this long (with AUTOPILOT_SHIP_AFTER).
    #[arg(long, env = "AUTOPILOT_DELIVER_AFTER", value_parser = duration, requires = "autopilot_ship_after")]
    pub autopilot_deliver_after: Option<Duration>,
    /// The console's client id at the issuer.
    #[arg(long, env = "CONSOLE_CLIENT_ID", default_value = "delivery-console")]
    pub console_client_id: String,
    /// The console's client secret; the console at /console is off without it.
    #[arg(long, env = "CONSOLE_CLIENT_SECRET", hide_env_values = true)]
    pub console_client_secret: Option<String>,
    /// Where browsers reach this service (default `http://HTTP_ADDR`); the issuer must know
    /// `{CONSOLE_URL}/console/callback` as the console's redirect URI.
    #[arg(long, env = "CONSOLE_URL")]
    pub console_url: Option<Url>,
    /// Base64 of at least 64 random bytes that console sessions are encrypted with; replicas share it.
    /// Without it each process draws its own and sessions end with it.
    #[arg(long, env = "CONSOLE_SESSION_KEY", hide_env_values = true, value_parser = SessionKey::parse)]
    pub console_session_key: Option<SessionKey>,
}

impl DeliveryConfig {
    /// The service these variables describe: every port on its real server.
    pub fn setup(&self) -> DeliverySetup {
        let autopilot = self
            .autopilot_ship_after
            .zip(self.autopilot_deliver_after)
            .map(|(ship_after, deliver_after)| AutopilotSettings { ship_after, deliver_after });
        let console = self.console_client_secret.as_ref().map(|secret| ConsoleSettings {
            client_id: self.console_client_id.clone(),
            client_secret: secret.clone(),
            public_url: self.console_url.clone(),
            session_key: self.console_session_key.clone(),
        });
        DeliverySetup {
            settings: DeliverySettings { http_addr: self.http_addr, autopilot, console, ..DeliverySettings::default() },
            wiring: self.shared.wiring(&self.database_schema),
        }
    }
}

#[cfg(test)]
mod tests {
    use orderflow_runtime::config::ParseLocally;

    use super::*;

    #[test]
    fn the_autopilot_needs_both_delays() {
        for (given, missing) in [
            ("--autopilot-ship-after=1s", "AUTOPILOT_DELIVER_AFTER"),
            ("--autopilot-deliver-after=1s", "AUTOPILOT_SHIP_AFTER"),
        ] {
            let error = DeliveryConfig::parse_locally(&[given]).err().unwrap();
            assert!(error.to_string().contains(missing), "{error}");
        }
        let both = ["--autopilot-ship-after=50ms", "--autopilot-deliver-after=2s"];
        let config = DeliveryConfig::parse_locally(&both).unwrap();
        let autopilot = config.setup().settings.autopilot.unwrap();
        assert_eq!(
            (autopilot.ship_after, autopilot.deliver_after),
            (Duration::from_millis(50), Duration::from_secs(2))
        );
    }
}
