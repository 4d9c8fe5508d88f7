#!/usr/bin/env python3
"""Re-record the PyPI metadata the offline refresh tests replay.

For each (project, version) below: the project's simple-index entries for that
version (Linux x86_64 wheels only) and the METADATA of one of those wheels,
read by HTTP range exactly as `envforge matrix refresh` reads it.
Usage: python tests/data/pypi/record.py   (needs PyPI)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from envforge.pypi import PyPI  # noqa: E402
from envforge.refresh import _linux_wheels  # noqa: E402

RECORD = {
    "torch": ["2.3.1", "2.7.1", "2.15.0"],
    "tensorflow": ["2.14.1", "2.15.0"],
    "jaxlib": ["0.4.30", "0.7.2"],
    "jax-cuda12-plugin": ["0.4.30", "0.7.2"],
    "jax-cuda13-plugin": ["0.7.2"],
}


def main() -> None:
    pypi = PyPI()
    for project, versions in RECORD.items():
        files = pypi.files(project)
        kept = []
        for version in versions:
            wheels = _linux_wheels(files, version)
            kept.extend(w[0] for w in wheels)
            newest = sorted(wheels, key=lambda w: w[0].filename)[-1][0]
            (HERE / f"{newest.filename}.METADATA").write_text(pypi.wheel_metadata(newest.url))
        doc = {"files": [{"filename": f.filename, "url": f.url, "requires-python": f.requires_python,
                          "upload-time": f.upload_time, "yanked": f.yanked} for f in kept]}
        (HERE / f"{project}.simple.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(project, len(kept), "files")


if __name__ == "__main__":
    main()
