#![doc = include_str!("../README.md")]

pub mod bench;
pub mod dev;
pub mod token;
