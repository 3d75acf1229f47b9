#!/usr/bin/env python3
"""What CI asks of the crates we publish, read from `cargo metadata` (python3's standard
library only, nothing to install).

    crates.py publishable   the workspace members that may be published (every member
                            without `publish = false`), one a line
    crates.py msrv          fails when a published crate lacks `rust-version`, or when a crate
                            in its normal or build dependencies (all features on, every
                            platform, as resolved in Cargo.lock) declares a higher
                            `rust-version`

The msrv check covers what clippy's `incompatible_msrv` lint cannot: the dependencies. A
dependency that declares no `rust-version` is listed, not failed (nothing to compare).
"""

import json
import subprocess
import sys


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features"],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    return json.loads(out)


def publishable(meta):
    members = set(meta["workspace_members"])
    # `publish = false` reads as an empty list of registries; null means any registry.
    return sorted(
        (p for p in meta["packages"] if p["id"] in members and p["publish"] != []),
        key=lambda p: p["name"],
    )


def version(text):
    parts = [int(x) for x in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def shipped_dependency(dep):
    """A dependency a user of the crate builds: a normal or build one, not a dev-dependency,
    and not one that exists only for the model checks (`cfg(loom)`)."""
    return any(
        k["kind"] in (None, "build") and k["target"] != "cfg(loom)" for k in dep["dep_kinds"]
    )


def msrv(meta):
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    failures = []
    for crate in publishable(meta):
        ours = crate["rust_version"]
        if not ours:
            failures.append(f"{crate['name']}: no rust-version in its Cargo.toml")
            continue
        seen, todo, unknown, highest = set(), [crate["id"]], [], None
        while todo:
            node = nodes[todo.pop()]
            for dep in node["deps"]:
                if dep["pkg"] in seen or not shipped_dependency(dep):
                    continue
                seen.add(dep["pkg"])
                todo.append(dep["pkg"])
                package = packages[dep["pkg"]]
                needs = package["rust_version"]
                label = f"{package['name']} {package['version']}"
                if not needs:
                    unknown.append(label)
                    continue
                if highest is None or version(needs) > version(highest[0]):
                    highest = (needs, label)
                if version(needs) > version(ours):
                    failures.append(
                        f"{crate['name']} (rust-version {ours}) depends on {label}, "
                        f"which needs Rust {needs}"
                    )
        top = f"{highest[1]} needs {highest[0]}" if highest else "none declares one"
        print(
            f"{crate['name']}: rust-version {ours}; {len(seen)} dependencies, the highest: {top}"
            + (f"; declaring none: {', '.join(sorted(unknown))}" if unknown else "")
        )
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    meta = metadata()
    if command == "publishable":
        for crate in publishable(meta):
            print(crate["name"])
        return 0
    if command == "msrv":
        return msrv(meta)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
