#!/bin/sh
# import-image.sh SOCKET TARBALL NAME
#
# Imports a rootfs tarball (e.g. build/examples/hello-rootfs.tar) into the Docker engine at the
# unix socket SOCKET as image NAME[:TAG] with ENTRYPOINT ["/hello"], through the Engine API
# (no docker CLI, no registry). Idempotent: the image carries the tarball's sha256 as a label and
# is only imported again when the tarball changed.
set -eu

if [ $# -ne 3 ]; then
    echo "usage: $0 SOCKET TARBALL NAME[:TAG]" >&2
    exit 2
fi
socket=$1
tarball=$2
name=$3

[ -S "$socket" ] || { echo "$0: $socket is not a unix socket" >&2; exit 1; }
[ -f "$tarball" ] || { echo "$0: $tarball not found" >&2; exit 1; }

# NAME[:TAG]: a colon after the last slash starts the tag.
repo=$name
tag=latest
case ${name##*/} in
    *:*) repo=${name%:*}; tag=${name##*:} ;;
esac

urlencode() {
    for hex in $(printf '%s' "$1" | od -An -tx1 -v); do
        code=$(printf '%d' "0x$hex")
        if { [ "$code" -ge 48 ] && [ "$code" -le 57 ]; } ||   # 0-9
            { [ "$code" -ge 65 ] && [ "$code" -le 90 ]; } ||  # A-Z
            { [ "$code" -ge 97 ] && [ "$code" -le 122 ]; } || # a-z
            [ "$code" -eq 45 ] || [ "$code" -eq 46 ] || [ "$code" -eq 95 ] || [ "$code" -eq 126 ]; then
            printf "\\$(printf '%03o' "$code")"
        else
            printf '%%%s' "$(echo "$hex" | tr a-f A-F)"
        fi
    done
}

api() {
    curl -sS --unix-socket "$socket" -H 'Host: localhost' "$@"
}

sha=$(sha256sum "$tarball" | cut -d' ' -f1)
label=unifaas.rootfs-sha256

current=$(api "http://localhost/images/$(urlencode "$repo:$tag")/json" |
    sed -n "s/.*\"$label\":\"\([0-9a-f]*\)\".*/\1/p")
if [ "$current" = "$sha" ]; then
    echo "$repo:$tag is up to date"
    exit 0
fi

entrypoint=$(urlencode 'ENTRYPOINT ["/hello"]')
labelchange=$(urlencode "LABEL $label=$sha")
query="fromSrc=-&repo=$(urlencode "$repo")&tag=$(urlencode "$tag")&changes=$entrypoint&changes=$labelchange"
out=$(api -X POST -H 'Content-Type: application/x-tar' --data-binary "@$tarball" \
    "http://localhost/images/create?$query")
case $out in
    *'"error'*|*'"message"'*)
        echo "$0: import of $tarball as $repo:$tag failed: $out" >&2
        exit 1 ;;
esac
echo "imported $tarball as $repo:$tag"
