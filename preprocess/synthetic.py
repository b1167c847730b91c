"""The built-in synthetic sign corpus: medical sentences signed by virtual signers.

Why it exists: the demo and the tests need a corpus with the structure that makes real sign data
hard — sentences that share most of their signs, signers who differ in body, framing, speed and
style, a held-out signer at test time, MediaPipe-like jitter and missing hands — without shipping
videos. Nothing here is meant to look like a real sign language; it is meant to be *sign-like*.

How a sample is made:
- Grammar: templates with slots give a few hundred patient/clinic sentences (4–12 words) in which
  near-duplicates ("do you have pain in your chest" / "... in your back") are common.
- Lexicon (drawn from the seed): one sign per word — keyframes of the dominant wrist around a body
  anchor (head, face, chest, neutral space), a handshape (flexion per finger) and palm orientation
  per keyframe, and a role for the other hand (idle, mirrored, alternating, or a static base hand).
- A sentence is signed word by word (gloss order = word order). The keyframes of all its signs go
  through one smooth interpolant and a short temporal blur: that is the coarticulation.
- Skeleton: 33 pose points (2-link arm IK for the elbows), a rigid 468-point face that follows the
  head, 21-point hands with realistic bone lengths, projected to image-normalised x, y by a
  per-signer camera. Then landmark noise, runs of missing hands and dropped face frames (NaN).
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter1d

from preprocess.layout import COMPONENT_SLICES, N_DIMS, N_POINTS

GENERATOR_VERSION = 1
FPS = 15.0  # low enough to keep files small, high enough for signs of ~0.4 s (6+ frames)

# --------------------------------------------------------------------------------------------
# Grammar: (template, slot fillers). Every filled template is one sentence.
# --------------------------------------------------------------------------------------------
_BODY = ["chest", "back", "head", "stomach", "neck", "throat", "arm", "leg", "knee", "foot",
         "shoulder", "ear", "eye", "side"]
_ACTION = ["walk", "eat", "breathe", "sleep", "cough", "move", "sit", "stand"]
_SYMPTOM = ["a fever", "a cough", "a headache", "a rash", "chest pain", "back pain",
            "a sore throat", "nausea", "diarrhea"]
_SINCE = ["yesterday", "last night", "last week", "this morning", "monday", "the weekend"]
_AGO = ["yesterday", "last night", "last week", "this morning", "two days ago", "three days ago"]
_MEDICINE = ["this medicine", "these tablets", "the antibiotics", "the pain medicine", "two tablets"]
_FREQUENCY = ["once a day", "twice a day", "three times a day", "every morning", "every night",
              "after each meal", "before you sleep"]
_WHEN = ["now", "soon", "in ten minutes", "in one hour", "tomorrow morning", "after lunch"]
_VITAL = ["blood pressure", "temperature", "heart rate", "weight", "blood sugar", "breathing"]
_FAMILY = ["son", "daughter", "mother", "father", "husband", "wife", "baby"]
_CONDITION = ["heart", "blood pressure", "diabetes", "asthma", "pain", "cholesterol"]

GRAMMAR: list[tuple[str, dict[str, list[str]]]] = [
    ("do you have pain in your {body}", {"body": _BODY}),
    ("does your {body} hurt when you {action}", {"body": _BODY, "action": _ACTION}),
    ("i have had {symptom} since {since}", {"symptom": _SYMPTOM, "since": _SINCE}),
    ("take {medicine} {frequency}", {"medicine": _MEDICINE, "frequency": _FREQUENCY}),
    ("how long have you had {symptom}", {"symptom": _SYMPTOM}),
    ("my {family} has had {symptom} since {since}",
     {"family": _FAMILY, "symptom": _SYMPTOM, "since": _SINCE}),
    ("my {family} has {symptom}", {"family": _FAMILY, "symptom": _SYMPTOM}),
    ("the doctor will see you {when}", {"when": _WHEN}),
    ("we need to check your {vital}", {"vital": _VITAL}),
    ("your {vital} is {level}", {"vital": _VITAL,
                                 "level": ["normal", "too high", "too low", "a little high"]}),
    ("do you take medicine for your {condition}", {"condition": _CONDITION}),
    ("you need {test} {when}", {"test": ["a blood test", "an x ray", "a urine test", "a scan"],
                                "when": _WHEN}),
    ("are you allergic to {allergen}",
     {"allergen": ["penicillin", "aspirin", "any medicine", "nuts", "eggs", "latex"]}),
    ("is the pain {quality}", {"quality": ["sharp", "dull", "constant", "worse at night",
                                           "better after rest", "getting worse"]}),
    ("did the pain start {ago}", {"ago": _AGO}),
    ("call us if the {problem} gets worse",
     {"problem": ["pain", "fever", "cough", "rash", "swelling", "bleeding"]}),
    ("please {instruction}", {"instruction": [
        "sit down here", "lie down on the bed", "open your mouth", "take a deep breath",
        "roll up your sleeve", "stand up slowly", "wait here for the doctor",
        "fill in this form", "show me where it hurts"]}),
    ("where is the pain", {}),
    ("where does it hurt", {}),
    ("do you feel dizzy when you {action}", {"action": _ACTION}),
    ("please take {medicine} {frequency} for {duration}",
     {"medicine": _MEDICINE, "frequency": _FREQUENCY,
      "duration": ["one week", "two weeks", "five days"]}),
    ("if the {problem} is worse after {since} please come back",
     {"problem": ["pain", "fever", "cough", "rash", "swelling"], "since": ["two days", "three days"]}),
]
MIN_WORDS, MAX_WORDS = 4, 12


def grammar_table() -> list[tuple[str, int]]:
    """(sentence, template index) for every 4–12-word sentence of the grammar, in a fixed order."""
    seen: dict[str, int] = {}
    for t, (template, slots) in enumerate(GRAMMAR):
        names = list(slots)
        for values in itertools.product(*(slots[n] for n in names)):
            sentence = template.format(**dict(zip(names, values)))
            if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
                seen.setdefault(sentence, t)
    return sorted(seen.items())


def grammar_sentences() -> list[str]:
    return [s for s, _ in grammar_table()]


def grammar_vocabulary() -> list[str]:
    return sorted({w for s in grammar_sentences() for w in s.split()})


# Time phrases made only of grammar words: appended to a grammar sentence they make new sentences
# (thousands) without new signs, for the open-vocabulary scale.
TAILS = sorted({*_SINCE, *_AGO, *_WHEN, *_FREQUENCY} | {f"since {s}" for s in _SINCE})


def open_sentences(n: int, max_words: int, seed: int) -> list[str]:
    """n distinct sentences: the grammar's, and grammar sentences followed by a time phrase
    ("do you have pain in your knee every night"), all made of the grammar's words."""
    pool = sorted({s for s, _ in grammar_table()} | {f"{s} {t}" for s, _ in grammar_table() for t in TAILS
                                                     if len(s.split()) + len(t.split()) <= max_words})
    rng = np.random.default_rng([seed, 4])
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))]


