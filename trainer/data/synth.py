"""Synthetic FaceNet feature files with the real structure and a learnable emotion signal.

    write_corpus("data/synth", corpus="crema-d", clips=1200, seed=0)

Each file has `video_features` (T, 512) float32 with unit-norm frames like FaceNet
embeddings, `video_timestamps` (T,) at 30 fps and `emotion_label`, under a real
CREMA-D or RAVDESS name. A frame is an actor identity vector plus an emotion direction
that rises and falls over the clip, plus noise: identity is stronger than emotion, so a
split that shares actors would flatter the model.
"""

import itertools
from pathlib import Path

import numpy as np

from trainer.errors import UserError

CREMA_D_ACTORS = range(1001, 1092)
CREMA_D_SENTENCES = ["IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"]
CREMA_D_EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
RAVDESS_EMOTIONS = ["01", "02", "03", "04", "05", "06", "07", "08"]
DIM, FPS = 512, 30.0


def clip_names(corpus, clips, rng):
    """`clips` distinct (relative path, emotion code, actor index) of the corpus, drawn at random."""
    if corpus == "crema-d":
        combos = [
            (f"{a}_{s}_{e}_{'XX' if s != 'IEO' else lvl}.npz", e, a)
            for a, s, e in itertools.product(CREMA_D_ACTORS, CREMA_D_SENTENCES, CREMA_D_EMOTIONS)
            for lvl in (["HI"] if s == "IEO" else [None])
        ]
    elif corpus == "ravdess":
        combos = [
            (f"Actor_{a:02d}/02-01-{e}-{i}-{s}-{r}-{a:02d}.npz", e, a)
            for a, e, i, s, r in itertools.product(range(1, 25), RAVDESS_EMOTIONS, ("01", "02"), ("01", "02"), ("01", "02"))
            if not (e == "01" and i == "02")  # RAVDESS has no strong-intensity neutral
        ]
    else:
        raise ValueError(f"Expected corpus 'crema-d' or 'ravdess'. Received: {corpus!r}")
    if not 0 < clips <= len(combos):
        raise UserError(f"--clips for {corpus} expects 1..{len(combos)} (the distinct names the corpus has). Received: {clips}")
    picked = rng.choice(len(combos), size=clips, replace=False)
    return [combos[i] for i in sorted(picked)]


def write_corpus(out, corpus="crema-d", clips=200, seed=0, suffix="", signal=0.6, mean_frames=75):
    """Write `clips` files under `out`; returns their paths."""
    rng = np.random.default_rng(seed)
    # Fixed directions per emotion and per actor; the seed only changes which clips exist.
    space = np.random.default_rng(12345)
    emotion_dir = {e: _unit(space.normal(size=DIM)) for e in CREMA_D_EMOTIONS + RAVDESS_EMOTIONS}
    if corpus == "ravdess":  # calm looks like neutral, the rest like their CREMA-D counterparts
        for code, twin in zip(RAVDESS_EMOTIONS, ["NEU", "NEU", "HAP", "SAD", "ANG", "FEA", "DIS", None]):
            if twin:
                emotion_dir[code] = emotion_dir[twin]
    actor_dir = {}
    out = Path(out)
    paths = []
    for rel, emotion, actor in clip_names(corpus, clips, rng):
        if actor not in actor_dir:
            actor_dir[actor] = _unit(space.normal(size=DIM)) * 1.5
        frames = int(np.clip(round(rng.lognormal(np.log(mean_frames), 0.35)), 12, 400))
        envelope = np.sin(np.linspace(0, np.pi, frames))[:, None]  # expression rises and falls
        drift = np.cumsum(rng.normal(scale=0.15, size=(frames, DIM)), axis=0) / np.sqrt(np.arange(1, frames + 1))[:, None]
        x = actor_dir[actor] + signal * envelope * emotion_dir[emotion] + drift + rng.normal(scale=0.6, size=(frames, DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        path = out / rel.replace(".npz", f"{suffix}.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, video_features=x.astype(np.float32),
                 video_timestamps=(np.arange(frames) / FPS).astype(np.float32), emotion_label=np.array(emotion))
        paths.append(path)
    return paths


def _unit(v):
    return v / np.linalg.norm(v)
