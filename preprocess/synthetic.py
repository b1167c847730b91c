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
_SINCE = ["yesterday", "last night", "last week", "this morning", "two days", "three days"]
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
    ("did the pain start {since}", {"since": _SINCE}),
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
     {"problem": ["pain", "fever", "cough", "rash", "swelling"], "since": _SINCE[-2:]}),
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
