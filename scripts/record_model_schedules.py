"""Record the models' own sampling schedules into tests/data/model_schedules.json, for tests/test_recipes.py.

Given checkouts of the models' repositories, it takes each schedule function's source out of the model's own file
(by name, with ``ast``), runs it as written with only what it calls (torch, numpy, math) in scope, and writes what it
returns. The files' other imports (Flux's model and autoencoder, Open-Sora's models) are not needed by these
functions and are not imported. What is read rather than run is said per section ("read"): the token count each
model's inference derives from the pixel size (its get_noise / prepare), which is written here as a formula.

    python scripts/record_model_schedules.py --flux PATH --opensora2 PATH --wan21 PATH --wan22 PATH \
        --hunyuanvideo PATH --stepvideo PATH --hunyuanvideo15 PATH --sd3 PATH \
        --ltxvideo PATH --ltx2 PATH --opensora12 PATH --opensora13 PATH

Each path is a checkout (a work tree) of black-forest-labs/flux, hpcaitech/Open-Sora (main, 2.0), Wan-Video/Wan2.1,
Wan-Video/Wan2.2, Tencent-Hunyuan/HunyuanVideo, stepfun-ai/Step-Video-T2V, Tencent-Hunyuan/HunyuanVideo-1.5,
huggingface/diffusers (SD3), Lightricks/LTX-Video, Lightricks/LTX-2 and hpcaitech/Open-Sora at its branches
opensora/v1.2 and opensora/v1.3.
Sections not given keep what the file already records, so one model can be recorded alone.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import subprocess
import sys
import types
from typing import Any, Dict, List

import numpy as np
import torch

CASES = [(steps, h, w, f) for steps in (1, 4, 30, 50)
         for h, w, f in ((480, 832, 81), (720, 1280, 121), (1024, 1024, 1))]
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "model_schedules.json")


def functions(path: str, names: List[str], scope: Dict[str, Any]) -> Dict[str, Any]:
    """The named top-level functions of the file at ``path``, compiled from its own source into ``scope``."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {n.name for n in wanted}
    if missing:
        raise SystemExit(f"{path}: no function {sorted(missing)}")
    for node in wanted:
        node.returns = None  # `-> list[float]` / `float | None` annotations need Python 3.10; they are not code
        for arg in node.args.args:
            arg.annotation = None
    code = compile(ast.Module(body=wanted, type_ignores=[]), path, "exec")
    exec(code, scope)
    return {n: scope[n] for n in names}


