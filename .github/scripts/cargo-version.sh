#!/usr/bin/env bash
# Prints the package version of a Cargo.toml (default ./Cargo.toml): the
# `version = "…"` line of its [package] table, not of any other table.
set -euo pipefail
manifest=${1:-Cargo.toml}
version=$(awk -F'"' '/^\[package\]/ {p = 1; next} /^\[/ {p = 0} p && /^version *=/ {print $2; exit}' "$manifest")
if [ -z "$version" ]; then
  echo "$manifest has no version = \"…\" in its [package] table" >&2
  exit 1
fi
echo "$version"
