#![doc = include_str!("../README.md")]

pub mod config;
#[cfg(feature = "dev-issuer")]
pub mod dev_issuer;
pub mod http;
pub mod relay;
pub mod service;
pub mod telemetry;
pub mod wiring;
