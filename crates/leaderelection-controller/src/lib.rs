//! What runs around the leader elector in a highly available controller: the event bus and the four
//! leader-election events, the event adapter ([`Component`]), Prometheus metrics, structured logs, the admin
//! HTTP server, the supervisor of all-replica and leader-only components, and the YAML configuration.

pub mod settings;
