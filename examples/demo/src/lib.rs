//! The pieces of gracepool's restart demo: an embedded TCP backend that witnesses what a pool
//! does with its connections, and a real TCP [`Manager`](gracepool::Manager) for it.
//!
//! The demo binary (`cargo run --release -p gracepool-demo`) puts them together: a service
//! whose runtime is restarted again and again while connections are in use.
//!
//! # Example
//!
//! A backend, a pool on tokio, a request, a graceful close, and the backend's account of it:
//!
//! ```
//! use std::time::Duration;
//! use gracepool::Pool;
//! use gracepool_demo::{backend::Backend, tcp::TcpManager};
//! use gracepool_tokio::TokioRuntime;
//!
//! let backend = Backend::start(0).expect("a free port on 127.0.0.1");
//! let rt = tokio::runtime::Builder::new_multi_thread()
//!     .worker_threads(1)
//!     .enable_all()
//!     .build()
//!     .expect("a tokio runtime");
//!
//! let pool = Pool::builder(TcpManager::new(backend.addr()))
//!     .max_size(2)
//!     .runtime(TokioRuntime::from_handle(rt.handle().clone()))
//!     .build()
//!     .expect("a valid configuration");
//!
//! rt.block_on(async {
//!     let mut conn = pool.get().await.expect("a connection");
//!     assert_eq!(conn.request("SET greeting hello").await.unwrap(), "OK");
//!     assert_eq!(conn.request("GET greeting").await.unwrap(), "VALUE hello");
//!     drop(conn);
//!
//!     let report = pool.close().await;
//!     assert_eq!(report.counters.closed_graceful, 1);
//! });
//!
//! // The backend saw one connection, and it ended with a goodbye.
//! let seen = backend.settle(Duration::from_secs(5));
//! assert_eq!((seen.accepted, seen.goodbye, seen.abrupt), (1, 1, 0));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod tcp;
