#!/usr/bin/env bash
# Install the MCP reference server @modelcontextprotocol/server-everything from the npm registry
# (once per version) and print the path of its entry point. The MCP tests run it with node.
#   bash scripts/install_mcp_everything.sh [VERSION]
set -euo pipefail
VERSION="${1:-2026.8.31}"
CACHE="${MIDTIER_CACHE:-$HOME/.cache/midtier}/npm"
DIR="$CACHE/server-everything-$VERSION"
ENTRY="$DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
if [[ ! -f "$ENTRY" ]]; then
    command -v npm >/dev/null || { echo "npm is needed (Debian: apt-get install nodejs npm)" >&2; exit 1; }
    rm -rf "$DIR.partial"
    mkdir -p "$DIR.partial"
    npm install --prefix "$DIR.partial" --no-audit --no-fund --loglevel=error \
        "@modelcontextprotocol/server-everything@$VERSION" >&2
    rm -rf "$DIR"
    mv "$DIR.partial" "$DIR"
fi
echo "$ENTRY"
