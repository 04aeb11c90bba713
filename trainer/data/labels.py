"""Labels and actors from file names, for the two corpora FaceNet features come from.

    parse_name("1078_IWL_ANG_XX_facenet_features.npz")
    # ClipName(corpus="crema-d", code="ANG", actor="crema-d:1078")
    parse_name("Actor_12/01-01-03-01-01-01-12.npz")
    # ClipName(corpus="ravdess", code="03", actor="ravdess:12")

Actor ids carry the corpus so CREMA-D 1001 and RAVDESS 01 never collide.
"""

import re
from dataclasses import dataclass
from pathlib import Path

# actor_sentence_emotion_level, optionally followed by a suffix such as _facenet_features
CREMA_D = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<code>[A-Z]{3})_(?P<level>[A-Z]{2})(?:[_.-].*)?$")
# modality-channel-emotion-intensity-statement-repetition-actor
RAVDESS = re.compile(r"^\d{2}-\d{2}-(?P<code>\d{2})-\d{2}-\d{2}-\d{2}-(?P<actor>\d{2})(?:[_.-].*)?$")

RAVDESS_NAMES = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}


@dataclass(frozen=True)
class ClipName:
    corpus: str  # "crema-d" or "ravdess"
    code: str  # the emotion code as written in the name
    actor: str  # "<corpus>:<id>"


def parse_name(path):
    """ClipName for a CREMA-D or RAVDESS file name, or None if it follows neither scheme."""
    stem = Path(path).name.removesuffix(".npz")
    if m := CREMA_D.match(stem):
        return ClipName("crema-d", m["code"], f"crema-d:{m['actor']}")
    if m := RAVDESS.match(stem):
        return ClipName("ravdess", m["code"], f"ravdess:{m['actor']}")
    return None


class Labeller:
    """Maps a file name to (class name, actor) with the configured `data.label_map`.

    `label(path)` returns (emotion, actor, None) or (None, actor, (reason, detail)) where
    reason is "bad-name" or "unknown-label".
    """

    def __init__(self, label_map):
        self.maps = {
            "crema-d": {str(k): v for k, v in label_map.get("crema_d", {}).items()},
            "ravdess": {str(k).zfill(2): v for k, v in label_map.get("ravdess", {}).items()},
        }

    def label(self, path):
        name = parse_name(path)
        if name is None:
            return None, None, ("bad-name", "name follows neither CREMA-D 1078_IWL_ANG_XX nor RAVDESS 01-01-03-01-01-01-12")
        mapping = self.maps[name.corpus]
        key = "crema_d" if name.corpus == "crema-d" else "ravdess"
        if name.code not in mapping:
            return None, name.actor, ("unknown-label", f"{name.corpus} emotion {name.code!r} is not in data.label_map.{key}")
        emotion = mapping[name.code]
        if emotion is None:
            what = RAVDESS_NAMES.get(name.code, name.code) if name.corpus == "ravdess" else name.code
            return None, name.actor, ("unknown-label", f"{name.corpus} emotion {name.code} ({what}) is excluded by data.label_map.{key}")
        return emotion, name.actor, None
