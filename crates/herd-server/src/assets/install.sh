#!/bin/sh
# The herd worker installer, served by the herd server at @SERVER@.
#
#   curl -fsSL '@SERVER@/install.sh?token=TOKEN' | sudo sh     # a service at boot
#   curl -fsSL '@SERVER@/install.sh?token=TOKEN' | sh          # for this user only
#
# A server with TLS gives a one-liner with `-k --pinnedpubkey PIN`: curl
# then trusts exactly the server's key (the pin replaces the CA check), and
# so does the worker it installs.
#
# Arguments after `sh -s --` go to `herd worker install`, e.g.
#   ... | sudo sh -s -- --name kestrel --label gpu=a100 --slots 4
set -eu
SERVER='@SERVER@'
TOKEN='@TOKEN@'
PIN='@PIN@'

say() { printf '%s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

os=$(uname -s | tr '[:upper:]' '[:lower:]')
case "$os" in
    linux | freebsd) ;;
    darwin) os=macos ;;
    *) fail "this installer knows Linux, macOS and FreeBSD, not $os" ;;
esac
arch=$(uname -m)
case "$arch" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) fail "there is no herd for the $arch architecture" ;;
esac

fetch() {
    if [ -n "$PIN" ]; then
        command -v curl >/dev/null 2>&1 || fail "curl is needed to check the server's pinned key (apt-get install curl)"
        curl -fsSL -k --pinnedpubkey "$PIN" -o "$2" "$1"
    elif command -v curl >/dev/null 2>&1; then
        curl -fsSL -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1"
    else
        fail "neither curl nor wget is installed (apt-get install curl)"
    fi
}

# A template GNU and BSD mktemp both take; its own error is the one shown.
if ! tmp=$(mktemp -d "${TMPDIR:-/tmp}/herd-install.XXXXXX" 2>&1); then
    fail "cannot create a temporary directory in ${TMPDIR:-/tmp}: $tmp (set TMPDIR to a writable directory)"
fi
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
printf '%-41s' "Downloading herd for $os-$arch..." >&2
if ! fetch "$SERVER/download/herd-$os-$arch" "$tmp/herd"; then
    say "failed"
    fail "the server at $SERVER has no herd for $os-$arch: its admin can add one with \`herd server --dist DIR\`"
fi
if ! fetch "$SERVER/download/herd-$os-$arch.sha256" "$tmp/herd.sha256"; then
    say "failed"
    fail "cannot fetch the checksum from $SERVER"
fi
want=$(cut -d' ' -f1 <"$tmp/herd.sha256")
if command -v sha256sum >/dev/null 2>&1; then
    got=$(sha256sum "$tmp/herd" | cut -d' ' -f1)
else
    got=$(shasum -a 256 "$tmp/herd" | cut -d' ' -f1)
fi
if [ "$want" != "$got" ]; then
    say "failed"
    fail "the download is damaged: its SHA-256 is $got, the server says $want"
fi
say "done"
chmod 755 "$tmp/herd"
if [ -n "$PIN" ]; then
    set -- --tls-pin "$PIN" "$@"
fi
"$tmp/herd" worker install --server "$SERVER" --token "$TOKEN" "$@"
