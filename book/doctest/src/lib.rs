//! The gracepool guide's snippets, as doctests.
//!
//! Each chapter of `book/src` is included below as the doc comment of an empty module, so
//! `cargo test --workspace` compiles every Rust code block of the book and runs those not
//! marked `no_run`. A snippet that stops compiling, or whose assertions stop holding, fails
//! the build: the book cannot drift from the code.
//!
//! Code that is compiled elsewhere is shown with mdbook's `{{#include file:anchor}}` in an
//! `ignore`d block (the example services, the tests), and so are the few snippets that need
//! gracepool-postgres' optional features (`PgConfig` with `serde`, `RustlsConnect` with
//! `rustls`): this crate depends on gracepool-postgres without them, and the same code is
//! compiled as gracepool-postgres' crate documentation.
#![forbid(unsafe_code)]

// The README's examples too: the first thing a user copies.
#[doc = include_str!("../../../README.md")]
mod readme {}
#[doc = include_str!("../../src/ch00-introduction.md")]
mod ch00_introduction {}
#[doc = include_str!("../../src/ch01-why.md")]
mod ch01_why {}
#[doc = include_str!("../../src/ch02-quick-start.md")]
mod ch02_quick_start {}
#[doc = include_str!("../../src/ch03-manager.md")]
mod ch03_manager {}
#[doc = include_str!("../../src/ch04-close-protocol.md")]
mod ch04_close_protocol {}
#[doc = include_str!("../../src/ch05-configuration.md")]
mod ch05_configuration {}
#[doc = include_str!("../../src/ch06-observability.md")]
mod ch06_observability {}
#[doc = include_str!("../../src/ch07-performance.md")]
mod ch07_performance {}
#[doc = include_str!("../../src/ch08-comparison.md")]
mod ch08_comparison {}
#[doc = include_str!("../../src/ch09-migrating.md")]
mod ch09_migrating {}
#[doc = include_str!("../../src/ch10-troubleshooting.md")]
mod ch10_troubleshooting {}
#[doc = include_str!("../../src/ch11-postgres.md")]
mod ch11_postgres {}
#[doc = include_str!("../../src/ch12-redis.md")]
mod ch12_redis {}
#[doc = include_str!("../../src/ch13-recipes.md")]
mod ch13_recipes {}
#[doc = include_str!("../../src/ch14-runtime-facts.md")]
mod ch14_runtime_facts {}
#[doc = include_str!("../../src/ch15-network-failures.md")]
mod ch15_network_failures {}
#[doc = include_str!("../../src/ch16-database-moves.md")]
mod ch16_database_moves {}
#[doc = include_str!("../../src/ch17-running-a-fleet.md")]
mod ch17_running_a_fleet {}
#[doc = include_str!("../../src/ch18-blocking-backends.md")]
mod ch18_blocking_backends {}
