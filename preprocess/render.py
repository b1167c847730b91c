"""Stick-figure animations of keypoint samples (pose skeleton, hands, face dots) as a GIF.

Why: to see what a corpus or an extraction looks like — whether it reads as a person signing —
without a video player or the original videos. Several samples play side by side, each titled
with its sentence. Missing parts (NaN) are simply not drawn, as in the data.
"""
from __future__ import annotations

import argparse
import csv
import sys
import textwrap
from pathlib import Path

import numpy as np

from preprocess.layout import COMPONENT_SLICES

POSE_EDGES = [(11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24),
              (15, 17), (15, 19), (15, 21), (16, 18), (16, 20), (16, 22),
              (0, 2), (2, 7), (0, 5), (5, 8), (9, 10)]
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10),
              (10, 11), (11, 12), (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17),
              (17, 18), (18, 19), (19, 20)]


def _segments(points: np.ndarray, edges, offset: int) -> np.ndarray:
    """(T, E, 2, 2) line segments (x, y) for `edges` of a component starting at `offset`."""
    idx = np.array(edges) + offset
    return points[:, idx, :2]


def render_samples(samples, out_path, fps: float = 15.0, titles=None, stride: int = 1,
                   panel_inches: float = 3.0, dpi: int = 80, still_path=None) -> Path:
    """Animate samples (paths to .npy or (T,543,3) arrays) side by side into a GIF at out_path.
    `stride` keeps every n-th frame (smaller GIF); `still_path` also saves the middle frame as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.collections import LineCollection

    arrays = [np.load(s) if isinstance(s, (str, Path)) else np.asarray(s) for s in samples]
    arrays = [a.astype(np.float32)[::stride] for a in arrays]
    titles = titles or [""] * len(arrays)
    n_frames = max(len(a) for a in arrays)
    fig, axes = plt.subplots(1, len(arrays), figsize=(panel_inches * len(arrays), panel_inches * 1.2),
                             dpi=dpi, squeeze=False)
    artists = []
    for ax, a, title in zip(axes[0], arrays, titles):
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)  # image coordinates: y grows downwards
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title("\n".join(textwrap.wrap(title, 28)), fontsize=8)
        segs = {
            "pose": _segments(a, POSE_EDGES, COMPONENT_SLICES["pose"].start),
            "left_hand": _segments(a, HAND_EDGES, COMPONENT_SLICES["left_hand"].start),
            "right_hand": _segments(a, HAND_EDGES, COMPONENT_SLICES["right_hand"].start),
        }
        lines = {k: ax.add_collection(LineCollection([], colors=c, linewidths=w))
                 for k, c, w in (("pose", "0.3", 2.0), ("left_hand", "tab:blue", 1.2),
                                 ("right_hand", "tab:red", 1.2))}
        face = ax.scatter([], [], s=0.4, c="0.5")
        artists.append((a, segs, lines, face))

    def draw(frame: int):
        changed = []
        for a, segs, lines, face in artists:
            f = min(frame, len(a) - 1)  # shorter samples hold their last frame
            for k, coll in lines.items():
                coll.set_segments(segs[k][f])
            face.set_offsets(a[f, COMPONENT_SLICES["face"], :2])
            changed += [*lines.values(), face]
        return changed

    fig.tight_layout()
    if still_path is not None:
        draw(n_frames // 2)
        fig.savefig(still_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    FuncAnimation(fig, draw, frames=n_frames, blit=False).save(
        out_path, writer=PillowWriter(fps=max(1.0, fps / stride)))
    plt.close(fig)
    return out_path


def _pick_rows(rows: list[dict], n: int, ids: list[str] | None) -> list[dict]:
    """Given ids, or else n samples from different signers, test signer first."""
    if ids:
        by_id = {r["id"]: r for r in rows}
        return [by_id[i] for i in ids]
    order = sorted(rows, key=lambda r: (r.get("split") != "test", r.get("signer", ""), r["id"]))
    picked, signers = [], set()
    for r in order:
        if r.get("signer") not in signers:
            picked.append(r)
            signers.add(r.get("signer"))
        if len(picked) == n:
            break
    return picked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.render",
        description="Render samples of a keypoint corpus (manifest.csv with .npy paths) as a "
                    "stick-figure GIF, side by side with their sentences.")
    parser.add_argument("--corpus", required=True, type=Path, help="folder holding manifest.csv")
    parser.add_argument("--n", type=int, default=3, help="number of samples (default 3)")
    parser.add_argument("--ids", nargs="*", help="sample ids to show instead of an automatic pick")
    parser.add_argument("--out", type=Path, default=Path("docs/demo_samples.gif"), help="GIF path")
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th frame (default 1)")
    parser.add_argument("--still", type=Path, help="also save the middle frame as this PNG")
    args = parser.parse_args(argv)
    with open(args.corpus / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked = _pick_rows(rows, args.n, args.ids)
    fps = float(picked[0].get("fps") or 15.0)
    titles = [f"{r['text']}  [{r.get('signer', '')}, {r.get('split', '')}]" for r in picked]
    out = render_samples([args.corpus / r["path"] for r in picked], args.out, fps=fps,
                         titles=titles, stride=args.stride, still_path=args.still)
    print(f"{len(picked)} samples -> {out} ({out.stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
