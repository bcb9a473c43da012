//! The lab of the `leaderelection` workspace: what proves the products, apart from what ships
//! (`publish = false`).
//!
//! The binary `leader-elect-lab` runs the demo, the benchmarks and the chaos runs of `leader-elect`, and
//! the claim coordinator's demo and benchmark. It drives `leader-elect` as a user would: it runs the binary
//! ([`products::locate`]) against the fake API server, and reads what the candidates log.
//!
//! This library holds what the lab's tests share with the binary: where the product binaries are
//! ([`products`]), and the claim coordinator's in-process cluster ([`claim_sim`]), built on the
//! `claim-coordinator` library as a provider would build on it.

pub mod claim_sim;
pub mod products;
