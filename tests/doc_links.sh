#!/bin/sh
# Fails when a guide (docs/*.md) or the README links to a file of the repository that does not
# exist: every relative Markdown link target, without its #anchor. Usage: doc_links.sh ROOT
set -eu
root=${1:-.}
status=0
checked=0
for doc in "$root"/README.md "$root"/docs/*.md; do
  dir=$(dirname "$doc")
  for target in $(grep -o '](\([^)]*\))' "$doc" | sed -e 's/^](//' -e 's/)$//' -e 's/#.*//' | sort -u); do
    case $target in ''|http://*|https://*|mailto:*) continue ;; esac
    checked=$((checked + 1))
    if [ ! -e "$dir/$target" ]; then
      echo "${doc#"$root"/}: link to $target, which does not exist" >&2
      status=1
    fi
  done
done
echo "$checked relative links in the README and docs/ checked"
exit $status
