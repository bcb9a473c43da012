//! `leader-elect fencing-policy`: prints the ValidatingAdmissionPolicy and binding that make the API server
//! refuse writes stamped with a stale term (`leaderelection::fencing::FencingPolicy`), as YAML for
//! `kubectl apply -f -`.

use anyhow::{Context, anyhow};
use leaderelection::ConfigError;
use leaderelection::fencing::{FencingPolicy, GuardedResource, Mode};

use crate::failure::Failure;

const FENCING_POLICY_HELP: &str = "\
What the policy refuses (422 Invalid, from the API server itself):
  a create or update (patches too) of a guarded object whose leaderelection.dev/term annotation is below
  the Lease's spec.leaseTransitions, is not a decimal, or whose leaderelection.dev/lease annotation names
  another Lease; with --strict, also one that lacks either annotation, and every write while the Lease does
  not exist. Deletes and /status writes are not guarded. A leader's gated client stamps its writes.

Install it with: leader-elect fencing-policy --lease-name L --resource apps/v1/deployments | kubectl apply -f -
(needs create on validatingadmissionpolicies and validatingadmissionpolicybindings, and get on the Lease).";

/// `leader-elect fencing-policy`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = FENCING_POLICY_HELP)]
pub(crate) struct FencingPolicyArgs {
    /// The Lease whose spec.leaseTransitions is the current term.
    #[arg(long)]
    lease_name: String,
    /// The Lease's namespace.
    #[arg(long, default_value = "default")]
    lease_namespace: String,
    /// A guarded resource type, group/version/resource (e.g. apps/v1/deployments; v1/configmaps for the
    /// core group); repeat for more. At least one.
    #[arg(
        long = "resource",
        value_name = "GROUP/VERSION/RESOURCE",
        required = true
    )]
    resources: Vec<String>,
    /// Refuse unstamped writes too, and every write while the Lease does not exist (for resources only
    /// the leader writes).
    #[arg(long)]
    strict: bool,
    /// Guard only objects in this namespace; repeat for more (default: every namespace).
    #[arg(long = "guard-namespace", value_name = "NAMESPACE")]
    guard_namespaces: Vec<String>,
}

/// Prints the policy and its binding as two YAML documents on stdout.
pub(crate) fn fencing_policy(args: &FencingPolicyArgs) -> Result<(), Failure> {
    let usage = |err: ConfigError| {
        let flag = match err.field {
            "lease_name" => "--lease-name",
            "lease_namespace" => "--lease-namespace",
            "resources" => "--resource",
            "namespaces" => "--guard-namespace",
            other => other,
        };
        Failure::Usage(anyhow!("invalid {flag} {:?}: {}", err.value, err.rule))
    };
    let resources = args
        .resources
        .iter()
        .map(|r| r.parse::<GuardedResource>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(usage)?;
    let policy = FencingPolicy {
        lease_namespace: args.lease_namespace.clone(),
        lease_name: args.lease_name.clone(),
        resources,
        mode: if args.strict {
            Mode::Strict
        } else {
            Mode::Lenient
        },
        namespaces: args.guard_namespaces.clone(),
    };
    let (policy, binding) = policy.build().map_err(usage)?;
    let yaml = serde_norway::to_string(&policy)
        .and_then(|p| Ok(format!("{p}---\n{}", serde_norway::to_string(&binding)?)))
        .context("writing the policy as YAML")?;
    print!("{yaml}");
    Ok(())
}
