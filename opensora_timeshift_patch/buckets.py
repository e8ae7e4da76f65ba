"""Open-Sora's buckets: the resolution names of its ``bucket_config`` and the rule that puts a clip in a bucket.

``audit`` reads a training config's ``bucket_config`` with these, to say which (resolution, frame count) each clip of
a dataset would train at, as Open-Sora's ``Bucket.get_bucket_id`` decides it (``opensora/datasets/bucket.py`` and
``aspect.py``, 1.2 and 1.3), made deterministic.
"""

from __future__ import annotations

import reprlib
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

MAX_FRAMES = 100_000


class BucketConfigError(ValueError):
    """A ``bucket_config`` or ``dataset`` setting that Open-Sora would not read, named with its value."""


# Open-Sora's bucket resolution names (opensora/datasets/aspect.py, the same numbers in 1.2 and 1.3): the pixel
# count its Bucket compares a clip's H * W with, and the size of the name's base aspect ratio (9:16, or 1:1 for the
# square names), which the audit uses for every aspect ratio of that name (the shift reads H * W only).
BUCKET_RESOLUTIONS: Dict[str, Tuple[int, Tuple[int, int]]] = {
    "144p": (36864, (144, 256)), "256": (65536, (256, 256)), "240p": (102240, (240, 426)),
    "360p": (230400, (360, 640)), "512": (262144, (512, 512)), "480p": (409920, (480, 854)),
    "720p": (921600, (720, 1280)), "1024": (1048576, (1024, 1024)), "1080p": (2073600, (1080, 1920)),
    "2k": (3686400, (1440, 2560)), "2048": (4194304, (2048, 2048)), "2880": (8294400, (2880, 2880)),
    "4k": (8294400, (2160, 3840)),
}
# Open-Sora 1.3 also names each one with "_16d": the same pixel count, its sides rounded down to multiples of 16.
BUCKET_RESOLUTIONS_16D = {f"{name}_16d": (pixels, (h // 16 * 16, w // 16 * 16))
                          for name, (pixels, (h, w)) in BUCKET_RESOLUTIONS.items()}
RESOLUTION_NAMES = {name: hw for name, (_, hw) in {**BUCKET_RESOLUTIONS, **BUCKET_RESOLUTIONS_16D}.items()}
RESOLUTION_PIXELS = {name: pixels for name, (pixels, _) in {**BUCKET_RESOLUTIONS, **BUCKET_RESOLUTIONS_16D}.items()}
BUCKET_FIT = 0.8  # a clip fits a resolution when H * W >= 0.8 of its pixel count (Open-Sora's approx)


class ConfigBucket(NamedTuple):
    """One ``bucket_config[name][frames] = (keep, batch size)`` entry, as Open-Sora's ``Bucket`` reads it."""

    name: str
    frames: int
    keep: float  # keep probability: the value itself, or the first of a pair
    consider: float  # probability that a video considers this frame count: the second of a pair, else 1
    pair: bool
    batch: Optional[int]

    @property
    def on(self) -> bool:
        """Whether a clip can train here (with every probability above 0 taken as drawn)."""
        return self.keep > 0 and (self.frames == 1 or self.consider > 0)


def config_buckets(bucket_config: Any, version: str) -> List[ConfigBucket]:
    """The buckets of an Open-Sora ``bucket_config``, checked as Open-Sora ``version`` reads it."""
    shape = "a dict {resolution name: {frames: (keep probability, batch size)}}"
    names = BUCKET_RESOLUTIONS if version == "1.2" else {**BUCKET_RESOLUTIONS, **BUCKET_RESOLUTIONS_16D}
    if not isinstance(bucket_config, dict):
        raise BucketConfigError(f"bucket_config must be {shape}, got {reprlib.repr(bucket_config)}")
    out = []
    for name, frame_map in bucket_config.items():
        if name not in names:
            if name in BUCKET_RESOLUTIONS_16D:
                raise BucketConfigError(f"bucket_config resolution {name!r} is Open-Sora 1.3's (1.2 has no *_16d names): "
                                 "pass --opensora-version 1.3")
            raise BucketConfigError(f"bucket_config resolution {reprlib.repr(name)} is not one of {', '.join(BUCKET_RESOLUTIONS)}"
                             + (" or NAME_16d" if version == "1.3" else f" (Open-Sora {version})"))
        if not isinstance(frame_map, dict):
            raise BucketConfigError(f"bucket_config[{name!r}] must be a dict {{frames: (keep probability, batch size)}}, "
                             f"got {reprlib.repr(frame_map)}")
        for frames, value in frame_map.items():
            if type(frames) is not int or not 1 <= frames <= MAX_FRAMES:
                raise BucketConfigError(f"bucket_config[{name!r}] frame count {reprlib.repr(frames)} must be a whole number from 1 "
                                 f"to {MAX_FRAMES}")
            parsed = _bucket_value(value)
            if parsed is None:
                raise BucketConfigError(f"bucket_config[{name!r}][{frames}] = {reprlib.repr(value)} must be (keep probability, "
                                 "batch size), e.g. (1.0, 24), ((1.0, 0.33), 24) or (0.0, None) for a bucket that "
                                 "is off")
            keep, consider, pair, batch = parsed
            if batch is None and keep > 0:
                raise BucketConfigError(f"bucket_config[{name!r}][{frames}] = {reprlib.repr(value)}: a batch size of None switches "
                                 "a bucket off only with keep probability 0, as in (0.0, None); Open-Sora's sampler "
                                 "fails on it as soon as a clip lands there")
            out.append(ConfigBucket(name, frames, keep, consider, pair, batch))
    return out


def _bucket_value(value: Any) -> Optional[Tuple[float, float, bool, Optional[int]]]:
    """(keep, consider, pair, batch) of a bucket value, or None when it is not one."""
    def probability(p: Any) -> bool:
        return type(p) in (int, float) and 0 <= p <= 1

    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        return None
    keep, batch = value
    if batch is not None and not (type(batch) is int and batch >= 1):
        return None
    if probability(keep):
        return float(keep), 1.0, False, batch
    # Open-Sora 1.2 also writes the keep probability as a pair (keep, consider this frame count for a video)
    if isinstance(keep, (tuple, list)) and len(keep) == 2 and all(map(probability, keep)):
        return float(keep[0]), float(keep[1]), True, batch
    return None


class BucketRule:
    """Which bucket Open-Sora puts a clip in: ``Bucket.get_bucket_id`` (opensora/datasets/bucket.py, the same in 1.2
    and 1.3), made deterministic by taking every probability above 0 as drawn and 0 as never drawn.

    Resolutions are tried from the largest pixel count down (ties in config order); a clip fits one when its H * W is
    at least 0.8 of the resolution's pixel count. An image (1 frame) takes that resolution's 1-frame bucket if it is
    kept, else tries the next resolution. A video takes the largest frame count t of that resolution, other than 1,
    with more frames than t * frame_interval (strictly); if that bucket's keep probability is 0 it tries the next
    resolution (not a smaller frame count). A clip that fits nothing is dropped.
    """

    def __init__(self, buckets: Sequence[ConfigBucket], frame_interval: int) -> None:
        names = list(dict.fromkeys(b.name for b in buckets))
        self.pixels = {name: RESOLUTION_PIXELS[name] for name in names}
        self.order = sorted(names, key=lambda name: self.pixels[name], reverse=True)  # stable: ties keep config order
        self.frames = {name: sorted((b for b in buckets if b.name == name), key=lambda b: b.frames, reverse=True)
                       for name in names}
        self.frame_interval = frame_interval

    def assign(self, height: int, width: int, num_frames: int) -> Optional[ConfigBucket]:
        for name in self.order:
            if height * width < self.pixels[name] * BUCKET_FIT:
                continue
            if num_frames == 1:
                image = next((b for b in self.frames[name] if b.frames == 1), None)
                if image is not None and image.pair:
                    raise BucketConfigError(f"bucket_config[{name!r}][1] has a pair of keep probabilities: Open-Sora compares "
                                     "an image's draw with it directly, which fails; give one probability")
                if image is not None and image.keep > 0:
                    return image
                continue
            chosen = next((b for b in self.frames[name]
                           if b.consider > 0 and b.frames != 1 and num_frames > b.frames * self.frame_interval), None)
            if chosen is not None and chosen.keep > 0:
                return chosen
        return None


def bucket_rule_of(cfg: Any, buckets: Sequence[ConfigBucket], version: str) -> BucketRule:
    """The bucket rule of a config: its ``dataset``'s frame_interval, and Open-Sora's default ``Bucket`` class."""
    dataset = cfg.get("dataset")
    dataset = dataset if isinstance(dataset, dict) else {}
    frame_interval = dataset.get("frame_interval", 1)
    if type(frame_interval) is not int or frame_interval < 1:
        raise BucketConfigError(f"dataset frame_interval={reprlib.repr(frame_interval)} must be a whole number >= 1 (Open-Sora's "
                         "bucket rule compares a clip's frames with frame_interval * the bucket's)")
    bucket_class = dataset.get("bucket_class", "Bucket")
    if bucket_class != "Bucket":
        why = (" has no bucket_class" if version == "1.2"
               else "'s Bucket_ar_first picks by aspect ratio first, not modelled here")
        raise BucketConfigError(f"dataset bucket_class={reprlib.repr(bucket_class)}: audit follows Open-Sora's default Bucket only "
                         f"(Open-Sora {version}{why})")
    return BucketRule(buckets, frame_interval)
