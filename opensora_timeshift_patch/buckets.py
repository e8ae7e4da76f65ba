"""Open-Sora's buckets: the resolution names of its ``bucket_config`` and the rule that puts a clip in a bucket.

``audit`` reads a training config's ``bucket_config`` with these, to say which (resolution, frame count) each clip of
a dataset would train at, as Open-Sora's ``Bucket.get_bucket_id`` decides it (``opensora/datasets/bucket.py`` and
``aspect.py``, 1.2 and 1.3), made deterministic; and Open-Sora 2.0's names, sizes, bucket rule and latent geometry.
"""

from __future__ import annotations

import math
import re
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
        if version == "2.0":
            try:
                opensora2_pixels(name)
            except BucketConfigError as err:
                raise BucketConfigError(f"bucket_config {err}") from None
        elif name not in names:
            if OPENSORA2_NAME.fullmatch(str(name)) and name not in RESOLUTION_NAMES:
                raise BucketConfigError(f"bucket_config resolution {name!r} is Open-Sora 2.0's: pass "
                                        "--opensora-version 2.0")
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
            if pair and version == "2.0":  # 2.0's second number is the probability to skip to the next frame count
                consider = 0.0 if consider >= 1 else 1.0 - consider
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

    Open-Sora 2.0 (``version="2.0"``) differs in two places: a video fits frame count t when T >= t (T already divided
    by the fps stride, :func:`sampling_interval`), and the second number of a pair is the probability to skip to the
    next frame count (a frame count is considered unless that is 1).
    """

    def __init__(self, buckets: Sequence[ConfigBucket], frame_interval: int, version: str = "1.2") -> None:
        names = list(dict.fromkeys(b.name for b in buckets))
        self.version = version
        self.pixels = {name: opensora2_pixels(name) if version == "2.0" else RESOLUTION_PIXELS[name] for name in names}
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
            chosen = next((b for b in self.frames[name] if b.consider > 0 and b.frames != 1 and self._fits(num_frames, b)),
                          None)
            if chosen is not None and chosen.keep > 0:
                return chosen
        return None

    def _fits(self, num_frames: int, bucket: ConfigBucket) -> bool:
        # 1.x: T > t * frame_interval; 2.0 (its frame count already divided by the fps stride): T >= t
        if self.version == "2.0":
            return num_frames >= bucket.frames
        return num_frames > bucket.frames * self.frame_interval


def bucket_rule_of(cfg: Any, buckets: Sequence[ConfigBucket], version: str) -> BucketRule:
    """The bucket rule of a config: its ``dataset``'s frame_interval, and Open-Sora's default ``Bucket`` class."""
    if version == "2.0":  # no frame_interval or bucket_class: the fps stride is applied per clip by the caller
        return BucketRule(buckets, 1, version)
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


# --- Open-Sora 2.0 ---------------------------------------------------------------------------------------------

# Open-Sora 2.0's resolution names (opensora/datasets/aspect.py): "<N>px" is N * N pixels, "<N>p" is N * N * 16 / 9
# (16:9 at height N), either optionally followed by "_max" (its largest size only) or "_ar<W:H>" (that aspect ratio
# only). Each name's sizes are these aspect ratios (width:height, in this order), each with its vertical twin, rounded
# to multiples of the pixels per token side D (2.0's AE_SPATIAL_COMPRESSION, the config's ae_spatial_compression:
# 16 by default, the HunyuanVideo VAE's 8 times patch size 2; 32 for the DC-AE of configs/.../high_compression.py).
OPENSORA2_ASPECT_RATIOS = ("2.39:1", "2:1", "16:9", "1.85:1", "9:16", "5:8", "3:2", "4:3", "1:1")
OPENSORA2_TOKEN_PIXELS = 16
OPENSORA2_FPS_MAX = 16  # 2.0's dataset default; its configs set dataset fps_max (image.py: 24)
OPENSORA2_NAME = re.compile(r"([0-9]{1,6})(px|p)(?:_(max|ar[0-9]+(?:\.[0-9]+)?:[0-9]+(?:\.[0-9]+)?))?", re.ASCII)
OPENSORA2_NAME_HELP = "'<N>px' or '<N>p', optionally with '_max' or '_ar<W:H>' (Open-Sora 2.0's aspect.py)"


def opensora2_pixels(name: Any) -> int:
    """The pixel count 2.0's Bucket compares a clip's H * W with, for a 2.0 resolution name."""
    match = OPENSORA2_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or int(match[1]) == 0:
        raise BucketConfigError(f"resolution {reprlib.repr(name)} is not an Open-Sora 2.0 name: use "
                                f"{OPENSORA2_NAME_HELP}, e.g. '256px', '768px' or '720p'")
    size = int(match[1])
    return size * size if match[2] == "px" else int(size * size / 9 * 16)  # 2.0's own arithmetic, float included


def _ratio_value(ratio: str) -> float:
    """height / width of a 'W:H' aspect-ratio name."""
    width, height = map(float, ratio.split(":"))
    return height / width


def opensora2_sizes(name: str, token_pixels: int = OPENSORA2_TOKEN_PIXELS) -> Dict[str, Tuple[int, int]]:
    """{aspect ratio: (H, W)} of a 2.0 resolution name, as its training buckets size clips."""
    pixels = opensora2_pixels(name)
    d = token_pixels
    sizes: Dict[str, Tuple[int, int]] = {}
    vertical: Dict[str, Tuple[int, int]] = {}
    for ratio in OPENSORA2_ASPECT_RATIOS:
        rw, rh = map(float, ratio.split(":"))
        w = int(math.sqrt(pixels * (rw / rh)) // d) * d
        h = int((pixels / w) // d) * d if w > 0 else 0
        if h > 0:  # in training, a side one step of D up or down when that lands closer to the pixel count
            best = abs(h * w - pixels)
            for ch, cw in ((h - d, w), (h + d, w), (h, w - d), (h, w + d)):
                if abs(ch * cw - pixels) < best:
                    h, w, best = ch, cw, abs(ch * cw - pixels)
        if h <= 0 or w <= 0:
            raise BucketConfigError(f"resolution {name!r} ({pixels} pixels) is too small for {d} pixels per token "
                                    "side (ae_spatial_compression): a side rounds to 0")
        if (h, w) not in sizes.values():  # a size already given by an earlier ratio is not repeated
            sizes[ratio] = (h, w)
            vertical[":".join(reversed(ratio.split(":")))] = (w, h)
    sizes.update(vertical)
    setting = OPENSORA2_NAME.fullmatch(name)[3]  # type: ignore[index]
    if setting == "max":
        largest = max(sizes, key=lambda r: sizes[r][0] * sizes[r][1])
        return {largest: sizes[largest]}
    if setting is not None:
        if setting[2:] not in sizes:
            raise BucketConfigError(f"resolution {name!r}: aspect ratio {setting[2:]!r} is not one of "
                                    f"{', '.join(sizes)}")
        return {setting[2:]: sizes[setting[2:]]}
    return sizes


def closest_size(height: float, width: float, sizes: Dict[str, Tuple[int, int]]) -> Tuple[int, int]:
    """The size of the aspect ratio closest to height / width (the first such, in the table's order)."""
    target = height / width
    return sizes[min(sizes, key=lambda r: abs(target - _ratio_value(r)))]


def opensora2_base_size(name: str, token_pixels: int = OPENSORA2_TOKEN_PIXELS) -> Tuple[int, int]:
    """The size a 2.0 name is shown at without a clip: square for '<N>px', 9:16 (H:W) for '<N>p'."""
    square = OPENSORA2_NAME.fullmatch(name)[2] == "px"  # type: ignore[index]
    return closest_size(1, 1, opensora2_sizes(name, token_pixels)) if square else \
        closest_size(9, 16, opensora2_sizes(name, token_pixels))


def sampling_interval(fps: Optional[float], fps_max: Optional[float]) -> int:
    """The frame stride 2.0's Bucket divides a clip's frame count by: 1 below fps_max (or without an fps), else
    ceil(fps / fps_max) (opensora/datasets/utils.py, map_target_fps)."""
    if fps is None or fps_max is None or math.isnan(fps) or fps < fps_max:
        return 1
    return math.ceil(fps / fps_max)


class Opensora2Geometry(NamedTuple):
    """How Open-Sora 2.0 turns a clip into latent frames and tokens.

    ``token_pixels`` is 2.0's D (``ae_spatial_compression``: pixels per token side), ``patch_size`` the model's, so the
    VAE compresses each side D / patch_size times (16 / 2 = 8 for HunyuanVideo's VAE, 32 / 1 for the DC-AE). A causal
    VAE gives 1 + (n - 1) // 4 latent frames, a non-causal one n // 4 (1 for an image), as 2.0's inference counts them.
    """

    token_pixels: int = OPENSORA2_TOKEN_PIXELS
    patch_size: int = 2
    causal: bool = True

    @property
    def vae_compression(self) -> int:
        return self.token_pixels // self.patch_size

    def latent(self, frames: int, height: int, width: int) -> Tuple[int, int, int]:
        """(T, h, w) of the latent of a clip; a side is patch_size * ceil(side / D), as 2.0's get_noise sizes it."""
        t = 1 + (frames - 1) // 4 if self.causal else (1 if frames == 1 else frames // 4)
        return (t, self.patch_size * -(-height // self.token_pixels), self.patch_size * -(-width // self.token_pixels))

    def describe(self) -> str:
        frames = "1 + (n - 1) // 4" if self.causal else "n // 4 (1 for images)"
        return (f"{'causal' if self.causal else 'non-causal'} VAE ({frames} latent frames), "
                f"{self.vae_compression}x spatial, model patch_size {self.patch_size} "
                f"(ae_spatial_compression {self.token_pixels})")


def opensora2_geometry(cfg: Any) -> Opensora2Geometry:
    """The geometry a 2.0 training config sets up: ``ae_spatial_compression``, ``patch_size``, ``is_causal_vae``.

    Missing keys take 2.0's defaults: 16, 2, and causal (2.0's configs all derive from image.py, which sets
    ``is_causal_vae = True`` for its HunyuanVideo VAE).
    """
    def whole(key: str, default: int, high: int) -> int:
        value = cfg.get(key, default)
        if type(value) is not int or not 1 <= value <= high:
            raise BucketConfigError(f"{key}={reprlib.repr(value)} must be a whole number from 1 to {high}")
        return value

    d = whole("ae_spatial_compression", OPENSORA2_TOKEN_PIXELS, 1024)
    patch = whole("patch_size", 2, 64)
    causal = cfg.get("is_causal_vae", True)
    if not isinstance(causal, bool):
        raise BucketConfigError(f"is_causal_vae={reprlib.repr(causal)} must be True or False")
    if d % patch:
        raise BucketConfigError(f"ae_spatial_compression={d} is not a multiple of patch_size={patch}: 2.0 sizes the "
                                "latent as patch_size * ceil(side / ae_spatial_compression), which needs one")
    return Opensora2Geometry(d, patch, causal)


def opensora2_fps_max(cfg: Any) -> Optional[float]:
    """The dataset's fps_max (2.0's default 16; None: no frame stride)."""
    dataset = cfg.get("dataset")
    dataset = dataset if isinstance(dataset, dict) else {}
    value = dataset.get("fps_max", OPENSORA2_FPS_MAX)
    if value is not None and (type(value) not in (int, float) or not value > 0 or not math.isfinite(value)):
        raise BucketConfigError(f"dataset fps_max={reprlib.repr(value)} must be a number > 0 or None")
    return value
