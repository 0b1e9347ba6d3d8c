#!/usr/bin/env bash
# Pin the base images of a Dockerfile by digest: every `ARG NAME=registry/image:tag` default
# without an `@sha256:` gets the digest the registry serves for that tag now, written in place
# (`ARG NAME=registry/image:tag@sha256:...`). References already pinned are left as they are.
#
#   deploy/pin-base-images.sh [Dockerfile.gpu]
#
# The digest is the image index's (the multi-platform manifest list), so one pinned reference
# serves both x86-64 and arm64 builds. It is looked up with `docker buildx imagetools inspect`,
# which reads the registry without pulling the image; log in first where the registry asks for
# it (`docker login nvcr.io`). Review the change with `git diff` before committing it.
#
# Why this is a script rather than digests in the file: NGC's registry cannot be reached from
# the machines this project is built on, and a digest that was never looked up would break
# every build. Run it once where the registry is reachable.
set -euo pipefail

dockerfile="${1:-Dockerfile.gpu}"
if [ ! -f "$dockerfile" ]; then
    echo "pin-base-images: no such file: $dockerfile" >&2
    exit 2
fi
if ! docker buildx version >/dev/null 2>&1; then
    echo "pin-base-images: needs docker with the buildx plugin (docker buildx imagetools)" >&2
    exit 2
fi

# ARG lines whose default looks like an image reference (has a ':' tag or a '/') and no digest
pattern='^ARG[[:space:]]+[A-Za-z_][A-Za-z0-9_]*=[^[:space:]@]+:[^[:space:]@]+[[:space:]]*$'
pinned=0
while IFS= read -r line; do
    name="${line#ARG }"; name="${name%%=*}"; name="${name//[[:space:]]/}"
    reference="${line#*=}"; reference="${reference%%[[:space:]]*}"
    case "$reference" in */*) ;; *) continue ;; esac  # a plain value such as PLATFORM=x86
    if ! digest=$(docker buildx imagetools inspect --format '{{json .Manifest}}' "$reference" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])'); then
        echo "pin-base-images: could not look up $reference ($name); nothing changed for it" >&2
        exit 1
    fi
    case "$digest" in
        sha256:*) ;;
        *) echo "pin-base-images: unexpected digest for $reference: $digest" >&2; exit 1 ;;
    esac
    # rewrite that one ARG line: name and reference are matched literally
    python3 - "$dockerfile" "$name" "$reference" "$digest" <<'EOF'
import re, sys
from pathlib import Path
path, name, reference, digest = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
line = re.compile(rf"^(ARG\s+{re.escape(name)}={re.escape(reference)})(\s*)$", re.M)
text, count = line.subn(rf"\g<1>@{digest}\g<2>", path.read_text())
if count != 1:
    sys.exit(f"pin-base-images: ARG {name}={reference} found {count} times in {path}")
tmp = path.with_name(path.name + ".pinning")
tmp.write_text(text)
tmp.replace(path)
EOF
    echo "$name=$reference@$digest"
    pinned=$((pinned + 1))
done < <(grep -E "$pattern" "$dockerfile" || true)
echo "pin-base-images: $pinned reference(s) pinned in $dockerfile" >&2
