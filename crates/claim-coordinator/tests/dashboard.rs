//! The Grafana dashboards of `deploy/grafana/` name only metrics the code registers: every metric name in
//! a panel's `expr` and in a variable's query is a sample name of the registry the process serves on
//! `/metrics` (`claim-coordinator run`: the coordinator's metrics and the election's; `leader-elect run`:
//! the election's).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use claim_coordinator::metrics::{Metrics, Outcome};
use leaderelection::{Callbacks, Config, LockError, MemoryLeaseStore, Observer, Phase, Request};
use leaderelection_controller::{Election, Policy, Supervisor, SupervisorError};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The sample names the text exposition `text` can hold, from its `# TYPE NAME TYPE` lines: a gauge's
/// samples are `NAME`, a counter's `NAME_total`, a histogram's `NAME_bucket`, `NAME_sum` and `NAME_count`
/// (the OpenMetrics text format, which prometheus-client writes). Names of families without samples yet are
/// included, so a metric recorded only at run time still counts as registered.
fn sample_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(descriptor) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = descriptor
            .split_once(' ')
            .unwrap_or_else(|| panic!("a TYPE line without type: {line}"));
        let suffixes: &[&str] = match kind {
            "gauge" => &[""],
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            other => panic!("metric type {other} of {name} not handled by this test"),
        };
        names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
    }
    names
}

/// The names of the samples `text` holds (its lines that are not comments).
fn recorded_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

fn encoded(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("encoding to a String cannot fail");
    text
}

/// The claim coordinator's metrics with every one recorded (as `every_registered_metric_is_recorded` in
/// `src/metrics.rs`).
fn coordinator_registry() -> Registry {
    let mut registry = Registry::default();
    let metrics = Metrics::for_namespace(&mut registry, "pool");
    metrics.leader_election_event("started_leading");
    metrics.leadership_duration("pod-a", 1.5);
    metrics.attempt(Outcome::ConflictAlreadyClaimed);
    metrics.result(Outcome::Success, 0.01);
    metrics.batch(3, 42.0, 2);
    registry
}

/// The election's metrics, registered as `Runtime` registers them (into the registry it serves), with
/// every one recorded: the families (`_slowpath`, `_api_errors`, `_component_*`) are encoded only once
/// they have a sample. The component failures come from a supervisor whose component fails at once under
/// [`Policy::FailProcess`], on the in-memory lock.
async fn register_election(registry: &mut Registry) {
    let metrics = leaderelection_controller::Metrics::new(registry, "lease");
    metrics.on_slow_path();
    metrics.on_request(&Request {
        verb: "update",
        phase: Phase::Renew,
        latency: Duration::from_millis(5),
        error: Some(&LockError::Timeout),
    });
    let (callbacks, supervised) = Supervisor::new(Policy::FailProcess)
        .all_replica("failing", |_| async { Err("failing".into()) })
        .with_metrics(metrics)
        .bind(Callbacks::new());
    let config = Config::new("a", "lease", "default");
    let election = Election::builder(config, MemoryLeaseStore::new().lock("a"))
        .callbacks(callbacks)
        .build()
        .expect("the default timings are valid");
    let result = supervised.run(election, CancellationToken::new()).await;
    assert!(
        matches!(result, Err(SupervisorError::Failed(_))),
        "{result:?}"
    );
}

/// Keywords followed by a list of label names, not of expressions.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other PromQL keywords and literals that are not metric names.
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];

/// The index just past the group that opens at `start` (`open` there) and closes with `close`, skipping
/// string literals; the end of `chars` when it never closes.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i) - 1,
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    chars.len()
}

/// The index just past the string literal that opens at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' && quote != '`' {
            2
        } else {
            1
        };
    }
    i + 1
}

