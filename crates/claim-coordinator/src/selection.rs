//! Which hosts a claim may take, and which one it gets: the host selector (`spec.hostSelector`, a Kubernetes
//! label selector, and `spec.requiredTags`) and the minimums are hard; preferred tags rank; among equals,
//! the host the fewest other pending claims could use (so a simple claim does not take the only host a
//! constrained claim needs), then the best fit (fewest labels the claim did not name, then the fewest CPU
//! cores and GiB beyond its minimums: claims arriving later may need the special hosts); then a
//! deterministic spread by the claim's name, so that a retry picks the same host and different claims
//! start at different hosts.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::provider::Host;
use crate::resources::HostClaimSpec;
use crate::selector::{Selector, SelectorError};

/// What a claim asks of a host, checked once: the selector, the preferred tags, the minimums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `spec.hostSelector` and `spec.requiredTags`: every requirement must hold.
    pub selector: Selector,
    /// `spec.preferredTags` (`key=value` or `key`): hosts with more of them are chosen first.
    pub preferred_tags: Vec<String>,
    /// Minimum CPU cores (0: any).
    pub min_cpu_cores: u32,
    /// Minimum memory in GiB (0: any).
    pub min_memory_gib: u32,
}

// === impl Requirements ===

impl Requirements {
    /// The requirements of a claim's spec.
    ///
    /// # Errors
    ///
    /// [`SelectorError`] naming the field of `spec.hostSelector` or `spec.requiredTags` that breaks a
    /// rule.
    pub fn from_spec(spec: &HostClaimSpec) -> Result<Self, SelectorError> {
        let mut selector = Selector::from_tags(&spec.required_tags, "spec.requiredTags")?;
        if let Some(host_selector) = &spec.host_selector {
            selector = selector.and(Selector::from_label_selector(
                host_selector,
                "spec.hostSelector",
            )?);
        }
        // Checked for an empty key too; only ranking uses them.
        Selector::from_tags(&spec.preferred_tags, "spec.preferredTags")?;
        Ok(Self {
            selector,
            preferred_tags: spec.preferred_tags.clone(),
            min_cpu_cores: spec.min_cpu_cores,
            min_memory_gib: spec.min_memory_gib,
        })
    }

    /// Whether the claim asks for no label at all (Beskar7's "simple" claim, which gets the +50 priority).
    #[must_use]
    pub fn is_simple(&self) -> bool {
        self.selector.is_empty() && self.preferred_tags.is_empty()
    }

    /// Whether the claim names the label `key` (in its selector or its preferred tags).
    fn names(&self, key: &str) -> bool {
        self.selector.names(key)
            || self
                .preferred_tags
                .iter()
                .any(|t| t.split_once('=').map_or(t.as_str(), |(k, _)| k) == key)
    }
}

/// What selection needs to know of one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The host's name.
    pub name: String,
    /// Its tags (labels).
    pub tags: BTreeMap<String, String>,
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory in GiB.
    pub memory_gib: u32,
}

// === impl Candidate ===

impl Candidate {
    /// A host as a candidate (its labels, its hardware).
    #[must_use]
    pub fn from_host<H: Host>(host: &H) -> Self {
        let hardware = host.capacity();
        Self {
            name: host.name_any(),
            tags: host.labels().clone(),
            cpu_cores: hardware.cpu_cores,
            memory_gib: hardware.memory_gib,
        }
    }

    /// Whether the host has `tag`: `key=value` needs that label, `key` the label with any value.
    #[must_use]
    pub fn has_tag(&self, tag: &str) -> bool {
        match tag.split_once('=') {
            Some((key, value)) => self.tags.get(key).is_some_and(|v| v == value),
            None => self.tags.contains_key(tag),
        }
    }

    /// Whether a claim with `claim` may take this host: its selector matches, and at least the minimums.
    #[must_use]
    pub fn fits(&self, claim: &Requirements) -> bool {
        self.cpu_cores >= claim.min_cpu_cores
            && self.memory_gib >= claim.min_memory_gib
            && claim.selector.matches(&self.tags)
    }

    /// What the host has beyond what `claim` asks: (labels it did not name, CPU cores and GiB above its
    /// minimums). Smaller is a better fit.
    #[must_use]
    pub fn surplus(&self, claim: &Requirements) -> (usize, u32, u32) {
        (
            self.tags.keys().filter(|k| !claim.names(k)).count(),
            self.cpu_cores.saturating_sub(claim.min_cpu_cores),
            self.memory_gib.saturating_sub(claim.min_memory_gib),
        )
    }

