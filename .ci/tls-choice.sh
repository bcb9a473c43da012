#!/usr/bin/env bash
# Each binary crate, built alone (`cargo build -p <crate>`, as the lab builds `leader-elect`; feature
# unification across the workspace would hide a missing choice), selects a TLS stack for the elector's client:
# without one, every `https://` server is refused ("TLS required but no TLS stack selected").
# And the libraries force no TLS stack: a crate that depends on `leaderelection` and
# `leaderelection-controller` without their default features, and on kube with `openssl-tls`, has no
# rustls (nor ring, nor aws-lc-rs) in its dependency tree. Only resolved (`cargo tree`), never built.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
for bin in leader-elect claim-coordinator leaderelection-lab; do
    if ! cargo tree -p "$bin" -e normal,build,features -i leaderelection --prefix none --locked |
        grep -qx 'leaderelection feature "rustls-tls"'; then
        echo "$bin, built alone, selects no TLS stack in leaderelection (its rustls-tls feature is off)" >&2
        exit 1
    fi
done
dir=$root/target/tls-choice
rm -rf "$dir"
mkdir -p "$dir/src"
: >"$dir/src/lib.rs"
cat >"$dir/Cargo.toml" <<TOML
[package]
name = "tls-choice"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
leaderelection = { path = "$root/crates/leaderelection", default-features = false }
leaderelection-controller = { path = "$root/crates/leaderelection-controller", default-features = false, features = ["runtime", "settings"] }
claim-coordinator = { path = "$root/crates/claim-coordinator", default-features = false }
kube = { version = "5", default-features = false, features = ["client", "openssl-tls"] }
TOML
# The workspace's versions (the optional TLS crates are in its lock file too).
cp Cargo.lock "$dir/Cargo.lock"
cd "$dir"
cargo tree -e normal,build -i openssl >/dev/null # the choice took: OpenSSL is there
for crate in rustls ring aws-lc-rs; do
    # Absent means cargo's "did not match any packages"; any other failure is not a pass.
    if tree=$(cargo tree -e normal,build -i "$crate" 2>&1); then
        echo "kube's openssl-tls with our libraries still brings in $crate:" >&2
        echo "$tree" >&2
        exit 1
    elif ! grep -q "did not match any packages" <<<"$tree"; then
        echo "$tree" >&2
        exit 1
    fi
done
echo "openssl-tls: no rustls, ring or aws-lc-rs in the tree"
