"""Write data/tests/fixtures/coco_rle_pycocotools.json: masks and pycocotools' RLE of them.

Rerun:  /root/venvs/oracle/bin/python scripts/data/coco_rle_fixture.py
Needs:  numpy, pycocotools==2.0.11 (scripts/oracle/requirements.txt).
The Rust test data/tests/coco_rle_oracle.rs compares our encoder/decoder with these exactly.
"""
import json
import pathlib

import numpy as np
from pycocotools import mask as mask_utils

rng = np.random.default_rng(20261129)
cases = []


def add(name, m):
    m = np.asfortranarray(m.astype(np.uint8))
    enc = mask_utils.encode(m)
    h, w = m.shape
    # The plain-list spelling, converted by pycocotools itself to its compressed form.
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            n, cur = 0, v
        n += 1
    runs.append(n)
    from_list = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
    assert from_list["counts"] == enc["counts"], name
    cases.append({
        "name": name,
        "rows": ["".join("1" if v else "0" for v in row) for row in m],
        "size": [int(h), int(w)],
        "counts": enc["counts"].decode("ascii"),
        "uncompressed": [int(r) for r in runs],
        "area": int(mask_utils.area(enc)),
    })


add("empty", np.zeros((4, 5)))
add("full", np.ones((3, 7)))
add("single_pixel_corner", np.pad(np.ones((1, 1)), ((0, 6), (8, 0))))
for i, p in enumerate([0.05, 0.5, 0.95]):
    add(f"random_p{p}", rng.random((9 + i, 13 + 2 * i)) < p)
# Long runs and big deltas in both directions exercise multi-group and negative numbers.
big = np.zeros((120, 90), dtype=np.uint8)
big[10:100, 5:60] = 1
big[0:3, 70:89] = 1
big[119, :] = 1
add("big_blocks", big)
yy, xx = np.mgrid[0:64, 0:80]
add("disc", (xx - 40) ** 2 + (yy - 30) ** 2 < 22 ** 2)

out = pathlib.Path(__file__).resolve().parents[2] / "data/tests/fixtures/coco_rle_pycocotools.json"
out.write_text(json.dumps({"generator": "scripts/data/coco_rle_fixture.py", "cases": cases}, indent=1))
print(f"wrote {len(cases)} cases to {out}")
