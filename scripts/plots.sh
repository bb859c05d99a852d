#!/usr/bin/env bash
# `dvc plots show` as a page that renders offline: DVC's default page loads Vega from a CDN, so
# here Vega, Vega-Lite and vega-embed (npm, pinned) are inlined into the HTML template instead.
# Writes dvc_plots/index.html; the npm packages are fetched once into .cache/vega.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CACHE=.cache/vega
PACKAGES=(vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0)

if [ ! -f "$CACHE/template.html" ]; then
    command -v npm >/dev/null || { echo "error: npm is needed once to fetch Vega (apt-get install npm)" >&2; exit 2; }
    rm -rf "$CACHE" && mkdir -p "$CACHE/packs"
    (cd "$CACHE/packs" && npm pack --silent "${PACKAGES[@]}" >/dev/null)
    {
        printf '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>synclip: dvc plots</title>\n'
        for name in vega vega-lite vega-embed; do
            printf '<script>\n'
            tar -xzOf "$CACHE"/packs/"$name"-[0-9]*.tgz "package/build/$name.min.js"
            printf '\n</script>\n'
        done
        printf '</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
    } > "$CACHE/template.tmp"
    mv "$CACHE/template.tmp" "$CACHE/template.html"
fi
"$VENV/bin/dvc" plots show --html-template "$CACHE/template.html" "$@"
