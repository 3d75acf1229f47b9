//! A gracepool manager for Redis (being written).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
