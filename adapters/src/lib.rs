#![doc = include_str!("../README.md")]

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(any(all(test, feature = "memory"), feature = "contract"))]
pub mod contract;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "memory")]
pub mod memory;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "memory", feature = "rabbitmq"))]
mod shutdown;
pub mod simulated;
#[cfg(feature = "smtp")]
pub mod smtp;
pub mod system;
#[cfg(feature = "webhook")]
pub mod webhook;