    /// How many of `claim`'s preferred tags the host has.
    #[must_use]
    pub fn preference(&self, claim: &Requirements) -> usize {
        claim
            .preferred_tags
            .iter()
            .filter(|t| self.has_tag(t))
            .count()
    }
}

/// Chooses a host for the claim `name` with `spec` among `available` hosts, given the `others` still
/// pending in this batch (served after it). Returns an index into `available`, `None` when none fits.
#[must_use]
pub fn choose(
    name: &str,
    spec: &Requirements,
    available: &[Candidate],
    others: &[&Requirements],
) -> Option<usize> {
    let fitting: Vec<usize> = (0..available.len())
        .filter(|&i| available[i].fits(spec))
        .collect();
    let best_preference = fitting
        .iter()
        .map(|&i| available[i].preference(spec))
        .max()?;
    let preferred: Vec<usize> = fitting
        .into_iter()
        .filter(|&i| available[i].preference(spec) == best_preference)
        .collect();
    let rank = |i: usize| {
        (
            others.iter().filter(|o| available[i].fits(o)).count(),
            available[i].surplus(spec),
        )
    };
    let best = preferred.iter().map(|&i| rank(i)).min()?;
    let mut ties: Vec<usize> = preferred.into_iter().filter(|&i| rank(i) == best).collect();
    ties.sort_by(|&a, &b| available[a].name.cmp(&available[b].name));
    Some(ties[spread(name, ties.len())])
}

