//! Tests of the elector.