def select_sentences(n: int, max_words: int, seed: int) -> list[str]:
    """n distinct sentences; each template weighs sqrt(its size) so big templates give many
    near-duplicates without crowding out the small ones."""
    table = [(s, t) for s, t in grammar_table() if len(s.split()) <= max_words]
    sizes = np.bincount([t for _, t in table])
    weights = np.array([1.0 / np.sqrt(sizes[t]) for _, t in table])
    rng = np.random.default_rng([seed, 3])
    chosen = rng.choice(len(table), size=min(n, len(table)), replace=False, p=weights / weights.sum())
    return [table[i][0] for i in sorted(chosen)]


def _word_edits(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        cur = [i]
        for j, wb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wa != wb)))
        prev = cur
    return prev[-1]


def near_duplicate_fraction(sentences: list[str], max_edits: int = 2) -> float:
    """Share of sentences with another sentence at most `max_edits` words away (the hard cases)."""
    words = [s.split() for s in sentences]
    has = np.zeros(len(words), bool)
    for i, j in itertools.combinations(range(len(words)), 2):
        if abs(len(words[i]) - len(words[j])) <= max_edits and _word_edits(words[i], words[j]) <= max_edits:
            has[i] = has[j] = True
    return float(has.mean()) if len(words) else 0.0


# --------------------------------------------------------------------------------------------
# Signs. Positions are in metres for a reference body, origin at the mid-shoulder point,
# axes (L, Y, Z): L lateral towards the hand's own side, Y up, Z towards the camera.
# Describing each hand in its own lateral axis makes mirroring (two-handed signs, left-handed
# signers) a sign flip of L.
# --------------------------------------------------------------------------------------------
ANCHORS: dict[str, tuple[float, float, float]] = {
    "forehead": (0.03, 0.24, 0.13), "eye": (0.06, 0.20, 0.14), "nose": (0.03, 0.16, 0.16),
    "mouth": (0.03, 0.11, 0.16), "chin": (0.04, 0.07, 0.16), "cheek": (0.11, 0.13, 0.11),
    "ear": (0.15, 0.17, 0.05), "temple": (0.13, 0.24, 0.07), "neck": (0.04, -0.01, 0.14),
    "chest": (0.03, -0.14, 0.16), "own_shoulder": (0.16, -0.06, 0.12),
    "other_shoulder": (-0.10, -0.06, 0.15), "stomach": (0.04, -0.32, 0.18),
    "neutral": (0.10, -0.20, 0.32), "neutral_high": (0.12, 0.00, 0.36),
    "neutral_side": (0.26, -0.18, 0.28), "neutral_low": (0.08, -0.33, 0.30),
}
SIGNING_SPACE = ((-0.15, -0.42, 0.03), (0.35, 0.30, 0.45))  # wrist bounds (L, Y, Z)
REST_POSITIONS = {"lap": (0.17, -0.47, 0.16), "waist": (0.14, -0.36, 0.22)}

# Handshapes: flexion of index, middle, ring, pinky, thumb (0 straight .. 1 curled), finger spread.
HANDSHAPES: dict[str, tuple[float, ...]] = {
    "flat": (0, 0, 0, 0, 0.55, 0), "five": (0, 0, 0, 0, 0, 1), "fist": (1, 1, 1, 1, 1, 0),
    "a": (1, 1, 1, 1, 0.15, 0), "point": (0, 1, 1, 1, 1, 0), "v": (0, 0, 1, 1, 1, 0.8),
    "l": (0, 1, 1, 1, 0, 0.5), "y": (1, 1, 1, 0, 0, 1), "c": (0.45, 0.45, 0.45, 0.45, 0.3, 0.1),
    "o": (0.62, 0.62, 0.62, 0.62, 0.6, 0), "claw": (0.5, 0.5, 0.5, 0.5, 0.2, 1),
    "w": (0, 0, 0, 1, 1, 0.7), "bent": (0.35, 0.35, 0.35, 0.35, 0.5, 0), "i": (1, 1, 1, 0, 1, 0),
    "rest": (0.35, 0.4, 0.45, 0.5, 0.3, 0.2),
}
# Palm orientations: (finger direction u, palm normal w), in the hand's own lateral axes.
ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "up_fwd": ((0, 1, 0), (0, 0, 1)), "up_in": ((0, 1, 0), (-1, 0, 0)),
    "up_back": ((0, 1, 0), (0, 0, -1)), "up_out": ((0, 1, 0), (1, 0, 0)),
    "fwd_down": ((0, 0, 1), (0, -1, 0)), "fwd_up": ((0, 0, 1), (0, 1, 0)),
    "fwd_in": ((0, 0, 1), (-1, 0, 0)), "in_down": ((-1, 0, 0), (0, -1, 0)),
    "in_back": ((-1, 0, 0), (0, 0, -1)), "in_fwd": ((-1, 0, 0), (0, 0, 1)),
    "diag": ((-0.5, 0.7, 0.5), (0, -0.5, 0.9)), "rest": ((-0.5, -0.3, 0.8), (0, -1, 0.1)),
}
_DIRECTIONS = np.array([(0, 1, 0), (0, -1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, 0, -1),
                        (0.7, 0.7, 0), (-0.7, 0.7, 0), (0, 0.7, 0.7), (0.7, 0, 0.7)], float)
MOVEMENTS = ("straight", "arc", "repeat", "circle", "tap", "path", "twist")
HAND_ROLES = ("one", "sym", "alt", "base")  # other hand: idle, mirrored, alternating, static base


