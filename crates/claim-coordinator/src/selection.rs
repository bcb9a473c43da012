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
///
/// One claim on its own: O(`available` x `others`). A batch serves its claims through [`Batch`], which
/// keeps the demand of every host up to date instead of counting it again for each claim.
#[must_use]
pub fn choose(
    name: &str,
    spec: &Requirements,
    available: &[Candidate],
    others: &[&Requirements],
) -> Option<usize> {
    let fitting = (0..available.len())
        .filter(|&i| available[i].fits(spec))
        .map(|i| (i, others.iter().filter(|o| available[i].fits(o)).count()));
    pick(name, spec, available, fitting)
}

/// The host for the claim `name` with `spec` among `fitting` hosts, each an index into `available` with
/// its demand (how many other pending claims fit it): the most preferred tags, then the least demand,
/// then the least surplus; among equals the spread of `name` over the hosts sorted by name.
fn pick(
    name: &str,
    spec: &Requirements,
    available: &[Candidate],
    fitting: impl Iterator<Item = (usize, usize)>,
) -> Option<usize> {
    let mut best = None;
    let mut ties: Vec<usize> = Vec::new();
    for (i, demand) in fitting {
        let host = &available[i];
        let key = (
            std::cmp::Reverse(host.preference(spec)),
            demand,
            host.surplus(spec),
        );
        match best.as_ref().map(|b| key.cmp(b)) {
            None | Some(std::cmp::Ordering::Less) => {
                best = Some(key);
                ties.clear();
                ties.push(i);
            }
            Some(std::cmp::Ordering::Equal) => ties.push(i),
            Some(std::cmp::Ordering::Greater) => {}
        }
    }
    ties.sort_by(|&a, &b| available[a].name.cmp(&available[b].name));
    ties.get(spread(name, ties.len())).copied()
}

/// One batch's selection: the pending claims, in service order, over the hosts available when the batch
/// began; each claim is served once, each host taken once.
///
/// It decides what a loop of [`choose`] over the claims in order decides (each claim ranking the hosts
/// not yet taken by how many claims after it fit them), but keeps every host's demand (how many claims
/// not yet served fit it) as a count that each served claim decrements, instead of counting it again
/// for every claim: O(claims x hosts) fit checks for the whole batch (two per pair: one to count the
/// demand, one when the claim is served) instead of O(claims² x hosts). The equivalence is checked
/// against the previous per-claim algorithm by a property test (`selection::tests`).
#[derive(Debug)]
pub struct Batch<'a> {
    hosts: &'a [Candidate],
    claims: Vec<&'a Requirements>,
    /// Per host: the claims not yet served that fit it.
    demand: Vec<usize>,
    /// Per host: taken by a claim of this batch.
    taken: Vec<bool>,
    /// Per claim: served.
    served: Vec<bool>,
}

// === impl Batch ===

impl<'a> Batch<'a> {
    /// A batch serving `claims` (in service order) over `hosts` (the available ones).
    #[must_use]
    pub fn new(hosts: &'a [Candidate], claims: Vec<&'a Requirements>) -> Self {
        let demand = hosts
            .iter()
            .map(|h| claims.iter().filter(|c| h.fits(c)).count())
            .collect();
        Self {
            hosts,
            served: vec![false; claims.len()],
            claims,
            demand,
            taken: vec![false; hosts.len()],
        }
    }

    /// Serves the claim at `claim` (its index in the service order) named `name`: its `intent` (an
    /// optimistic claimer's `status.selectedHost`, honoured while that host is not taken, whether or not
    /// it fits) or else the host [`choose`] would give it. Returns the host's index, now taken; `None`
    /// when no host fits or the intended host is taken. A claim served twice gets `None`.
    pub fn serve(&mut self, claim: usize, name: &str, intent: Option<&str>) -> Option<usize> {
        if self.served.get(claim).copied().unwrap_or(true) {
            return None;
        }
        self.served[claim] = true;
        let spec = self.claims[claim];
        let mut fitting = Vec::new();
        for (i, host) in self.hosts.iter().enumerate() {
            if !self.taken[i] && host.fits(spec) {
                // The claim is served: no longer demand. What is left is the claims after it.
                self.demand[i] -= 1;
                fitting.push((i, self.demand[i]));
            }
        }
        let chosen = match intent {
            Some(intent) => {
                (0..self.hosts.len()).find(|&i| !self.taken[i] && self.hosts[i].name == intent)
            }
            None => pick(name, spec, self.hosts, fitting.into_iter()),
        };
        if let Some(i) = chosen {
            self.taken[i] = true;
        }
        chosen
    }
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

