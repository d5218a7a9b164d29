#![doc = include_str!("../README.md")]

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "memory")]
pub mod memory;
pub mod simulated;
pub mod system;
