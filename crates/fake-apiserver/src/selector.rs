//! Selectors of list and watch requests: `fieldSelector` and `labelSelector`.

use std::collections::HashMap;

use serde_json::Value;

use crate::status::ApiError;

/// `fieldSelector` (`metadata.name`, `metadata.namespace`) and `labelSelector` (equality and existence).
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
enum Term {
    Field {
        path: &'static str,
        value: String,
        equal: bool,
    },
    Label {
        key: String,
        value: Option<String>,
        equal: bool,
    },
}

impl Selector {
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in query
            .get("fieldSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
            .filter(|t| !t.is_empty())
        {
            let (key, value, equal) = split_term(term).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ))
            })?;
            let path = match key {
                "metadata.name" => "/metadata/name",
                "metadata.namespace" => "/metadata/namespace",
                other => {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {other}"
                    )));
                }
            };
            terms.push(Term::Field {
                path,
                value: value.to_owned(),
                equal,
            });
        }
        for term in query
            .get("labelSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
            .filter(|t| !t.is_empty())
        {
            let term = term.trim();
            if let Some((key, value, equal)) = split_term(term) {
                terms.push(Term::Label {
                    key: key.to_owned(),
                    value: Some(value.to_owned()),
                    equal,
                });
            } else if let Some(key) = term.strip_prefix('!') {
                terms.push(Term::Label {
                    key: key.trim().to_owned(),
                    value: None,
                    equal: false,
                });
            } else if !term.contains([' ', '(', ')']) {
                terms.push(Term::Label {
                    key: term.to_owned(),
                    value: None,
                    equal: true,
                });
            } else {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: set-based label selectors are not supported: {term}"
                )));
            }
        }
        Ok(Self { terms })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|term| match term {
            Term::Field { path, value, equal } => {
                (object
                    .pointer(path)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    == value)
                    == *equal
            }
            Term::Label { key, value, equal } => {
                let label = object
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(key))
                    .and_then(Value::as_str);
                match value {
                    Some(value) => (label == Some(value.as_str())) == *equal,
                    None => label.is_some() == *equal,
                }
            }
        })
    }
}

/// `k=v`, `k==v` or `k!=v` as (key, value, equal).
fn split_term(term: &str) -> Option<(&str, &str, bool)> {
    if let Some((k, v)) = term.split_once("!=") {
        return Some((k.trim(), v.trim(), false));
    }
    let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
    Some((k.trim(), v.trim(), true))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::route::parse_query;

    #[test]
    fn selectors_filter_by_name_and_labels() {
        let q = parse_query(Some(
            "fieldSelector=metadata.name%3Da&labelSelector=app%3Dx,!gone",
        ));
        let s = Selector::parse(&q).unwrap();
        assert!(s.matches(&json!({"metadata": {"name": "a", "labels": {"app": "x"}}})));
        assert!(!s.matches(&json!({"metadata": {"name": "b", "labels": {"app": "x"}}})));
        assert!(
            !s.matches(&json!({"metadata": {"name": "a", "labels": {"app": "x", "gone": "1"}}}))
        );
        let bad = parse_query(Some("fieldSelector=spec.holderIdentity%3Dx"));
        assert_eq!(
            Selector::parse(&bad).unwrap_err().message,
            "field label not supported: spec.holderIdentity"
        );
    }
}
