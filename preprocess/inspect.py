"""`python -m preprocess inspect CACHE_DIR [--json] [--verify]`: what a cache holds."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from .layout import COMPONENTS
from .store import Cache, open_cache


def _size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(cache: Cache, verify: bool = False) -> dict:
    """Counts, frame statistics, detection rates, failures and fingerprints of an open cache."""
    frames = cache.samples["n_frames"]
    # the presence mask is tiny (F x 4 bools), so reading it for every shard is cheap
    present = cache.load_keypoints(components=COMPONENTS if verify else ()).present
    text_stores = []
    for name in cache.text_names:
        index = cache.text_index(name)
        text_stores.append({"name": name, "fingerprint": index["fingerprint"], "tokenizer": index["tokenizer"],
                            "text_model": index["text_model"], "max_length": index.get("max_length"),
                            "n_distinct_texts": index.get("n_distinct_texts")})
    if verify:
        for name in cache.text_names:
            cache.text(name)
    return {
        "path": str(cache.path),
        "format": cache.meta["format"],
        "format_version": cache.meta["format_version"],
        "fingerprint": cache.meta["fingerprint"],
        "n_samples": cache.n,
        "n_shards": len(cache.meta["shards"]),
        "splits": dict(Counter(cache.samples["split"])) if "split" in cache.samples else {},
        "signers": len(set(cache.samples["signer"])) if "signer" in cache.samples else None,
        "distinct_labels": len(set(cache.samples["label"])) if "label" in cache.samples else None,
        # (not min(initial=0): that is 0 for every cache)
        "frames": {"total": int(frames.sum()), "min": int(frames.min()) if len(frames) else 0,
                   "median": float(np.median(frames)) if len(frames) else 0.0, "max": int(frames.max(initial=0))},
        "fps": sorted({float(x) for x in cache.samples["fps"]}),
        "detection_rate": {c: float(present[:, i].mean()) if len(present) else 0.0 for i, c in enumerate(COMPONENTS)},
        "failures": cache.failures,
        "text_stores": text_stores,
        "default_text_store": cache.default_text,
        "settings": cache.meta.get("settings", {}),
        "versions": cache.meta.get("versions", {}),
        "created": cache.meta.get("created"),
        "size_bytes": _size_on_disk(cache.path),
        "verified": verify,
    }


def _print(d: dict) -> None:
    print(f"cache      {d['path']}")
    print(f"format     {d['format']} v{d['format_version']}, {d['n_shards']} shards, "
          f"{d['size_bytes'] / 2**20:.1f} MiB on disk{'  (all checksums verified)' if d['verified'] else ''}")
    print(f"keypoints  fingerprint {d['fingerprint'][:16]}  created {d['created']}")
    print(f"samples    {d['n_samples']}  by split: " + ", ".join(f"{k} {v}" for k, v in sorted(d["splits"].items()))
          + f"  signers: {d['signers']}  distinct labels: {d['distinct_labels']}")
    f = d["frames"]
    print(f"frames     {f['total']} total; per sample min {f['min']}, median {f['median']:.0f}, max {f['max']}"
          f"  fps {d['fps'][:5]}")
    print("detected   " + ", ".join(f"{c} {r:.1%}" for c, r in d["detection_rate"].items()))
    for t in d["text_stores"]:
        star = "*" if t["name"] == d["default_text_store"] else " "
        print(f"text{star}      {t['name']}: tokenizer {t['tokenizer']}, model {t['text_model']}, "
              f"max_length {t['max_length']}, {t['n_distinct_texts']} distinct sentences")
    print(f"failures   {len(d['failures'])}")
    for x in d["failures"][:20]:
        print(f"  {x['id']}  {x['path']}: {x['reason']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocess inspect",
                                description="Show what a sealed cache holds: samples per split, frame counts, "
                                            "detection rates per body part, failures, fingerprints, size.")
    p.add_argument("cache", help="a cache folder, e.g. cache/demo-1a2b3c4d5e6f")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--verify", action="store_true", help="read every file and check every checksum, "
                                                         "and report face/hand detection rates too")
    a = p.parse_args(argv)
    d = describe(open_cache(a.cache), verify=a.verify)
    print(json.dumps(d, indent=1)) if a.json else _print(d)
    return 0
