#![doc = include_str!("../README.md")]

pub mod config;
pub mod console;
pub mod http;
pub mod service;
pub mod startup;
pub mod workers;

pub use startup::{Application, DeliverySettings, DeliverySetup};
