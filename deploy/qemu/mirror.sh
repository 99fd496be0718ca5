#!/usr/bin/env bash
# mirror.sh — print the Debian archive this host's apt already uses (deb822
# or one-line sources), so the harness names no mirror of its own.
set -euo pipefail
mirror=""
if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
	mirror=$(awk '/^URIs:/ {for (i=2;i<=NF;i++) if ($i !~ /security/) {print $i; exit}}' \
		/etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
	mirror=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list | head -n1)
fi
if [ -z "$mirror" ]; then
	echo "mirror: no Debian archive found in the apt sources of this host" >&2
	exit 1
fi
echo "$mirror"
