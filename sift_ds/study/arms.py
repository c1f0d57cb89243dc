"""Arm specs of a study -> command-line overrides of the pretraining job, each with a
filesystem-safe label.

Grammar of one spec (``--arms`` takes a comma-separated list of them):

    vanilla                          --sift_enabled false
    CRITERION:EXIT                   --sift_enabled true --sift_criterion CRITERION --sift_exit_layer EXIT
    CRITERION:VALUE                  --sift_enabled true --sift_criterion CRITERION --sift_KEY VALUE for a
                                     criterion that names its arm key (stored:NAME sets score_name: offline
                                     sifting, give the file as @score_file=PATH)
    SPEC@key=value[@key=value...]    ... --sift_key value (any SiftConfig field, e.g. keep_ratio)
    SPEC@max_steps=N                 ... --max_steps N (the arm's own budget; its schedule decays at N)

e.g. ``loss:1@random_fraction=0.25@keep_ratio=0.5``, ``vanilla@max_steps=900``,
``stored:unigram_entropy@score_file=runs/scores.npz``, ``reducible:1@reference=runs/reference/final``
(a path value names the arm by its file or directory name). Vanilla arms at
several budgets form the budget-matched frontier (``sift_ds.study.frontier``). Arbitrary arms come from a JSON file
(``--arms_file``): an object mapping a label to the list of extra command-line words.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from ..criteria import criterion_class, criterion_names

BASELINE = "vanilla"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE = re.compile(r"^[A-Za-z0-9_.+\-/]+$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
# Keys that the CRITERION:EXIT part already sets; repeating them after '@' would contradict it.
_BASE_KEYS = ("enabled", "criterion", "exit_layer")
# '@' keys that are options of the job rather than SiftConfig fields.
JOB_KEYS = ("max_steps",)
PATH_KEYS = ("score_file", "reference")  # named in the label by their file or directory name


@dataclass(frozen=True)
class Arm:
    """One arm: ``label`` names its run directories and report rows, ``overrides`` are the extra
    words given to every run of the arm, ``spec`` is what the user wrote."""

    label: str
    overrides: Tuple[str, ...]
    spec: str
    vanilla: bool = False  # trains without selection (a point of the vanilla frontier)

    @property
    def is_baseline(self) -> bool:
        return self.label == BASELINE

    @property
    def max_steps(self) -> Optional[int]:
        """The arm's own ``--max_steps`` (None: the study's)."""
        words = list(self.overrides)
        for i, word in enumerate(words):
            if word == "--max_steps" and i + 1 < len(words):
                return int(words[i + 1])
            if word.startswith("--max_steps="):
                return int(word.split("=", 1)[1])
        return None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._\-]", "-", text)


def parse_arm(spec: str) -> Arm:
    """One spec -> Arm; a malformed spec is a ValueError that quotes it."""
    text = spec.strip()
    head, *extras = text.split("@")
    if head == BASELINE:
        overrides: List[str] = ["--sift_enabled", "false"]
        label = BASELINE
        if any(not e.startswith("max_steps=") for e in extras):
            raise ValueError(f"arm {spec!r}: a vanilla arm takes only @max_steps=N")
    elif _arm_key(head):
        criterion, value = head.split(":", 1)
        key = _arm_key(head)
        if not _NAME.match(value):
            raise ValueError(f"arm {spec!r}: expected {criterion}:{key.upper()} (a name)")
        overrides = ["--sift_enabled", "true", "--sift_criterion", criterion, f"--sift_{key}", value]
        label = f"{criterion}-{value}"
    else:
        parts = head.split(":")
        if len(parts) != 2 or not _NAME.match(parts[0]) or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"arm {spec!r}: expected 'vanilla' or CRITERION:EXIT_LAYER (e.g. loss:1, entropy:2), "
                             f"optionally followed by @key=value")
        criterion, exit_layer = parts[0], int(parts[1])
        overrides = ["--sift_enabled", "true", "--sift_criterion", criterion, "--sift_exit_layer", str(exit_layer)]
        label = f"{criterion}-exit{exit_layer}"
    seen = set()
    for extra in extras:
        key, sep, value = extra.partition("=")
        if not sep or not _NAME.match(key) or not _VALUE.match(value):
            raise ValueError(f"arm {spec!r}: {'@' + extra!r} is not @key=value (key a SiftConfig field name, "
                             f"value without spaces or commas)")
        if key in _BASE_KEYS + ((_arm_key(head),) if _arm_key(head) else ()) or key in seen:
            raise ValueError(f"arm {spec!r}: key {key!r} is set twice")
        seen.add(key)
        if key in JOB_KEYS:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"arm {spec!r}: @{key} must be a positive integer, got {value!r}")
            overrides += [f"--{key}", value]
        else:
            overrides += [f"--sift_{key}", value]
        label += f"_{key}-{_safe(_path_label(value) if key in PATH_KEYS else value)}"
    return Arm(label=label, overrides=tuple(overrides), spec=text, vanilla=head == BASELINE)


def _arm_key(head: str) -> Optional[str]:
    """The key that the head CRITERION:VALUE sets, for a criterion that names one (``arm_key``)."""
    name = head.split(":", 1)[0]
    return criterion_class(name).arm_key if ":" in head and name in criterion_names() else None


def _path_label(path: str) -> str:
    """A path's name in a label: the file name without its extension, or a run directory's name
    for its ``final/`` model."""
    parts = [p for p in path.split("/") if p]
    name = parts[-2] if len(parts) > 1 and parts[-1] == "final" else parts[-1]
    return os.path.splitext(name)[0] or name


def parse_arms(text: str) -> List[Arm]:
    """A comma-separated list of specs (empty items are an error)."""
    specs = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in specs):
        raise ValueError(f"--arms {text!r}: empty arm in the comma-separated list")
    return [parse_arm(s) for s in specs]


def arms_from_mapping(mapping, source: str = "arms file") -> List[Arm]:
    """A JSON object label -> list of extra command-line words (strings) -> Arms, in file order."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{source}: expected a non-empty JSON object mapping a label to a list of words")
    arms = []
    for label, words in mapping.items():
        if not _LABEL.match(label):
            raise ValueError(f"{source}: label {label!r} is not filesystem-safe (letters, digits, '.', '_', '-')")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{source}: arm {label!r}: expected a list of strings, got {json.dumps(words)}")
        arms.append(Arm(label=label, overrides=tuple(words), spec=f"{label}: {' '.join(words)}",
                        vanilla=_plain_vanilla(words)))
    return arms


