//! Integration tests: the HTTP API on both stores, and the store contract.
//!
//! The MongoDB variants need `TEST_MONGO_URI`; `scripts/test.sh` installs and starts a
//! MongoDB-wire server and sets it. Without it they fail, never skip.

mod helpers;

mod batch;
mod compose;
mod concurrency;
mod errors;
mod events;
mod explain;
mod faults;
mod hostile;
mod live;
mod openapi;
mod operations;
mod outage;
mod pagination;
mod process;
mod querying;
mod sessions;
mod slow_clients;
mod store_contract;
mod torture;
