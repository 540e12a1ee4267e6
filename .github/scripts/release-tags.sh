#!/usr/bin/env bash
# Which image tags a release pushes, from its git tag.
#
#   git tag --list 'v*' | .github/scripts/release-tags.sh v0.1.0 0.1.0
#
# Arguments: the git tag being released and Cargo.toml's package version.
# Standard input: every git tag of the repository (others are ignored).
# Prints one image tag per line; exits 1 with a sentence on stderr when the
# tag is not `v` + a semantic version or disagrees with Cargo.toml.
#
# The rules (docs/releasing.md explains them):
#   vX.Y.Z        -> X.Y.Z, always;
#                    X.Y, unless a higher X.Y.* release is already tagged;
#                    latest, unless a higher release is already tagged.
#   vX.Y.Z-pre    -> X.Y.Z-pre only (pre-releases never move X.Y or latest).
# So a patch to an older line (v0.1.5 after v0.2.0) moves 0.1 but not
# latest, and re-running an old release's workflow moves nothing back.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 <git tag, such as v0.1.0> <Cargo.toml version>" >&2
  exit 2
fi
tag=$1
cargo_version=$2

semver='(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)'
if ! [[ $tag =~ ^v${semver}(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "the git tag \"$tag\" is not a release tag: expected v<major>.<minor>.<patch>, such as v0.1.0, optionally with -<pre-release>" >&2
  exit 1
fi
version=${tag#v}
if [ "$version" != "$cargo_version" ]; then
  echo "the git tag \"$tag\" does not match Cargo.toml's version \"$cargo_version\": bump the version in Cargo.toml (and the image references in deploy/ and docs/) and tag that commit" >&2
  exit 1
fi

echo "$version"
if [[ $version == *-* ]]; then
  exit 0
fi
minor=${version%.*}

# Stable releases already tagged, plus this one, highest first.
stable=$( { grep -E "^v${semver}$" || true; echo "$tag"; } | sed 's/^v//' | sort -u -V -r)
highest=$(head -n1 <<<"$stable")
highest_in_minor=$(awk -F. -v m="$minor" '$1 "." $2 == m' <<<"$stable" | head -n1)

if [ "$highest_in_minor" = "$version" ]; then
  echo "$minor"
fi
if [ "$highest" = "$version" ]; then
  echo latest
fi
