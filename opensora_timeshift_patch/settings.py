"""Every setting of ``rflow-timeshift``, declared once: name, type, allowed values, default and a one-line doc.

The scheduler, the drop-in ``timestep_transform``, :class:`~.shift.TimestepShift`, the command line and ``audit``
all validate through :meth:`Setting.check`, so they accept and refuse alike, with one message per setting.
Types are strict: no bool where a number is meant, no string for a number, no truthy string for a bool.
Ranges are chosen so that no accepted value can collapse every timestep to one point or leave [0, N].

A policy's or distribution's own parameters are declared where the function is registered
(:meth:`FunctionRegistry.register`), so a user-registered one is validated the same way.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union


class SettingError(ValueError):
    """A setting's value is not allowed; the message names the setting, the value and what is allowed."""


Choices = Union[Tuple[str, ...], "FunctionRegistry"]


@dataclass(frozen=True)
class Setting:
    """One setting: its type (``"int"``, ``"float"``, ``"bool"``, ``"choice"``, ``"range"``, ``"list"`` of floats,
    ``"any"``) and bounds (for ``"list"``, of each item)."""

    name: str
    type: str
    default: Any
    doc: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Optional[Choices] = None
    optional: bool = False  # None is allowed and means "off"
    # The setting's scope, declared here rather than in lists beside the declaration:
    group: str = ""  # the selection it belongs to: one of GROUPS
    # (setting, values) under which it means something; values () for any value but that setting's default
    applies_with: Optional[Tuple[str, Tuple[Any, ...]]] = None
    not_on_2: str = ""  # why it has no meaning on Open-Sora 2.0 ("" where it has one)

    def allowed(self) -> str:
        """What the setting accepts, in words."""
        if self.type == "bool":
            text = "True or False"
        elif self.type == "choice":
            text = "one of " + ", ".join(map(repr, self.choices or ()))
        elif self.type == "range":
            text = "a pair (t_min, t_max) of numbers with 0 <= t_min < t_max <= 1"
        elif self.type == "list":
            text = f"a list of 1 to {MAX_LIST} finite numbers{self._bounds()}"
        elif self.type == "components":
            text = (f"a list of 2 to {MAX_COMPONENTS} dicts, each a sample_method other than 'mixture' with its own "
                    "parameters and a weight in (0, 1], the weights summing to 1, and optionally shift, t_range, "
                    "t_range_mode, stretch and reflect (the component keys below)")
        elif self.type == "any":
            text = "any value"
        else:
            text = ("an int" if self.type == "int" else "a finite number") + self._bounds()
        return f"None or {text}" if self.optional else text

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in {'(' if self.low_open else '['}{number_text(self.low)}, {number_text(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {number_text(self.low)}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {number_text(self.high)}"
        return ""

    def error(self, value: Any, why: str = "") -> SettingError:
        return SettingError(f"{self.name}={describe(value)} is not allowed: {why or 'use ' + self.allowed()}")

    def check(self, value: Any) -> Any:
        """The value, normalised (ints stay ints, numbers become floats, pairs tuples), or a :class:`SettingError`."""
        if value is None and self.optional:
            return None
        if self.type == "any":
            return value
        if self.type == "bool":
            if isinstance(value, bool) or is_numpy_bool(value):  # as a config built with numpy may hold it
                return bool(value)
            raise self.error(value)
        if self.type == "choice":
            if isinstance(value, str) and value in (self.choices or ()):
                return value
            raise self.error(value)
        if self.type == "range":
            return self._check_range(value)
        if self.type == "list":
            return self._check_list(value)
        if self.type == "components":
            return check_components(self, value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.error(value)
        if self.type == "int" and not isinstance(value, numbers.Integral):
            raise self.error(value)
        try:
            number = int(value) if self.type == "int" else float(value)
        except OverflowError:  # an int too large for a float
            raise self.error(value) from None
        too_low = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        too_high = self.high is not None and (number >= self.high if self.high_open else number > self.high)
        if too_low or too_high or not math.isfinite(number):
            raise self.error(value)
        return number

    def _check_range(self, value: Any) -> Tuple[float, float]:
        if not isinstance(value, (list, tuple)):  # what a config can hold; a tensor or a string is a mistake
            raise self.error(value)
        pair = list(value)
        if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in pair):
            raise self.error(value)
        try:
            lo, hi = float(pair[0]), float(pair[1])
        except OverflowError:
            raise self.error(value) from None
        if not 0 <= lo < hi <= 1:  # NaN fails here too
            raise self.error(value)
        return lo, hi


    def _check_list(self, value: Any) -> Tuple[float, ...]:
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_LIST:
            raise self.error(value)
        item = Setting(self.name, "float", None, "", self.low, self.high, self.low_open, self.high_open)
        try:
            return tuple(item.check(v) for v in value)
        except SettingError:
            raise self.error(value) from None


MAX_LIST = 10_000  # a list setting longer than this is a mistake (a tensor's values pasted in)
MAX_COMPONENTS = 16  # a mixture's draw evaluates every component's CDF 62 times: more is a mistake, not a recipe
WEIGHT_SUM_TOLERANCE = 1e-6


class Component(NamedTuple):
    """One component of a ``sample_method='mixture'``: a registered distribution, its parameters (validated, as
    sorted pairs, so that the mixture is hashable), its weight (normalised: a mixture's weights sum to 1) and how it
    meets the shift (:data:`COMPONENT_KEYS`)."""

    sample_method: str
    weight: float
    params: Tuple[Tuple[str, Any], ...]
    shift: bool = True
    t_range: Optional[Tuple[float, float]] = None
    t_range_mode: str = "truncate"
    stretch: Optional[Tuple[float, float]] = None
    reflect: Optional[float] = None

    @property
    def shifted_alike(self) -> bool:
        """Whether the shift moves this component as it moves a plain draw (shifted, not stretched after it)."""
        return self.shift and self.stretch is None

    def __repr__(self) -> str:
        return repr(self.keys())  # as it is given in a config

    def keys(self) -> Dict[str, Any]:
        """The component as the dict it was given as (keys at their defaults left out)."""
        own = {k: getattr(self, k) for k in COMPONENT_KEYS if k != "weight"}
        return {"sample_method": self.sample_method, **dict(self.params), "weight": self.weight,
                **{k: v for k, v in own.items() if v != COMPONENT_KEYS[k].default}}


COMPONENT_KEYS: Dict[str, Setting] = {s.name: s for s in (
    Setting("weight", "float", None, "the component's share of the draws; the weights sum to 1", low=0, high=1,
            low_open=True, group="distribution"),
    Setting("shift", "bool", True,
            "False: the component is drawn in the shifted noise level itself, the shift never applied to it (LTX-2's "
            "10% uniform); the mixture is then drawn per sample, through that sample's shift factor",
            group="distribution"),
    Setting("t_range", "range", None, "(t_min, t_max) confining this component's own draw (LTX-2's uniform: "
            "(0.001, 1))", optional=True, group="distribution"),
    Setting("t_range_mode", "choice", "truncate", "with t_range: 'truncate' or 'rescale', as for the whole draw",
            choices=("truncate", "rescale"), group="distribution"),
    Setting("stretch", "range", None,
            "(lo, hi), this component's unshifted timesteps: after the shift, t is mapped affinely so that "
            "shift(lo) goes to 0 and shift(hi) to 1, then clamped to [0, 1] (LTX-2's percentile stretch: "
            "sigmoid(-2.5758) and sigmoid(3.0902), its normal's 0.5% and 99.9% points)", optional=True,
            group="distribution"),
    Setting("reflect", "float", None, "with stretch: stretched values below it become 2 reflect - t, before the "
            "clamp (LTX-2's eps = 0.001)", low=0, high=0.5, optional=True, group="distribution"),
)}
"""The keys a ``components`` entry takes besides ``sample_method`` and that distribution's parameters."""


def check_components(setting: Setting, value: Any) -> Tuple[Component, ...]:
    """A mixture's components, each ``dict(sample_method=..., weight=..., **that distribution's parameters)`` and
    the optional :data:`COMPONENT_KEYS`.

    The weights must each lie in (0, 1] and sum to 1 within :data:`WEIGHT_SUM_TOLERANCE`, and are then divided by
    their sum: weights that do not add up are far more often a forgotten or mistyped component than a wish to
    renormalise, so they are refused rather than silently rescaled. The mixture's own ``t_range`` confines the whole
    draw; a component's confines its own. A mixture inside a mixture is refused (write its components out)."""
    if not isinstance(value, (list, tuple)) or not 2 <= len(value) <= MAX_COMPONENTS:
        raise setting.error(value)
    parts = []
    for k, item in enumerate(value):
        if isinstance(item, Component):  # an already checked mixture, checked again
            item = item.keys()

        def refuse(why: str) -> SettingError:
            return SettingError(f"{setting.name}={describe(value)} is not allowed: component {k} "
                                f"({describe(item)}) {why}")

        if not isinstance(item, Mapping):
            raise refuse("is not a dict: use dict(sample_method=..., weight=..., and that distribution's parameters)")
        params = dict(item)
        missing = [key for key in ("sample_method", "weight") if key not in params]
        if missing:
            raise refuse(f"has no {' and no '.join(missing)}: each component needs both")
        method = params.pop("sample_method")
        if method == "mixture":
            raise refuse("is itself a mixture: write its components into this one, their weights multiplied")
        if method not in DISTRIBUTIONS:
            raise refuse(f"has sample_method={describe(method)}: use one of "
                         f"{', '.join(repr(m) for m in DISTRIBUTIONS if m != 'mixture')}")
        own = {key: params.pop(key) for key in COMPONENT_KEYS if key in params}
        try:
            own = {key: COMPONENT_KEYS[key].check(v) for key, v in own.items()}
            checked = DISTRIBUTIONS.check_params(method, params)
        except (SettingError, TypeError) as err:
            raise refuse(f"is not allowed: {err}") from None
        if checked.get("fixed_order") == "cycle":
            raise refuse("sets fixed_order='cycle': a mixture draws from one uniform, which a cycle cannot share; "
                         "use fixed_order='random'")
        if "t_range_mode" in own and own.get("t_range") is None:
            raise refuse(f"sets t_range_mode={own['t_range_mode']!r} without t_range: it would change nothing")
        if own.get("reflect") is not None and own.get("stretch") is None:
            raise refuse(f"sets reflect={own['reflect']!r} without stretch: it reflects the stretched draw only")
        if own.get("stretch") is not None and method == "fixed":
            raise refuse("stretches sample_method='fixed': a list of timesteps has no continuous draw to stretch; "
                         "list the stretched timesteps instead")
        parts.append(Component(method, own.pop("weight"), tuple(sorted(checked.items())), **own))
    total = math.fsum(c.weight for c in parts)
    if not abs(total - 1) <= WEIGHT_SUM_TOLERANCE:
        raise SettingError(f"{setting.name}={describe(value)} is not allowed: the weights sum to {total:.6g}, not 1; "
                           "each component's weight is its share of the draws")
    return tuple(c._replace(weight=c.weight / total) for c in parts)


def number_text(x: float) -> str:
    """A number in a message: whole numbers as ints, others (inf and nan too) to six significant digits."""
    return repr(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def is_numpy_bool(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")


def is_real_number(value: Any) -> bool:
    """A number that is not a bool (Python's or numpy's): what a numeric setting or meta value may be."""
    if type(value) in (int, float):  # what Open-Sora passes; decided first, which torch 2.2's dynamo can trace
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not is_numpy_bool(value)


def describe(value: Any) -> str:
    """A user's value for an error message: ``repr`` for scalars; a short description for tensors, arrays and long values (never a whole tensor)."""
    shape = getattr(value, "shape", None)
    is_array = shape is not None and (len(shape) > 0 or type(value).__module__.startswith("torch"))
    if is_array and not isinstance(value, (str, bytes)):
        return f"<{type(value).__name__} of shape {tuple(shape)}, dtype {getattr(value, 'dtype', '?')}>"
    try:
        text = repr(value)
    except Exception:  # a huge int beyond Python's digit limit, or an object whose repr fails
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def infer_setting(name: str, default: Any) -> Setting:
    """A declaration for a registered function's parameter that declared none: strict in its default's type."""
    kind = {bool: "bool", int: "int", float: "float"}.get(type(default), "any")
    return Setting(name, kind, default, "")


Fn = Callable[..., Any]


class FunctionRegistry:
    """Functions ``fn(x, **params)`` by name, for a setting such as ``shift_mode`` or ``sample_method``.

    Each parameter is validated by the :class:`Setting` given at registration, or one inferred from its default.
    """

    def __init__(self, key: str, kind: str, group: str, not_on_2: str = "") -> None:
        self.key, self.kind = key, kind
        self.group, self.not_on_2 = group, not_on_2  # every parameter's scope: the registry's selection
        self._functions: Dict[str, Fn] = {}
        self._params: Dict[str, Dict[str, Setting]] = {}
        self._cdfs: Dict[str, Fn] = {}

    def register(self, name: str, *, cdf: Optional[Fn] = None, **settings: Setting) -> Callable[[Fn], Fn]:
        """Decorator: add ``fn`` under ``name`` (taken once), its keyword parameters declared by ``settings``.

        ``cdf`` (distributions only): the closed form ``F(t: Tensor, **params) -> u`` of the distribution whose
        inverse ``fn`` is, taking the same parameters; without one, ``F`` is found by bisection on ``fn``."""
        if not isinstance(name, str) or not name:
            raise SettingError(f"{self.key} name {describe(name)} must be a non-empty string")
        if cdf is not None and not callable(cdf):
            raise TypeError(f"{self.key} {name!r}: cdf={describe(cdf)} is not a function")

        def wrap(fn: Fn) -> Fn:
            if name in self._functions:
                raise SettingError(f"{self.key} {name!r} is already registered "
                                   f"({self._functions[name].__qualname__}): pick another name")
            if not callable(fn):
                raise TypeError(f"{self.key} {name!r}: {describe(fn)} is not a function")
            params = list(inspect.signature(fn).parameters.values())
            if not params or any(p.default is inspect.Parameter.empty for p in params[1:]):
                raise TypeError(f"{self.key} {name!r}: {fn.__qualname__} must take the tensor first and then only "
                                "keyword parameters with defaults")
            params = params[1:]
            undeclared = sorted(set(settings) - {p.name for p in params})
            if undeclared:
                raise TypeError(f"settings {undeclared} declared for {self.key} {name!r} are not parameters of "
                                f"{fn.__qualname__}")
            for p in params:  # every keyword of the scheduler dict must reach exactly one place
                owners = [f"{r.key} {r.owners(p.name)[0]!r}" for r in _REGISTRIES if r is not self and r.owners(p.name)]
                if p.name in SETTINGS or owners:
                    taken = "a scheduler setting" if p.name in SETTINGS else f"a parameter of {owners[0]}"
                    raise SettingError(f"{self.key} {name!r}: parameter name {p.name!r} is already {taken}; "
                                       "rename it")
            declared = {p.name: settings.get(p.name) or infer_setting(p.name, p.default) for p in params}
            self._params[name] = {k: replace(v, group=self.group, not_on_2=v.not_on_2 or self.not_on_2)
                                  for k, v in declared.items()}
            self._functions[name] = fn
            if cdf is not None:
                self._cdfs[name] = cdf
            return fn

        return wrap

    def get(self, name: str) -> Fn:
        """The function for ``name``, or a :class:`SettingError` listing the valid names."""
        try:
            return self._functions[name]
        except (KeyError, TypeError):
            raise SettingError(f"{self.key}={describe(name)} is not allowed: use one of "
                               f"{', '.join(map(repr, self._functions))}") from None

    def params(self, name: str) -> Dict[str, Setting]:
        """The declared keyword parameters of ``name``'s function."""
        self.get(name)
        return self._params[name]

    def cdf_of(self, name: str) -> Optional[Fn]:
        """The closed-form CDF registered with ``name``'s inverse, or None."""
        self.get(name)
        return self._cdfs.get(name)

    def defaults(self, name: str) -> Dict[str, Any]:
        return {k: s.default for k, s in self.params(name).items()}

    def check_params(self, name: str, params: Dict[str, Any]) -> Dict[str, Any]:
        """Validate parameters for ``name``'s function; unknown ones get a ``TypeError`` listing what it takes."""
        declared = self.params(name)
        unknown = sorted(set(params) - set(declared))
        if unknown:
            takes = ", ".join(declared) or "no parameters"
            raise TypeError(f"{self.key}={name!r} got unexpected parameter(s) {unknown}; it takes {takes}")
        return {k: declared[k].check(v) for k, v in params.items()}

    def owners(self, param: str) -> List[str]:
        """The names whose function takes ``param``."""
        return [name for name, params in self._params.items() if param in params]

    def unregister(self, name: str) -> None:
        del self._functions[name]
        del self._params[name]
        self._cdfs.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._functions))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._functions


_OWN_LOSS = "2.0's train.py computes its loss itself"

POLICIES = FunctionRegistry("shift_mode", "policy", "shift")
"""Temporal-size policies by name (filled by :mod:`.policies`): the choices of ``shift_mode``."""

DISTRIBUTIONS = FunctionRegistry("sample_method", "distribution", "distribution")
"""Timestep distributions by name (filled by :mod:`.sampling`): the choices of ``sample_method``."""

WEIGHTINGS = FunctionRegistry("loss_weighting", "weighting", "loss", not_on_2=_OWN_LOSS)
"""Loss weightings w(t) by name (filled by :mod:`.weighting`): the choices of ``loss_weighting``."""

_REGISTRIES = (POLICIES, DISTRIBUTIONS, WEIGHTINGS)


# Shift factors a (and Flux's mu = log a) are kept within [1/100, 100]: beyond, float32 rounds most shifted
# timesteps to 0 or N, which is the silent collapse this package exists to prevent.
MAX_SHIFT_FACTOR = 100.0

from .recipes import RECIPES as _RECIPES  # noqa: E402  (recipes imports settings only lazily)

RECIPE_NAMES = tuple(_RECIPES)

_SETTINGS = (
    # --- a named model's recipe ------------------------------------------------------------------------------
    Setting("recipe", "choice", None,
            "a named model's recipe (see recipes): expands to its training settings; settings given beside it win",
            choices=RECIPE_NAMES, optional=True, group="recipe"),
    # --- Open-Sora's rflow ------------------------------------------------------------------------------------
    Setting("num_sampling_steps", "int", 10, "Euler steps in sample()", low=1, high=10_000,
            group="rflow", not_on_2="2.0's inference config sets sampling_option.num_steps"),
    Setting("num_timesteps", "int", 1000, "the time scale N; t = N is pure noise", low=1, high=1_000_000,
            group="rflow", not_on_2='2.0 keeps t in [0, 1]'),
    Setting("cfg_scale", "float", 4.0, "classifier-free guidance scale when sample() gets none", low=0, high=100,
            group="rflow", not_on_2="2.0's inference config sets sampling_option.guidance"),
    Setting("use_discrete_timesteps", "bool", False, "integer training timesteps and a rounded sampling grid",
            group="rflow", not_on_2='2.0 draws continuous t'),
    Setting("use_timestep_transform", "bool", True,
            "shift timesteps at all (stock rflow defaults to False; a timeshift scheduler that does not shift is rflow)",
            group="rflow"),
    # --- the base distribution ------------------------------------------------------------------------------
    Setting("sample_method", "choice", "uniform", "base distribution of training timesteps", choices=DISTRIBUTIONS,
            group="distribution"),
    Setting("t_range", "range", None, "(t_min, t_max), fractions of N, confining the base draw (before the shift)",
            optional=True, group="distribution"),
    Setting("loss_weighting", "choice", "none",
            "per-sample loss weight w(t) of the shifted timestep, times Open-Sora's own weights", choices=WEIGHTINGS,
            group="loss", not_on_2=_OWN_LOSS),
    Setting("max_loss_weight", "float", 1000.0,
            "loss weights are clipped to this (sigma_sqrt and debiased grow without bound at an end of [0, 1])",
            low=1, high=1e6, group="loss", applies_with=('loss_weighting', ()), not_on_2=_OWN_LOSS),
    Setting("noise_range", "range", None,
            "(lo, hi), shifted noise level t'/N: each sample's draw is confined to it through its own shift factor "
            "(one expert of a boundary, Wan 2.2's 0.875 or 0.9): inverse CDF within [F(s^-1(lo)), F(s^-1(hi))]",
            optional=True, group="distribution"),
    Setting("t_range_mode", "choice", "truncate",
            "'truncate' conditions the distribution on t_range, 'rescale' squeezes it into t_range",
            choices=("truncate", "rescale"), group="distribution", applies_with=('t_range', ())),
    # --- the shift ------------------------------------------------------------------------------------------
    Setting("shift_mode", "choice", "latent", "temporal-size policy: how num_frames becomes T_eff", choices=POLICIES,
            group="shift"),
    Setting("on_degenerate", "choice", "error",
            "a sample with T_eff <= 0 or a factor outside [0.01, 100], and loss inputs that would give NaN (weights, "
            "mask rows, explicit t): 'error' raises, 'clamp' shifts it as T_eff = 1 and clamps, 'ignore' keeps "
            "stock's numbers",
            choices=("error", "clamp", "ignore"), group="guard"),
    Setting("scale_temporal", "bool", True,
            "False: Open-Sora 1.3's spatial-only shift (every sample treated as an image, as stock 1.3 does)",
            group="shift"),
    Setting("transform_scale", "float", 1.0, "extra multiplier on the shift factor (Open-Sora's transform_scale)",
            low=1 / MAX_SHIFT_FACTOR, high=MAX_SHIFT_FACTOR, group="shift"),
    Setting("scale_images", "bool", True, "whether transform_scale applies to images too (1.2: yes; 1.3: videos only)",
            group="shift"),
    Setting("uniform_over_threshold", "float", None,
            "Open-Sora 1.3: redraw shifted video timesteps above this fraction of N uniformly above it",
            low=0, high=1, high_open=True, optional=True, group="redraw", not_on_2="it is Open-Sora 1.3's redraw"),
    Setting("base_resolution", "float", 512 * 512, "H * W at which the spatial factor is 1 (resolution_shift='sqrt')",
            low=1, high=1e9, group="shift", applies_with=('resolution_shift', ('sqrt',))),
    Setting("base_num_frames", "float", 1, "T_eff at which the temporal factor is 1", low=1e-3, high=1e5,
            group="shift"),
    Setting("spatial_exponent", "float", 0.5, "the exponent e of (H W / base_resolution) ** e (resolution_shift='sqrt')",
            low=0, high=2, group="shift", applies_with=('resolution_shift', ('sqrt',))),
    Setting("temporal_exponent", "float", 0.5,
            "the exponent of (T_eff / base_num_frames) in the factor (0: no temporal factor)", low=0, high=2,
            group="shift"),
    Setting("shift_family", "choice", "rational",
            "'rational' a t / (1 + (a - 1) t) (SD3, Open-Sora) or 'exponential' (Flux, shift given as mu = log a)",
            choices=("rational", "exponential"), group="shift"),
    Setting("shift_sigma", "float", 1.0, "the exponent of the exponential family (Flux: 1)", low=0.1, high=10,
            group="shift", applies_with=('shift_family', ('exponential',))),
    Setting("resolution_shift", "choice", "sqrt",
            "'sqrt' of H W / base_resolution (Open-Sora 1.x), 'linear' in latent tokens (Flux, Open-Sora 2.0), "
            "or 'constant' (shift)", choices=("sqrt", "linear", "constant"), group="shift"),
    Setting("shift", "float", None, "the constant of resolution_shift='constant' (a, or mu for exponential)",
            optional=True, low=-MAX_SHIFT_FACTOR, high=MAX_SHIFT_FACTOR,
            group="shift", applies_with=('resolution_shift', ('constant',))),
    Setting("base_shift", "float", None, "the linear rule's value at base_seq_len (a, or mu); default 1 / 0.5",
            optional=True, low=-MAX_SHIFT_FACTOR, high=MAX_SHIFT_FACTOR,
            group="shift", applies_with=('resolution_shift', ('linear',))),
    Setting("max_shift", "float", None, "the linear rule's value at max_seq_len (a, or mu); default 3 / 1.15",
            optional=True, low=-MAX_SHIFT_FACTOR, high=MAX_SHIFT_FACTOR,
            group="shift", applies_with=('resolution_shift', ('linear',))),
    Setting("token_count", "choice", "frame",
            "what the linear rule counts: 'frame' latent tokens per frame, times the temporal factor (Open-Sora "
            "2.0, Flux); 'video' the whole clip's T_eff H W tokens, no temporal factor (SimpleTuner's video rule)",
            choices=("frame", "video"), group="shift", applies_with=('resolution_shift', ('linear',))),
    Setting("base_seq_len", "float", 256, "the linear rule's lower anchor, in latent tokens", low=1, high=1e7,
            group="shift", applies_with=('resolution_shift', ('linear',))),
    Setting("max_seq_len", "float", 4096, "the linear rule's upper anchor, in latent tokens", low=1, high=1e7,
            group="shift", applies_with=('resolution_shift', ('linear',))),
    Setting("patch_size", "int", 2,
            "latent pixels per token side, for the token count (on Open-Sora 2.0 unset: 2 in training, the model's at "
            "inference, as stock)", low=1, high=64, group="shift", applies_with=('resolution_shift', ('linear',))),
    Setting("spatial_compression", "int", 8, "pixels per latent pixel side, for token counts from pixel meta",
            low=1, high=64,
            group="shift", applies_with=('resolution_shift', ('linear',)),
            not_on_2="2.0's token count comes from the latent itself"),
    Setting("latent_from", "choice", "tensor",
            "where the latent size the shift counts comes from: 'tensor', the latent training passes (its own VAE's; "
            "the pixel meta where there is none); 'meta', always the clip's pixel meta, through temporal_compression, "
            "causal and spatial_compression: a model's own VAE geometry whatever VAE made the latent (the LTX "
            "recipes, defined on LTX's 32x, 8x-causal latent)", choices=("tensor", "meta"), group="shift",
            not_on_2="2.0 counts the latent it trains on"),
    Setting("bucket_settings", "any", None,
            "rules dict(frames=(lo, hi), resolution=(lo, hi), **settings) giving some buckets their own distribution "
            "and shift settings (see per_bucket)", optional=True,
            group="rules",
            not_on_2='not supported on 2.0 yet; its batches hold one bucket each, so a config per bucket set works'),
    # --- the stream of random numbers -----------------------------------------------------------------------
    Setting("timestep_rng", "choice", "global",
            "'global' draws from torch's RNG as stock does; 'per_sample' from a counter-based stream keyed on "
            "(timestep_seed, step, global sample index)", choices=("global", "per_sample"), group="stream"),
    Setting("timestep_seed", "int", 0, "the per-sample stream's seed", low=0, high=2**64 - 1,
            group="stream", applies_with=('timestep_rng', ('per_sample',))),
    Setting("stratified", "bool", False, "stratify the uniforms of the whole global batch (per_sample only)",
            group="stream", applies_with=('timestep_rng', ('per_sample',))),
    Setting("timestep_start_step", "int", 0,
            "the step to resume the per-sample stream from, under a trainer that does not restore state_dict()",
            low=0, high=2**63 - 1,
            group="stream", applies_with=('timestep_rng', ('per_sample',)),
            not_on_2="on 2.0 the per-sample stream follows train.py's own step, which a resumed run restores"),
    Setting("backend", "choice", "auto", "'auto' (Open-Sora's RFLOW when importable), 'opensora' or 'standalone'",
            choices=("auto", "opensora", "standalone"),
            group="backend", not_on_2='2.0 has no RFLOW: only the timesteps are replaced'),
    # --- what training reports about itself -----------------------------------------------------------------
    Setting("telemetry", "any", None,
            "dict(bins=20, every=100, dir=...): per-noise-level loss and drawn-vs-configured timestep histograms per "
            "bucket, written to dir/timeshift_telemetry.jsonl every `every` steps (see telemetry; 2.0: drawn only)",
            optional=True, group="telemetry"),
)

SETTINGS: Dict[str, Setting] = {s.name: s for s in _SETTINGS}
"""The scheduler's own settings by name; policy and distribution parameters live with their functions."""

OPENSORA_ONLY: Dict[str, Setting] = {s.name: s for s in (
    Setting("use_oscillation_guidance", "bool", False, "Open-Sora 1.3: oscillating guidance"),
    Setting("use_flaw_fix", "bool", False, "Open-Sora 1.3: rescale guided velocities"),
    Setting("scale_image_weight", "bool", False, "Open-Sora 1.3: image-guidance weight schedule"),
    Setting("initial_image_scale", "float", 1.0, "Open-Sora 1.3: first image-guidance weight", low=0, high=100),
    Setting("force_num", "int", 10, "Open-Sora 1.3: steps of full oscillating guidance", low=0, high=10_000),
    Setting("drop_condition", "any", None, "Open-Sora 1.3: condition-dropout weights for i2v / v2v training"),
    Setting("x_cond_weight", "float", 1, "Open-Sora 1.3: loss weight of conditioning frames", low=0, high=100),
)}
"""Open-Sora 1.3's RFLOW keywords for guidance variants and conditioning: passed to its RFLOW, which implements
them; the standalone backend takes them only at these defaults."""

GROUPS: Dict[str, str] = {
    "recipe": "a named model's recipe, expanded into the settings below",
    "rflow": "Open-Sora's rflow: the time scale and the sampling loop",
    "distribution": "the base distribution of t (a bucket_settings rule may set these)",
    "shift": "the shift: T_eff, the resolution rule and the curve (a bucket_settings rule may set these)",
    "guard": "what a degenerate sample, or a loss input that would give NaN, gets",
    "redraw": "Open-Sora 1.3's redraw above a threshold",
    "loss": "the loss weighting",
    "rules": "per-bucket rules",
    "stream": "where the uniforms come from",
    "backend": "which rectified flow runs the rest",
    "telemetry": "what training records about its timesteps and losses",
}
"""The selections a setting belongs to (``Setting.group``); the lists below are read off the declaration."""


def names_in(*groups: str) -> Tuple[str, ...]:
    """The scheduler's settings in these groups, in declaration order."""
    return tuple(name for name, s in SETTINGS.items() if s.group in groups)


SHIFTING = names_in("shift", "redraw")
"""What the shift reads: with use_timestep_transform=False none of these may be given (the guard, which also judges
the losses' inputs, may)."""

SHIFT_SETTINGS = names_in("shift", "guard")
"""What configures a :class:`~.shift.TimestepShift` (Open-Sora passes 1.3's redraw threshold per call instead)."""

PER_BUCKET = names_in("distribution", "shift")
"""What a bucket_settings rule may set (with the parameters of the policies and distributions): what draws and
shifts a sample's timestep."""

APPLIES_ONLY_WITH: Dict[str, Tuple[str, Tuple[Any, ...]]] = {
    name: s.applies_with for name, s in SETTINGS.items() if s.applies_with is not None}
"""Settings that only mean something under another setting's value (``Setting.applies_with``): given otherwise,
they would be silently ignored, so they are refused."""


def applies(setting: Setting, values: Mapping[str, Any]) -> bool:
    """Whether ``setting`` means something under the resolved ``values`` (its ``applies_with``)."""
    if setting.applies_with is None:
        return True
    on, under = setting.applies_with
    return values[on] in under if under else values[on] != SETTINGS[on].default


def still_meant(inherited: Mapping[str, Any], overrides: Mapping[str, Any], release: str = "1.x") -> Dict[str, Any]:
    """``overrides`` with the ``inherited`` settings they do not name, except those that no longer mean anything
    under the selection the two make together: a parameter of a policy, distribution or weighting no longer
    selected, a setting whose ``applies_with`` no longer holds. How a bucket rule inherits its scheduler's settings
    and how settings given beside a named recipe override it: what the override deselects goes with it."""
    merged = {**inherited, **overrides}
    selected = {name: s.default for name, s in SETTINGS.items()}
    selected.update(RELEASE_DEFAULTS[release])
    selected.update({k: v for k, v in merged.items() if k in SETTINGS})
    if "shift_mode" not in merged and selected["scale_temporal"] is False:
        selected["shift_mode"] = "spatial"
    kept = dict(overrides)
    for key, value in inherited.items():
        if key in overrides:
            continue
        if key in SETTINGS:
            if applies(SETTINGS[key], selected):
                kept[key] = value
        elif key in OPENSORA_ONLY or not _registry_param(key) or _taken(key, selected):
            kept[key] = value
    return kept


def _registry_param(key: str) -> bool:
    return any(registry.owners(key) for registry in _REGISTRIES)


def _taken(key: str, selected: Mapping[str, Any]) -> bool:
    """Whether the selected policy, distribution or weighting takes the parameter ``key``."""
    return any(name in registry and key in registry.params(name)
               for registry, name in ((POLICIES, selected["shift_mode"]), (DISTRIBUTIONS, selected["sample_method"]),
                                      (WEIGHTINGS, selected["loss_weighting"])))


def declaration(name: str) -> Optional[Setting]:
    """The declaration of a scheduler setting or of any registered function's parameter (the first owner's)."""
    if name in SETTINGS:
        return SETTINGS[name]
    for registry in _REGISTRIES:
        owners = registry.owners(name)
        if owners:
            return registry.params(owners[0])[name]
    return None


class _NotOnOpensora2(Mapping):
    """Every setting and parameter with no meaning on Open-Sora 2.0, and why: read off the declarations when asked,
    so a policy registered later is included."""

    def _all(self) -> Dict[str, str]:
        names = list(SETTINGS) + list(OPENSORA_ONLY) + [p for r in _REGISTRIES for f in r for p in r.params(f)]
        return {n: not_on_opensora2(n) for n in dict.fromkeys(names) if not_on_opensora2(n)}

    def __getitem__(self, name: str) -> str:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


NOT_ON_OPENSORA2: Mapping[str, str] = _NotOnOpensora2()
"""Settings with no meaning on Open-Sora 2.0, and why (``Setting.not_on_2``): given there, they are refused."""


def not_on_opensora2(name: str) -> str:
    """Why ``name`` has no meaning on Open-Sora 2.0 ("" where it has one), from its declaration."""
    if name in OPENSORA_ONLY:
        return "it is an Open-Sora 1.3 RFLOW keyword"
    found = declaration(name)
    return "" if found is None else found.not_on_2


RELEASE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "1.x": {},
    # Open-Sora 2.0's training script: t = sigmoid(randn), alpha linear in latent tokens (256 -> 1, 4096 -> 3)
    # times sqrt(latent frames), rational shift.
    "2.0": {"sample_method": "logit-normal", "resolution_shift": "linear"},
}
"""Defaults that differ by Open-Sora release, so that no settings means that release's stock rule."""

def resolve(given: Dict[str, Any], release: str = "1.x") -> Dict[str, Any]:
    """Validate the scheduler's own settings in ``given`` and fill in the defaults of the rest (``release``'s,
    see :data:`RELEASE_DEFAULTS`).

    Also refuses the combinations that could not work or would silently ignore a setting. Keys that are not
    scheduler settings must have been taken out by the caller (policy and distribution parameters).
    """
    values = {name: s.default for name, s in SETTINGS.items()}
    values.update(RELEASE_DEFAULTS[release])
    values.update({name: SETTINGS[name].check(value) for name, value in given.items()})
    for name in APPLIES_ONLY_WITH:
        if name in given and not applies(SETTINGS[name], values):
            on, under = APPLIES_ONLY_WITH[name]
            needs = f"{on}={under[0]!r}" if len(under) == 1 else f"a {on}"
            raise SettingError(f"{name}={describe(given[name])} only applies with {needs} (got {on}={values[on]!r}); "
                               "remove it or set that too")
    if not values["use_timestep_transform"]:
        shifting = sorted(set(given) & set(SHIFTING))
        if shifting:
            raise SettingError(f"{shifting[0]}={describe(given[shifting[0]])} only applies with "
                               "use_timestep_transform=True (got False): remove it or turn the shift on")
    if values["use_discrete_timesteps"] and values["sample_method"] != "uniform":
        raise SettingError(f"use_discrete_timesteps=True needs sample_method='uniform' (as stock), "
                           f"got sample_method={values['sample_method']!r}")
    if not values["scale_temporal"] and "shift_mode" in given and values["shift_mode"] != "spatial":
        raise SettingError(f"scale_temporal=False (Open-Sora 1.3's spatial-only shift) contradicts "
                           f"shift_mode={values['shift_mode']!r}: remove one, or use shift_mode='spatial'")
    if not values["scale_temporal"]:
        temporal = sorted({"temporal_exponent", "base_num_frames"} & set(given))
        if temporal:
            raise SettingError(f"{temporal[0]}={describe(given[temporal[0]])} does not apply with scale_temporal=False "
                               "(Open-Sora 1.3's spatial-only shift has no temporal factor): remove one of them")
    if values["token_count"] == "video":
        counted = sorted({"temporal_exponent", "base_num_frames"} & set(given))
        if counted:
            raise SettingError(f"{counted[0]}={describe(given[counted[0]])} does not apply with token_count='video', "
                               "where the clip's length is in the token count and there is no temporal factor")
    if values["resolution_shift"] == "linear" and not values["max_seq_len"] > values["base_seq_len"]:
        raise SettingError(f"max_seq_len={number_text(values['max_seq_len'])} must exceed "
                           f"base_seq_len={number_text(values['base_seq_len'])}")
    _check_shift_values(values)
    values["telemetry"] = check_telemetry(values["telemetry"])
    return values


TELEMETRY_KEYS: Dict[str, Setting] = {s.name: s for s in (
    Setting("telemetry.bins", "int", 20, "bins of the fixed grid over [0, N]", low=2, high=1000),
    Setting("telemetry.every", "int", 100, "training steps between reports", low=1, high=10**9),
    Setting("telemetry.dir", "any", None, "the directory of timeshift_telemetry.jsonl"),
)}
"""The keys of the ``telemetry`` setting, each validated as a setting of its own (named ``telemetry.<key>``)."""


def check_telemetry(value: Any) -> Optional[Dict[str, Any]]:
    """The ``telemetry`` setting as ``{"bins", "every", "dir"}`` (dir a str), or None when off; refuses any other
    key, a value outside its range, and a dir that is a file or lies under one."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SettingError(f"telemetry={describe(value)} is not allowed: use None or dict(bins=20, every=100, "
                           "dir='...')")
    unknown = [k for k in value if not (isinstance(k, str) and "telemetry." + k in TELEMETRY_KEYS)]
    if unknown:
        raise SettingError(f"telemetry key {describe(unknown[0])}={describe(value[unknown[0]])} is not allowed: "
                           "telemetry takes bins, every and dir")
    if "dir" not in value:
        raise SettingError("telemetry needs dir: the directory to write timeshift_telemetry.jsonl into")
    out = {key: TELEMETRY_KEYS["telemetry." + key].check(value.get(key, TELEMETRY_KEYS["telemetry." + key].default))
           for key in ("bins", "every")}
    out["dir"] = _check_directory("telemetry.dir", value["dir"])
    return out


def _check_directory(name: str, value: Any) -> str:
    """A directory path, existing or to be made: not empty, not a file, not under a file."""
    import os  # only here: the rest of the declaration touches no file system

    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    allowed = "use a directory path (a str), one that is not a file and does not lie under a file"
    if not isinstance(value, str) or not value or "\x00" in value:
        raise SettingError(f"{name}={describe(value)} is not allowed: {allowed}")
    path = os.path.abspath(value)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if os.path.exists(path) and not os.path.isdir(path):
        what = "is a file" if path == os.path.abspath(value) else f"lies under the file {path!r}"
        raise SettingError(f"{name}={describe(value)} is not allowed: it {what}; {allowed}")
    return value


LINEAR_DEFAULTS = {"rational": (1.0, 3.0), "exponential": (0.5, 1.15)}
"""The linear rule's anchor values per family: Open-Sora 2.0's alpha 1 -> 3; Flux's mu 0.5 -> 1.15."""


def _check_shift_values(values: Dict[str, Any]) -> None:
    """The shift values must give a factor in [1/100, 100]: rational a directly, exponential a = e^mu."""
    family, rule = values["shift_family"], values["resolution_shift"]
    if values["latent_from"] == "meta" and values["shift_mode"] != "latent" and rule != "linear":
        raise SettingError(f"latent_from='meta' with shift_mode={values['shift_mode']!r} and resolution_shift="
                           f"{rule!r}: nothing counts the latent (only shift_mode='latent' and the linear rule's token "
                           "count do), so it would change nothing; remove it")
    if rule == "constant" and values["shift"] is None:
        raise SettingError("resolution_shift='constant' needs shift (the constant factor; SD3 uses 3.0)")
    if rule == "linear":
        lo, hi = LINEAR_DEFAULTS[family]
        values["base_shift"] = lo if values["base_shift"] is None else values["base_shift"]
        values["max_shift"] = hi if values["max_shift"] is None else values["max_shift"]
    for name in ("shift", "base_shift", "max_shift"):
        value = values[name]
        if value is None:
            continue
        a = math.exp(value) if family == "exponential" else value
        if not 1 / MAX_SHIFT_FACTOR <= a <= MAX_SHIFT_FACTOR:
            what = f"mu, so a = e^mu = {a:.3g}" if family == "exponential" else "the factor a"
            raise SettingError(f"{name}={number_text(value)} is not allowed for shift_family={family!r} ({what}): the shift "
                               f"factor must lie in [0.01, 100], where float32 timesteps do not collapse to 0 or N")
    if rule != "linear":
        return
    if values["max_shift"] < values["base_shift"]:
        raise SettingError(f"max_shift={number_text(values['max_shift'])} is below base_shift={number_text(values['base_shift'])}: "
                           "the linear rule must not decrease with the token count (it would reach 0 for large "
                           "latents)")
    if family == "rational":  # below its lower anchor the line falls; a latent holds at least one token
        slope = (values["max_shift"] - values["base_shift"]) / (values["max_seq_len"] - values["base_seq_len"])
        smallest = values["base_shift"] - slope * (values["base_seq_len"] - 1)
        if smallest < 1 / MAX_SHIFT_FACTOR:
            raise SettingError(
                f"base_shift={number_text(values['base_shift'])}, max_shift={number_text(values['max_shift'])}: the linear rule "
                f"gives a = {smallest:.4g} at 1 latent token, below 0.01 (a collapse to t = 0). Raise base_shift, "
                "lower max_shift or base_seq_len")


class Routed(NamedTuple):
    """Keywords split by who takes them (see :func:`route`)."""

    own: Dict[str, Any]
    policy: Dict[str, Any]
    distribution: Dict[str, Any]
    weighting: Dict[str, Any]
    rest: Dict[str, Any]


def route(given: Dict[str, Any], own: Iterable[str], distribution: bool = False, release: str = "1.x") -> Routed:
    """Split keywords into the caller's own settings, the selected policy's parameters (validated), the selected
    distribution's and loss weighting's (validated, when ``distribution``: the scheduler's), and the rest.

    A parameter of another policy or distribution than the selected one is refused here, naming both.
    """
    own = set(own)
    defaults = {name: s.default for name, s in SETTINGS.items()}
    defaults.update(RELEASE_DEFAULTS[release])
    mode = SETTINGS["shift_mode"].check(given.get("shift_mode", defaults["shift_mode"]))
    if not SETTINGS["scale_temporal"].check(given.get("scale_temporal", True)) and "shift_mode" not in given:
        mode = "spatial"
    method = SETTINGS["sample_method"].check(given.get("sample_method", defaults["sample_method"])) if distribution else None
    weighting = SETTINGS["loss_weighting"].check(given.get("loss_weighting", "none")) if distribution else None
    mine: Dict[str, Any] = {}
    policy: Dict[str, Any] = {}
    dist: Dict[str, Any] = {}
    weights: Dict[str, Any] = {}
    rest: Dict[str, Any] = {}
    for key, value in given.items():
        if key in own:
            mine[key] = value
        elif key in POLICIES.params(mode):
            policy[key] = value
        elif method is not None and key in DISTRIBUTIONS.params(method):
            dist[key] = value
        elif weighting is not None and key in WEIGHTINGS.params(weighting):
            weights[key] = value
        else:
            for registry, selected in ((POLICIES, mode), (DISTRIBUTIONS, method), (WEIGHTINGS, weighting)):
                owners = registry.owners(key)
                if owners and selected is not None:
                    raise SettingError(f"{key}={describe(value)} is a parameter of {registry.key} "
                                       f"{' / '.join(map(repr, owners))}, not of {registry.key}={selected!r}: remove "
                                       f"it or select {registry.key}={owners[0]!r}")
            rest[key] = value
    return Routed(mine, POLICIES.check_params(mode, policy),
                  DISTRIBUTIONS.check_params(method, dist) if method else {},
                  WEIGHTINGS.check_params(weighting, weights) if weighting else {}, rest)


def unknown_setting_error(who: str, key: str, value: Any, own: Iterable[str], shift_mode: str,
                          sample_method: Optional[str] = None, also: Iterable[str] = (),
                          loss_weighting: Optional[str] = None) -> TypeError:
    """A ``TypeError`` for a keyword nobody takes: a close match if there is one, and who accepts what."""
    accepted = {f"{who}": sorted(own), f"shift_mode={shift_mode!r}": list(POLICIES.params(shift_mode))}
    if sample_method is not None:
        accepted[f"sample_method={sample_method!r}"] = list(DISTRIBUTIONS.params(sample_method))
    if loss_weighting is not None:
        accepted[f"loss_weighting={loss_weighting!r}"] = list(WEIGHTINGS.params(loss_weighting))
    if also:
        accepted["Open-Sora's RFLOW (backend='opensora')"] = sorted(also)
    every = [name for names in accepted.values() for name in names]
    close = difflib.get_close_matches(str(key), every, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    takes = "; ".join(f"{k} takes {', '.join(v) or 'nothing'}" for k, v in accepted.items())
    return TypeError(f"{who} got an unknown setting {key}={describe(value)}.{hint} {takes}")


def settings_table() -> str:
    """The README's table of every setting: the scheduler's, then each built-in policy's, distribution's and
    weighting's, with the scope each declares (its group, what it applies with, whether Open-Sora 2.0 takes it)."""
    rows = [("", s) for s in SETTINGS.values()]
    rows += [(f"{r.key}={name!r}", s) for r in _REGISTRIES for name in r for s in r.params(name).values()]
    rows += [("a components entry", s) for s in COMPONENT_KEYS.values()]
    lines = ["| setting | allowed | default | scope | what it does |", "|---|---|---|---|---|"]
    for owner, s in rows:
        doc = f"{s.doc} (with {owner})" if owner else s.doc
        lines.append(f"| `{s.name}` | {s.allowed()} | `{s.default!r}` | {scope_text(s)} | {doc} |")
    return "\n".join(lines)


def scope_text(s: Setting) -> str:
    """A setting's scope in words, for tables and help: its group, the setting it applies with, the releases."""
    parts = [s.group]
    if s.applies_with is not None:
        on, under = s.applies_with
        parts.append(f"with {on}={under[0]!r}" if len(under) == 1 else f"with a {on}")
    parts.append("1.x only" if s.not_on_2 else "1.x, 2.0")
    return "; ".join(parts)


def settings_doc(names: Iterable[str]) -> str:
    """Docstring lines for settings: ``name (allowed, default ...): doc``."""
    return "\n".join(f"    {SETTINGS[n].name} ({SETTINGS[n].allowed()}; default {SETTINGS[n].default!r}): "
                     f"{SETTINGS[n].doc}" for n in names)

