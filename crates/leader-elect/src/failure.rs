//! A subcommand's failure and its exit code.

/// A failure and its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Usage or configuration error: exit 2.
    Usage(anyhow::Error),
    /// Runtime failure: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Self::Runtime(err)
    }
}
