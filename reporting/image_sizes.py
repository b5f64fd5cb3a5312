"""What each top-level serving requirement adds to the image: run by the image's own Python (standard library and
`packaging` only), so it measures the files installed there.

    python image_sizes.py REQUIREMENTS_FILE    (the image's copy of requirements-serve.txt)

Prints JSON: the megabytes of installed files of every requirement's dependency closure that no other requirement
needs (what leaving it out would save), of what two or more share, of the whole environment, and of its compiled
bytecode.
"""

from __future__ import annotations

import json
import site
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def installed() -> dict[str, metadata.Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}


def size_mb(dist: metadata.Distribution) -> float:
    """Installed files without bytecode (counted on its own: whether it is there depends on the installer)."""
    paths = (dist.locate_file(f) for f in dist.files or [] if f.suffix != ".pyc")
    return sum(p.stat().st_size for p in paths if p.is_file()) / 1e6  # type: ignore[attr-defined]


def bytecode_mb() -> float:
    return sum(p.stat().st_size for root in site.getsitepackages() for p in Path(root).rglob("*.pyc")) / 1e6


def dependencies(dist: metadata.Distribution, dists: dict[str, metadata.Distribution]) -> set[str]:
    """Installed, unconditional dependencies (no extras) whose markers hold here."""
    names = set()
    for raw in dist.requires or []:
        requirement = Requirement(raw)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            name = canonicalize_name(requirement.name)
            if name in dists:
                names.add(name)
    return names


def closure(root: str, dists: dict[str, metadata.Distribution]) -> set[str]:
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in seen and name in dists:
            seen.add(name)
            todo += dependencies(dists[name], dists)
    return seen


def top_level(requirements_file: str) -> list[str]:
    lines = (line.partition("#")[0].strip() for line in Path(requirements_file).read_text().splitlines())
    return [Requirement(line).name for line in lines if line]


def breakdown(roots: list[str]) -> dict:
    dists = installed()
    sizes = {name: size_mb(dist) for name, dist in dists.items()}
    reach = {root: closure(canonicalize_name(root), dists) for root in roots}
    own = {
        root: names - set().union(*(other for key, other in reach.items() if key != root))
        for root, names in reach.items()
    }
    needed = set().union(*reach.values())
    shared = needed - set().union(*own.values())
    largest = sorted(needed, key=sizes.__getitem__, reverse=True)[:12]
    return {
        "requirements_mb": {
            root: {"alone": round(sum(sizes[n] for n in names), 1), "packages": sorted(names)}
            for root, names in sorted(own.items(), key=lambda item: -sum(sizes[n] for n in item[1]))
        },
        "shared_mb": {
            "alone": round(sum(sizes[n] for n in shared), 1),
            "packages": sorted(shared, key=sizes.__getitem__, reverse=True),
        },
        "environment_mb": round(sum(sizes.values()), 1),
        "bytecode_mb": round(bytecode_mb(), 1),
        "largest_packages_mb": {name: round(sizes[name], 1) for name in largest},
    }


if __name__ == "__main__":
    print(json.dumps(breakdown(top_level(sys.argv[1]))))
