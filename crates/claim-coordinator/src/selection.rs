//! Which hosts a claim may take, and which one it gets: required tags and minimums are hard; preferred tags
//! rank; among equals, the host the fewest other pending claims could use (so a simple claim does not take
//! the only host a constrained claim needs); then a deterministic spread by the claim's name, so that a
//! retry picks the same host and different claims start at different hosts.

use std::collections::BTreeMap;

use crate::resources::{HostClaimSpec, PhysicalHost};

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
    pub fn from_host(host: &PhysicalHost) -> Self {
        let hardware = host.hardware();
        Self {
            name: host.metadata.name.clone().unwrap_or_default(),
            tags: host.tags().clone(),
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

    /// Whether `claim` may take this host: every required tag, and at least the minimums.
    #[must_use]
    pub fn fits(&self, claim: &HostClaimSpec) -> bool {
        self.cpu_cores >= claim.min_cpu_cores
            && self.memory_gib >= claim.min_memory_gib
            && claim.required_tags.iter().all(|t| self.has_tag(t))
    }

    /// How many of `claim`'s preferred tags the host has.
    #[must_use]
    pub fn preference(&self, claim: &HostClaimSpec) -> usize {
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
    spec: &HostClaimSpec,
    available: &[Candidate],
    others: &[&HostClaimSpec],
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
    let demand = |i: usize| others.iter().filter(|o| available[i].fits(o)).count();
    let least = preferred.iter().map(|&i| demand(i)).min()?;
    let mut ties: Vec<usize> = preferred
        .into_iter()
        .filter(|&i| demand(i) == least)
        .collect();
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

    fn spec(required: &[&str], preferred: &[&str], cpu: u32, mem: u32) -> HostClaimSpec {
        HostClaimSpec {
            image_url: "http://images/os.iso".into(),
            required_tags: required.iter().map(|t| (*t).to_owned()).collect(),
            preferred_tags: preferred.iter().map(|t| (*t).to_owned()).collect(),
            min_cpu_cores: cpu,
            min_memory_gib: mem,
        }
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
            host("gpu", &[("gpu", "a100")], 8, 32),
            host("plain", &[], 8, 32),
        ];
        let simple = spec(&[], &[], 0, 0);
        let constrained = spec(&["gpu"], &[], 0, 0);
        // Every name, whatever its spread, takes the plain host while the GPU claim waits.
        for name in ["a", "b", "c", "d", "e", "f"] {
            assert_eq!(choose(name, &simple, &hosts, &[&constrained]), Some(1));
        }
        // Without competition the spread decides between the two.
        let picks: std::collections::BTreeSet<_> = ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .filter_map(|n| choose(n, &simple, &hosts, &[]))
            .collect();
        assert_eq!(picks.len(), 2);
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
