"""FAKE, for tests only: mimics NVIDIA's documented TensorRT 10 Python API; every attribute not listed raises AttributeError.

What is listed: the part of the ``tensorrt`` Python API robopt calls that TensorRT 10.3 and 11.1
both document (``python/src/infer/pyCore.cpp``, ``python/src/parsers/pyOnnx.cpp`` and
``python/packaging/bindings_wheel/tensorrt/__init__.py`` at the v10.3.0 and v11.1 tags), with
the same keyword names. Names TensorRT 11 removed (``BuilderFlag.FP16`` / ``INT8``,
``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``, ``Builder.platform_has_fast_fp16``,
``IBuilderConfig.int8_calibrator``) are left out on purpose, so code that uses them fails here.
Objects are slotted: setting an attribute TensorRT does not have raises too.

``make()`` returns ``(module, record)``: install the module with
``monkeypatch.setitem(sys.modules, "tensorrt", module)``; ``record`` says what the code did
(flags, profile shapes, DLA core, timing cache). The parser reads the ONNX's I/O with the onnx
package; the "serialized engine" is JSON of that I/O plus the build settings. ``execute_async_v3``
fills every output with 0.5 at its bound address, which must be host memory from
``make_cudart()``, a fake of cuda-python's ``cuda.bindings.runtime`` built the same way.
"""  # noqa: E501

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
CACHE_MAGIC = b"FAKE-TRT-TIMING\n"
ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}


@dataclass
class Record:
    """What the code under test asked the fake TensorRT to do."""

    network_flags: list[int] = field(default_factory=list)
    parsed: list[str] = field(default_factory=list)
    flags_set: list[str] = field(default_factory=list)
    flags_cleared: list[str] = field(default_factory=list)
    memory_pool_limits: dict[str, int] = field(default_factory=dict)
    default_device_type: str | None = None
    dla_core: int | None = None
    profiles: list[dict[str, tuple[tuple[int, ...], ...]]] = field(default_factory=list)
    timing_cache_created_from: list[bytes] = field(default_factory=list)
    timing_cache_set: list[bool] = field(default_factory=list)
    timing_cache_serialized: int = 0
    builds: int = 0
    deserialized: int = 0
    input_shapes: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    addresses: dict[str, int] = field(default_factory=dict)
    executions: int = 0


def _strict_module(name: str, namespace: dict[str, Any], what: str) -> types.ModuleType:
    mod = types.ModuleType(name, namespace.pop("__doc__", None))
    mod.__dict__.update(namespace)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(attr: str) -> Any:
        raise AttributeError(f"{name}.{attr} is not part of the documented {what} this fake mimics")

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


