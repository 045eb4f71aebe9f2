"""STRIP: a run-time detector that flags an input whose prediction survives being blended with other images.

Gao, Xu, Wang, Chen, Ranasinghe and Nepal, *STRIP: a defence against trojan attacks on deep neural networks*,
ACSAC 2019. A trigger dominates whatever it is superimposed on, so B predicts a triggered input's blends
confidently (low entropy), while a clean input's blends scatter. The detector superimposes an input on N clean
images, takes the mean Shannon entropy (nats) of B's softmax over the N blends, and flags the input when that
entropy is below a threshold fixed on clean data at a chosen false-rejection rate (FRR).

What the defender has here is the clean validation set only: a seeded half of it gives the N overlays, the
other half the entropies the threshold is fixed on (``split_validation``); test data is only measured.

Choices, stated:

* The N overlays are one fixed, seeded draw, the same for every input (the paper draws N per input): the
  detector is then one deterministic function, saved as one model (``build_strip_goodnet``).
* ``blend="sum"`` superimposes as STRIP's code does (``cv2.addWeighted(x, 1, overlay, 1, 0)`` on 8-bit images:
  the sum, saturating at 255); ``"mean"`` averages the two images instead.
* The threshold is the k-th smallest calibration entropy, k = floor(FRR x n), and an input is flagged when its
  entropy is strictly below it: at most the stated share of calibration images is rejected, exactly that share
  when no two of them tie (``threshold_at_frr``).

Every entropy, in the notebook and in the saved model alike, comes from the same Keras layers in float32
(``entropy_model``), so the tables and the model flag the same images. Images are 0-255 pixels, blended before
the network's own input scale (``lib.data.input_scale``), as the publisher's evaluator sees them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from fractions import Fraction

import keras
import numpy as np
import pandas as pd
from scipy import stats

from lib.defense.goodnet_model import BADNET_NAME, is_goodnet, renamed_copy
from lib.defense.model_layers import BLENDS as BLENDS  # the blends STRIP offers
from lib.defense.model_layers import StripBlend, StripDecision, StripEntropy

#: Column order of detection.csv; ``entropy_threshold`` is STRIP's (empty for a G alone).
DETECTION_COLUMNS = ["detector", "setting", "FRR", "FAR", "AUC", "entropy_threshold"]
STRIP_NAME = "STRIP"


def _require_softmax(badnet: keras.Model) -> None:
    last = badnet.layers[-1]
    if getattr(last, "activation", None) is not keras.activations.softmax:
        raise ValueError(
            f"{badnet.name}'s last layer ({last.name}) is not a softmax: STRIP's entropy needs class probabilities"
        )


def _strip_branch(badnet: keras.Model, overlays: np.ndarray, blend: str, images) -> keras.KerasTensor:
    """images -> STRIP's entropy, through a copy of ``badnet`` (so the caller's model stays as it is)."""
    _require_softmax(badnet)
    blend_layer = StripBlend(len(overlays), blend, name="strip_blend")
    blended = blend_layer(images)
    blend_layer.overlays.assign(np.asarray(overlays, dtype=np.float32))
    scores = renamed_copy(badnet, "strip_badnet")(blended)
    return StripEntropy(len(overlays), name="strip_entropy")(scores)


def entropy_model(badnet: keras.Model, overlays: np.ndarray, blend: str = "sum") -> keras.Model:
    """A model from images to STRIP's entropy of each (float32): the one computation behind every number here."""
    images = keras.Input(shape=badnet.inputs[0].shape[1:], name="input")
    return keras.Model(images, _strip_branch(badnet, overlays, blend, images), name="strip_entropy_model")