def method(path: str, cls: str, name: str, scope: Dict[str, Any]) -> Any:
    """The method ``name`` of class ``cls`` in the file at ``path``, compiled from its own source (call it with an
    explicit ``self``)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    for arg in item.args.args:
                        arg.annotation = None
                    item.returns = None
                    exec(compile(ast.Module(body=[item], type_ignores=[]), path, "exec"), scope)
                    return scope[name]
    raise SystemExit(f"{path}: no {cls}.{name}")


def argument_default(path: str, option: str) -> Any:
    """The ``default=`` of ``add_argument(option, ...)`` in the file at ``path``."""
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == option):
            return next(ast.literal_eval(k.value) for k in node.keywords if k.arg == "default")
    raise SystemExit(f"{path}: no option {option}")


def parameter_default(fn: Any, name: str) -> Any:
    import inspect

    return inspect.signature(fn).parameters[name].default


def assignments(path: str) -> Dict[str, Any]:
    """``name.attr = literal`` assignments of a config file (Wan's EasyDict configs), as {attr: value}."""
    out = {}
    for node in ast.parse(open(path, encoding="utf-8").read(), path).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            try:
                out[node.targets[0].attr] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def commit(checkout: str) -> str:
    return subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def flux(checkout: str) -> Dict[str, Any]:
    path = os.path.join(checkout, "src", "flux", "sampling.py")
    fn = functions(path, ["time_shift", "get_lin_function", "get_schedule"], {"math": math, "torch": torch,
                                                                               "Callable": Any, "Tensor": Any})
    # read: get_noise makes a 2 ceil(H/16) x 2 ceil(W/16) latent and prepare packs it 2x2 into tokens.
    cases = [dict(steps=s, height=h, width=w, frames=1,  # an image model: every size, one frame
                  sigmas=fn["get_schedule"](s, math.ceil(h / 16) * math.ceil(w / 16)))
             for s, h, w, _ in CASES]
    return dict(file="src/flux/sampling.py", commit=commit(checkout), read="tokens = ceil(H/16) ceil(W/16)",
                recipes={"flux": cases})


def opensora2(checkout: str) -> Dict[str, Any]:
    path = os.path.join(checkout, "opensora", "utils", "sampling.py")
    fn = functions(path, ["time_shift", "get_res_lin_function", "get_schedule"],
                   {"math": math, "torch": torch, "Tensor": Any})
    # read: get_noise rounds the latent to 2 ceil(H/16) x 2 ceil(W/16) (8x VAE), api_fn divides by patch_size**2 = 4,
    # and the causal VAE gives (frames - 1) // 4 + 1 latent frames.
    cases = []
    for s, h, w, f in CASES:
        latent_frames = 1 if f == 1 else (f - 1) // 4 + 1
        cases.append(dict(steps=s, height=h, width=w, frames=f, sigmas=fn["get_schedule"](
            s, math.ceil(h / 16) * math.ceil(w / 16), latent_frames)))
    return dict(file="opensora/utils/sampling.py", commit=commit(checkout),
                read="tokens = ceil(H/16) ceil(W/16), latent frames = (F - 1) // 4 + 1",
                recipes={"opensora-2.0": cases})


def wan_dpm_sigmas(checkout: str, steps: int, shift: float) -> List[float]:
    fn = functions(os.path.join(checkout, "wan", "utils", "fm_solvers.py"), ["get_sampling_sigmas"], {"np": np})
    return [float(x) for x in fn["get_sampling_sigmas"](steps, shift)] + [0.0]  # its solvers append the terminal 0


def register_to_config(init: Any) -> Any:
    """Stands in for diffusers' decorator: the constructor's arguments, defaults filled in, as ``self.config``."""
    import inspect

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(init).bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.config = types.SimpleNamespace(**{k: v for k, v in bound.arguments.items() if k != "self"})
        init(self, *args, **kwargs)
    return wrapped


def wan_sigmas(checkout: str, steps: int, shift: float) -> List[float]:
    """The default solver's sigmas: FlowUniPCMultistepScheduler compiled from Wan's own file, built and set as its
    pipelines do (text2video.py: shift=1, use_dynamic_shifting=False, then set_timesteps(steps, shift=shift))."""
    path = os.path.join(checkout, "wan", "utils", "fm_solvers_unipc.py")
    scope = {"np": np, "torch": torch, "math": math, "register_to_config": register_to_config,
             "SchedulerMixin": type("SchedulerMixin", (), {}), "ConfigMixin": type("ConfigMixin", (), {}),
             "KarrasDiffusionSchedulers": []}
    scheduler = scheduler_class(path, "FlowUniPCMultistepScheduler", scope)(
        num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    scheduler.set_timesteps(steps, device="cpu", shift=shift)
    return scheduler.sigmas.tolist()


def wan21(checkout: str) -> Dict[str, Any]:
    tasks = {"wan2.1-t2v": ("t2v-14B", "1280*720"), "wan2.1-t2v-480p": ("t2v-1.3B", "832*480"),
             "wan2.1-i2v-480p": ("i2v-14B", "832*480"),
             "wan2.1-flf2v": ("flf2v-14B", "1280*720")}
    recipes = {}
    for name, (task, size) in tasks.items():
        scope = {"WAN_CONFIGS": {task: None}, "EXAMPLE_PROMPT": {task: None}, "SUPPORTED_SIZES": {task: [size]},
                 "random": random, "sys": sys}
        validate = functions(os.path.join(checkout, "generate.py"), ["_validate_args"], scope)["_validate_args"]
        args = types.SimpleNamespace(ckpt_dir=".", task=task, size=size, sample_steps=None, sample_shift=None,
                                     frame_num=None, base_seed=0)
        validate(args)  # generate.py's own defaults per task and size
        recipes[name] = [dict(steps=s, height=h, width=w, frames=f, shift=args.sample_shift,
                              sigmas=wan_sigmas(checkout, s, args.sample_shift),
                              dpm_sigmas=wan_dpm_sigmas(checkout, s, args.sample_shift)) for s, h, w, f in CASES]
    return dict(file="generate.py _validate_args, wan/utils/fm_solvers_unipc.py FlowUniPCMultistepScheduler "
                     "(sigmas; the default --sample_solver), wan/utils/fm_solvers.py get_sampling_sigmas (dpm_sigmas)",
                commit=commit(checkout), read="the pipelines build the UniPC scheduler with shift=1 and pass the "
                "shift to set_timesteps (wan/text2video.py)", recipes=recipes)


def wan22(checkout: str) -> Dict[str, Any]:
    files = {"wan2.2-t2v-a14b": "wan_t2v_A14B.py", "wan2.2-i2v-a14b": "wan_i2v_A14B.py",
             "wan2.2-ti2v-5b": "wan_ti2v_5B.py"}
    recipes, boundaries = {}, {}
    for name, file in files.items():
        config = assignments(os.path.join(checkout, "wan", "configs", file))
        boundaries[name] = config.get("boundary")
        recipes[name] = [dict(steps=s, height=h, width=w, frames=f, shift=config["sample_shift"],
                              sigmas=wan_sigmas(checkout, s, config["sample_shift"]),
                              dpm_sigmas=wan_dpm_sigmas(checkout, s, config["sample_shift"])) for s, h, w, f in CASES]
    return dict(file="wan/configs/*.py, wan/utils/fm_solvers_unipc.py FlowUniPCMultistepScheduler (sigmas; the "
                     "default --sample_solver), wan/utils/fm_solvers.py get_sampling_sigmas (dpm_sigmas)",
                commit=commit(checkout), read="the pipelines build the UniPC scheduler with shift=1 and pass the shift "
                "to set_timesteps (wan/text2video.py)", recipes=recipes, boundaries=boundaries)


def shifted_linspace(shift_fn: Any, steps: int) -> List[float]:
    # read: both schedulers' set_timesteps shift torch.linspace(1, 0, steps + 1) (flow_reverse / reverse: 1 = noise)
    return shift_fn(torch.linspace(1, 0, steps + 1)).tolist()


def hunyuanvideo(checkout: str) -> Dict[str, Any]:
    path = os.path.join(checkout, "hyvideo", "diffusion", "schedulers", "scheduling_flow_match_discrete.py")
    shift_fn = method(path, "FlowMatchDiscreteScheduler", "sd3_time_shift", {"torch": torch})
    shift = argument_default(os.path.join(checkout, "hyvideo", "config.py"), "--flow-shift")
    this = types.SimpleNamespace(config=types.SimpleNamespace(shift=shift))
    cases = [dict(steps=s, height=h, width=w, frames=f, shift=shift,
                  sigmas=shifted_linspace(lambda t: shift_fn(this, t), s)) for s, h, w, f in CASES]
    return dict(file="hyvideo/diffusion/schedulers/scheduling_flow_match_discrete.py, hyvideo/config.py",
                commit=commit(checkout), read="set_timesteps: linspace(1, 0, steps + 1), shifted",
                recipes={"hunyuanvideo": cases})


def stepvideo(checkout: str) -> Dict[str, Any]:
    path = os.path.join(checkout, "stepvideo", "diffusion", "scheduler.py")
    scope = {"torch": torch, "Union": Any}
    shift_fn = method(path, "FlowMatchDiscreteScheduler", "sd3_time_shift", scope)
    shift = parameter_default(method(path, "FlowMatchDiscreteScheduler", "set_timesteps", scope), "time_shift")
    # Turbo's shift is stated in the README's settings table only (| model | infer_steps | cfg_scale | time_shift |
    # num_frames |); the download table above it names the model too
    readme = open(os.path.join(checkout, "README.md"), encoding="utf-8").read().splitlines()
    header = next(line for line in readme if "time_shift" in line and line.startswith("|"))
    column = [c.strip() for c in header.split("|")].index("time_shift")
    row = next(line for line in readme[readme.index(header):] if line.startswith("| Step-Video-T2V-Turbo"))
    turbo = float(row.split("|")[column])
    recipes = {}
    for name, a in (("step-video-t2v", shift), ("step-video-t2v-turbo", turbo)):
        recipes[name] = [dict(steps=s, height=h, width=w, frames=f, shift=a,
                              sigmas=shifted_linspace(lambda t: shift_fn(None, t, a), s)) for s, h, w, f in CASES]
    return dict(file="stepvideo/diffusion/scheduler.py, README.md (Turbo's shift)", commit=commit(checkout),
                read="set_timesteps: linspace(1, 0, steps + 1), shifted", recipes=recipes)


def class_constants(path: str, cls: str) -> Dict[str, Any]:
    """The literal class attributes (``NAME = 1e-5``, ``name: float = 3.0``) of class ``cls`` in the file at ``path``."""
    for node in ast.parse(open(path, encoding="utf-8").read(), path).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            out = {}
            for item in node.body:
                target = item.targets[0] if isinstance(item, ast.Assign) else getattr(item, "target", None)
                if isinstance(target, ast.Name) and getattr(item, "value", None) is not None:
                    try:
                        out[target.id] = ast.literal_eval(item.value)
                    except ValueError:
                        pass
            return out
    raise SystemExit(f"{path}: no class {cls}")


def module_constant(path: str, name: str) -> Any:
    for node in ast.parse(open(path, encoding="utf-8").read(), path).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name:
            return ast.literal_eval(node.value)
    raise SystemExit(f"{path}: no {name}")


def hunyuanvideo15(checkout: str) -> Dict[str, Any]:
    path = os.path.join(checkout, "hyvideo", "schedulers", "scheduling_flow_match_discrete.py")
    shift_fn = method(path, "FlowMatchDiscreteScheduler", "sd3_time_shift", {"torch": torch})
    commons = os.path.join(checkout, "hyvideo", "commons", "__init__.py")
    configs = {**module_constant(commons, "PIPELINE_CONFIGS"), **module_constant(commons, "SR_PIPELINE_CONFIGS")}
    tasks = {"hunyuanvideo-1.5-480p": ("480p_t2v", "480p_i2v", "480p_t2v_distilled", "480p_i2v_distilled"),
             "hunyuanvideo-1.5-480p-mix": ("480p_t2v",),
             "hunyuanvideo-1.5-720p-t2v": ("720p_t2v", "720p_t2v_distilled", "720p_t2v_distilled_sparse"),
             "hunyuanvideo-1.5-720p-i2v": ("720p_i2v", "720p_i2v_distilled", "720p_i2v_distilled_sparse"),
             "hunyuanvideo-1.5-480p-i2v-step-distilled": ("480p_i2v_step_distilled",),
             "hunyuanvideo-1.5-sr": ("720p_sr_distilled", "1080p_sr_distilled")}
    recipes = {}
    for name, keys in tasks.items():
        shifts = {configs[k]["flow_shift"] for k in keys}
        if len(shifts) != 1:
            raise SystemExit(f"{commons}: {keys} do not share one flow_shift: {shifts}")
        a = shifts.pop()
        # _create_scheduler: shift=flow_shift, use_flux_shift left False, so set_timesteps shifts by sd3_time_shift
        this = types.SimpleNamespace(config=types.SimpleNamespace(shift=a))
        recipes[name] = [dict(steps=s, height=h, width=w, frames=f, flow_shift=a,
                              sigmas=shifted_linspace(lambda t: shift_fn(this, t), s)) for s, h, w, f in CASES]
    train = os.path.join(checkout, "train.py")
    config, sampler = class_constants(train, "TrainingConfig"), class_constants(train, "TimestepSampler")
    # read: TimestepSampler.sample's 'lognorm' branch is sigmoid(N(0, 1)) * (t1 - t0) + t0 with t0 = TRAIN_EPS,
    # t1 = 1 - TRAIN_EPS; 'mix' takes it where rand > 0.3, else U(t0, t1); timestep_transform is rational.
    training = dict(train_timestep_shift=config["train_timestep_shift"],
                    validation_timestep_shift=config["validation_timestep_shift"], train_eps=sampler["TRAIN_EPS"])
    return dict(file="hyvideo/schedulers/scheduling_flow_match_discrete.py, hyvideo/commons/__init__.py, train.py",
                commit=commit(checkout), read="set_timesteps: linspace(1, 0, steps + 1), shifted; train.py "
                "TimestepSampler: sigmoid(N(0, 1)) (or 0.7 / 0.3 with U) in [eps, 1 - eps], then the shift",
                recipes=recipes, training=training)


def scheduler_class(path: str, cls: str, scope: Dict[str, Any]) -> Any:
    """The class ``cls`` of the file at ``path``, compiled from its own source into ``scope`` (annotations dropped,
    as in :func:`functions`); its bases and decorators must be in ``scope``."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if node is None:
        raise SystemExit(f"{path}: no class {cls}")
    for item in ast.walk(node):
        if isinstance(item, ast.FunctionDef):
            item.returns = None
            for arg in item.args.args + item.args.kwonlyargs:
                arg.annotation = None
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), scope)
    return scope[cls]


def _register_to_config(init: Any) -> Any:
    # diffusers' register_to_config, as far as the schedulers use it: every __init__ argument readable as
    # self.config.<name> (ConfigMixin's FrozenDict) before the body runs
    import inspect

    signature = inspect.signature(init)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.config = types.SimpleNamespace(**{k: v for k, v in bound.arguments.items() if k != "self"})
        init(self, *args, **kwargs)
    return wrapper


def diffusers_flow_match(checkout: str) -> Any:
    import logging
    from typing import Literal, Optional, Union

    path = os.path.join(checkout, "src", "diffusers", "schedulers", "scheduling_flow_match_euler_discrete.py")
    scope = {"np": np, "torch": torch, "math": math, "Optional": Optional, "Union": Union, "Literal": Literal,
             "ConfigMixin": object, "SchedulerMixin": type("SchedulerMixin", (), {}),
             "register_to_config": _register_to_config, "is_scipy_available": lambda: False,
             "BaseOutput": object, "logger": logging.getLogger("diffusers"), "randn_tensor": None}
    return scheduler_class(path, "FlowMatchEulerDiscreteScheduler", scope)


SD3_SHIFT = 3.0  # read: "shift": 3.0 in stabilityai/stable-diffusion-3-medium-diffusers scheduler/scheduler_config.json
SD3_QUANTILES = [0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999]


def sd3(checkout: str) -> Dict[str, Any]:
    scheduler = diffusers_flow_match(checkout)
    cases = []
    for s, h, w, f in CASES:
        sched = scheduler(shift=SD3_SHIFT)
        sched.set_timesteps(s)  # StableDiffusion3Pipeline: retrieve_timesteps(scheduler, steps, sigmas=None)
        cases.append(dict(steps=s, height=h, width=w, frames=1, sigmas=sched.sigmas.tolist()))
    train = os.path.join(checkout, "examples", "dreambooth", "train_dreambooth_sd3.py")
    fn = functions(os.path.join(checkout, "src", "diffusers", "training_utils.py"),
                   ["compute_density_for_timestep_sampling"], {"torch": torch, "math": math})
    scheme, loc, scale = (argument_default(train, o) for o in ("--weighting_scheme", "--logit_mean", "--logit_std"))
    # the script's step, at given normal quantiles instead of torch.normal: u = sigmoid(N(loc, scale)),
    # indices = (u * N).long(), timesteps = scheduler.timesteps[indices], sigma = the scheduler's sigma there
    density = fn["compute_density_for_timestep_sampling"]
    gen = torch.Generator().manual_seed(0)
    drawn = density(weighting_scheme=scheme, batch_size=4, logit_mean=loc, logit_std=scale, generator=gen)
    assert ((drawn > 0) & (drawn < 1)).all()
    sched = scheduler(shift=SD3_SHIFT)
    normal = torch.distributions.Normal(loc, scale)
    u = torch.sigmoid(normal.icdf(torch.tensor(SD3_QUANTILES, dtype=torch.float64))).float()
    indices = (u * sched.config.num_train_timesteps).long()
    train_sigmas = sched.sigmas[indices].tolist()  # sigmas[i] belongs to timesteps[i]
    return dict(file="src/diffusers/schedulers/scheduling_flow_match_euler_discrete.py, src/diffusers/training_utils.py"
                     ", examples/dreambooth/train_dreambooth_sd3.py", commit=commit(checkout),
                read=f"shift {SD3_SHIFT} from SD3's scheduler_config.json; the pipeline calls set_timesteps(steps)",
                recipes={"sd3": cases},
                training=dict(weighting_scheme=scheme, logit_mean=loc, logit_std=scale, shift=SD3_SHIFT,
                              quantiles=SD3_QUANTILES, sigmas=train_sigmas))


def ltxvideo(checkout: str) -> Dict[str, Any]:
    from abc import ABC, abstractmethod
    from typing import Callable, Optional, Tuple, Union

    path = os.path.join(checkout, "ltx_video", "schedulers", "rf.py")
    scope = {"math": math, "torch": torch, "Tensor": torch.Tensor, "Optional": Optional, "Union": Union,
             "Callable": Callable, "Tuple": Tuple, "ABC": ABC, "abstractmethod": abstractmethod,
             "ConfigMixin": type("ConfigMixin", (), {}), "SchedulerMixin": type("SchedulerMixin", (), {}),
             "register_to_config": _register_to_config}
    functions(path, ["linear_quadratic_schedule", "simple_diffusion_resolution_dependent_timestep_shift",
                     "time_shift", "get_normal_shift", "strech_shifts_to_terminal",
                     "sd3_resolution_dependent_timestep_shift"], scope)
    scheduler_class(path, "TimestepShifter", scope)
    scheduler = scheduler_class(path, "RectifiedFlowScheduler", scope)
    mapping = os.path.join(checkout, "ltx_video", "utils", "diffusers_config_mapping.py")
    config = {k: v for k, v in module_constant(mapping, "OURS_SCHEDULER_CONFIG").items() if not k.startswith("_")}
    cases = []
    for s, h, w, f in CASES:
        if s == 1:
            continue  # its stretch divides 0 by 0 at one step (NaN): the recipe refuses it
        # read: the pipeline's latent_shape (b, c, F // 8 + 1, H // 32, W // 32) for a video (vae_scale_factor 32,
        # video_scale_factor 8, causal: + 1), (b, c, 1, H // 32, W // 32) for an image
        latent_frames = 1 if f == 1 else f // 8 + 1
        sched = scheduler(**config)
        sched.set_timesteps(s, samples_shape=(1, 128, latent_frames, h // 32, w // 32))
        # step(): the last step goes from the last timestep to 0 (timesteps padded with 0)
        cases.append(dict(steps=s, height=h, width=w, frames=f, sigmas=sched.timesteps.tolist() + [0.0]))
    return dict(file="ltx_video/schedulers/rf.py, ltx_video/utils/diffusers_config_mapping.py", commit=commit(checkout),
                read="latent shape (b, c, F // 8 + 1, H // 32, W // 32); the terminal 0 after the last timestep",
                config=config, recipes={"ltx-video-0.9": cases})


def ltx2(checkout: str) -> Dict[str, Any]:
    path = os.path.join(checkout, "packages", "ltx-core", "src", "ltx_core", "components", "schedulers.py")
    scope = {"math": math, "torch": torch, "SchedulerProtocol": object,
             "BASE_SHIFT_ANCHOR": module_constant(path, "BASE_SHIFT_ANCHOR"),
             "MAX_SHIFT_ANCHOR": module_constant(path, "MAX_SHIFT_ANCHOR")}
    scheduler = scheduler_class(path, "LTX2Scheduler", scope)()
    # read: LTX-2's pipelines call execute(steps=N) without a latent (ti2vid_two_stages.py line 244 and the others;
    # only the HQ pipeline passes one), so the token count is default_number_of_tokens at every size
    cases = [dict(steps=s, height=h, width=w, frames=f, sigmas=scheduler.execute(steps=s).tolist())
             for s, h, w, f in CASES if s > 1]  # at one step its stretch divides 0 by 0 (NaN): the recipe refuses it
    # read: the HQ pipeline (ti2vid_two_stages_hq.py) passes stage 1's empty latent, at half the pixel size, shaped
    # by VideoLatentShape.from_pixel_shape: (1, 128, (F - 1) // 8 + 1, (H / 2) // 32, (W / 2) // 32)
    hq = [dict(steps=s, height=h, width=w, frames=f, sigmas=scheduler.execute(
        steps=s, latent=torch.empty(1, 128, (f - 1) // 8 + 1, (h // 2) // 32, (w // 2) // 32)).tolist())
        for s, h, w, f in CASES if s > 1]
    train = os.path.join(checkout, "packages", "ltx-trainer", "src", "ltx_trainer", "timestep_samplers.py")
    tscope = {"torch": torch, "TimestepSampler": object}
    sampler = scheduler_class(train, "ShiftedLogitNormalTimestepSampler", tscope)
    shift = sampler._get_shift_for_sequence_length
    training = dict(std=parameter_default(sampler.__init__, "std"), eps=parameter_default(sampler.__init__, "eps"),
                    uniform_prob=parameter_default(sampler.__init__, "uniform_prob"),
                    **{k: parameter_default(shift, k) for k in ("min_tokens", "max_tokens", "min_shift", "max_shift")},
                    lower_quantile_z=sampler().normal_005_percentile, upper_quantile_z=sampler().normal_999_percentile)
    return dict(file="packages/ltx-core/src/ltx_core/components/schedulers.py, "
                     "packages/ltx-trainer/src/ltx_trainer/timestep_samplers.py", commit=commit(checkout),
                read="the default pipelines call execute(steps=N) without a latent; the HQ pipeline's latent shape "
                "as written above", recipes={"ltx-2": cases, "ltx-2-hq": hq},
                training=training, training_draws=ltx2_draws(sampler()))


# Token counts of LTX-2 clips (latent frames x H/32 x W/32, patch 1): 512x512 at 25 frames (4 x 16 x 16, mu at its
# lower anchor), 512x768 at 49 (7 x 16 x 24), 704x1216 at 121 (16 x 22 x 38, above the 4096 its trainer caps at).
LTX2_TOKENS = (1024, 2688, 13376)
LTX2_POINTS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
               0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)
LTX2_DRAWS = 2**22


def ltx2_draws(sampler: Any) -> Dict[str, Any]:
    """The trainer's own ``sample(batch_size, seq_length)`` run: per token count, the empirical CDF of its draws at
    LTX2_POINTS, the share at exactly t = 1 (its clamp above the 99.9% point) and the least draw (seeded: torch's
    generator, manual_seed(0) per token count)."""
    out = {}
    for tokens in LTX2_TOKENS:
        torch.manual_seed(0)
        t = sampler.sample(LTX2_DRAWS, tokens).double()
        out[str(tokens)] = dict(cdf=[(t <= x).double().mean().item() for x in LTX2_POINTS],
                                at_one=(t == 1).double().mean().item(), least=t.min().item())
    return dict(draws=LTX2_DRAWS, points=list(LTX2_POINTS), seed=0, by_tokens=out)


OPENSORA1_CASES = [(30, 720, 1280, 51), (30, 256, 256, 17), (10, 480, 854, 102), (30, 720, 1280, 1),
                   (1, 720, 1280, 51), (4, 480, 854, 113)]


def config_call(path: str, name: str) -> Dict[str, Any]:
    """The literal keywords of ``name = dict(...)`` in an mmengine config file."""
    for node in ast.parse(open(path, encoding="utf-8").read(), path).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name:
            return {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
    raise SystemExit(f"{path}: no {name}")


def opensora1(checkout: str, release: str, file: str, names: List[str], inference: str,
              degenerate: List[int]) -> Dict[str, Any]:
    v = release.replace(".", "-")
    fn = functions(os.path.join(checkout, *file.split("/")), names, {"torch": torch})["timestep_transform"]
    train = config_call(os.path.join(checkout, "configs", f"opensora-v{v}", "train", "stage1.py"), "scheduler")
    infer = config_call(os.path.join(checkout, "configs", f"opensora-v{v}", "inference", inference), "scheduler")
    N = 1000  # RFLOW's num_timesteps default; neither config sets it
    # RFLOW.sample passes scale=self.transform_scale (1.3 only; 1.2 none) and, in 1.3, scale_temporal
    kwargs = dict(scale=infer.get("transform_scale", 1.0), scale_temporal=infer.get("scale_temporal", True)) \
        if release == "1.3" else {}

    def run(s: int, h: int, w: int, f: int) -> List[float]:
        # read: prepare_multi_resolution_info makes height, width, num_frames tensors of the batch (fp32 here;
        # stock's bf16 would round them) and sample() shifts (1 - i/s) N, one tensor per step
        meta = {k: torch.tensor([float(x)]) for k, x in (("height", h), ("width", w), ("num_frames", f))}
        ts = [fn(torch.tensor([(1.0 - i / s) * N]), meta, num_timesteps=N, **kwargs) for i in range(s)]
        return [float(t[0]) / N for t in ts] + [0.0]  # dt = gap / N, the last step to 0

    cases = [dict(steps=s, height=h, width=w, frames=f, sigmas=run(s, h, w, f)) for s, h, w, f in OPENSORA1_CASES]
    refused = []
    for f in degenerate:
        first = run(30, 720, 1280, f)[0]
        if not math.isnan(first):
            raise SystemExit(f"{release}: expected NaN at {f} frames, got {first}")
        refused.append(dict(steps=30, height=720, width=1280, frames=f))
    return dict(file=f"{file}, configs/opensora-v{v}/train/stage1.py, configs/opensora-v{v}/inference/{inference}",
                commit=commit(checkout), read="sample(): t = (1 - i/steps) N, each through timestep_transform with "
                "the clip's height, width, num_frames; sigma = t / N, then 0",
                recipes={f"opensora-{release}": cases}, nan_at_first_step=refused,
                training=train, inference=infer)


def opensora12(checkout: str) -> Dict[str, Any]:
    return opensora1(checkout, "1.2", "opensora/schedulers/rf/rectified_flow.py", ["timestep_transform"],
                     "sample.py", [16, 2])


def opensora13(checkout: str) -> Dict[str, Any]:
    return opensora1(checkout, "1.3", "opensora/schedulers/rf/time_sampler.py", ["extract_hwt", "timestep_transform"],
                     "t2v.py", [2, 4])


SECTIONS = {"flux": flux, "opensora2": opensora2, "wan21": wan21, "wan22": wan22, "hunyuanvideo": hunyuanvideo,
            "stepvideo": stepvideo, "hunyuanvideo15": hunyuanvideo15, "sd3": sd3,
            "ltxvideo": ltxvideo, "ltx2": ltx2, "opensora12": opensora12, "opensora13": opensora13}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in SECTIONS:
        p.add_argument(f"--{name}", metavar="PATH", help="a checkout; sections not given keep their recorded goldens")
    args = p.parse_args()
    given = {name: path for name, path in vars(args).items() if path is not None}
    if not given:
        p.error("give at least one checkout")
    doc = {}
    if os.path.exists(OUT):
        with open(OUT, encoding="utf-8") as f:
            doc = json.load(f)
    doc.update(torch=torch.__version__, numpy=np.__version__)
    doc.update({name: SECTIONS[name](path) for name, path in given.items()})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}: {', '.join(given)}")


if __name__ == "__main__":
    main()
