#!/usr/bin/env python3
"""Fails when a layer of src/ includes a header of a layer above it (docs/architecture.md, "Layers").

Each folder of src/ is one layer (one static library); LAYERS below says which other layers each may
include. Public headers (include/ispace/...) are the library's API and may be included by any layer.
A layer not listed here is an error too, so a new folder gets its place in the drawing on purpose.

    scripts/check-layers.py            check the tree
    scripts/check-layers.py --graph    print the allowed dependencies
"""
import os
import re
import sys

# layer: the layers it may include (besides itself and the public headers).
LAYERS = {
    "common": set(),
    "scsi_spec": {"common"},
    "net": {"common"},
    "iscsi": {"common", "scsi_spec"},
    "backstore": {"common", "net"},
    "scsi": {"common", "net", "backstore", "scsi_spec"},
    "iscsi_target": {"common", "net", "iscsi", "scsi_spec", "backstore", "scsi"},
    "initiator": {"common", "net", "iscsi", "scsi_spec"},
    "isns": {"common", "net"},
    "volume": {"common", "net", "scsi_spec", "backstore", "initiator"},
    "attach": {"common", "net", "backstore"},
    "mgmt": {"common", "net", "iscsi", "scsi_spec", "backstore", "scsi", "iscsi_target", "initiator", "volume",
             "attach", "isns"},
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    src = os.path.join(root, "src")
    if "--graph" in sys.argv:
        for layer, allowed in LAYERS.items():
            print(f"{layer:13} <- {', '.join(sorted(allowed)) or '(nothing)'}")
        return 0
    errors = []
    for layer in sorted(os.listdir(src)):
        path = os.path.join(src, layer)
        if not os.path.isdir(path):
            continue
        if layer not in LAYERS:
            errors.append(f"src/{layer}: a layer scripts/check-layers.py does not know; give it its place in LAYERS "
                          "and in docs/architecture.md")
            continue
        for dirpath, _, files in os.walk(path):
            for name in sorted(files):
                if not name.endswith((".cpp", ".hpp", ".h")):
                    continue
                file = os.path.join(dirpath, name)
                with open(file, errors="replace") as f:
                    for number, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        target = m.group(1).split("/")[0]
                        if "/" not in m.group(1) or target == layer or target == "ispace":
                            continue  # same folder, own layer, or the public API
                        if target not in LAYERS:
                            continue  # not a layer of ours (a test helper, a generated file)
                        if target not in LAYERS[layer]:
                            rel = os.path.relpath(file, root)
                            errors.append(f"{rel}:{number}: {layer} includes {m.group(1)}, from the {target} layer, "
                                          f"which {layer} may not depend on (allowed: "
                                          f"{', '.join(sorted(LAYERS[layer])) or 'nothing'})")
    if errors:
        print("check-layers: a lower layer includes a higher one (docs/architecture.md, \"Layers\"):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print(f"check-layers: {sum(1 for _ in os.listdir(src))} layers, every include points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