def make(
    version: str = "10.3.0",
    *,
    dla_cores: int = 2,
    parse_errors: list[tuple[str, str]] | None = None,
    build_fails: bool = False,
) -> tuple[types.ModuleType, Record]:
    """A fresh fake ``tensorrt`` module and the record of what was done with it."""
    rec = Record()
    major = int(version.split(".")[0])

    class DataType(enum.IntEnum):
        FLOAT = 0
        HALF = 1
        INT8 = 2
        INT32 = 3
        BOOL = 4
        UINT8 = 5
        FP8 = 6
        BF16 = 7
        INT64 = 8
        INT4 = 9

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class BuilderFlag(enum.IntEnum):  # FP16, INT8 omitted: invalid when strongly typed, gone in 11
        GPU_FALLBACK = 3
        TF32 = 6
        SPARSE_WEIGHTS = 7

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class DeviceType(enum.IntEnum):
        GPU = 0
        DLA = 1

    # kSTRONGLY_TYPED is 1 in 10.x (after EXPLICIT_BATCH) and 0 in 11.x: code must use the name.
    NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0 if major >= 11 else 1}
    )

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

        def __init__(self) -> None:
            pass

        def log(self, severity: Any, msg: str) -> None:
            # Abstract in TensorRT's API: a logger subclass must implement it.
            raise NotImplementedError

    class Logger(ILogger):
        __slots__ = ("min_severity",)

        def __init__(self, min_severity: Any = ILogger.WARNING) -> None:
            self.min_severity = min_severity

        def log(self, severity: Any, msg: str) -> None:
            pass

    def _need_logger(logger: Any) -> None:
        if not isinstance(logger, ILogger):
            raise TypeError("logger must be a tensorrt.ILogger")

    class IHostMemory(bytes):
        __slots__ = ()

        @property
        def nbytes(self) -> int:
            return len(self)

    class INetworkDefinition:
        __slots__ = ("_flags", "_io")

        def __init__(self, flags: int) -> None:
            self._flags = flags
            self._io: list[dict[str, Any]] = []

    class ParserError:
        __slots__ = ("_desc", "_name")

        def __init__(self, name: str, desc: str) -> None:
            self._name, self._desc = name, desc

        def code(self) -> int:
            return 1

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return 0

        def node_name(self) -> str:
            return self._name

    class OnnxParser:
        __slots__ = ("_errors", "_network")

        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            _need_logger(logger)
            self._network = network
            self._errors: list[ParserError] = []

        def parse_from_file(self, model: str) -> bool:
            import onnx

            rec.parsed.append(model)
            if parse_errors:
                self._errors = [ParserError(n, d) for n, d in parse_errors]
                return False
            m = onnx.load(model, load_external_data=False)
            io = []
            for mode, values in (("INPUT", m.graph.input), ("OUTPUT", m.graph.output)):
                inits = {t.name for t in m.graph.initializer}
                for v in values:
                    if v.name in inits:
                        continue
                    tt = v.type.tensor_type
                    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
                    io.append(
                        {
                            "name": v.name,
                            "mode": mode,
                            "dtype": ONNX_TO_TRT[tt.elem_type],
                            "shape": shape,
                        }
                    )
            self._network._io = io
            return True

        def parse(self, model: bytes, path: str | None = None) -> bool:
            # Deliberately loud: the backend must use parse_from_file (external weights).
            raise NotImplementedError("the fake parses files only (parse_from_file)")

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors = []

    class IOptimizationProfile:
        __slots__ = ("_shapes",)

        def __init__(self) -> None:
            self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
            if not (len(lo) == len(mid) == len(hi)) or any(
                not a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)
            ):
                raise ValueError(f"invalid profile shapes for {input}: {lo} {mid} {hi}")
            self._shapes[input] = (lo, mid, hi)

    class ITimingCache:
        __slots__ = ("_entries",)

        def __init__(self, entries: int) -> None:
            self._entries = entries

        def serialize(self) -> IHostMemory:
            rec.timing_cache_serialized += 1
            body = json.dumps({"version": version, "entries": self._entries}).encode()
            return IHostMemory(CACHE_MAGIC + body)

        def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
            self._entries += input_cache._entries
            return True

        def reset(self) -> bool:
            self._entries = 0
            return True

    class IBuilderConfig:
        __slots__ = ("_cache", "_device", "_dla", "_flags", "_profiles")

        def __init__(self) -> None:
            self._flags = {BuilderFlag.TF32}  # TF32 is on by default
            self._device = DeviceType.GPU
            self._dla = -1
            self._profiles: list[IOptimizationProfile] = []
            self._cache: ITimingCache | None = None

        def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
            rec.memory_pool_limits[MemoryPoolType(pool).name] = int(pool_size)

        def set_flag(self, flag: BuilderFlag) -> None:
            rec.flags_set.append(BuilderFlag(flag).name)
            self._flags.add(BuilderFlag(flag))

        def clear_flag(self, flag: BuilderFlag) -> None:
            rec.flags_cleared.append(BuilderFlag(flag).name)
            self._flags.discard(BuilderFlag(flag))

        def get_flag(self, flag: BuilderFlag) -> bool:
            return BuilderFlag(flag) in self._flags

        @property
        def default_device_type(self) -> DeviceType:
            return self._device

        @default_device_type.setter
        def default_device_type(self, value: DeviceType) -> None:
            self._device = DeviceType(value)
            rec.default_device_type = self._device.name

        @property
        def DLA_core(self) -> int:
            return self._dla

        @DLA_core.setter
        def DLA_core(self, value: int) -> None:
            self._dla = int(value)
            rec.dla_core = self._dla

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self._profiles.append(profile)
            rec.profiles.append(dict(profile._shapes))
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            data = bytes(serialized_timing_cache)
            rec.timing_cache_created_from.append(data)
            if not data:
                return ITimingCache(0)
            if not data.startswith(CACHE_MAGIC):
                raise RuntimeError("corrupt timing cache")
            return ITimingCache(json.loads(data[len(CACHE_MAGIC) :])["entries"])

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            rec.timing_cache_set.append(bool(ignore_mismatch))
            self._cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._cache

    class Builder:
        __slots__ = ("_logger",)

        def __init__(self, logger: ILogger) -> None:
            _need_logger(logger)
            self._logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            rec.network_flags.append(int(flags))
            return INetworkDefinition(int(flags))

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        @property
        def num_DLA_cores(self) -> int:
            return dla_cores

        def build_serialized_network(
            self, network: INetworkDefinition, config: IBuilderConfig
        ) -> IHostMemory | None:
            rec.builds += 1
            if build_fails:
                self._logger.log(ILogger.ERROR, "fake builder: no implementation for layer x")
                return None
            if config._cache is not None:
                config._cache._entries += 1
            strongly = bool(
                network._flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            )
            body = {
                "io": network._io,
                "strongly_typed": strongly,
                "flags": sorted(f.name for f in config._flags),
                "device": config._device.name,
                "dla_core": config._dla,
                "profiles": [p._shapes for p in config._profiles],
            }
            return IHostMemory(ENGINE_MAGIC + json.dumps(body).encode())

    class IExecutionContext:
        __slots__ = ("_addresses", "_engine", "_shapes")

        def __init__(self, engine: ICudaEngine) -> None:
            self._engine = engine
            self._shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            io = self._engine._io[name]
            shape = tuple(int(d) for d in shape)
            rec.input_shapes.append((name, shape))
            if io["mode"] != "INPUT" or len(shape) != len(io["shape"]):
                return False
            if any(e not in (-1, s) for e, s in zip(io["shape"], shape, strict=True)):
                return False
            self._shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            io = self._engine._io[name]
            if io["mode"] == "INPUT":
                return self._shapes.get(name, tuple(io["shape"]))
            batch = next(iter(self._shapes.values()), (1,))[0]
            return tuple(batch if d == -1 else d for d in io["shape"])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            self._addresses[name] = int(memory)
            rec.addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: Any) -> bool:
            rec.executions += 1
            for name, io in self._engine._io.items():
                if io["mode"] != "OUTPUT":
                    continue
                dt = nptype(DataType[io["dtype"]])
                shape = self.get_tensor_shape(name)
                n = int(np.prod(shape)) * np.dtype(dt).itemsize
                buf = (ctypes.c_char * n).from_address(self._addresses[name])
                np.frombuffer(buf, dtype=dt)[:] = 0.5
            return True

    class ICudaEngine:
        __slots__ = ("_io", "_order")

        def __init__(self, body: dict[str, Any]) -> None:
            self._order = [io["name"] for io in body["io"]]
            self._io = {io["name"]: io for io in body["io"]}

        @property
        def num_io_tensors(self) -> int:
            return len(self._order)

        def get_tensor_name(self, index: int) -> str:
            return self._order[index]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode[self._io[name]["mode"]]

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType[self._io[name]["dtype"]]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self._io[name]["shape"])

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext(self)

    class Runtime:
        __slots__ = ("_logger",)

        def __init__(self, logger: ILogger) -> None:
            _need_logger(logger)
            self._logger = logger

        def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
            data = bytes(serialized_engine)
            rec.deserialized += 1
            if not data.startswith(ENGINE_MAGIC):
                self._logger.log(ILogger.ERROR, "fake runtime: not a serialized engine")
                return None
            return ICudaEngine(json.loads(data[len(ENGINE_MAGIC) :]))

    _NP = {
        DataType.FLOAT: np.float32,
        DataType.HALF: np.float16,
        DataType.INT8: np.int8,
        DataType.INT32: np.int32,
        DataType.INT64: np.int64,
        DataType.BOOL: np.bool_,
        DataType.UINT8: np.uint8,
    }

    def nptype(trt_type: DataType) -> type:
        """The numpy type of a TensorRT DataType (TypeError for fp8/bf16, as in TensorRT)."""
        try:
            return _NP[trt_type]
        except KeyError:
            raise TypeError(
                "Could not resolve TensorRT datatype to an equivalent numpy datatype."
            ) from None

    namespace = {
        "__doc__": f"FAKE tensorrt {version} (tests only)",
        "__version__": version,
        "Logger": Logger,
        "ILogger": ILogger,
        "Builder": Builder,
        "OnnxParser": OnnxParser,
        "Runtime": Runtime,
        "IBuilderConfig": IBuilderConfig,
        "IOptimizationProfile": IOptimizationProfile,
        "ITimingCache": ITimingCache,
        "ICudaEngine": ICudaEngine,
        "IExecutionContext": IExecutionContext,
        "IHostMemory": IHostMemory,
        "INetworkDefinition": INetworkDefinition,
        "DataType": DataType,
        "TensorIOMode": TensorIOMode,
        "BuilderFlag": BuilderFlag,
        "MemoryPoolType": MemoryPoolType,
        "DeviceType": DeviceType,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
        "nptype": nptype,
    }
    return _strict_module("tensorrt", namespace, f"TensorRT {version} Python API"), rec


