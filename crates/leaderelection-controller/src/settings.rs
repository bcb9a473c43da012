//! YAML configuration (being written).
