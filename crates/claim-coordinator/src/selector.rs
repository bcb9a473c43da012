//! Kubernetes label selectors (`metav1.LabelSelector`: `matchLabels` and `matchExpressions` with `In`,
//! `NotIn`, `Exists`, `DoesNotExist`), checked and matched as apimachinery does
//! (`LabelSelectorAsSelector` in `pkg/apis/meta/v1/helpers.go`, `Requirement.Matches` in
//! `pkg/labels/selector.go`): every requirement must hold; `NotIn` and `DoesNotExist` hold for a host
//! without the label. CAPM3 chooses hosts by such a `hostSelector`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector that breaks a rule: the field, its value and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: invalid value {value:?}: {rule}")]
pub struct SelectorError {
    /// The field, e.g. `spec.hostSelector.matchExpressions[1].operator`.
    pub field: String,
    /// The value found there.
    pub value: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

/// What one requirement asks of a label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label is present with one of these values.
    In(BTreeSet<String>),
    /// The label is absent, or present with none of these values.
    NotIn(BTreeSet<String>),
    /// The label is present (any value).
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement on one label key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// What it asks.
    pub operator: Operator,
}

// === impl Requirement ===

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A checked selector: every requirement must hold. The empty selector matches every host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

// === impl Selector ===

impl Selector {
    /// Checks `selector` (found at `field`, for the error).
    ///
    /// # Errors
    ///
    /// [`SelectorError`] for an empty key, an operator other than `In`, `NotIn`, `Exists`,
    /// `DoesNotExist`, `In`/`NotIn` without values, or `Exists`/`DoesNotExist` with values.
    pub fn from_label_selector(
        selector: &LabelSelector,
        field: &str,
    ) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            check_key(key, &format!("{field}.matchLabels"))?;
            requirements.push(Requirement {
                key: key.clone(),
                operator: Operator::In(BTreeSet::from([value.clone()])),
            });
        }
        for (i, expression) in selector.match_expressions.iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            check_key(&expression.key, &format!("{at}.key"))?;
            let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
            let error = |rule| SelectorError {
                field: format!("{at}.values"),
                value: format!("{values:?}"),
                rule,
            };
            let operator = match expression.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(error("In and NotIn need at least one value"));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(error("Exists and DoesNotExist take no values"));
                }
                "In" => Operator::In(values),
                "NotIn" => Operator::NotIn(values),
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError {
                        field: format!("{at}.operator"),
                        value: other.to_owned(),
                        rule: "must be one of In, NotIn, Exists, DoesNotExist",
                    });
                }
            };
            requirements.push(Requirement {
                key: expression.key.clone(),
                operator,
            });
        }
        Ok(Self { requirements })
    }

    /// The selector of tags (found at `field`): a tag `key=value` is `In [value]`, a tag `key` is
    /// `Exists`.
    ///
    /// # Errors
    ///
    /// [`SelectorError`] for a tag with an empty key.
    pub fn from_tags(tags: &[String], field: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (i, tag) in tags.iter().enumerate() {
            let (key, operator) = match tag.split_once('=') {
                Some((key, value)) => (key, Operator::In(BTreeSet::from([value.to_owned()]))),
                None => (tag.as_str(), Operator::Exists),
            };
            check_key(key, &format!("{field}[{i}]"))?;
            requirements.push(Requirement {
                key: key.to_owned(),
                operator,
            });
        }
        Ok(Self { requirements })
    }

    /// Both selectors' requirements (a host must satisfy both).
    #[must_use]
    pub fn and(mut self, other: Self) -> Self {
        self.requirements.extend(other.requirements);
        self
    }

    /// Whether `labels` satisfy every requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector has no requirement (it matches every host).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a requirement names `key`.
    #[must_use]
    pub fn names(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }
}

fn check_key(key: &str, field: &str) -> Result<(), SelectorError> {
    if key.is_empty() {
        return Err(SelectorError {
            field: field.to_owned(),
            value: key.to_owned(),
            rule: "a label key must not be empty",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        expressions: Vec<LabelSelectorRequirement>,
    ) -> Result<Selector, SelectorError> {
        Selector::from_label_selector(
            &LabelSelector {
                match_labels: Some(labels(match_labels)),
                match_expressions: Some(expressions),
            },
            "spec.hostSelector",
        )
    }

    #[test]
    fn the_four_operators_match_as_apimachinery_does() {
        let s = selector(
            &[("rack", "1")],
            vec![
                expression("gpu", "In", &["a100", "h100"]),
                expression("zone", "NotIn", &["dmz"]),
                expression("ssd", "Exists", &[]),
                expression("quarantine", "DoesNotExist", &[]),
            ],
        )
        .unwrap();
        let good = labels(&[("rack", "1"), ("gpu", "h100"), ("ssd", "")]);
        assert!(s.matches(&good));
        // NotIn holds for a present label with another value, and for an absent label.
        let mut with_zone = good.clone();
        with_zone.insert("zone".into(), "lab".into());
        assert!(s.matches(&with_zone));
        for (key, value) in [
            ("rack", "2"),
            ("gpu", "t4"),
            ("zone", "dmz"),
            ("quarantine", "yes"),
        ] {
            let mut bad = good.clone();
            bad.insert(key.into(), value.into());
            assert!(!s.matches(&bad), "{key}={value}");
        }
        let mut no_ssd = good;
        no_ssd.remove("ssd");
        assert!(!s.matches(&no_ssd));
        assert!(Selector::default().matches(&labels(&[])));
        assert!(s.names("quarantine") && !s.names("other"));
    }

    #[test]
    fn a_bad_selector_names_the_field_value_and_rule() {
        let err = selector(&[], vec![expression("gpu", "Gt", &["1"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.hostSelector.matchExpressions[0].operator: invalid value \"Gt\": must be one of In, \
             NotIn, Exists, DoesNotExist"
        );
        let err = selector(&[], vec![expression("gpu", "In", &[])]).unwrap_err();
        assert_eq!(err.field, "spec.hostSelector.matchExpressions[0].values");
        let err = selector(&[], vec![expression("gpu", "Exists", &["x"])]).unwrap_err();
        assert_eq!(err.rule, "Exists and DoesNotExist take no values");
        let err = selector(&[("", "x")], vec![]).unwrap_err();
        assert_eq!(err.field, "spec.hostSelector.matchLabels");
        let err =
            Selector::from_tags(&["ok".into(), "=x".into()], "spec.requiredTags").unwrap_err();
        assert_eq!(err.field, "spec.requiredTags[1]");
    }

    #[test]
    fn tags_are_in_and_exists_requirements() {
        let s =
            Selector::from_tags(&["gpu=a100".into(), "ssd".into()], "spec.requiredTags").unwrap();
        assert!(s.matches(&labels(&[("gpu", "a100"), ("ssd", "")])));
        assert!(!s.matches(&labels(&[("gpu", "h100"), ("ssd", "")])));
        assert!(!s.matches(&labels(&[("gpu", "a100")])));
    }
}