@dataclass
class CudaRecord:
    mallocs: list[int] = field(default_factory=list)
    frees: list[int] = field(default_factory=list)
    copies: list[tuple[str, int]] = field(default_factory=list)
    streams: int = 0
    syncs: int = 0


def make_cudart(
    name: bytes = b"Orin", compute_capability: tuple[int, int] = (8, 7), devices: int = 1
) -> tuple[types.ModuleType, CudaRecord]:
    """A fake ``cuda.bindings.runtime``: calls return ``(cudaError_t, *values)``; "device"
    memory is host memory, so the fake engine can write outputs to it."""
    rec = CudaRecord()
    buffers: dict[int, Any] = {}

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorNoDevice = 100

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStream_t:
        __slots__ = ("handle",)

        def __init__(self, handle: int) -> None:
            self.handle = handle

        def __int__(self) -> int:
            return self.handle

    ok = cudaError_t.cudaSuccess

    def cudaGetDeviceCount() -> tuple[Any, int]:
        return (ok, devices) if devices else (cudaError_t.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(device: int) -> tuple[Any, Any]:
        major, minor = compute_capability
        return ok, types.SimpleNamespace(name=name, major=major, minor=minor)

    def cudaMalloc(size: int) -> tuple[Any, int]:
        buf = ctypes.create_string_buffer(int(size))
        ptr = ctypes.addressof(buf)
        buffers[ptr] = buf
        rec.mallocs.append(int(size))
        return ok, ptr

    def cudaFree(devPtr: int) -> tuple[Any]:
        if buffers.pop(int(devPtr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        rec.frees.append(int(devPtr))
        return (ok,)

    def cudaMemcpyAsync(dst: int, src: int, count: int, kind: Any, stream: Any) -> tuple[Any]:
        device = int(dst) if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else int(src)
        if device not in buffers or not isinstance(stream, cudaStream_t):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(int(dst), int(src), int(count))
        rec.copies.append((cudaMemcpyKind(kind).name, int(count)))
        return (ok,)

    def cudaStreamCreate() -> tuple[Any, Any]:
        rec.streams += 1
        return ok, cudaStream_t(rec.streams)

    def cudaStreamSynchronize(stream: Any) -> tuple[Any]:
        rec.syncs += 1
        return (ok,)

    def cudaStreamDestroy(stream: Any) -> tuple[Any]:
        return (ok,)

    namespace = {
        "__doc__": "FAKE cuda.bindings.runtime (tests only)",
        "cudaError_t": cudaError_t,
        "cudaMemcpyKind": cudaMemcpyKind,
        "cudaStream_t": cudaStream_t,
        "cudaGetDeviceCount": cudaGetDeviceCount,
        "cudaGetDeviceProperties": cudaGetDeviceProperties,
        "cudaMalloc": cudaMalloc,
        "cudaFree": cudaFree,
        "cudaMemcpyAsync": cudaMemcpyAsync,
        "cudaStreamCreate": cudaStreamCreate,
        "cudaStreamSynchronize": cudaStreamSynchronize,
        "cudaStreamDestroy": cudaStreamDestroy,
    }
    return _strict_module("cuda.bindings.runtime", namespace, "cuda-python runtime API"), rec