def entropies(model: keras.Model, images: np.ndarray, blends_per_batch: int = 2000) -> np.ndarray:
    """STRIP's entropy of each image (float32), with ``model`` from ``entropy_model``; about ``blends_per_batch``
    blended images per forward pass."""
    n_overlays = model.get_layer("strip_blend").n_overlays
    return model.predict(images, batch_size=max(1, blends_per_batch // n_overlays), verbose=0)


def split_validation(n_valid: int, n_overlays: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(overlay indices, calibration indices) into the clean validation set: a seeded half of it is the pool
    the N overlays are drawn from (N of them, without replacement), the other half fixes the threshold.

    A pool smaller than N (a small demo recipe) gives all its images, with a warning: the detector then blends
    with fewer images than asked, and its setting says how many."""
    if n_valid < 2 or n_overlays < 1:
        raise ValueError(f"STRIP needs at least 2 validation images and 1 overlay, not {n_valid} and {n_overlays}")
    order = np.random.default_rng(seed).permutation(n_valid)
    pool, calibration = order[: n_valid // 2], np.sort(order[n_valid // 2 :])
    if n_overlays > len(pool):
        warnings.warn(
            f"STRIP: n_overlays={n_overlays} but half of the {n_valid} validation images is {len(pool)}: "
            f"blending with those {len(pool)}",
            stacklevel=2,
        )
    return np.sort(pool[:n_overlays]), calibration


def threshold_at_frr(calibration: np.ndarray, frr: float) -> float:
    """The entropy below which an input is flagged, so that at most ``frr`` percent of the calibration images
    are: the k-th smallest calibration entropy, k = floor(frr / 100 x n), on exact counts."""
    if not 0 <= frr < 100:
        raise ValueError(f"the false-rejection rate is a percentage in [0, 100), not {frr}")
    values = np.sort(np.asarray(calibration))
    k = math.floor(Fraction(str(frr)) * len(values) / 100)
    return float(values[k])


def auc(clean: np.ndarray, triggered: np.ndarray) -> float:
    """Area under STRIP's ROC: the probability that a triggered input has the lower entropy (ties count half),
    the Mann-Whitney U of the two samples over their pairs; NaN without triggered inputs."""
    if len(triggered) == 0 or len(clean) == 0:
        return math.nan
    return float(stats.mannwhitneyu(clean, triggered).statistic / (len(clean) * len(triggered)))


def roc_curve(clean: np.ndarray, triggered: np.ndarray) -> pd.DataFrame:
    """FRR and FAR (percent) at every threshold that changes either: ``threshold, FRR, FAR``, from nothing
    flagged to everything flagged."""
    cuts = np.concatenate([np.unique(np.concatenate([clean, triggered])), [np.inf]])
    frr = 100.0 * np.searchsorted(np.sort(clean), cuts, side="left") / len(clean)
    if len(triggered) == 0:
        return pd.DataFrame({"threshold": cuts, "FRR": frr, "FAR": math.nan})
    caught = np.searchsorted(np.sort(triggered), cuts, side="left") / len(triggered)
    return pd.DataFrame({"threshold": cuts, "FRR": frr, "FAR": 100.0 * (1.0 - caught)})


def rates(flagged_clean: np.ndarray, flagged_triggered: np.ndarray) -> tuple[float, float]:
    """(FRR, FAR) in percent: clean inputs flagged, triggered inputs not flagged (NaN without triggered ones)."""
    frr = 100.0 * float(np.mean(flagged_clean))
    far = 100.0 * (1.0 - float(np.mean(flagged_triggered))) if len(flagged_triggered) else math.nan
    return frr, far


def detection_row(
    detector: str, setting: str, frr: float, far: float, area: float = math.nan, threshold: float = math.nan
) -> dict:
    """One row of detection.csv (FRR and FAR in percent)."""
    return dict(zip(DETECTION_COLUMNS, [detector, setting, frr, far, area, threshold], strict=True))


def combined_name(goodnet_row: str) -> str:
    """The detector that flags when G or STRIP flags: ``G_2%+STRIP``."""
    return f"{goodnet_row}+{STRIP_NAME}"


def build_strip_goodnet(
    goodnet: keras.Model, overlays: np.ndarray, blend: str, threshold: float, name: str = "goodnet_strip"
) -> keras.Model:
    """G that also answers N ("poisoned") when STRIP flags the input: one model, loadable like G, that
    ``python -m lib.eval`` runs. STRIP's branch uses a copy of G's own BadNet."""
    if not is_goodnet(goodnet):
        raise ValueError(f"{goodnet.name} is not a GoodNet; build one with lib.defense.goodnet_model.build_goodnet")
    images = keras.Input(shape=goodnet.inputs[0].shape[1:], name="input")
    g_scores = goodnet(images)
    entropy = _strip_branch(goodnet.get_layer(BADNET_NAME), overlays, blend, images)
    return keras.Model(images, StripDecision(threshold, name="strip_decision")([entropy, g_scores]), name=name)


def detection_table(rows: Sequence[dict]) -> pd.DataFrame:
    """detection.csv: one row per detector, FRR and FAR in percent on test data, AUC where a score has one."""
    return pd.DataFrame(list(rows), columns=DETECTION_COLUMNS)


#: How close to the threshold an entropy may lie before another processor's float32 rounding could flip its
#: decision (relative): such images are counted, as the other steps count near ties.
NEAR_THRESHOLD = 1e-5


def near_threshold(values: np.ndarray, threshold: float) -> int:
    """How many entropies lie within ``NEAR_THRESHOLD`` (relative) of ``threshold``, the threshold's own image
    excluded from none: decisions another processor could flip."""
    return int(np.sum(np.abs(np.asarray(values, np.float64) - threshold) <= NEAR_THRESHOLD * abs(threshold)))


def score_table(
    calibration: np.ndarray, valid: np.ndarray, clean: np.ndarray, triggered: dict[str, np.ndarray]
) -> pd.DataFrame:
    """strip_scores.csv: ``split, set, index, entropy`` for every image scored: the calibration images of the
    validation set (``index`` into it), then the clean and each trigger's test images.

    The float32 entropies are widened to float64 (exactly) before they are written: a float32 column is written
    in its shortest decimals, which read back as a float64 a little off the value, so the threshold's own image
    (``threshold_at_frr``, written to detection.csv in full) could read as below it and look flagged."""
    parts = [("valid", "clean", np.asarray(calibration), valid), ("test", "clean", np.arange(len(clean)), clean)]
    parts += [("test", name, np.arange(len(h)), h) for name, h in triggered.items()]
    return pd.concat(
        [
            pd.DataFrame({"split": s, "set": t, "index": i, "entropy": np.asarray(h, np.float64)})
            for s, t, i, h in parts
        ],
        ignore_index=True,
    )
