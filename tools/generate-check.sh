#!/usr/bin/env bash
# Fails if `go generate ./...` changes the working tree: committed generated code must be
# reproducible from its sources. Works with uncommitted edits too, by comparing the tree
# before and after generation rather than against HEAD.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

snapshot() {
	git ls-files -mo --exclude-standard -z | sort -z | xargs -0 -r sha256sum 2>/dev/null || true
	git diff --stat HEAD
}
before=$(snapshot)
go generate ./...
after=$(snapshot)
if [ "$before" != "$after" ]; then
	echo "go generate changed files; commit the regenerated output:" >&2
	diff <(echo "$before") <(echo "$after") >&2 || true
	exit 1
fi
echo "generated files are up to date"
