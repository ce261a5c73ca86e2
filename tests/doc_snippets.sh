#!/bin/sh
# Checks that every guide (and the README) quotes the compiled snippets word for word: in a guide,
# `<!-- snippet: NAME -->` is followed by a fenced code block whose lines must be the region
# between `// [snippet NAME]` and `// [end]` in docs/snippets/docs_snippets.cpp or
# tests/package/consumer.cpp, minus its indentation. Also fails when a guide names a snippet no
# source has. Usage: doc_snippets.sh ROOT
set -eu
root=${1:-.}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Regions of the source, one file per snippet, common indentation removed.
awk -v dir="$tmp" '
  /\/\/ \[snippet [a-z0-9-]+\]/ { match($0, /\[snippet [a-z0-9-]+\]/); name = substr($0, RSTART + 9, RLENGTH - 10); n = 0; next }
  /\/\/ \[end\]/ && name != "" {
    ind = -1
    for (i = 1; i <= n; i++) if (line[i] ~ /[^ ]/) { match(line[i], /^ */); if (ind < 0 || RLENGTH < ind) ind = RLENGTH }
    for (i = 1; i <= n; i++) print substr(line[i], ind + 1) > (dir "/" name ".src")
    close(dir "/" name ".src"); name = ""; next }
  name != "" { line[++n] = $0 }
' "$root/docs/snippets/docs_snippets.cpp" "$root/tests/package/consumer.cpp"
status=0
checked=0
for doc in "$root"/docs/*.md "$root"/README.md; do
  awk -v dir="$tmp" -v doc="$(basename "$doc")" '
    /<!-- snippet: [a-z0-9-]+ -->/ { match($0, /snippet: [a-z0-9-]+/); name = substr($0, RSTART + 9, RLENGTH - 9); want = 1; next }
    want && /^```/ { inside = 1; want = 0; out = dir "/" name ".doc"; printf "" > out; print doc > (out ".from"); next }
    inside && /^```/ { inside = 0; close(out); next }
    inside { print > out }
  ' "$doc"
done
for d in "$tmp"/*.doc; do
  [ -e "$d" ] || continue
  name=$(basename "$d" .doc)
  from=$(cat "$d.from")
  checked=$((checked + 1))
  if [ ! -e "$tmp/$name.src" ]; then
    echo "$from: snippet '$name' is in neither docs/snippets/docs_snippets.cpp nor tests/package/consumer.cpp" >&2
    status=1
  elif ! diff -u "$tmp/$name.src" "$d" >"$tmp/diff"; then
    echo "$from: snippet '$name' differs from its compiled source:" >&2
    cat "$tmp/diff" >&2
    status=1
  fi
done
echo "$checked snippets in the guides and README checked against their compiled sources"
exit $status