def _plain_vanilla(words: Sequence[str]) -> bool:
    """Whether an arms-file arm is a point of the vanilla frontier: SIFT off and nothing else changed
    but its step budget. An arm with SIFT off and other changes (another method, e.g.
    ``--async_convergence``) is read against the frontier like a SIFT arm."""
    if _flag_value(words, "--sift_enabled") not in ("false", "0", "no", "off"):
        return False
    return set(flags(words)) <= {"--sift_enabled", "--max_steps"}


def _flag_value(words: Sequence[str], flag: str) -> Optional[str]:
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return words[i + 1].lower()
        if word.startswith(flag + "="):
            return word.split("=", 1)[1].lower()
    return None


def load_arms_file(path: str) -> List[Arm]:
    try:
        with open(path, encoding="utf-8") as f:
            mapping = json.load(f)
    except OSError as err:
        raise ValueError(f"--arms_file {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"--arms_file {path}: not valid JSON ({err})") from err
    return arms_from_mapping(mapping, source=f"--arms_file {path}")


def check_arms(arms: Sequence[Arm]) -> List[Arm]:
    """Labels must be unique and one arm must be the vanilla baseline."""
    labels = [a.label for a in arms]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise ValueError(f"arm label(s) given twice: {', '.join(dupes)}")
    if BASELINE not in labels:
        raise ValueError(f"no arm named {BASELINE!r}: the speed-ups are measured against it "
                         f"(add 'vanilla' to --arms, or a 'vanilla' entry to the arms file)")
    return list(arms)


def flags(words: Iterable[str]) -> List[str]:
    """The option names (``--x``, without ``=value``) among command-line words."""
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]
