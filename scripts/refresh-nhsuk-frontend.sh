#!/usr/bin/env bash
# Refreshes the NHS.UK frontend (npm `nhsuk-frontend`, MIT) vendored for the console in
# src/console/assets/: the built CSS (its image URLs pointed at /console/assets/images/),
# a gzip copy served to browsers that accept it, the icons the CSS uses, and the licence.
# Usage: scripts/refresh-nhsuk-frontend.sh [version]   (default: the latest on npm)
# After a version change, update NHSUK_VERSION in src/console/assets.rs: the version is
# in the file name, so browsers may cache each file forever (`immutable`).
set -euo pipefail
version="${1:-$(npm view nhsuk-frontend version)}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/src/console/assets"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "nhsuk-frontend@$version" >/dev/null && tar xzf "nhsuk-frontend-$version.tgz")
dist="$work/package/dist/nhsuk"
mkdir -p "$dest/images"
rm -f "$dest"/nhsuk-frontend-*.min.css "$dest"/nhsuk-frontend-*.min.css.gz
css="$dest/nhsuk-frontend-$version.min.css"
# The CSS names its icons from the site root (/assets/images/…); the console serves them
# under /console/assets/images/. Its source-map comment points at a file not vendored.
sed -e 's#url(/assets/images/#url(/console/assets/images/#g' \
    -e 's#/\*\# sourceMappingURL=[^*]*\*/##' \
    "$dist/nhsuk-frontend.min.css" > "$css"
gzip -9 -n -c "$css" > "$css.gz"
rm -f "$dest"/images/*
for icon in $(grep -o 'url(/console/assets/images/[^)]*)' "$css" | sed 's#url(/console/assets/images/##; s#)##' | sort -u); do
  cp "$dist/assets/images/$icon" "$dest/images/$icon"
done
cp "$dist/assets/images/favicon.svg" "$dest/images/favicon.svg"
cat > "$dest/LICENSE" <<LICENCE
nhsuk-frontend $version (https://www.npmjs.com/package/nhsuk-frontend), vendored by
scripts/refresh-nhsuk-frontend.sh. Its README: "The codebase is released under the MIT
Licence, unless stated otherwise. ... The documentation is © NHS England and available
under the terms of the Open Government 3.0 licence."

The MIT License (MIT)

Copyright (c) NHS England

Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the "Software"), to deal in the Software
without restriction, including without limitation the rights to use, copy, modify, merge,
publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR
PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE
FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
DEALINGS IN THE SOFTWARE.
LICENCE
echo "nhsuk-frontend $version vendored in $dest"