    /// The previous per-claim selection, kept as the oracle of [`Batch`]: the same ranking, with each
    /// host's demand counted again from the claims still pending, for every claim.
    fn previous_choose(
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

    /// The previous batch loop: for each claim in order, its intent among the hosts not taken, else
    /// [`previous_choose`] against the claims after it; the host chosen is removed.
    fn previous_batch(
        hosts: &[Candidate],
        claims: &[(String, Requirements, Option<String>)],
    ) -> Vec<Option<String>> {
        let mut available = hosts.to_vec();
        let mut chosen = Vec::new();
        for (k, (name, spec, intent)) in claims.iter().enumerate() {
            let choice = match intent {
                Some(host) => available.iter().position(|c| &c.name == host),
                None => {
                    let others: Vec<&Requirements> = claims[k + 1..].iter().map(|c| &c.1).collect();
                    previous_choose(name, spec, &available, &others)
                }
            };
            chosen.push(choice.map(|i| available.remove(i).name));
        }
        chosen
    }

    const KEYS: [&str; 3] = ["gpu", "rack", "ssd"];
    const VALUES: [&str; 2] = ["1", "2"];

    /// A tag as the specs write it: `key` or `key=value`.
    fn tag(key: usize, value: Option<usize>) -> String {
        match value {
            Some(v) => format!("{}={}", KEYS[key], VALUES[v]),
            None => KEYS[key].to_owned(),
        }
    }

    fn arb_host() -> impl proptest::strategy::Strategy<Value = (Vec<(usize, usize)>, u32, u32)> {
        use proptest::prelude::*;
        (
            proptest::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..3),
            prop::sample::select(vec![8_u32, 16, 64]),
            prop::sample::select(vec![32_u32, 64, 512]),
        )
    }

    type ArbClaim = (
        Vec<(usize, Option<usize>)>,
        Vec<(usize, Option<usize>)>,
        u32,
        u32,
        Option<usize>,
    );

    fn arb_claim() -> impl proptest::strategy::Strategy<Value = ArbClaim> {
        use proptest::prelude::*;
        let tags = || {
            proptest::collection::vec((0..KEYS.len(), proptest::option::of(0..VALUES.len())), 0..2)
        };
        (
            tags(),
            tags(),
            prop::sample::select(vec![0_u32, 16, 32]),
            prop::sample::select(vec![0_u32, 64]),
            // One claim in five carries an optimistic claimer's intent (a host index, maybe missing).
            proptest::option::weighted(0.2, 0..40_usize),
        )
    }

    proptest::proptest! {
        /// `Batch` picks, claim after claim, the host the previous quadratic loop picked.
        #[test]
        fn a_batch_picks_what_the_previous_selection_picked(
            hosts in proptest::collection::vec(arb_host(), 0..30),
            claims in proptest::collection::vec(arb_claim(), 0..30),
        ) {
            let hosts: Vec<Candidate> = hosts
                .iter()
                .enumerate()
                .map(|(i, (tags, cpu, mem))| {
                    let tags: Vec<(&str, &str)> =
                        tags.iter().map(|&(k, v)| (KEYS[k], VALUES[v])).collect();
                    host(&format!("host-{i:02}"), &tags, *cpu, *mem)
                })
                .collect();
            let claims: Vec<(String, Requirements, Option<String>)> = claims
                .iter()
                .enumerate()
                .map(|(i, (required, preferred, cpu, mem, intent))| {
                    let required: Vec<String> = required.iter().map(|&(k, v)| tag(k, v)).collect();
                    let preferred: Vec<String> = preferred.iter().map(|&(k, v)| tag(k, v)).collect();
                    let required: Vec<&str> = required.iter().map(String::as_str).collect();
                    let preferred: Vec<&str> = preferred.iter().map(String::as_str).collect();
                    (
                        format!("claim-{i}"),
                        spec(&required, &preferred, *cpu, *mem),
                        intent.map(|h| format!("host-{h:02}")),
                    )
                })
                .collect();
            let expected = previous_batch(&hosts, &claims);
            let mut batch = Batch::new(&hosts, claims.iter().map(|c| &c.1).collect());
            let picked: Vec<Option<String>> = claims
                .iter()
                .enumerate()
                .map(|(k, (name, _, intent))| {
                    batch
                        .serve(k, name, intent.as_deref())
                        .map(|i| hosts[i].name.clone())
                })
                .collect();
            proptest::prop_assert_eq!(picked, expected);
        }
    }

    #[test]
    fn a_claim_is_served_once_and_a_host_taken_once() {
        let hosts = [host("a", &[], 8, 32), host("b", &[], 8, 32)];
        let simple = spec(&[], &[], 0, 0);
        let mut batch = Batch::new(&hosts, vec![&simple, &simple, &simple]);
        let first = batch.serve(0, "c-0", None).unwrap();
        assert_eq!(batch.serve(0, "c-0", None), None, "served twice");
        let second = batch.serve(1, "c-1", Some(&hosts[first].name));
        assert_eq!(second, None, "the intended host is taken");
        let third = batch.serve(2, "c-2", None).unwrap();
        assert_ne!(first, third);
        assert_eq!(batch.serve(3, "c-3", None), None, "no such claim");
    }
}
