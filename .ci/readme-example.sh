#!/usr/bin/env bash
# Builds the README's library section as written: its first `toml` block (the dependencies) and its first
# `rust` block (the whole `src/main.rs`) under "## Use the library from a kube-rs controller" become a crate
# next to a checkout named `leaderelection` (a symlink to this one), as the README tells a user to lay it
# out. The README is the only copy: an edit of either block is what gets built.
#
# The crate shares the workspace's `target/` and starts from its Cargo.lock, so it resolves to the
# workspace's versions and reuses what the workspace built with the same features.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
section='## Use the library from a kube-rs controller'

# The first fenced block of language $1 in the section.
block() {
    awk -v section="$section" -v lang="$1" '
        $0 == section { in_section = 1; next }
        in_section && /^## / { exit }
        in_section && !inside && $0 == "```" lang { inside = 1; next }
        inside && $0 == "```" { found = 1; exit }
        inside { print }
        END { if (!found) exit 1 }
    ' README.md
}

dir=$root/target/readme-example
rm -rf "$dir"
mkdir -p "$dir/app/src"
ln -s "$root" "$dir/leaderelection"
deps=$(block toml) || { echo "README.md: no \`\`\`toml block under '$section'" >&2; exit 1; }
main=$(block rust) || { echo "README.md: no \`\`\`rust block under '$section'" >&2; exit 1; }
{
    printf '[package]\nname = "readme-example"\nversion = "0.0.0"\nedition = "2024"\npublish = false\n\n'
    printf '# Not a member of the checkout'"'"'s workspace, as a user'"'"'s crate is not.\n[workspace]\n\n'
    printf '%s\n\n' "$deps"
    # The workspace's profiles: built with other settings, no dependency could be reused from `target/`.
    awk '/^\[profile\./ { p = 1 } /^\[/ && !/^\[profile\./ { p = 0 } p' Cargo.toml
} >"$dir/app/Cargo.toml"
printf '%s\n' "$main" >"$dir/app/src/main.rs"
cp Cargo.lock "$dir/app/Cargo.lock"
cd "$dir/app"
CARGO_TARGET_DIR=$root/target cargo build
echo "the README's library section builds (crate at $dir/app)"
