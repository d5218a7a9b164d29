#![doc = include_str!("../README.md")]

pub mod config;
pub mod http;
pub mod pressure;
pub mod service;
pub mod startup;
pub mod workers;

pub use startup::{Application, SalesAdapters, SalesSettings, SalesSetup};