/// The metric names a PromQL expression selects: identifiers that are not functions or aggregations
/// (followed by `(`, `by` or `without`), not label names (inside `{...}`, or after `by`, `on`, ...), not keywords, not
/// Grafana variables (`$name`, `${name}`), not inside strings, ranges (`[5m]`) or numbers.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let next_non_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '{', '}');
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration: 0.99, 1e3, 0x1f, 5m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = next_non_space(i);
            let next_word: String = chars[after..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            // A function or an aggregation: `rate(`, `sum (`, `sum by (le) (`.
            let call =
                chars.get(after) == Some(&'(') || next_word == "by" || next_word == "without";
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = skip_group(&chars, after, '(', ')');
                }
            } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The metric names of a variable's query: `label_values(EXPR, LABEL)` names EXPR's metrics
/// (`label_values(LABEL)` none); any other query is read as an expression.
fn query_metric_names(query: &str) -> Vec<String> {
    let query = query.trim();
    match query
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        Some(args) => match args.rsplit_once(',') {
            Some((expr, _label)) => metric_names(expr),
            None => Vec::new(),
        },
        None => metric_names(query),
    }
}

/// Every `(where, query, metric names)` of a dashboard: each target's `expr` of each panel (rows' nested
/// panels included) and each query variable's query. Fails when a panel other than a row has no `expr`.
fn dashboard_queries(path: &Path) -> Vec<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    let dashboard: Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()));
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no panels", path.display()))
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        let title = panel["title"].as_str().unwrap_or_default();
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|target| target["expr"].as_str())
            .collect();
        assert!(
            panel["type"] == "row" || !exprs.is_empty(),
            "{}: panel {title:?} has no expr",
            path.display()
        );
        for expr in exprs {
            queries.push((
                format!("panel {title:?}"),
                expr.to_owned(),
                metric_names(expr),
            ));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or_default();
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap_or_else(|| panic!("{}: variable {name} has no query", path.display()));
        queries.push((
            format!("variable {name:?}"),
            query.to_owned(),
            query_metric_names(query),
        ));
    }
    queries
}

/// Fails naming each query of `dashboard` (under the repository's `deploy/grafana/`) that names a metric
/// not in `registered`, or names none.
fn assert_registered(dashboard: &str, registered: &BTreeSet<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/grafana")
        .join(dashboard);
    let queries = dashboard_queries(&path);
    assert!(!queries.is_empty(), "{dashboard}: no queries");
    let mut unknown = Vec::new();
    for (place, query, names) in &queries {
        assert!(
            !names.is_empty(),
            "{dashboard}: {place}: no metric in {query}"
        );
        for name in names {
            if !registered.contains(name) {
                unknown.push(format!("{place}: {name} in {query}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{dashboard} names metrics the code does not register:\n{}\nregistered: {registered:?}",
        unknown.join("\n")
    );
}

#[test]
fn the_type_lines_give_the_sample_names() {
    // Every coordinator metric is recorded: the sample names are exactly the ones the TYPE lines give.
    let text = encoded(&coordinator_registry());
    assert_eq!(recorded_names(&text), sample_names(&text), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_claim_coordinator_dashboard_names_registered_metrics() {
    let mut registry = coordinator_registry();
    register_election(&mut registry).await;
    assert_registered("claim-coordinator.json", &sample_names(&encoded(&registry)));
}

#[tokio::test(start_paused = true)]
async fn the_leader_election_dashboard_names_registered_metrics() {
    let mut registry = Registry::default();
    register_election(&mut registry).await;
    assert_registered("leader-election.json", &sample_names(&encoded(&registry)));
}

#[test]
fn metric_names_are_told_from_functions_labels_and_variables() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(a_bucket{namespace=~\"$namespace\", x=\"}\"}[5m]))) \
             / on (instance) group_left (pod) b == 1 and ignoring(le) c offset 5m * 60 + d:rule[${interval}]"
        ),
        ["a_bucket", "b", "c", "d:rule"]
    );
    assert_eq!(
        query_metric_names("label_values(m{namespace=~\"$namespace\"}, job)"),
        ["m"]
    );
    assert!(query_metric_names("label_values(job)").is_empty());
}
