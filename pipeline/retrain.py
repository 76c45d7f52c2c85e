"""`--retrain-suspect N`: an image whose model the verdict calls suspect (singan.metrics.verdict)
is trained again with the next seeds, up to N more times, and the best model is kept.

SinGAN's failures are mostly bad luck of the draw (the fidelity runs' one failed run in 60
trained fine with another seed), so another seed is the cheapest cure. The attempts run in the
task that trained the image, one after another, each in memory until it is judged:

- the image's folder always holds the best attempt so far (first the original training);
- an attempt is better when its verdict is ok and the kept one's is not, or, with equal
  verdicts, when its patch SWD ratio (singan.metrics.verdict.Summary.swd_ratio) is lower;
- the attempts stop at the first ok one;
- retrain.json in the folder records every attempt (seed, verdict, ratio) and the kept seed, as
  each attempt ends: a worker that dies in the middle goes on with the next untried seed when Ray
  retries its task, and the files of a better attempt are written with `committing` set, so
  that a folder left half-written is recognised (and trained again from scratch, never served).

MLflow gets each attempt's final grid as picture `final` at step k (k = 0 the first training)
and its ratio as `retrain/swd_ratio` at step k; the summary metrics, the model and the `quality`
tag are the kept attempt's, and the `retrained` tag says what happened. The per-scale curves
and pictures in MLflow stay the first training's; the folder's are the kept attempt's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.storage import ImageStore
from singan.metrics.verdict import Verdict

RETRAIN = "retrain.json"  # in the image's folder


@dataclass(frozen=True)
class Attempt:
    """One training of the image, judged."""

    seed: int
    verdict: Verdict | None  # None: no summary could be made (treated as suspect)
    swd_ratio: float  # the samples' patch SWD over the blurred image's (inf when unknown)

    @property
    def ok(self) -> bool:
        return self.verdict is not None and self.verdict.ok

    def better_than(self, other: Attempt) -> bool:
        if self.ok != other.ok:
            return self.ok
        return self.swd_ratio < other.swd_ratio

    def to_dict(self) -> dict:
        return {"seed": self.seed, "quality": self.verdict.quality if self.verdict else None,
                "reason": self.verdict.reason if self.verdict else None,
                "swd_ratio": self.swd_ratio if math.isfinite(self.swd_ratio) else None}

    @classmethod
    def from_dict(cls, values: dict) -> Attempt:
        quality = values.get("quality")
        ratio = values.get("swd_ratio")
        return cls(values["seed"], Verdict(quality, values.get("reason")) if quality else None,
                   math.inf if ratio is None else ratio)

    @classmethod
    def judged(cls, seed: int, summary: dict[str, float], verdict: Verdict | None,
               prefix: str) -> Attempt:
        ratio = summary.get(prefix + "swd_ratio")
        return cls(seed, verdict, ratio if ratio is not None and math.isfinite(ratio)
                   else math.inf)


@dataclass
class Record:
    """retrain.json: the attempts so far, in order, and the seed of the one the folder holds."""

    attempts: list[Attempt]
    kept: int
    committing: int | None = None  # the seed whose files are being written over the folder's

    @classmethod
    def read(cls, store: ImageStore) -> Record | None:
        values = store.get_json(RETRAIN)
        if values is None:
            return None
        return cls([Attempt.from_dict(a) for a in values["attempts"]], values["kept"],
                   values.get("committing"))

    def write(self, store: ImageStore) -> None:
        store.put_json(RETRAIN, {"attempts": [a.to_dict() for a in self.attempts],
                                 "kept": self.kept, "committing": self.committing})

    def tried(self, seed: int) -> bool:
        return any(a.seed == seed for a in self.attempts)

    @property
    def best(self) -> Attempt:
        return next(a for a in self.attempts if a.seed == self.kept)

    def describe(self) -> str:
        """One line for the results and MLflow, e.g. 'seed 3 suspect; tried seeds 4, 5; kept
        seed 5 (ok)'."""
        first, retries = self.attempts[0], self.attempts[1:]
        kept = self.best
        return (f"seed {first.seed} {_quality(first)}; tried seed{'s' * (len(retries) > 1)} "
                f"{', '.join(str(a.seed) for a in retries)}; kept seed {kept.seed} "
                f"({_quality(kept)})")


def commit(store: ImageStore, files: dict[str, bytes], record: Record, seed: int) -> None:
    """Write a better attempt's `files` over the folder's, marked in retrain.json while they
    are written; the model files last (config.json, which names the seed, last of all)."""
    record.committing = seed
    record.write(store)
    for name in sorted(files, key=lambda n: (n.startswith("model/"), n == "model/config.json")):
        store.put(name, files[name])
    record.committing, record.kept = None, seed
    record.write(store)


def expected_seed(store: ImageStore, seed: int) -> int | None:
    """The seed of the model the folder should hold: the kept attempt's, else the row's `seed`;
    None when an attempt's files were being written when its worker died (a folder of two
    trainings, to train again)."""
    record = Record.read(store)
    if record is None:
        return seed
    return None if record.committing is not None else record.kept


def _quality(attempt: Attempt) -> str:
    return attempt.verdict.quality if attempt.verdict else "not judged"