/// A stable index in `0..len` from `key` (FNV-1a), so the same claim picks the same host on a retry.
#[must_use]
pub fn spread(key: &str, len: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % u64::try_from(len.max(1)).unwrap_or(1)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, tags: &[(&str, &str)], cpu: u32, mem: u32) -> Candidate {
        Candidate {
            name: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            cpu_cores: cpu,
            memory_gib: mem,
        }
    }

    fn spec(required: &[&str], preferred: &[&str], cpu: u32, mem: u32) -> Requirements {
        Requirements::from_spec(&HostClaimSpec {
            image_url: "http://images/os.iso".into(),
            required_tags: required.iter().map(|t| (*t).to_owned()).collect(),
            preferred_tags: preferred.iter().map(|t| (*t).to_owned()).collect(),
            min_cpu_cores: cpu,
            min_memory_gib: mem,
            ..HostClaimSpec::default()
        })
        .unwrap()
    }

    #[test]
    fn required_tags_and_minimums_are_hard() {
        let hosts = [
            host("small-gpu", &[("gpu", "a100")], 8, 32),
            host("big", &[], 64, 512),
            host("big-gpu-h", &[("gpu", "h100")], 64, 512),
        ];
        let want = spec(&["gpu=a100"], &[], 16, 0);
        assert_eq!(choose("c", &want, &hosts, &[]), None);
        let want = spec(&["gpu"], &[], 16, 64);
        assert_eq!(choose("c", &want, &hosts, &[]), Some(2));
        assert!(hosts[0].has_tag("gpu") && hosts[0].has_tag("gpu=a100"));
        assert!(!hosts[0].has_tag("gpu=h100") && !hosts[1].has_tag("gpu"));
    }

    #[test]
    fn preferred_tags_rank_hosts() {
        let hosts = [
            host("a", &[("rack", "1")], 8, 32),
            host("b", &[("rack", "2"), ("ssd", "")], 8, 32),
            host("c", &[("rack", "2")], 8, 32),
        ];
        let want = spec(&[], &["rack=2", "ssd"], 0, 0);
        assert_eq!(choose("c", &want, &hosts, &[]), Some(1));
        let want = spec(&[], &["rack=2"], 0, 0);
        let chosen = choose("x", &want, &hosts, &[]).unwrap();
        assert!(chosen == 1 || chosen == 2, "{chosen}");
    }

    #[test]
    fn a_simple_claim_leaves_the_only_host_a_constrained_claim_needs() {
        let hosts = [
            host("plain-small", &[], 8, 32),
            host("plain-big", &[], 64, 512),
        ];
        let simple = spec(&[], &[], 0, 0);
        let big = spec(&[], &[], 32, 0);
        // The pending claim needs the big host; the simple one takes the small host (both rules agree).
        for name in ["a", "b", "c", "d", "e", "f"] {
            assert_eq!(choose(name, &simple, &hosts, &[&big]), Some(0));
        }
        // A pending claim that needs the small host's tag makes the simple claim take the big host,
        // against its fit: demand ranks before fit.
        let hosts = [
            host("tagged-small", &[("gpu", "a100")], 8, 32),
            host("plain-big", &[], 64, 512),
        ];
        let constrained = spec(&["gpu"], &[], 0, 0);
        for name in ["a", "b", "c", "d", "e", "f"] {
            assert_eq!(choose(name, &simple, &hosts, &[&constrained]), Some(1));
        }
        // Without competition the spread decides between equal hosts.
        let hosts = [host("plain-1", &[], 8, 32), host("plain-2", &[], 8, 32)];
        let picks: std::collections::BTreeSet<_> = ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .filter_map(|n| choose(n, &simple, &hosts, &[]))
            .collect();
        assert_eq!(picks.len(), 2);
    }

    #[test]
    fn among_equals_the_best_fit_is_taken() {
        let hosts = [
            host("big-gpu", &[("gpu", "a100"), ("rack", "1")], 64, 512),
            host("big", &[("rack", "1")], 64, 512),
            host("small", &[("rack", "1")], 8, 32),
            host("small-2", &[("rack", "2")], 8, 32),
        ];
        // Nobody else is pending: still, the simple claim leaves the GPU and the big hosts.
        let picked = choose("x", &spec(&[], &[], 0, 0), &hosts, &[]).unwrap();
        assert!(picked == 2 || picked == 3, "{picked}");
        assert_eq!(choose("x", &spec(&[], &[], 16, 0), &hosts, &[]), Some(1));
        // A tag the claim names is not surplus.
        assert_eq!(
            choose("x", &spec(&["rack=2"], &[], 0, 0), &hosts, &[]),
            Some(3)
        );
        assert_eq!(hosts[0].surplus(&spec(&["gpu"], &[], 32, 0)), (1, 32, 512));
    }

    #[test]
    fn a_host_selector_is_hard_and_its_keys_are_not_surplus() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement,
        };
        let hosts = [
            host("gpu-rack-1", &[("gpu", "a100"), ("rack", "1")], 8, 32),
            host("rack-1", &[("rack", "1")], 8, 32),
            host(
                "rack-2-quarantined",
                &[("rack", "2"), ("quarantine", "")],
                8,
                32,
            ),
            host("rack-3", &[("rack", "3")], 8, 32),
        ];
        let expression = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        };
        let with_selector = |expressions| {
            Requirements::from_spec(&HostClaimSpec {
                host_selector: Some(LabelSelector {
                    match_labels: None,
                    match_expressions: Some(expressions),
                }),
                ..HostClaimSpec::default()
            })
            .unwrap()
        };
        // NotIn rack=1 and no quarantine label: only rack-3 fits.
        let want = with_selector(vec![
            expression("rack", "NotIn", &["1"]),
            expression("quarantine", "DoesNotExist", &[]),
        ]);
        assert!(!want.is_simple());
        for name in ["a", "b", "c", "d"] {
            assert_eq!(choose(name, &want, &hosts, &[]), Some(3));
        }
        // A set: rack In (1, 2) without a GPU.
        let want = with_selector(vec![
            expression("rack", "In", &["1", "2"]),
            expression("gpu", "DoesNotExist", &[]),
        ]);
        assert_eq!(choose("x", &want, &hosts, &[]), Some(1));
        // The keys the selector names are not surplus: rack-1 has none.
        assert_eq!(hosts[1].surplus(&want), (0, 8, 32));
        assert_eq!(hosts[0].surplus(&spec(&[], &[], 0, 0)), (2, 8, 32));
        // With required tags too, both must hold: rack=3 is not in (1, 2).
        let mut both = want;
        both.selector = both
            .selector
            .and(crate::selector::Selector::from_tags(&["rack=3".into()], "t").unwrap());
        assert_eq!(choose("x", &both, &hosts, &[]), None);
    }

    #[test]
    fn the_spread_is_deterministic_and_covers_every_index() {
        assert_eq!(spread("claim-1", 7), spread("claim-1", 7));
        let hit: std::collections::BTreeSet<_> =
            (0..200).map(|i| spread(&format!("claim-{i}"), 7)).collect();
        assert_eq!(hit.len(), 7);
        assert_eq!(spread("x", 0), 0);
    }
}
