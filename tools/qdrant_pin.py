"""Move the qdrant role's pinned Qdrant release: its version and the sha256 of each architecture's tarball.

    .venv/bin/python tools/qdrant_pin.py 1.20.0 --sha256 x86_64=<64 hex> --sha256 aarch64=<64 hex>
    .venv/bin/python tools/qdrant_pin.py 1.20.0 --release-json release.json

The role installs qdrant-<arch>-unknown-linux-musl.tar.gz of the release (roles/qdrant/README.md says why). Qdrant
publishes no checksum files; GitHub records a sha256 digest for every release asset, which its REST API returns as
`"digest": "sha256:<hex>"` (https://api.github.com/repos/qdrant/qdrant/releases/tags/v<version>, saved with curl as
release.json): --release-json takes the digests from there. Every architecture of the current pin needs a new digest.

Rewrites the pin in roles/qdrant/defaults/main.yml, meta/argument_specs.yml and README.md, and nothing else; the
fast tests (tests/ansible/test_qdrant_pin.py) then hold the server pin against the qdrant-client pin.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ROLE_FILES = ("roles/qdrant/defaults/main.yml", "roles/qdrant/meta/argument_specs.yml", "roles/qdrant/README.md")
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class PinError(ValueError):
    """A version or digest that cannot be pinned; the message names it."""


def asset_name(arch: str) -> str:
    return f"qdrant-{arch}-unknown-linux-musl.tar.gz"


def current_pin(root: Path) -> tuple[str, dict[str, str]]:
    defaults = yaml.safe_load((root / ROLE_FILES[0]).read_text())
    return str(defaults["qdrant_version"]), {str(k): str(v) for k, v in defaults["qdrant_release_sha256"].items()}


def digests_from_release(release: dict, version: str, arches: list[str]) -> dict[str, str]:
    """The sha256 of each architecture's tarball from GitHub's release answer for tag v<version>."""
    if release.get("tag_name") != f"v{version}":
        raise PinError(f"the release JSON is for tag {release.get('tag_name')!r}, not v{version}")
    assets = {a.get("name"): a for a in release.get("assets", [])}
    found = {}
    for arch in arches:
        asset = assets.get(asset_name(arch))
        if asset is None:
            raise PinError(f"release v{version} has no asset {asset_name(arch)}")
        digest = str(asset.get("digest") or "")
        if not digest.startswith("sha256:"):
            raise PinError(f"asset {asset_name(arch)} of v{version} has no sha256 digest (got {digest!r})")
        found[arch] = digest.removeprefix("sha256:")
    return found


def check_pin(version: str, digests: dict[str, str], arches: list[str]) -> dict[str, str]:
    if not VERSION_RE.match(version):
        raise PinError(f"version {version!r} is not a release version such as 1.19.0")
    digests = {arch: value.lower() for arch, value in digests.items()}
    if sorted(digests) != sorted(arches):
        raise PinError(f"digests given for {sorted(digests)}; the pin needs exactly {sorted(arches)}")
    for arch, value in digests.items():
        if not SHA256_RE.match(value):
            raise PinError(f"sha256 for {arch} {value!r} is not 64 hex digits")
    return digests


def move_pin(root: Path, version: str, digests: dict[str, str]) -> list[Path]:
    """Rewrites the pin where the role states it, all files or none; returns the files changed."""
    old_version, old_digests = current_pin(root)
    digests = check_pin(version, digests, list(old_digests))
    rewritten = {}
    for name in ROLE_FILES:
        path = root / name
        text = original = path.read_text()
        text = text.replace(f'"{old_version}"', f'"{version}"')
        for arch, old in old_digests.items():
            text = text.replace(old, digests[arch])
        if text != original:
            rewritten[path] = text
    defaults = yaml.safe_load(rewritten.get(root / ROLE_FILES[0], ""))
    if not defaults or (str(defaults["qdrant_version"]), defaults["qdrant_release_sha256"]) != (version, digests):
        raise PinError(f"{ROLE_FILES[0]} would not hold the new pin after the rewrite: edit it by hand")
    for path, text in rewritten.items():
        path.write_text(text)
    return list(rewritten)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", help="the Qdrant release to pin, such as 1.20.0")
    parser.add_argument("--sha256", action="append", default=[], metavar="ARCH=HEX", help="one per architecture")
    parser.add_argument("--release-json", type=Path, help="GitHub's API answer for the release (assets' digests)")
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        _, old_digests = current_pin(args.root)
        if args.release_json:
            digests = digests_from_release(json.loads(args.release_json.read_text()), args.version, list(old_digests))
        else:
            pairs = [item.partition("=") for item in args.sha256]
            if any(not sep for _, sep, _ in pairs):
                raise PinError("--sha256 takes ARCH=HEX, such as x86_64=<64 hex digits>")
            digests = {arch: value for arch, _, value in pairs}
        changed = move_pin(args.root, args.version, digests)
    except (PinError, OSError, ValueError) as exc:
        print(f"qdrant_pin: {exc}; nothing was changed")
        return 2
    for path in changed:
        print(f"updated {path.relative_to(args.root)}")
    print(f"Qdrant {args.version}: " + ", ".join(f"{arch} {value}" for arch, value in digests.items()))
    print(
        "Now run the fast tests (make test-fast): they compare the pin with qdrant-client's in "
        "payload/requirements-index.txt; and update the digest sources named in roles/qdrant/README.md."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
