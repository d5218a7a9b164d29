#![doc = include_str!("../README.md")]

pub mod config;
pub mod http;
pub mod notifications;
pub mod pressure;
pub mod service;
pub mod startup;
pub mod webhooks;
pub mod workers;

pub use startup::{Application, Mail, SalesAdapters, SalesSettings, SalesSetup, SeedProduct};
