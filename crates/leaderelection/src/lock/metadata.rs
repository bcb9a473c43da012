//! `LeaseMetadata`: the labels and annotations given to a Lease that [`super::KubeLeaseLock`] creates, and
//! the Kubernetes rules they must follow (apimachinery `pkg/util/validation` and
//! `pkg/api/validation/objectmeta.go`).

use std::collections::BTreeMap;

/// The most bytes the annotations of one object may take, keys and values together: 256 KiB, as
/// kube-apiserver's `TotalAnnotationSizeLimitB`.
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Labels and annotations for a Lease created by [`super::KubeLeaseLock`] (e.g. the labels a GitOps tool
/// needs to keep, rather than prune, a Lease it did not create). A create sets them; an update carries the
/// labels and annotations the Lease has, whoever set them, and puts back those of these it finds missing (a
/// key the Lease has keeps its value), so that no write of the lock drops what the lock set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseMetadata {
    /// `metadata.labels`: keys are qualified names, values at most 63 characters.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`: keys are qualified names, values anything (all of them at most
    /// [`ANNOTATIONS_MAX_BYTES`]).
    pub annotations: BTreeMap<String, String>,
}

/// Why a label or an annotation breaks a Kubernetes rule; the message names the value and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// A label or annotation key that is not a qualified name (`[prefix/]name`).
    #[error("invalid key {key:?}: {rule}")]
    InvalidKey {
        /// The key.
        key: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A label value that is not valid.
    #[error("invalid value {value:?} of label {key:?}: {rule}")]
    InvalidLabelValue {
        /// The label's key.
        key: String,
        /// The value.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The annotations take more than [`ANNOTATIONS_MAX_BYTES`].
    #[error("annotations take {bytes} bytes: must have at most {ANNOTATIONS_MAX_BYTES} bytes")]
    AnnotationsTooLarge {
        /// Their size, keys and values, in bytes.
        bytes: usize,
    },
}

const NAME_RULE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start \
                         and end with an alphanumeric character (e.g. 'MyName', 'my.name', '123-abc'), at \
                         most 63 characters";
const PREFIX_RULE: &str = "prefix part must be a lowercase RFC 1123 subdomain (e.g. 'example.com'), at most \
                           253 characters";
const VALUE_RULE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', \
                          '_' or '.', and must start and end with an alphanumeric character, at most 63 \
                          characters";

// === impl LeaseMetadata ===

impl LeaseMetadata {
    /// Checks every label and annotation.
    ///
    /// # Errors
    ///
    /// The first [`MetadataError`] found, labels first, in key order.
    pub fn validate(&self) -> Result<(), MetadataError> {
        for (key, value) in &self.labels {
            validate_label(key, value)?;
        }
        for key in self.annotations.keys() {
            validate_key(key)?;
        }
        let bytes = self
            .annotations
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if bytes > ANNOTATIONS_MAX_BYTES {
            return Err(MetadataError::AnnotationsTooLarge { bytes });
        }
        Ok(())
    }
}

/// Checks one label: its key is a qualified name, its value a label value (apimachinery
/// `IsQualifiedName`, `IsValidLabelValue`).
///
/// # Errors
///
/// [`MetadataError::InvalidKey`] or [`MetadataError::InvalidLabelValue`].
pub fn validate_label(key: &str, value: &str) -> Result<(), MetadataError> {
    validate_key(key)?;
    if !value.is_empty() && !is_name(value) {
        return Err(MetadataError::InvalidLabelValue {
            key: key.to_string(),
            value: value.to_string(),
            rule: VALUE_RULE,
        });
    }
    Ok(())
}

/// Checks a label or annotation key: `[prefix/]name`, the prefix a DNS-1123 subdomain of at most 253
/// characters, the name at most 63 alphanumeric characters, `-`, `_`, `.`, starting and ending
/// alphanumeric (apimachinery `IsQualifiedName`).
///
/// # Errors
///
/// [`MetadataError::InvalidKey`].
pub fn validate_key(key: &str) -> Result<(), MetadataError> {
    let invalid = |rule| MetadataError::InvalidKey {
        key: key.to_string(),
        rule,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(invalid(PREFIX_RULE));
    }
    if !is_name(name) {
        return Err(invalid(NAME_RULE));
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn is_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A lowercase RFC 1123 subdomain of at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values_follow_kubernetes_rules() {
        for (key, value) in [
            ("app", "leader"),
            ("app.kubernetes.io/part-of", "my_app.v1-2"),
            ("argocd.argoproj.io/instance", ""),
            ("A1", "Z9"),
        ] {
            assert_eq!(validate_label(key, value), Ok(()), "{key}={value}");
        }
        for key in [
            "",
            "-app",
            "app-",
            "a b",
            "Example.com/app",
            "/app",
            "example.com/",
            "a/b/c",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(
                    validate_label(key, "v"),
                    Err(MetadataError::InvalidKey { .. })
                ),
                "{key:?}"
            );
        }
        for value in ["-v", "v-", "a b", "a/b", &"v".repeat(64)] {
            assert!(
                matches!(
                    validate_label("k", value),
                    Err(MetadataError::InvalidLabelValue { .. })
                ),
                "{value:?}"
            );
        }
    }

    #[test]
    fn annotations_have_checked_keys_any_values_and_a_total_size() {
        let mut metadata = LeaseMetadata::default();
        metadata
            .annotations
            .insert("example.com/note".into(), "any value / at all: ok".into());
        assert_eq!(metadata.validate(), Ok(()));
        metadata.annotations.insert("bad key".into(), String::new());
        assert!(matches!(
            metadata.validate(),
            Err(MetadataError::InvalidKey { key, .. }) if key == "bad key"
        ));
        metadata.annotations.remove("bad key");
        metadata
            .annotations
            .insert("big".into(), "x".repeat(ANNOTATIONS_MAX_BYTES));
        assert!(matches!(
            metadata.validate(),
            Err(MetadataError::AnnotationsTooLarge { .. })
        ));
    }
}
