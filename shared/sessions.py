"""How both services open a model: the runtime ("engine") that runs it is registered once by name
and chosen from the settings in one place, and what an open session can do is declared by the
engine that opened it, never probed.

Engines (ENGINES, keyed by name; each runs an ONNX file and returns a Runner):

    onnxruntime-cpu    onnxruntime's CPU provider
    onnxruntime-cuda   its CUDA provider, the CPU one beside it (as rembg asks for it)
    onnxruntime-int8   a statically quantised graph (bgremoval/int8.py checks it before) on DEVICE's providers
    torch              the graph converted by onnx2torch, batched, fp16 on CUDA (bgremoval/torch_backend.py
                       registers it: it needs torch and onnx2torch, which only the builder installs)

Which engine runs a bg model is one table, ENGINE_ROUTES (BG_BACKEND x BG_CLOTH_PRECISION), with
DEVICE resolved to providers by shared/device.py; which text tower answers search queries is
another, TEXT_TOWER_ROUTES (SEARCH_TEXT_ENCODER x CLIP_TEXT_PRECISION); the towers themselves
(the ONNX export, open_clip on torch) register in TEXT_TOWERS (search/text_encoder.py). A value
no table offers is a ValueError naming its setting; a combination that cannot run is refused
with a message naming both. Session options and threads are here (OrtOptions, torch_threads).

Nothing is cached here: callers open their models once per process (bgremoval.models.load_models,
the search app's loader), as rembg's new_session leaves that to its caller too.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from shared.device import CPU_PROVIDER, CUDA_PROVIDER, check_device, onnx_providers, report_provider, torch_device

log = logging.getLogger("fashion.device")
T = TypeVar("T")

__all__ = [
    "ENGINES", "ENGINE_ROUTES", "TEXT_TOWERS", "TEXT_TOWER_ROUTES", "Declared", "Engine", "OnnxRunner",
    "OnnxRuntimeEngine", "OrtOptions", "Refused", "Registry", "Runner", "SettingsConflict", "Substituted",
    "choose", "choose_engine", "model_options", "query_options", "torch_device", "torch_threads",
]


# ------------------------------------------------------------------ registries and choices

class Registry(Generic[T]):
    """Entries registered once by name (`@REGISTRY.register("name")`), looked up by a setting's value."""

    def __init__(self, what: str, setting: str | None = None):
        self.what, self.setting = what, setting
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            known = self._entries.get(name)
            # The same definition again (a module reloaded) replaces itself; another one is a mistake.
            if known is not None and _qualified(known) != _qualified(entry):
                raise RuntimeError(f"{self.what} {name!r} is registered twice ({_qualified(known)}, {_qualified(entry)})")
            self._entries[name] = entry
            return entry
        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            said = f"{self.setting}={name!r}" if self.setting else repr(name)
            raise ValueError(f"{said}: no {self.what} of that name; registered: {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _qualified(entry: Any) -> str:  # entries are classes or functions
    return f"{entry.__module__}.{entry.__qualname__}"


class SettingsConflict(ValueError):
    """Settings that are each allowed but cannot run together."""


@dataclass(frozen=True)
class Refused:
    """A route table's entry for a combination that cannot run: the message says why and what to do."""

    message: str


@dataclass(frozen=True)
class Substituted:
    """A route table's entry for a setting that does not apply there: `value` runs instead, and
    `warning` is logged (never silently)."""

    value: Any
    warning: str


def choose(routes: Mapping[tuple[str, ...], Any], *, conflict: type[Exception] = SettingsConflict,
           logger: logging.Logger = log, **settings: str) -> Any:
    """The entry of `routes` for these settings, given by name in the order of the table's keys
    (`choose(ENGINE_ROUTES, BG_BACKEND="onnx", BG_CLOTH_PRECISION="int8")`). A value that no key
    has raises ValueError naming its setting and what is offered; a Refused entry raises
    `conflict` with its message; a Substituted one logs its warning and gives its value."""
    names, values = list(settings), tuple(settings.values())
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        offered = sorted({key[i] for key in routes})
        if value not in offered:
            raise ValueError(f"{name}={value!r}: choose one of {', '.join(offered)}")
    entry = routes.get(values)
    if entry is None:  # each value is offered, but not together
        said = " with ".join(f"{name}={value}" for name, value in settings.items())
        raise conflict(f"{said} is not possible")
    if isinstance(entry, Refused):
        raise conflict(entry.message)
    if isinstance(entry, Substituted):
        logger.warning("%s", entry.warning)
        return entry.value
    return entry


# (BG_BACKEND, precision of the model) -> the engine that runs it. "onnxruntime" is
# onnxruntime-cuda or onnxruntime-cpu, as DEVICE and the installed providers say.
ENGINE_ROUTES: dict[tuple[str, str], str] = {
    ("onnx", "fp32"): "onnxruntime",
    ("onnx", "int8"): "onnxruntime-int8",
    ("torch", "fp32"): "torch",
    # onnx2torch converts no QuantizeLinear/DequantizeLinear: with BG_BACKEND=torch the int8 cloth
    # model still runs on onnxruntime, beside torch's person and product mattes.
    ("torch", "int8"): "onnxruntime-int8",
}
ONNXRUNTIME_BY_PROVIDER = {CUDA_PROVIDER: "onnxruntime-cuda", CPU_PROVIDER: "onnxruntime-cpu"}

INT8_NEEDS_ONNX = ("CLIP_TEXT_PRECISION=int8 needs the ONNX text encoder: export one with "
                   "`python -m search.export --index INDEX`")
# (SEARCH_TEXT_ENCODER once `auto` is resolved, CLIP_TEXT_PRECISION) -> (text tower, its precision).
# The torch tower reads CLIP_TEXT_PRECISION itself (bf16 only where the CPU has it natively).
TEXT_TOWER_ROUTES: dict[tuple[str, str], Any] = {
    ("onnx", "auto"): ("onnx", "fp32"),
    ("onnx", "fp32"): ("onnx", "fp32"),
    ("onnx", "bf16"): Substituted(("onnx", "fp32"),
                                  "CLIP_TEXT_PRECISION=bf16 applies to the torch encoder; the ONNX encoder runs fp32"),
    ("onnx", "int8"): ("onnx", "int8"),
    ("torch", "auto"): ("torch", "auto"),
    ("torch", "fp32"): ("torch", "fp32"),
    ("torch", "bf16"): ("torch", "bf16"),
    ("torch", "int8"): Refused(INT8_NEEDS_ONNX),
}


# ------------------------------------------------------------------ what a session declares

@dataclass(frozen=True)
class Declared:
    """What an open model can do, stated by the engine that opened it."""

    engine: str  # its ENGINES name
    runtime: str  # what runs it: "onnxruntime", "torch-cuda-fp16"
    device: str  # where it runs: "cpu" | "cuda"
    precision: str  # "fp32" | "fp16" | "int8"
    batch: int | None = None  # images one call of the graph takes (rembg's graphs: 1); None: any number
    feeds_images: bool = False  # takes photos (run_images) and normalises them on its device
    names_runtime: bool = False  # its numbers differ from onnxruntime's: an identity names `runtime`


class Runner(ABC):
    """An open model: `runner(batch)` runs it, `declares` says what it is and can do."""

    declares: Declared

    @property
    def runtime(self) -> str:
        return self.declares.runtime

    @abstractmethod
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """[N, ...] float32 in, the model's first output (float32) out."""

    def run_images(self, images: list, spec, groups: list[list[int]] | None = None) -> np.ndarray:
        """Photos in, normalised on the runner's device: only runners that declare `feeds_images`."""
        raise TypeError(f"{self.declares.engine} does not take photos (it declares feeds_images=False)")


class OnnxRunner(Runner):
    """An onnxruntime session. A graph with a fixed batch of 1 (rembg's) runs a batch image by
    image; a graph with a free batch dimension gets it in one call."""

    def __init__(self, session, *, engine: str = "onnxruntime-cpu", precision: str = "fp32"):
        self.session = session
        first = session.get_inputs()[0]
        self.input_name = first.name
        batch_dim = first.shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        running = session.get_providers()
        self.declares = Declared(engine=engine, runtime="onnxruntime",
                                 device="cuda" if running and running[0] == CUDA_PROVIDER else "cpu",
                                 precision=precision, batch=self.fixed_batch)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch == 1 and len(batch) > 1:
            return np.concatenate([self(batch[i:i + 1]) for i in range(len(batch))])
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


# ------------------------------------------------------------------ session options and threads

@dataclass(frozen=True)
class OrtOptions:
    """onnxruntime session options: several gunicorn workers share the cores, so each session gets
    a fixed, small thread budget (one inter-op thread, sequential execution)."""

    threads: int
    cpu_arena: bool = True
    spinning: bool = True  # idle threads spin between runs (onnxruntime's default)
    prepacking: bool = True  # weights repacked into private memory at load (onnxruntime's default)

    def session_options(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not self.cpu_arena:
            options.enable_cpu_mem_arena = False
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not self.prepacking:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return options


def model_options(threads: int) -> OrtOptions:
    """The bg models' options (ORT_THREADS). No CPU memory arena: with it, each session keeps its
    largest activations for good (U^2-Net cloth at 768 px: 3.1 GB resident after two runs, vs
    ~0.5 GB without, at the same speed), so a worker's memory would be the peak of every model
    times every thread, forever."""
    return OrtOptions(threads, cpu_arena=False)


def query_options(threads: int, *, prepacking: bool = True) -> OrtOptions:
    """The search query towers' options (TORCH_THREADS): idle threads must not spin between queries."""
    return OrtOptions(max(1, threads), spinning=False, prepacking=prepacking)


def torch_threads(threads: int) -> None:
    """torch's intra-op threads for this process (TORCH_THREADS), at least one."""
    import torch

    torch.set_num_threads(max(1, threads))


# ------------------------------------------------------------------ engines

class Engine(ABC):
    """A runtime for ONNX files; registered in ENGINES, made for one DEVICE (auto | cpu | cuda)."""

    name: ClassVar[str]
    precision: ClassVar[str] = "fp32"  # which copy of a model's weights it runs

    def __init__(self, device: str = "cpu"):
        self.device = check_device(device)

    @abstractmethod
    def open(self, path: str, options: OrtOptions, label: str | None = None) -> Runner:
        """The model at `path`, ready to run; `label` names it in the log line saying where it runs."""


ENGINES: Registry[type[Engine]] = Registry("engine")


def register_engine(name: str) -> Callable[[type[Engine]], type[Engine]]:
    def add(cls: type[Engine]) -> type[Engine]:
        cls.name = name
        return ENGINES.register(name)(cls)
    return add


class OnnxRuntimeEngine(Engine):
    @abstractmethod
    def providers(self) -> list[str]:
        """onnxruntime execution providers, best first."""

    def open(self, path: str, options: OrtOptions, label: str | None = None) -> OnnxRunner:
        import onnxruntime as ort

        providers = self.providers()
        session = ort.InferenceSession(str(path), options.session_options(), providers=providers)
        if label is not None:
            report_provider(label, self.device, session.get_providers(), providers)
        return OnnxRunner(session, engine=self.name, precision=self.precision)


@register_engine("onnxruntime-cpu")
class OnnxRuntimeCPU(OnnxRuntimeEngine):
    def providers(self) -> list[str]:
        return [CPU_PROVIDER]


@register_engine("onnxruntime-cuda")
class OnnxRuntimeCUDA(OnnxRuntimeEngine):
    def providers(self) -> list[str]:
        return [CUDA_PROVIDER, CPU_PROVIDER]


@register_engine("onnxruntime-int8")
class OnnxRuntimeInt8(OnnxRuntimeEngine):
    precision = "int8"

    def providers(self) -> list[str]:
        return onnx_providers(self.device)


def choose_engine(*, device: str, backend: str = "onnx", precision: str = "fp32") -> Engine:
    """The engine for a bg model from DEVICE, BG_BACKEND and its precision (BG_CLOTH_PRECISION for
    the cloth model, fp32 for the others), as ENGINE_ROUTES says. DEVICE=cuda without onnxruntime's
    CUDA provider runs on the CPU, with the warning shared/device.py logs."""
    name = choose(ENGINE_ROUTES, BG_BACKEND=backend, BG_CLOTH_PRECISION=precision)
    device = check_device(device)
    if name == "onnxruntime":
        name = ONNXRUNTIME_BY_PROVIDER[onnx_providers(device)[0]]
    return ENGINES.get(name)(device)


# The search service's text towers: (clip settings, export folder, precision, **how) -> an encoder;
# search/text_encoder.py registers "onnx" and "torch".
TEXT_TOWERS: Registry[Callable[..., Any]] = Registry("text tower", "SEARCH_TEXT_ENCODER")
