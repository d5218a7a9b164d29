#![doc = include_str!("../README.md")]

pub mod audit;
pub mod bench;
pub mod bench_drain;
pub mod bench_e2e;
pub mod dev;
pub mod dlq;
pub mod schema;
pub mod token;