def _make_sign(rng: np.random.Generator) -> dict:
    shape_names = [n for n in HANDSHAPES if n != "rest"]
    orient_names = [n for n in ORIENTATIONS if n != "rest"]
    role = str(rng.choice(HAND_ROLES, p=[0.45, 0.25, 0.12, 0.18]))
    movement = str(rng.choice(MOVEMENTS))
    anchor = str(rng.choice(list(ANCHORS)))
    start = np.array(ANCHORS[anchor])
    sign: dict = {"hands": role, "anchor": anchor, "movement": movement}
    if role == "base":  # the other hand is a static platform in front of the body
        base_pos = np.array(ANCHORS[str(rng.choice(["neutral", "neutral_low"]))]) * (0.3, 1, 1)
        sign["base"] = {"position": base_pos.round(4).tolist(),
                        "shape": str(rng.choice(["flat", "fist", "bent"])),
                        "orient": str(rng.choice(["fwd_up", "up_in", "fwd_in"]))}
        start = base_pos * (-1, 1, 1) + (0.0, 0.07, 0.0)  # just above it, in this hand's axes
        sign["anchor"] = "base_hand"
    elif role in ("sym", "alt") and start[0] < 0.08:
        start = start + (0.08, 0, 0)  # keep two hands apart

    d = _DIRECTIONS[rng.integers(len(_DIRECTIONS))] * rng.uniform(0.08, 0.18)
    if movement == "straight":
        offsets = [0 * d, d]
    elif movement == "arc":
        bulge = np.cross(d, _DIRECTIONS[rng.integers(len(_DIRECTIONS))])
        bulge = bulge / (np.linalg.norm(bulge) + 1e-9) * rng.uniform(0.03, 0.06)
        offsets = [0 * d, d / 2 + bulge, d]
    elif movement == "repeat":
        offsets = [0 * d, d / 2, 0 * d, d / 2]
    elif movement == "circle":
        a, b = _DIRECTIONS[rng.choice(6, size=2, replace=False)]
        if abs(a @ b) > 0.5:
            b = np.cross(a, (0, 0, 1)) if abs(a[2]) < 0.9 else np.array((1.0, 0, 0))
        r = rng.uniform(0.04, 0.07)
        ang = np.linspace(0, 2 * np.pi, 5)
        offsets = list(r * (np.cos(ang)[:, None] - 1) * a + r * np.sin(ang)[:, None] * b)
    elif movement == "tap":
        toward = np.array((0, -0.035, 0)) if anchor.startswith("neutral") or role == "base" \
            else np.array((0, 0, -0.035))
        offsets = [0 * d, toward, 0 * d, toward]
    elif movement == "path":
        end = np.array(ANCHORS[str(rng.choice(list(ANCHORS)))])
        offsets = [0 * d, end - start]
    else:  # twist: the wrist barely moves, the palm turns
        offsets = [0 * d, d * 0.2, d * 0.3]
    keyframes = np.clip(start + np.array(offsets), *SIGNING_SPACE)
    k = len(keyframes)
    shapes = [str(rng.choice(shape_names))] * k
    if rng.random() < 0.3:  # handshape change halfway through
        shapes[k // 2:] = [str(rng.choice(shape_names))] * (k - k // 2)
    orients = [str(rng.choice(orient_names))] * k
    if movement == "twist" or rng.random() < 0.25:
        others = [n for n in orient_names if n != orients[0]]
        orients[k // 2:] = [str(rng.choice(others))] * (k - k // 2)
    sign.update(keyframes=keyframes.round(4).tolist(), shapes=shapes, orients=orients,
                duration=round(0.28 + 0.05 * k + rng.uniform(0, 0.12), 3))
    return sign


def _minimal_pair(parent: dict, rng: np.random.Generator) -> dict:
    """A sign that differs from `parent` in one parameter, as minimal pairs do in sign languages."""
    sign = json.loads(json.dumps(parent))
    kf = np.array(sign["keyframes"])
    change = str(rng.choice(["shape", "orient", "location", "direction"]))
    if change == "shape":
        new = str(rng.choice([n for n in HANDSHAPES if n not in ("rest", *sign["shapes"])]))
        sign["shapes"] = [new] * len(kf)
    elif change == "orient":
        new = str(rng.choice([n for n in ORIENTATIONS if n not in ("rest", *sign["orients"])]))
        sign["orients"] = [new] * len(kf)
    elif change == "location":
        shift = _DIRECTIONS[rng.integers(len(_DIRECTIONS))] * rng.uniform(0.07, 0.12)
        sign["keyframes"] = np.clip(kf + shift, *SIGNING_SPACE).round(4).tolist()
    else:  # the same path travelled the other way
        sign["keyframes"] = kf[::-1].tolist()
    sign["differs_in"] = change
    return sign


def build_lexicon(words: list[str], seed: int) -> dict[str, dict]:
    """One sign per word, drawn from the seed (JSON-serialisable, stored in corpus.json).
    Most signs are minimal pairs of an earlier freshly drawn sign, so that signs are confusable
    (pairs are made from fresh signs only: families stay small and the mix of one- and
    two-handed signs stays as drawn)."""
    rng = np.random.default_rng([seed, 1])
    lexicon: dict[str, dict] = {}
    roots: list[str] = []
    for w in words:
        if roots and rng.random() < 0.7:
            parent = str(rng.choice(roots))
            lexicon[w] = {**_minimal_pair(lexicon[parent], rng), "variant_of": parent}
        else:
            lexicon[w] = _make_sign(rng)
            roots.append(w)
    return lexicon


# --------------------------------------------------------------------------------------------
# Signers: body, framing, tempo and style. One left-handed signer, always in training.
# --------------------------------------------------------------------------------------------
def make_signers(n: int, seed: int, difficulty: float = 1.0, left_handed: tuple[int, ...] = (2,),
                 variation: float = 0.0) -> list[dict]:
    """`difficulty` widens the spread of tempo, amplitude, style and viewpoint around the same
    centres and multiplies jitter and missing hands (1.0 = the default corpus, byte for byte).
    `left_handed`: indices of the left-handed signers. `variation` > 0: every signer makes every
    sign their own way (see `_personal_sign`); 0 keeps the older corpora byte for byte."""
    rng = np.random.default_rng([seed, 2])

    def spread(lo, hi, floor=None):
        v = rng.uniform(lo, hi)
        if difficulty != 1.0:
            v = (lo + hi) / 2 + difficulty * (v - (lo + hi) / 2)
        return v if floor is None else max(floor, v)

    signers = []
    for i in range(n):
        signers.append({
            "id": f"s{i:02d}",
            "handed": "left" if i in left_handed else "right",
            "body": round(rng.uniform(0.9, 1.1), 3),        # overall size
            "shoulders": round(rng.uniform(0.92, 1.08), 3),  # shoulder width relative to size
            "hand": round(rng.uniform(0.92, 1.08), 3),
            "cx": round(rng.uniform(0.42, 0.58), 3),         # mid-shoulder position in the frame
            "cy": round(rng.uniform(0.40, 0.50), 3),
            "scale": round(rng.uniform(0.85, 1.25), 3),      # image units per metre
            "speed": round(spread(0.8, 1.25), 3),
            "amplitude": round(spread(0.7, 1.35), 3),
            "lax": round(spread(0.0, 0.35, floor=0.0), 3),   # handshapes drift towards relaxed
            "yaw": round(spread(-0.3, 0.3), 3),              # camera viewpoint, radians
            "space": rng.uniform((-0.02, -0.04, -0.04), (0.02, 0.04, 0.04)).round(3).tolist(),
            "smooth": round(spread(0.6, 1.3), 3),            # coarticulation blur, frames
            "noise": round(difficulty * rng.uniform(0.002, 0.005), 4),    # landmark jitter, image units
            "hand_drops": round(difficulty * rng.uniform(0.5, 3.0), 3),   # missing-hand runs per 100 frames
            "rest": str(rng.choice(list(REST_POSITIONS))),
            "head_tilt": round(spread(-0.06, 0.06), 3),      # radians
            "accent_seed": int(rng.integers(2**31)),          # per-sign personal variation
        })
        if variation:
            signers[-1]["variation"] = variation
    return signers


# --------------------------------------------------------------------------------------------
# Skeleton. Body space: metres, X towards image right (the signer's left), Y up, Z to camera,
# origin at the mid-shoulder point of the reference body (scaled by the signer's size).
# --------------------------------------------------------------------------------------------
UPPER_ARM, FOREARM = 0.29, 0.25
NECK = np.array((0.0, 0.06, 0.0))          # head pivot
FACE_CENTRE = np.array((0.0, 0.155, 0.03))  # relative to the neck pivot


def _face_template() -> np.ndarray:
    """468 points on the front of an ellipsoid (a coarse face), with the landmarks other code
    may look up (nose tip, eyes, mouth corners, lips, chin, forehead) at their MediaPipe indices."""
    i = np.arange(468) + 0.5
    r = np.sqrt(i / 468)
    theta = i * np.pi * (3 - np.sqrt(5))  # golden angle: even coverage
    x, y = 0.07 * r * np.cos(theta), 0.10 * r * np.sin(theta)
    z = 0.06 * np.sqrt(1 - r ** 2) + 0.025 * np.exp(-(x / 0.015) ** 2 - (y / 0.03) ** 2)
    pts = np.stack([x, y, z], 1)
    named = {1: (0, -0.005, 0.085), 4: (0, 0.005, 0.08), 10: (0, 0.095, 0.035),
             152: (0, -0.095, 0.04), 33: (-0.045, 0.03, 0.05), 133: (-0.013, 0.03, 0.06),
             263: (0.045, 0.03, 0.05), 362: (0.013, 0.03, 0.06), 61: (-0.022, -0.045, 0.065),
             291: (0.022, -0.045, 0.065), 13: (0, -0.04, 0.07), 14: (0, -0.05, 0.07),
             234: (-0.07, 0.0, 0.0), 454: (0.07, 0.0, 0.0)}
    for k, v in named.items():
        pts[k] = v
    return pts + FACE_CENTRE


FACE_TEMPLATE = _face_template()
_JAW = np.clip((-0.04 - (FACE_TEMPLATE[:, 1] - FACE_CENTRE[1])) / 0.05, 0, 1)  # below the mouth
_JAW[14] = 1.0
_BROW = ((FACE_TEMPLATE[:, 1] - FACE_CENTRE[1] > 0.04) & (FACE_TEMPLATE[:, 1] - FACE_CENTRE[1] < 0.07)
         & (np.abs(FACE_TEMPLATE[:, 0]) > 0.01)).astype(float)
# Pose points 0-10 (nose, eyes inner/centre/outer left then right, ears, mouth left/right).
_POSE_FACE = FACE_CENTRE + np.array([
    (0, -0.005, 0.085), (0.013, 0.03, 0.06), (0.03, 0.03, 0.058), (0.045, 0.03, 0.05),
    (-0.013, 0.03, 0.06), (-0.03, 0.03, 0.058), (-0.045, 0.03, 0.05),
    (0.075, 0.01, -0.02), (-0.075, 0.01, -0.02), (0.022, -0.045, 0.065), (-0.022, -0.045, 0.065)])
# Legs (hips, knees, ankles, heels, foot tips) of a standing signer, right side then left.
_LOWER = {23: (0.10, -0.52, 0), 25: (0.10, -0.95, 0.03), 27: (0.10, -1.38, 0),
          29: (0.10, -1.43, -0.04), 31: (0.11, -1.45, 0.12)}

# Hand: local axes (u along the fingers, v towards the thumb, w out of the palm), metres.
_MCP = np.array([(0.085, 0.024, 0), (0.088, 0.0, 0), (0.082, -0.019, 0), (0.073, -0.036, 0)])
_BONES = np.array([(0.040, 0.024, 0.020), (0.045, 0.028, 0.022), (0.042, 0.027, 0.021),
                   (0.033, 0.020, 0.019)])
_SPREAD = np.array([0.14, 0.0, -0.13, -0.27])  # radians at full spread
_JOINT_MAX = np.array([1.4, 1.7, 1.1])          # MCP, PIP, DIP flexion at flex = 1
_THUMB_CMC = np.array((0.022, 0.018, 0.0))
_THUMB_BONES = np.array((0.040, 0.032, 0.027))
_THUMB_OPEN = np.array([(0.55, 0.8, 0.15), (0.65, 0.75, 0.05), (0.75, 0.65, 0.0)])
_THUMB_CLOSED = np.array([(0.75, 0.35, 0.55), (0.45, -0.35, 0.8), (0.1, -0.85, 0.5)])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def orthonormal_frame(u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gram-Schmidt (T,3) finger direction and palm normal after interpolation."""
    u = _unit(u)
    w = w - (w * u).sum(-1, keepdims=True) * u
    fallback = np.cross(u, (0.0, 0.0, 1.0))  # w collapsed onto u: any perpendicular will do
    w = np.where(np.linalg.norm(w, axis=-1, keepdims=True) < 1e-3, fallback, w)
    return u, _unit(w)


def hand_points(wrist, u, w, shape, right: bool, size: float = 1.0) -> np.ndarray:
    """(T,21,3) MediaPipe hand points from wrist (T,3), orthonormal u, w (T,3) and
    shape (T,6) = flexion of index, middle, ring, pinky, thumb and spread."""
    v = np.cross(u, w) if right else np.cross(w, u)  # thumb side mirrors between hands
    basis = np.stack([u, v, w], axis=1)  # (T,3,3), rows are the local axes
    n = len(wrist)
    phi = shape[:, 5:6] * _SPREAD  # (T,4)
    base_dir = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], -1)  # (T,4,3)
    alpha = np.cumsum(shape[:, :4, None] * _JOINT_MAX, axis=2)  # (T,4,3) accumulated flexion
    seg = np.cos(alpha)[..., None] * base_dir[:, :, None] + np.sin(alpha)[..., None] * (0, 0, 1.0)
    fingers = _MCP[None, :, None] + np.cumsum(_BONES[..., None] * seg, axis=2)  # (T,4,3,3)
    fingers = np.concatenate([np.broadcast_to(_MCP[None, :, None], (n, 4, 1, 3)), fingers], 2)
    t = shape[:, 4, None, None]
    thumb_dir = _unit((1 - t) * _unit(_THUMB_OPEN) + t * _unit(_THUMB_CLOSED))  # (T,3,3)
    thumb = _THUMB_CMC + np.cumsum(_THUMB_BONES[:, None] * thumb_dir, axis=1)
    local = np.concatenate([np.zeros((n, 1, 3)), np.broadcast_to(_THUMB_CMC, (n, 1, 3)), thumb,
                            fingers.reshape(n, 16, 3)], axis=1)  # (T,21,3)
    return wrist[:, None] + size * (local @ basis)


def arm_ik(shoulder, target, upper: float, fore: float, pole) -> tuple[np.ndarray, np.ndarray]:
    """Two-link IK: elbow on the side of `pole` (down/out/back); the wrist is pulled in when
    the target is out of reach. Returns (elbow, wrist), each (T,3)."""
    v = target - shoulder
    dist = np.linalg.norm(v, axis=-1, keepdims=True)
    axis = v / np.maximum(dist, 1e-9)
    d = np.clip(dist, abs(upper - fore) + 1e-3, (upper + fore) * 0.999)
    cos_a = (upper ** 2 + d ** 2 - fore ** 2) / (2 * upper * d)
    bend = _unit(pole - (pole * axis).sum(-1, keepdims=True) * axis)
    elbow = shoulder + upper * (cos_a * axis + np.sqrt(1 - cos_a ** 2) * bend)
    return elbow, shoulder + axis * d


def _rotations(yaw, pitch, roll) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(-1, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return ry @ rx @ rz


def _smooth_noise(rng, n: int, dims: int, sigma: float) -> np.ndarray:
    """Unit-variance noise correlated over ~sigma frames (sway, head drift)."""
    x = gaussian_filter1d(rng.standard_normal((n + 8 * int(sigma), dims)), sigma, axis=0)
    x = x[4 * int(sigma):4 * int(sigma) + n]
    return x / max(float(x.std()), 1e-9)


# --------------------------------------------------------------------------------------------
# A sentence, signed: keyframes -> one smooth trajectory -> skeleton -> image -> noise, gaps.
# --------------------------------------------------------------------------------------------
_QUESTION_WORDS = {"do", "does", "did", "how", "where", "are", "is"}


def _hand_rows(pos, shapes, orients) -> np.ndarray:
    """(K,15) control rows: position 3 | handshape 6 | finger direction 3 | palm normal 3."""
    k = len(pos)
    shape = np.array([HANDSHAPES[s] for s in shapes], float).reshape(k, 6)
    orient = np.array([ORIENTATIONS[o] for o in orients], float).reshape(k, 6)
    return np.concatenate([np.asarray(pos, float).reshape(k, 3), shape, orient], 1)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: the 3x3 rotation by `angle` radians about `axis`."""
    a = _unit(np.asarray(axis, float))
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _personal_sign(kf: np.ndarray, dom: np.ndarray, word: str, signer: dict,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How this signer makes this sign (fixed per signer and word; scaled by signer["variation"]),
    plus this repetition's share of it. Real people differ per sign, not only per body:
    - the hand path: a smooth offset of the whole sign and of each keyframe,
    - the hand orientation: the palm frame turned about a random axis,
    - the handshape: every finger flexed a little more or less,
    - the timing inside the sign: keyframes unevenly spaced,
    - co-articulation: the first or last keyframe cut short towards its neighbour.
    Returns keyframes (K,3), the hand rows (K,15) and the relative keyframe times (K,) in [0, 1]."""
    v = signer["variation"]
    own = np.random.default_rng([signer["accent_seed"], 7, *word.encode()])
    k = len(kf)
    kf = kf + v * (own.normal(0, 0.04, 3) + own.normal(0, 0.025, (k, 3)))
    kf = kf + v * rng.normal(0, 0.008, (k, 3))  # repetitions of one signer differ a little too
    dom = dom.copy()
    turn = _rotation(own.normal(size=3), v * own.normal(0, 0.35))
    dom[:, 9:12], dom[:, 12:15] = dom[:, 9:12] @ turn.T, dom[:, 12:15] @ turn.T
    dom[:, 3:9] = np.clip(dom[:, 3:9] + v * own.normal(0, 0.15, 6) + v * rng.normal(0, 0.04, (k, 6)), 0, 1)
    times = np.linspace(0, 1, k)
    if k > 2:
        uneven = np.sort(own.uniform(0, 1, k - 2))
        times[1:-1] = (1 - min(0.6, 0.4 * v)) * times[1:-1] + min(0.6, 0.4 * v) * uneven
    if k > 1:
        for end, nxt in ((0, 1), (k - 1, k - 2)):
            if own.random() < 0.4 * v:  # this signer stops short of the sign's full movement
                kf[end] = kf[end] + own.uniform(0.3, 0.6) * (kf[nxt] - kf[end])
    return kf, dom, times


def _plan(words, lexicon, signer, rng):
    """Control points (times (K,), rows (K,30) = dominant hand 15 | other hand 15) and the
    time span of each sign. Tempo, amplitude and keyframe jitter differ per repetition."""
    tempo = signer["speed"] * rng.uniform(0.9, 1.1)
    amp = signer["amplitude"] * rng.uniform(0.92, 1.08)
    rest_pos = np.array(REST_POSITIONS[signer["rest"]])
    rest = _hand_rows([rest_pos], ["rest"], ["rest"])[0]
    times, rows, spans = [], [], []

    def add(t, dom, other):
        times.extend(t)
        rows.append(np.concatenate([dom, other], 1))

    hold = rng.uniform(0.2, 0.45)
    add([0.0, hold], np.stack([rest, rest]), np.stack([rest, rest]))
    t = hold + rng.uniform(0.25, 0.4) / tempo
    for word in words:
        sign = lexicon[word]
        kf = np.array(sign["keyframes"])
        k = len(kf)
        # The signer's own way of making this sign (fixed per signer and word), then this
        # repetition's jitter.
        accent = np.random.default_rng([signer["accent_seed"], *word.encode()])
        shape_accent = accent.normal(0, 0.12, 6)
        kf = kf + accent.normal(0, 0.04, 3) + accent.normal(0, 0.02, (k, 3))
        kf = kf[0] + amp * (kf - kf[0]) + rng.normal(0, 0.008, 3) + rng.normal(0, 0.003, (k, 3))
        if sign["anchor"].startswith("neutral"):
            kf = kf + signer["space"]  # signers use different parts of the signing space
        dom = _hand_rows(kf, sign["shapes"], sign["orients"])
        lax = signer["lax"] * (HANDSHAPES["rest"] - dom[:, 3:9])  # sloppy signers: softer shapes
        dom[:, 3:9] = np.clip(dom[:, 3:9] + lax + shape_accent + rng.normal(0, 0.05, (k, 6)), 0, 1)
        sign_times = np.linspace(0, 1, k)
        if signer.get("variation"):
            kf, dom, sign_times = _personal_sign(kf, dom, word, signer, rng)
            dom[:, :3] = kf
        if sign["hands"] == "sym":
            other = dom.copy()
        elif sign["hands"] == "alt":
            other = dom[::-1].copy()
        elif sign["hands"] == "base":
            b = sign["base"]
            other = _hand_rows([b["position"]] * k, [b["shape"]] * k, [b["orient"]] * k)
        else:
            other = np.repeat(rest[None], k, 0)
        dur = sign["duration"] / tempo * rng.uniform(0.8, 1.25)
        add(t + dur * sign_times, dom, other)
        spans.append((t, t + dur))
        t += dur + rng.uniform(0.06, 0.22) / tempo
        if rng.random() < 0.15:  # a hesitation: the hands hold before the next sign
            t += rng.uniform(0.2, 0.5)
    t += rng.uniform(0.1, 0.2) / tempo
    add([t, t + rng.uniform(0.2, 0.4)], np.stack([rest, rest]), np.stack([rest, rest]))
    return np.array(times), np.concatenate(rows), np.array(spans)


def sign_sentence(words: list[str], lexicon: dict, signer: dict, rng: np.random.Generator,
                  fps: float = FPS) -> np.ndarray:
    """(T,543,3) float32 landmarks of `signer` signing `words`; NaN where MediaPipe would miss."""
    times, rows, spans = _plan(words, lexicon, signer, rng)
    n = int(times[-1] * fps) + 1
    t = np.arange(n) / fps
    # One interpolant through all signs + a short blur: transitions blend sign into sign.
    traj = gaussian_filter1d(PchipInterpolator(times, rows, axis=0)(t), signer["smooth"],
                             axis=0, mode="nearest")
    size = signer["body"]
    sway = _smooth_noise(rng, n, 3, 0.8 * fps) * (0.008, 0.004, 0.006) * size

    hands, shoulders, elbows, wrists = {}, {}, {}, {}
    right_dominant = signer["handed"] == "right"
    for name, cols in (("dom", slice(0, 15)), ("other", slice(15, 30))):
        right = (name == "dom") == right_dominant
        side = np.array((-1.0 if right else 1.0, 1, 1))  # own lateral axis -> image X
        h = traj[:, cols]
        u, w = orthonormal_frame(h[:, 9:12] * side, h[:, 12:15] * side)
        shoulder = np.array((side[0] * 0.19 * signer["shoulders"], 0, 0)) * size + sway
        elbow, wrist = arm_ik(shoulder, h[:, :3] * side * size + sway, UPPER_ARM * size,
                              FOREARM * size, np.array((0.4 * side[0], -1.0, -0.35)))
        key = "right" if right else "left"
        hands[key] = hand_points(wrist, u, w, np.clip(h[:, 3:9], 0, 1), right, size * signer["hand"])
        shoulders[key], elbows[key], wrists[key] = shoulder, elbow, wrist

    # Head: slow drift, the signer's habitual tilt, a nod forward in questions; mouthing and
    # raised brows (questions) move parts of the face.
    question = words[0] in _QUESTION_WORDS
    yaw, pitch, roll = (_smooth_noise(rng, n, 3, 0.6 * fps) * 0.05).T
    roll = roll + signer["head_tilt"]
    pitch = pitch + (0.08 if question else 0.0)
    rot = _rotations(yaw, pitch, roll)
    mouth = np.exp(-(((t[:, None] - spans.mean(1)) / 0.12) ** 2)).sum(1).clip(0, 1)
    face_local = (FACE_TEMPLATE[None] - (0, 0.008, 0) * mouth[:, None, None] * _JAW[None, :, None]
                  + (0, 0.005 * question, 0) * _BROW[None, :, None])
    neck = NECK * size + sway
    rot_t = rot.transpose(0, 2, 1)  # row vectors: p @ R^T
    face = neck[:, None] + size * (face_local @ rot_t)
    pose_face = neck[:, None] + size * (_POSE_FACE @ rot_t)

    pose = np.empty((n, 33, 3))
    pose[:, :11] = pose_face
    for k, (x, y, z) in _LOWER.items():  # hips and legs move less than the shoulders
        pose[:, k] = np.array((x, y, z)) * size + 0.3 * sway  # left side: +X
        pose[:, k + 1] = np.array((-x, y, z)) * size + 0.3 * sway
    for s, i in (("left", 0), ("right", 1)):
        pose[:, 11 + i], pose[:, 13 + i], pose[:, 15 + i] = shoulders[s], elbows[s], wrists[s]
        pose[:, 17 + i], pose[:, 19 + i], pose[:, 21 + i] = (hands[s][:, j] for j in (17, 5, 3))

    # Camera: a view angle per signer, then body metres -> image-normalised x, y; z relative to
    # the hips (pose), the wrist (hands) or the face centre, as MediaPipe gives it.
    cam = rng.normal(0, 0.01, 2)
    scale = signer["scale"] * rng.uniform(0.97, 1.03)
    view = _rotations(np.full(1, signer["yaw"]), np.zeros(1), np.zeros(1))[0]
    out = np.empty((n, N_POINTS, N_DIMS), np.float32)
    parts = {"pose": pose, "face": face, "left_hand": hands["left"], "right_hand": hands["right"]}
    for name, pts in parts.items():
        pts = pts @ view.T
        z0 = (pts[:, 23:25, 2].mean(1) if name == "pose" else pts[:, :, 2].mean(1) if name == "face"
              else pts[:, 0, 2])  # hips, face centre, wrist
        xyz = np.stack([signer["cx"] + cam[0] + scale * pts[..., 0],
                        signer["cy"] + cam[1] - scale * pts[..., 1],
                        -scale * (pts[..., 2] - z0[:, None])], -1)
        jitter = signer["noise"] * (0.5 if name == "face" else 1.2 if "hand" in name else 1.0)
        out[:, COMPONENT_SLICES[name]] = xyz + jitter * rng.standard_normal(xyz.shape, np.float32)
    _drop_like_mediapipe(out, signer, rng)
    return out


def _drop_like_mediapipe(out: np.ndarray, signer: dict, rng: np.random.Generator) -> None:
    """NaN hands that leave the frame, short runs of missed hands, a few missed face frames."""
    n = len(out)
    frames = np.arange(n)
    for name in ("left_hand", "right_hand"):
        part = out[:, COMPONENT_SLICES[name]]
        wrist = part[:, 0, :2]
        missing = ((wrist < 0) | (wrist > 1)).any(1)
        runs = rng.poisson(signer["hand_drops"] * n / 100)
        starts = rng.integers(0, n, runs)
        ends = starts + rng.integers(2, 9, runs)
        missing |= ((frames[:, None] >= starts) & (frames[:, None] < ends)).any(1)
        part[missing] = np.nan
    face_missing = rng.random(n) < 0.01
    out[face_missing, COMPONENT_SLICES["face"]] = np.nan


# --------------------------------------------------------------------------------------------
# Corpus: scales, splits by signer, files.
# --------------------------------------------------------------------------------------------
# Every signer signs every selected sentence (training signers `train_reps` times, val/test signers
# `eval_reps` times, so that PosSim has same-sentence pairs on the held-out signer), and every
# val/test sentence is also in training, signed by other people.
SCALES: dict[str, dict] = {
    "tiny": {"sentences": 20, "max_words": 8, "signers": 6, "val_signers": 1, "test_signers": 1,
             "train_reps": 1, "eval_reps": 2},    # 140 samples: tests
    "small": {"sentences": 80, "max_words": 12, "signers": 8, "val_signers": 1, "test_signers": 1,
              "train_reps": 2, "eval_reps": 2},   # 1280 samples: the 5-minute CPU demo
    "full": {"sentences": 240, "max_words": 12, "signers": 8, "val_signers": 1, "test_signers": 1,
             "train_reps": 2, "eval_reps": 2},    # 3840 samples: the 20-minute demo
    # harder in the ways real data is: twice the sentences (more of them share most signs), one
    # training clip per sentence and signer, twice the signer spread, jitter and missing hands
    "hard": {"sentences": 480, "max_words": 12, "signers": 8, "val_signers": 1, "test_signers": 1,
             "train_reps": 1, "eval_reps": 2, "difficulty": 2.0},   # 4800 samples
    # unseen people, as real multi-signer data has them: only 3 training signers, every signer
    # makes every sign their own way (`variation`), a signer-disjoint val signer, and two unseen
    # test signers of whom the last is left-handed; no left-handed signer in training
    "signers": {"sentences": 240, "max_words": 12, "signers": 6, "val_signers": 1, "test_signers": 2,
                "train_reps": 2, "eval_reps": 2, "variation": 1.0, "left_handed": [5]},  # 2880 samples
    # open vocabulary, like PHOENIX-2014-T: 3200 sentences (the grammar's and grammar sentences
    # with a time phrase), one clip each (a few signed twice), split by SENTENCE: val and test
    # sentences never occur in training, but every word does; the same 8 signers everywhere
    "open": {"sentences": 3200, "max_words": 12, "signers": 8, "split_by": "sentence",
             "val_sentences": 100, "test_sentences": 200, "repeated": 0.1, "train_reps": 1, "eval_reps": 1},
}
TASK_NOTE = ("Splits are by signer: val and test signers never appear in training. Every val/test "
             "sentence also occurs in training, signed by other signers: the task is to recognise "
             "or translate known sentences signed by a new person.")
OPEN_TASK_NOTE = ("Splits are by sentence: val and test sentences never occur in training, but all "
                  "their words do, signed by the same signers: the task is to translate new sentences "
                  "made of known signs.")


def _open_plan(p: dict, sentences: list[str], signers: list[dict], seed: int) -> tuple[list, dict]:
    """Samples of a split-by-sentence scale: each sentence once, by a random signer; a share
    `repeated` of the training sentences a second time by another signer. Val/test sentences are
    drawn only among those whose every word also occurs in a training sentence."""
    rng = np.random.default_rng([seed, 5])
    order = rng.permutation(len(sentences))
    held, split_of_sentence = [], {}
    n_held = p["val_sentences"] + p["test_sentences"]
    # walk a random order: a sentence is held out only if training still covers its words later
    words_count: dict[str, int] = {}
    for j in range(len(sentences)):
        for w in set(sentences[j].split()):
            words_count[w] = words_count.get(w, 0) + 1
    for j in order:
        words = set(sentences[j].split())
        if len(held) < n_held and all(words_count[w] > 1 for w in words):
            held.append(j)
            for w in words:
                words_count[w] -= 1
    for k, j in enumerate(held):
        split_of_sentence[j] = "val" if k < p["val_sentences"] else "test"
    samples, split_of = [], {}
    for j in range(len(sentences)):
        split = split_of_sentence.get(j, "train")
        reps = 2 if split == "train" and rng.random() < p["repeated"] else 1
        who = rng.choice(len(signers), size=reps, replace=False)
        for r, i in enumerate(who):
            sample_id = f"{signers[i]['id']}_{j:03d}_{r}"
            samples.append((sample_id, j, int(i), r))
            split_of[sample_id] = split
    return samples, split_of


def corpus_plan(scale: str = "small", seed: int = 0) -> dict:
    """Everything that decides the corpus except the per-sample randomness: sentences, lexicon,
    signers with their split, and the list of samples (id, sentence, signer, repetition)."""
    p = SCALES[scale]
    sentences = (open_sentences if p.get("split_by") == "sentence" else select_sentences)(
        p["sentences"], p["max_words"], seed)
    signers = make_signers(p["signers"], seed, p.get("difficulty", 1.0),
                           tuple(p.get("left_handed", (2,))), p.get("variation", 0.0))
    lexicon = build_lexicon(grammar_vocabulary(), seed)
    if p.get("split_by") == "sentence":
        for s in signers:
            s["split"] = "all"
        samples, split_of = _open_plan(p, sentences, signers, seed)
        return {"sentences": sentences, "signers": signers, "samples": samples, "lexicon": lexicon,
                "split_of": split_of}
    n_train = p["signers"] - p["val_signers"] - p["test_signers"]
    for i, s in enumerate(signers):
        s["split"] = "train" if i < n_train else "val" if i < n_train + p["val_signers"] else "test"
    samples = [(f"{s['id']}_{j:03d}_{r}", j, i, r)
               for i, s in enumerate(signers) for j in range(len(sentences))
               for r in range(p["train_reps"] if s["split"] == "train" else p["eval_reps"])]
    return {"sentences": sentences, "signers": signers, "samples": samples, "lexicon": lexicon,
            "split_of": {sid: signers[i]["split"] for sid, _, i, _ in samples}}


def _write_samples(batch, plan, seed, keypoint_dir: Path, fps: float) -> list[tuple[str, int]]:
    done = []
    for sample_id, j, i, r in batch:
        rng = np.random.default_rng([seed, 100 + i, j, r])  # independent of job layout
        arr = sign_sentence(plan["sentences"][j].split(), plan["lexicon"], plan["signers"][i], rng, fps)
        np.save(keypoint_dir / f"{sample_id}.npy", arr.astype(np.float16))
        done.append((sample_id, len(arr)))
    return done


def generate_corpus(out_dir, scale: str = "small", seed: int = 0, jobs: int | None = None,
                    progress: bool = True) -> Path:
    """Write DIR/keypoints/<id>.npy (float16, (T,543,3)), DIR/manifest.csv and DIR/corpus.json.
    Same seed -> same bytes, whatever `jobs`. Returns the manifest path."""
    from tqdm import tqdm

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {sorted(SCALES)}")
    out_dir = Path(out_dir)
    keypoint_dir = out_dir / "keypoints"
    keypoint_dir.mkdir(parents=True, exist_ok=True)
    plan = corpus_plan(scale, seed)
    samples = plan["samples"]
    jobs = jobs or (1 if len(samples) < 500 else max(1, min(os.cpu_count() or 1, 8)))
    batches = [samples[k:k + 32] for k in range(0, len(samples), 32)]
    bar = tqdm(total=len(samples), desc=f"synthetic {scale}", unit="sample", disable=not progress)
    lengths: dict[str, int] = {}
    if jobs == 1:
        results = (_write_samples(b, plan, seed, keypoint_dir, FPS) for b in batches)
    else:
        from joblib import Parallel, delayed
        results = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(_write_samples)(b, plan, seed, keypoint_dir, FPS) for b in batches)
    for done in results:
        lengths.update(done)
        bar.update(len(done))
    bar.close()

    manifest = out_dir / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "path", "text", "split", "signer", "fps"])
        for sample_id, j, i, _ in samples:
            s = plan["signers"][i]
            writer.writerow([sample_id, f"keypoints/{sample_id}.npy", plan["sentences"][j],
                             plan["split_of"][sample_id], s["id"], FPS])
    frames = np.array([lengths[s[0]] for s in samples])
    info = {
        "generator": "preprocess.synthetic", "version": GENERATOR_VERSION, "seed": seed,
        "scale": scale, "scale_params": SCALES[scale], "fps": FPS, "frame_aspect": 1.0,
        "layout": "MediaPipe Holistic 543 points: pose 33 | face 468 | left hand 21 | right hand 21; "
                  "x, y image-normalised, z relative (hips / wrist / face), NaN = not detected",
        "dtype": "float16", "task": OPEN_TASK_NOTE if SCALES[scale].get("split_by") == "sentence" else TASK_NOTE,
        "counts": {"samples": len(samples), "sentences": len(plan["sentences"]),
                   "words": len(plan["lexicon"]), "signers": len(plan["signers"]),
                   "frames": int(frames.sum()), "frames_min": int(frames.min()),
                   "frames_max": int(frames.max()), "frames_mean": round(float(frames.mean()), 1),
                   **{f"{split}_samples": sum(plan["split_of"][sid] == split for sid, _, _, _ in samples)
                      for split in ("train", "val", "test")},
                   "near_duplicate_fraction": round(near_duplicate_fraction(plan["sentences"]), 3)},
        "signers": plan["signers"], "sentences": plan["sentences"], "lexicon": plan["lexicon"],
    }
    (out_dir / "corpus.json").write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, manifest)  # the manifest appears last: its presence means the corpus is complete
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess synthetic",
        description="Generate the built-in synthetic sign corpus: medical sentences signed by "
                    "virtual signers as MediaPipe-layout keypoints (T,543,3), split by signer "
                    "(the test signer is never seen in training).",
        epilog="scales: " + "; ".join(
            f"{k}: {v['sentences']} sentences x {v['signers']} signers" for k, v in SCALES.items())
        + ". Output: DIR/keypoints/<id>.npy, DIR/manifest.csv (id,path,text,split,signer,fps), "
          "DIR/corpus.json (seed, scale, lexicon, counts).")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--scale", default="small", choices=sorted(SCALES), help="corpus size (default small)")
    parser.add_argument("--seed", default=0, type=int, help="random seed: same seed, same bytes (default 0)")
    parser.add_argument("--jobs", default=None, type=int,
                        help="parallel processes (default: 1 below 500 samples, else all cores)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = generate_corpus(args.out, args.scale, args.seed, args.jobs)
    info = json.loads((args.out / "corpus.json").read_text())
    size = sum(p.stat().st_size for p in (args.out / "keypoints").glob("*.npy"))
    c = info["counts"]
    print(f"{c['samples']} samples ({c['train_samples']} train / {c['val_samples']} val / "
          f"{c['test_samples']} test), {c['sentences']} sentences, {c['frames']} frames "
          f"({c['frames_min']}-{c['frames_max']}), {size / 2**20:.1f} MiB, "
          f"{time.perf_counter() - start:.1f} s -> {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
