"""Read ExecuTorch ``.pte`` programs and their XNNPACK delegates into plain Python/NumPy data.

``read_pte(path_or_bytes)`` returns a frozen :class:`PteProgram`: the execution plans (values,
inputs/outputs, the instruction chain of delegate calls and portable-kernel calls by operator
name) and, for every ``XnnpackBackend`` delegate, the decoded XNNPACK graph (:class:`XnnGraph`):
its tensor values with dtype, dims, flags, quantization parameters and constant data as NumPy
arrays, and its nodes with all their fields. Nothing here imports torch or executorch, and no
``flatbuffers`` package is needed: the ~80-line reader below (``_Table``) decodes the two
flatbuffer schemas directly, because qexact must read a file without heavy dependencies and
the flatbuffer wire format is small and stable. Field slots below follow the schema files'
field order; a union field takes two slots (its ``_type`` byte, then the table).

File layout (executorch 1.5.1; names are files of the executorch source tree)
------------------------------------------------------------------------------
``.pte`` file (``exir/_serialize/_program.py``, ``schema/extended_header.{h,cpp}``)::

    0   u32   root table offset of the Program flatbuffer (the whole file *is* the flatbuffer)
    4   4s    file identifier "ET12"                      (``schema/program.fbs``)
    8   4s    extended header magic "eh00"
    12  u32   extended header length (32; 24 in older files, then no segment_data_size)
    16  u64   program_size: bytes of flatbuffer data
    24  u64   segment_base_offset: file offset where the segments start
    32  u64   segment_data_size
    ..        padding, then the Program flatbuffer tables
    segment_base_offset + Program.segments[i].offset : segment i (``DataSegment``), each
          padded for mmap alignment; ``size`` gives the valid bytes.

Program flatbuffer (``schema/program.fbs`` + ``schema/scalar_type.fbs``, namespace
``executorch_flatbuffer``): ``Program.execution_plan[*]`` (``ExecutionPlan``: name, values
(``EValue`` union of Null/Int/Bool/Double/Tensor/String/IntList/DoubleList/BoolList/
TensorList/OptionalTensorList), inputs, outputs, chains[0].instructions (``KernelCall`` /
``DelegateCall`` / ``MoveCall`` / ``JumpFalseCall`` / ``FreeCall``), operators, delegates).
Constant tensors of portable kernels: ``Tensor.data_buffer_idx`` indexes
``Program.constant_segment.offsets`` inside segment ``constant_segment.segment_index`` (or the
deprecated inline ``Program.constant_buffer``). ``BackendDelegate.processed`` points either to
``Program.backend_delegate_data[i]`` (INLINE) or to ``Program.segments[i]`` (SEGMENT, the
default since ``_program.py::_extract_delegate_segments``). ``Program.named_data`` maps string
keys to segments: this is where the XNNPACK delegate stores its weights (``NamedDataStore``,
``exir/_serialize/_named_data_store.py``); identical blobs are stored once, shared by delegates.

XNNPACK delegate payload (``backends/xnnpack/serialization/xnnpack_graph_serialize.py``,
``XNNHeader``; its C++ reader ``backends/xnnpack/runtime/XNNHeader.h`` is not in the wheel)::

    0   4s    zeros (so that the magic sits where a flatbuffer's file identifier would)
    4   4s    "XH00"
    8   u16   header length (30)
    10  u32   flatbuffer offset (30 padded to 16 = 32)
    14  u32   flatbuffer size
    18  u32   constant data offset (flatbuffer end padded to 16)
    22  u64   constant data size
    then the XNNGraph flatbuffer (identifier "XN01"; older "XN00", which a payload without
    header may also start with directly), then inline constant data.

XNNGraph flatbuffer (``backends/xnnpack/serialization/schema.fbs``, namespace ``fb_xnnpack``;
``runtime_schema.fbs`` is the XN00 variant with the deprecated inline ``constant_buffer``):
``xvalues`` (``XNNTensorValue`` or ``XNNQuantizedTensorValue`` = tensor value + ``XNNQuantParams``
union), ``xnodes`` (``XNode``: ``XNodeUnion`` + debug_handle + ``OutputMinMax``), input/output
ids, and ``constant_data[i]`` (``ConstantDataOffset``: a ``named_key`` into
``Program.named_data``, or an offset relative to the header's constant data offset; index 0 is
reserved for "not constant"). Per-channel scales are not inline in current files:
``PerChannelQuant.scale_buffer_idx`` is a constant_data index of float32 scales (bf16 for
``PerChannelGroupQuant``; ``backends/xnnpack/operators/node_visitor.py::get_quant_params``).

Layouts of constants (``node_visitor.py::define_tensor``; verified in the qexact tests): conv
filters are stored channels-last, i.e. OIHW -> **OHWI**, and dims list the stored order
(O, H, W, I). Depthwise filters (O, 1, kH, kW) are first reshaped to (1, O, kH, kW), then
channels-last, so stored as **(1, kH, kW, O)**. Linear weights stay (out, in). The int32 bias is
quantized in Python at lowering time with scale ``f32(w_scale[c] * f32(in_scale))`` (qcint32).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field, fields
from typing import Any, Union

import numpy as np

from ..errors import FormatError, UnsupportedError

__all__ = [
    "read_pte", "PteProgram", "PtePlan", "PteTensor", "PteTensorList", "PteOperator",
    "PteKernelCall", "PteDelegateCall", "PteMoveCall", "PteJumpFalseCall", "PteFreeCall",
    "PteDelegate", "XnnGraph", "XnnTensor", "XnnPerTensorQuant", "XnnPerChannelQuant",
    "XnnPerChannelGroupQuant", "XnnPerTokenDynamicQuant", "XnnNode", "XNN_INVALID_VALUE_ID",
    "XNN_VALUE_FLAG_EXTERNAL_INPUT", "XNN_VALUE_FLAG_EXTERNAL_OUTPUT", "XNNPACK_BACKEND_ID",
    "XNN_FLAG_TRANSPOSE_WEIGHTS", "XNN_FLAG_TENSORFLOW_LEGACY_MODE", "XNN_FLAG_ALIGN_CORNERS",
    "XNN_FLAG_KEEP_DIMS",
]

PTE_FILE_IDENTIFIER = b"ET12"
XNNPACK_BACKEND_ID = "XnnpackBackend"
# Constants of xnnpack.h, as mirrored in backends/xnnpack/utils/xnnpack_constants.py.
XNN_INVALID_VALUE_ID = 0xFFFFFFFF
XNN_VALUE_FLAG_EXTERNAL_INPUT = 0x1
XNN_VALUE_FLAG_EXTERNAL_OUTPUT = 0x2
XNN_FLAG_TRANSPOSE_WEIGHTS = 0x1       # XNNFullyConnected: filter is (in, out)
XNN_FLAG_TENSORFLOW_LEGACY_MODE = 0x4  # XNNStaticResizeBilinear2D
XNN_FLAG_ALIGN_CORNERS = 0x8           # XNNStaticResizeBilinear2D
XNN_FLAG_KEEP_DIMS = 0x40              # pooling / global average pooling keep rank 4
_UINT64_MAX = 0xFFFFFFFFFFFFFFFF


# --- A minimal flatbuffer reader ------------------------------------------------------------


class _Table:
    """A flatbuffer table at ``pos`` in ``buf``; fields are addressed by slot number."""

    __slots__ = ("buf", "pos", "_vt", "_vtlen")

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self._vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self._vtlen = struct.unpack_from("<H", buf, self._vt)[0]

    @classmethod
    def root(cls, buf: bytes, start: int = 0) -> "_Table":
        return cls(buf, start + struct.unpack_from("<I", buf, start)[0])

    def _field(self, slot: int) -> int:
        entry = 4 + 2 * slot
        if entry >= self._vtlen:
            return 0
        off = struct.unpack_from("<H", self.buf, self._vt + entry)[0]
        return self.pos + off if off else 0

    def _deref(self, slot: int) -> int:
        p = self._field(slot)
        return p + struct.unpack_from("<I", self.buf, p)[0] if p else 0

    def scalar(self, slot: int, fmt: str, default: Any = 0) -> Any:
        p = self._field(slot)
        return struct.unpack_from("<" + fmt, self.buf, p)[0] if p else default

    def table(self, slot: int) -> "_Table | None":
        p = self._deref(slot)
        return _Table(self.buf, p) if p else None

    def _vector(self, slot: int) -> tuple[int, int]:
        p = self._deref(slot)
        if not p:
            return 0, 0
        n = struct.unpack_from("<I", self.buf, p)[0]
        return p + 4, n

    def string(self, slot: int) -> str | None:
        start, n = self._vector(slot)
        if not start:
            return None
        if start + n > len(self.buf):
            raise FormatError(f"flatbuffer string at {start} runs past the end of the buffer")
        return self.buf[start:start + n].decode("utf-8")

    def array(self, slot: int, dtype: str) -> np.ndarray:
        """A vector of scalars as a read-only NumPy array (empty if absent)."""
        start, n = self._vector(slot)
        a = np.frombuffer(self.buf, dtype=np.dtype(dtype), count=n, offset=start) \
            if n else np.zeros(0, dtype)
        a = a.copy()
        a.flags.writeable = False
        return a

    def ints(self, slot: int, dtype: str = "<u4") -> tuple[int, ...]:
        return tuple(int(v) for v in self.array(slot, dtype))

    def blob(self, slot: int) -> bytes:
        start, n = self._vector(slot)
        if start + n > len(self.buf):
            raise FormatError(f"flatbuffer byte vector at {start} runs past the end of the buffer")
        return bytes(self.buf[start:start + n])

    def tables(self, slot: int) -> list["_Table"]:
        start, n = self._vector(slot)
        out = []
        for i in range(n):
            p = start + 4 * i
            out.append(_Table(self.buf, p + struct.unpack_from("<I", self.buf, p)[0]))
        return out

    def union(self, type_slot: int) -> tuple[int, "_Table | None"]:
        """(type index, table) of the union whose ``_type`` byte is ``type_slot``."""
        return self.scalar(type_slot, "B"), self.table(type_slot + 1)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --- Program level (schema/program.fbs) -----------------------------------------------------

# ScalarType (schema/scalar_type.fbs) -> (name, NumPy dtype). BFLOAT16 is returned as raw
# uint16 bit patterns; types NumPy lacks as raw uint8 bytes.
_SCALAR_TYPES = {
    0: ("BYTE", "u1"), 1: ("CHAR", "i1"), 2: ("SHORT", "<i2"), 3: ("INT", "<i4"),
    4: ("LONG", "<i8"), 5: ("HALF", "<f2"), 6: ("FLOAT", "<f4"), 7: ("DOUBLE", "<f8"),
    11: ("BOOL", "?"), 12: ("QINT8", "i1"), 13: ("QUINT8", "u1"), 14: ("QINT32", "<i4"),
    15: ("BFLOAT16", "<u2"), 16: ("QUINT4X2", "u1"), 17: ("QUINT2X4", "u1"), 22: ("BITS16", "<u2"),
    23: ("FLOAT8E5M2", "u1"), 24: ("FLOAT8E4M3FN", "u1"), 25: ("FLOAT8E5M2FNUZ", "u1"),
    26: ("FLOAT8E4M3FNUZ", "u1"), 27: ("UINT16", "<u2"), 28: ("UINT32", "<u4"),
    29: ("UINT64", "<u8"),
}
_DYNAMISM = {0: "static", 1: "dynamic_bound", 2: "dynamic_unbound"}


@dataclass(frozen=True, eq=False)
class PteTensor:
    """An ExecuTorch ``Tensor`` value of an execution plan.

    ``scalar_type`` is the schema's enum name (``"FLOAT"``, ``"CHAR"``, ...); ``sizes`` the
    (upper-bound) shape; ``dim_order`` the memory order of the dims (outer to inner).
    ``data`` is the constant's content (a read-only array in ``sizes``), ``None`` for
    activations, inputs and mutable buffers. ``memory_id``/``memory_offset`` give the planned
    allocation of a non-constant tensor (``None`` if planned at runtime, e.g. inputs).
    """

    scalar_type: str
    sizes: tuple[int, ...]
    dim_order: tuple[int, ...]
    data_buffer_idx: int
    shape_dynamism: str
    memory_id: int | None
    memory_offset: int | None
    name: str | None = None
    data: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    def __repr__(self) -> str:
        if self.is_constant:
            kind = "const"
        elif self.memory_id is not None:
            kind = f"mem{self.memory_id}+{self.memory_offset}"
        else:
            kind = "runtime"
        return f"PteTensor({self.scalar_type}{list(self.sizes)}, {kind})"


@dataclass(frozen=True)
class PteTensorList:
    """A ``TensorList`` (or ``OptionalTensorList``, whose items may be -1 for None): indices
    of values of the same plan."""

    items: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class PteOperator:
    """A portable/optimized kernel operator, e.g. ``name="aten::cumsum", overload="out"``."""

    name: str
    overload: str

    @property
    def qualified_name(self) -> str:
        return f"{self.name}.{self.overload}" if self.overload else self.name


@dataclass(frozen=True)
class PteKernelCall:
    """Call of a non-delegated kernel: ``op`` (``"aten::cumsum.out"``), value indices ``args``
    (inputs, then the out arguments)."""

    op: str
    op_index: int
    args: tuple[int, ...]


@dataclass(frozen=True)
class PteDelegateCall:
    """Call of ``plan.delegates[delegate_index]``: value indices ``args``, the delegate's inputs
    then its outputs. For XNNPACK, ``args[k]`` is the value whose ``external_id`` is ``k``
    (``XnnGraph.external_values``)."""

    delegate_index: int
    args: tuple[int, ...]


@dataclass(frozen=True)
class PteMoveCall:
    move_from: int
    move_to: int


@dataclass(frozen=True)
class PteJumpFalseCall:
    cond_value_index: int
    destination_instruction: int


@dataclass(frozen=True)
class PteFreeCall:
    value_index: int


PteInstruction = Union[PteKernelCall, PteDelegateCall, PteMoveCall, PteJumpFalseCall, PteFreeCall]


@dataclass(frozen=True, eq=False)
class PteDelegate:
    """A lowered backend module. ``payload`` is the blob handed to the backend;
    ``location``/``index`` say where it was (``"inline"`` -> ``backend_delegate_data``,
    ``"segment"`` -> ``Program.segments``). ``xnnpack`` is the decoded graph for
    ``XnnpackBackend``, ``None`` for other backends (read with ``allow_unknown_backends``)."""

    backend_id: str
    compile_specs: tuple[tuple[str, bytes], ...]
    location: str
    index: int
    payload: bytes = field(repr=False)
    xnnpack: "XnnGraph | None" = field(default=None, repr=False)

    def __repr__(self) -> str:
        extra = f", {len(self.xnnpack.nodes)} XNN nodes" if self.xnnpack is not None else ""
        return (f"PteDelegate({self.backend_id!r}, {self.location}[{self.index}], "
                f"{len(self.payload)} bytes{extra})")


@dataclass(frozen=True, eq=False)
class PtePlan:
    """One ``ExecutionPlan`` (a method, usually ``"forward"``).

    ``values[i]`` is the EValue ``i``: ``None``, ``int``, ``bool``, ``float``, ``str``, a tuple
    (IntList/DoubleList/BoolList), :class:`PteTensorList` or :class:`PteTensor`. ``inputs`` and
    ``outputs`` are value indices; ``instructions`` is the (single) chain in execution order.
    """

    name: str
    values: tuple[Any, ...] = field(repr=False)
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    instructions: tuple[PteInstruction, ...] = field(repr=False)
    operators: tuple[PteOperator, ...] = field(repr=False)
    delegates: tuple[PteDelegate, ...]
    non_const_buffer_sizes: tuple[int, ...] = field(repr=False)

    def describe(self) -> str:
        """One line per instruction, then one block per XNNPACK delegate."""
        lines = [f"plan {self.name!r}: inputs {list(self.inputs)} "
                 f"{[_short(self.values[i]) for i in self.inputs]} -> outputs "
                 f"{list(self.outputs)} {[_short(self.values[i]) for i in self.outputs]}"]
        for k, ins in enumerate(self.instructions):
            if isinstance(ins, PteDelegateCall):
                d = self.delegates[ins.delegate_index]
                lines.append(f"  [{k}] delegate #{ins.delegate_index} {d.backend_id} "
                             f"args {list(ins.args)}")
            elif isinstance(ins, PteKernelCall):
                lines.append(f"  [{k}] kernel {ins.op} args "
                             + ", ".join(f"{a}:{_short(self.values[a])}" for a in ins.args))
            else:
                lines.append(f"  [{k}] {ins!r}")
        for i, d in enumerate(self.delegates):
            if d.xnnpack is not None:
                lines.append(f"delegate #{i} {d.backend_id}:")
                lines.extend("  " + ln for ln in d.xnnpack.describe().splitlines())
        return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, PteTensor):
        return f"{v.scalar_type}{list(v.sizes)}" + ("=const" if v.is_constant else "")
    return repr(v)


@dataclass(frozen=True, eq=False)
class PteProgram:
    """A decoded ``.pte`` file. ``segments`` are the (offset, size) of the data segments
    relative to ``segment_base_offset``; ``named_data`` maps keys to segment indices."""

    version: int
    plans: tuple[PtePlan, ...]
    segment_base_offset: int
    segments: tuple[tuple[int, int], ...] = field(repr=False)
    named_data: dict[str, int] = field(repr=False)

    def plan(self, name: str = "forward") -> PtePlan:
        for p in self.plans:
            if p.name == name:
                return p
        raise FormatError(f"the .pte program has no execution plan {name!r}; "
                          f"it has {[p.name for p in self.plans]}")

    @property
    def forward(self) -> PtePlan:
        return self.plan("forward")

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.plans)


# --- XNNPACK level (backends/xnnpack/serialization/schema.fbs) ------------------------------

# XNNDatatype -> (name without "xnn_datatype_", NumPy dtype of the stored data). Packed 4-bit
# types stay raw uint8 bytes, bf16 raw uint16 bit patterns.
_XNN_DATATYPES = {
    0: ("invalid", None), 1: ("fp32", "<f4"), 2: ("fp16", "<f2"), 3: ("qint8", "i1"),
    4: ("quint8", "u1"), 5: ("qint32", "<i4"), 6: ("qcint8", "i1"), 7: ("qcint32", "<i4"),
    8: ("qcint4", "u1"), 9: ("qdint8", "i1"), 10: ("qbint4", "u1"), 11: ("qpint8", "i1"),
    12: ("int32", "<i4"), 13: ("pfp32", "<f4"), 14: ("bf16", "<u2"),
}


@dataclass(frozen=True)
class XnnPerTensorQuant:
    """``PerTensorQuant``: ``scale`` is the stored float32 as an exact Python float."""

    scale: float
    zero_point: int


@dataclass(frozen=True, eq=False)
class XnnPerChannelQuant:
    """``PerChannelQuant``: float32 ``scales`` along dim ``channel_dim`` of the stored dims."""

    scales: np.ndarray
    channel_dim: int


@dataclass(frozen=True, eq=False)
class XnnPerChannelGroupQuant:
    """``PerChannelGroupQuant`` (blockwise int4): ``scales`` decoded from bf16 to float32."""

    scales: np.ndarray
    channel_dim: int
    group_size: int


@dataclass(frozen=True)
class XnnPerTokenDynamicQuant:
    """``PerTokenDynamicQuant``: quantized at runtime, per row of the last dims."""

    num_nonbatch_dims: int


XnnQuant = Union[XnnPerTensorQuant, XnnPerChannelQuant, XnnPerChannelGroupQuant,
                 XnnPerTokenDynamicQuant, None]


@dataclass(frozen=True, eq=False)
class XnnTensor:
    """An ``XNNTensorValue`` (with its quantization if it was an ``XNNQuantizedTensorValue``).

    ``id`` is the value id nodes refer to (``id_out``); ``datatype`` e.g. ``"qint8"``,
    ``"qcint8"``, ``"qcint32"``, ``"fp32"``; ``dims`` as stored (NHWC for activations after a
    transpose, OHWI for conv filters). ``data`` is the constant (read-only, in ``dims``) or
    ``None``. ``dq_datatype`` is the runtime-quantization target (``"invalid"`` if none).
    """

    id: int
    datatype: str
    dims: tuple[int, ...]
    flags: int
    external_id: int
    constant_buffer_idx: int
    quant: XnnQuant = None
    dq_datatype: str = "invalid"
    data: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_external_input(self) -> bool:
        return bool(self.flags & XNN_VALUE_FLAG_EXTERNAL_INPUT)

    @property
    def is_external_output(self) -> bool:
        return bool(self.flags & XNN_VALUE_FLAG_EXTERNAL_OUTPUT)

    @property
    def is_constant(self) -> bool:
        return self.constant_buffer_idx != 0

    def __repr__(self) -> str:
        return f"XnnTensor({self.describe()})"

    def describe(self) -> str:
        s = f"v{self.id} {self.datatype}{list(self.dims)}"
        q = self.quant
        if isinstance(q, XnnPerTensorQuant):
            s += f" s={q.scale!r} zp={q.zero_point}"
        elif isinstance(q, (XnnPerChannelQuant, XnnPerChannelGroupQuant)):
            s += f" per-channel[{len(q.scales)}] dim={q.channel_dim}"
            if isinstance(q, XnnPerChannelGroupQuant):
                s += f" group={q.group_size}"
        elif isinstance(q, XnnPerTokenDynamicQuant):
            s += f" dynamic(nonbatch={q.num_nonbatch_dims})"
        if self.is_constant:
            s += f" const#{self.constant_buffer_idx}"
        if self.is_external_input:
            s += f" in(ext {self.external_id})"
        if self.is_external_output:
            s += f" out(ext {self.external_id})"
        return s


@dataclass(frozen=True, kw_only=True)
class XnnNode:
    """Base of all XNNPACK nodes. ``op`` is the ``XNodeUnion`` member (``"XNNConv2d"``,
    ``"XNNDepthwiseConv2d"``, ...), ``output_min``/``output_max`` the fused clamp of
    ``OutputMinMax`` (``None`` when absent), ``debug_handle`` links to the exported graph."""

    op: str
    debug_handle: int = 0
    output_min: float | None = None
    output_max: float | None = None

    @property
    def inputs(self) -> tuple[int, ...]:
        """Value ids read (fields ``input*_id``, ``filter_id``, ``bias_id``, ... in schema
        order, without ``XNN_INVALID_VALUE_ID``)."""
        return tuple(getattr(self, f.name) for f in fields(self)
                     if f.name.endswith("_id") and not f.name.startswith("output")
                     and getattr(self, f.name) != XNN_INVALID_VALUE_ID)

    @property
    def outputs(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self)
                     if f.name.startswith("output") and f.name.endswith("_id"))

    def params(self) -> dict[str, Any]:
        """The node's own fields other than value ids (padding, strides, ...)."""
        base = {f.name for f in fields(XnnNode)}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in base and not f.name.endswith("_id") and f.name != "flags"}

    def describe(self) -> str:
        ps = " ".join(f"{k}={_fmt(v)}" for k, v in self.params().items())
        s = f"{self.op}{' ' + ps if ps else ''} " \
            f"{','.join(f'v{i}' for i in self.inputs)} -> {','.join(f'v{i}' for i in self.outputs)}"
        if getattr(self, "flags", 0):
            s += f" flags=0x{self.flags:x}"
        if self.output_min is not None:
            s += f" clamp[{self.output_min!r}, {self.output_max!r}]"
        return s


def _fmt(v: Any) -> str:
    return "(" + ",".join(map(str, v)) + ")" if isinstance(v, tuple) else repr(v)


# Node tables: field order == schema slot order (int = uint, float = float, tuple = [uint]).

@dataclass(frozen=True, kw_only=True)
class XnnNode1x1(XnnNode):
    """``_XNNNode1x1``: Convert, Clamp, GlobalAvgPooling2d, Sigmoid, Softmax, Hardswish, ..."""
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnNode2x1(XnnNode):
    """``_XNNNode2x1``: Add, Multiply, Subtract, Div, Minimum, Maximum, PReLU, BMM."""
    input1_id: int
    input2_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnConv(XnnNode):
    """``_XNNNodeConv``: Conv2d, DepthwiseConv2d, ConvTranspose2d (subsampling = stride)."""
    padding_top: int
    padding_right: int
    padding_bottom: int
    padding_left: int
    kernel_height: int
    kernel_width: int
    subsampling_height: int
    subsampling_width: int
    dilation_height: int
    dilation_width: int
    group_input_channels: int
    group_output_channels: int
    groups: int
    adjustment_height: int
    adjustment_width: int
    input1_id: int
    filter_id: int
    bias_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnPooling2d(XnnNode):
    """``_XNNPooling2D``: AvgPooling2d, MaxPooling2d."""
    padding_top: int
    padding_right: int
    padding_bottom: int
    padding_left: int
    pooling_height: int
    pooling_width: int
    stride_height: int
    stride_width: int
    dilation_height: int
    dilation_width: int
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnCat(XnnNode):
    """``_XNNCat``: ConcatenateN reads ``input1_id`` .. ``inputN_id`` (the rest are unused)."""
    axis: int
    input1_id: int
    input2_id: int
    input3_id: int
    input4_id: int
    output_id: int
    flags: int
    input5_id: int

    @property
    def inputs(self) -> tuple[int, ...]:
        n = int(self.op[len("XNNConcatenate"):])
        return tuple(getattr(self, f"input{k}_id") for k in range(1, n + 1))


@dataclass(frozen=True, kw_only=True)
class XnnFullyConnected(XnnNode):
    """``XNNFullyConnected``: filter (out, in) unless ``flags`` has XNN_FLAG_TRANSPOSE_WEIGHTS."""
    input1_id: int
    filter_id: int
    bias_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnStaticTranspose(XnnNode):
    num_dims: int
    perm: tuple[int, ...]
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnStaticResizeBilinear2D(XnnNode):
    """``flags``: ``XNN_FLAG_ALIGN_CORNERS``, ``XNN_FLAG_TENSORFLOW_LEGACY_MODE``."""
    new_height: int
    new_width: int
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnStaticConstantPad(XnnNode):
    pre_paddings: tuple[int, ...]
    post_paddings: tuple[int, ...]
    padding_value: float
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnStaticReshape(XnnNode):
    num_dims: int
    new_shape: tuple[int, ...]
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnStaticSlice(XnnNode):
    num_dims: int
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnELU(XnnNode):
    alpha: float
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnLeakyReLU(XnnNode):
    negative_slope: float
    input_id: int
    output_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnArgMaxPooling2d(XnnNode):
    padding_top: int
    padding_right: int
    padding_bottom: int
    padding_left: int
    pooling_height: int
    pooling_width: int
    input_id: int
    output_value_id: int
    output_index_id: int
    flags: int


@dataclass(frozen=True, kw_only=True)
class XnnScaledDotProductAttention(XnnNode):
    query_id: int
    key_id: int
    value_id: int
    scale_id: int
    mask_id: int
    output_id: int
    flags: int


# XNodeUnion members in schema order (union type index = position + 1).
_XNODE_UNION: tuple[tuple[str, type], ...] = (
    ("XNNAdd", XnnNode2x1), ("XNNFullyConnected", XnnFullyConnected),
    ("XNNSoftmax", XnnNode1x1), ("XNNSigmoid", XnnNode1x1),
    ("XNNStaticTranspose", XnnStaticTranspose), ("XNNClamp", XnnNode1x1),
    ("XNNConv2d", XnnConv), ("XNNDiv", XnnNode2x1),
    ("XNNStaticResizeBilinear2D", XnnStaticResizeBilinear2D),
    ("XNNStaticConstantPad", XnnStaticConstantPad), ("XNNAvgPooling2d", XnnPooling2d),
    ("XNNMinimum", XnnNode2x1), ("XNNDepthwiseConv2d", XnnConv),
    ("XNNMaxPooling2d", XnnPooling2d), ("XNNMultiply", XnnNode2x1),
    ("XNNSubtract", XnnNode2x1), ("XNNFloor", XnnNode1x1), ("XNNConvert", XnnNode1x1),
    ("XNNGlobalAvgPooling2d", XnnNode1x1), ("XNNStaticReshape", XnnStaticReshape),
    ("XNNArgMaxPooling2d", XnnArgMaxPooling2d), ("XNNSquareRoot", XnnNode1x1),
    ("XNNCeiling", XnnNode1x1), ("XNNHardswish", XnnNode1x1), ("XNNLeakyReLU", XnnLeakyReLU),
    ("XNNMaximum", XnnNode2x1), ("XNNNegate", XnnNode1x1), ("XNNSquare", XnnNode1x1),
    ("XNNELU", XnnELU), ("XNNAbs", XnnNode1x1), ("XNNPReLU", XnnNode2x1),
    ("XNNConcatenate2", XnnCat), ("XNNConcatenate3", XnnCat), ("XNNConcatenate4", XnnCat),
    ("XNNStaticSlice", XnnStaticSlice),
    ("XNNScaledDotProductAttention", XnnScaledDotProductAttention),
    ("XNNBatchMatrixMultiply", XnnNode2x1), ("XNNConcatenate5", XnnCat),
    ("XNNConvTranspose2d", XnnConv), ("XNNReciprocalSquareRoot", XnnNode1x1),
    ("XNNLog", XnnNode1x1), ("XNNGelu", XnnNode1x1), ("XNNTanh", XnnNode1x1),
    ("XNNExp", XnnNode1x1), ("XNNSin", XnnNode1x1), ("XNNCopy", XnnNode1x1),
    ("XNNCos", XnnNode1x1),
)
_BASE_FIELDS = frozenset(f.name for f in fields(XnnNode))


@dataclass(frozen=True, eq=False)
class XnnGraph:
    """A decoded ``XNNGraph``: ``values`` in file order, ``nodes`` in execution order,
    ``input_ids``/``output_ids`` the external values (matching the delegate call's args)."""

    version: str
    identifier: str
    values: tuple[XnnTensor, ...] = field(repr=False)
    nodes: tuple[XnnNode, ...] = field(repr=False)
    num_externs: int
    input_ids: tuple[int, ...]
    output_ids: tuple[int, ...]

    @property
    def external_values(self) -> tuple[XnnTensor, ...]:
        """External inputs and outputs sorted by ``external_id``: value ``k`` of this tuple is
        ``args[k]`` of the ``PteDelegateCall`` (inputs first, then outputs). Note that
        ``input_ids``/``output_ids`` are value ids, whose order need not be that of the args."""
        ext = [v for v in self.values if v.is_external_input or v.is_external_output]
        return tuple(sorted(ext, key=lambda v: v.external_id))

    def value(self, value_id: int) -> XnnTensor:
        for v in self.values:
            if v.id == value_id:
                return v
        raise FormatError(f"XNNPACK graph has no value with id {value_id}")

    def describe(self) -> str:
        lines = [f"XNNGraph {self.identifier} v{self.version}: {len(self.values)} values, "
                 f"{len(self.nodes)} nodes, inputs {list(self.input_ids)}, "
                 f"outputs {list(self.output_ids)}"]
        lines += [f"  {v.describe()}" for v in self.values]
        lines += [f"  n{k} {n.describe()}" for k, n in enumerate(self.nodes)]
        return "\n".join(lines)


# --- Decoding --------------------------------------------------------------------------------


def read_pte(path_or_bytes: "str | os.PathLike | bytes | bytearray | memoryview", *,
             allow_unknown_backends: bool = False) -> PteProgram:
    """Decode an ExecuTorch ``.pte`` file (a path or its bytes) into a :class:`PteProgram`.

    Raises ``FormatError`` if the data is not a ``.pte`` of schema ``ET12`` or is corrupt, and
    ``UnsupportedError`` for a delegate of another backend than ``XnnpackBackend`` (unless
    ``allow_unknown_backends``: its payload is then kept undecoded) or an XNNPACK node/quant
    type this reader does not know.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        where = f"{len(data)} bytes"
    else:
        with open(path_or_bytes, "rb") as f:
            data = f.read()
        where = repr(os.fspath(path_or_bytes))
    if len(data) < 8:
        raise FormatError(f"{where} is not an ExecuTorch .pte file: only {len(data)} bytes")
    ident = data[4:8]
    if ident != PTE_FILE_IDENTIFIER:
        if ident[:2] == b"ET":
            raise FormatError(f"{where} is an ExecuTorch program of schema {ident!r}; this "
                              f"reader knows {PTE_FILE_IDENTIFIER!r}")
        raise FormatError(f"{where} is not an ExecuTorch .pte file: file identifier "
                          f"{ident!r}, expected {PTE_FILE_IDENTIFIER!r}")
    try:
        return _decode_program(data, allow_unknown_backends)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
        if isinstance(e, (FormatError, UnsupportedError)):
            raise
        raise FormatError(f"{where}: corrupt or truncated .pte file ({e})") from e


def _segment_base(data: bytes) -> int:
    """The extended header's segment base offset (0 if there is no extended header)."""
    if data[8:12] != b"eh00":
        return 0
    length, _program_size, base = struct.unpack_from("<IQQ", data, 12)
    if length < 24:
        raise FormatError(f"extended header of length {length}, expected at least 24")
    return base


def _decode_program(data: bytes, allow_unknown: bool) -> PteProgram:
    base = _segment_base(data)
    prog = _Table.root(data)
    # Program slots: 0 version, 1 execution_plan, 2 constant_buffer, 3 backend_delegate_data,
    # 4 segments, 5 constant_segment, 6 mutable_data_segments, 7 named_data
    segments = tuple((t.scalar(0, "Q"), t.scalar(1, "Q")) for t in prog.tables(4))

    def segment(i: int) -> bytes:
        if not 0 <= i < len(segments):
            raise FormatError(f"segment index {i} out of range ({len(segments)} segments)")
        off, size = segments[i]
        start = base + off
        if start + size > len(data):
            raise FormatError(f"segment {i} ({size} bytes at {start}) runs past the end of "
                              f"the file ({len(data)} bytes); the file is truncated")
        return data[start:start + size]

    named = {t.string(0): t.scalar(1, "I") for t in prog.tables(7)}
    inline_delegate = prog.tables(3)
    const_buffers = prog.tables(2)
    cseg = prog.table(5)
    const_offsets = cseg.ints(1, "<u8") if cseg is not None else ()
    const_segment = cseg.scalar(0, "I") if cseg is not None else 0

    def constant(idx: int, nbytes: int) -> bytes:
        if const_buffers:
            blob = const_buffers[idx].blob(0)
        else:
            if idx >= len(const_offsets):
                raise FormatError(f"constant tensor index {idx} out of range "
                                  f"({len(const_offsets)} constants)")
            seg = segment(const_segment)
            blob = seg[const_offsets[idx]:const_offsets[idx] + nbytes]
        if len(blob) < nbytes:
            raise FormatError(f"constant tensor {idx}: {len(blob)} bytes, need {nbytes}")
        return blob[:nbytes]

    ctx = _Ctx(segment, named, inline_delegate, constant, allow_unknown)
    plans = tuple(_decode_plan(t, ctx) for t in prog.tables(1))
    return PteProgram(version=prog.scalar(0, "I"), plans=plans, segment_base_offset=base,
                      segments=segments, named_data=named)


@dataclass(frozen=True)
class _Ctx:
    segment: Any
    named: dict
    inline_delegate: list
    constant: Any
    allow_unknown: bool

    def named_blob(self, key: str) -> bytes:
        if key not in self.named:
            raise FormatError(f"named data {key!r} is not in the program "
                              f"({len(self.named)} named blobs)")
        return self.segment(self.named[key])


def _decode_plan(t: _Table, ctx: _Ctx) -> PtePlan:
    # ExecutionPlan slots: 0 name, 1 container_meta_type, 2 values, 3 inputs, 4 outputs,
    # 5 chains, 6 operators, 7 delegates, 8 non_const_buffer_sizes
    operators = tuple(PteOperator(o.string(0) or "", o.string(1) or "") for o in t.tables(6))
    values = tuple(_decode_evalue(v, ctx) for v in t.tables(2))
    instructions: list[PteInstruction] = []
    chains = t.tables(5)
    if len(chains) > 1:
        raise UnsupportedError(f"execution plan {t.string(0)!r} has {len(chains)} chains; "
                               "ExecuTorch emits one")
    for chain in chains:
        # Chain slots: 0 inputs, 1 outputs, 2 instructions, 3 stacktrace
        for ins in chain.tables(2):
            kind, a = ins.union(0)
            if kind == 1:       # KernelCall: op_index, args
                op_index = a.scalar(0, "i")
                if not 0 <= op_index < len(operators):
                    raise FormatError(f"kernel call of operator {op_index}, but the plan has "
                                      f"{len(operators)} operators")
                instructions.append(PteKernelCall(operators[op_index].qualified_name, op_index,
                                                  a.ints(1, "<i4")))
            elif kind == 2:     # DelegateCall: delegate_index, args
                instructions.append(PteDelegateCall(a.scalar(0, "i"), a.ints(1, "<i4")))
            elif kind == 3:
                instructions.append(PteMoveCall(a.scalar(0, "i"), a.scalar(1, "i")))
            elif kind == 4:
                instructions.append(PteJumpFalseCall(a.scalar(0, "i"), a.scalar(1, "i")))
            elif kind == 5:
                instructions.append(PteFreeCall(a.scalar(0, "i")))
            else:
                raise FormatError(f"unknown instruction type {kind} (known: 1..5)")
    delegates = tuple(_decode_delegate(d, ctx) for d in t.tables(7))
    return PtePlan(name=t.string(0) or "", values=values, inputs=t.ints(3, "<i4"),
                   outputs=t.ints(4, "<i4"), instructions=tuple(instructions),
                   operators=operators, delegates=delegates,
                   non_const_buffer_sizes=t.ints(8, "<i8"))


def _decode_evalue(v: _Table, ctx: _Ctx) -> Any:
    kind, t = v.union(0)
    if kind in (0, 1) or t is None:     # NONE / Null
        return None
    if kind == 2:
        return t.scalar(0, "q")
    if kind == 3:
        return bool(t.scalar(0, "B"))
    if kind == 4:
        return t.scalar(0, "d")
    if kind == 5:
        return _decode_tensor(t, ctx)
    if kind == 6:
        return t.string(0)
    if kind == 7:
        return t.ints(0, "<i8")
    if kind == 8:
        return tuple(float(x) for x in t.array(0, "<f8"))
    if kind == 9:
        return tuple(bool(x) for x in t.array(0, "u1"))
    if kind in (10, 11):
        return PteTensorList(t.ints(0, "<i4"), optional=kind == 11)
    raise FormatError(f"unknown EValue type {kind} (known: 0..11)")


def _decode_tensor(t: _Table, ctx: _Ctx) -> PteTensor:
    # Tensor slots: 0 scalar_type, 1 storage_offset, 2 sizes, 3 dim_order, 4 requires_grad,
    # 5 data_buffer_idx, 6 allocation_info, 7 layout, 8 shape_dynamism, 9 extra_tensor_info
    code = t.scalar(0, "b")
    if code not in _SCALAR_TYPES:
        raise FormatError(f"unknown ScalarType {code}")
    name, dtype = _SCALAR_TYPES[code]
    sizes = t.ints(2, "<i4")
    idx = t.scalar(5, "I")
    alloc = t.table(6)
    extra = t.table(9)
    fqn = extra.string(1) if extra is not None else None
    mem_id = mem_off = None
    if alloc is not None:
        mem_id = alloc.scalar(0, "I")
        mem_off = alloc.scalar(1, "I") | (alloc.scalar(2, "I") << 32)
    data = None
    if idx > 0 and alloc is None:
        if extra is not None and extra.scalar(2, "b") == 1:
            raise UnsupportedError(f"constant tensor {fqn!r} is stored outside the .pte file "
                                   "(TensorDataLocation.EXTERNAL, a .ptd file)")
        dt = np.dtype(dtype)
        n = math.prod(sizes)
        data = _readonly(np.frombuffer(ctx.constant(idx, n * dt.itemsize), dt, n)
                         .reshape(sizes).copy())
    return PteTensor(scalar_type=name, sizes=sizes, dim_order=t.ints(3, "u1"),
                     data_buffer_idx=idx, shape_dynamism=_DYNAMISM.get(t.scalar(8, "b"), "?"),
                     memory_id=mem_id, memory_offset=mem_off, name=fqn, data=data)


def _decode_delegate(d: _Table, ctx: _Ctx) -> PteDelegate:
    # BackendDelegate slots: 0 id, 1 processed, 2 compile_specs
    backend = d.string(0) or ""
    ref = d.table(1)
    location = ref.scalar(0, "b") if ref is not None else 0
    index = ref.scalar(1, "I") if ref is not None else 0
    if location == 0:
        if index >= len(ctx.inline_delegate):
            raise FormatError(f"delegate {backend!r} refers to inline data {index}, but the "
                              f"program has {len(ctx.inline_delegate)}")
        payload = ctx.inline_delegate[index].blob(0)
    elif location == 1:
        payload = ctx.segment(index)
    else:
        raise FormatError(f"delegate {backend!r}: unknown DataLocation {location}")
    specs = tuple((c.string(0) or "", c.blob(1)) for c in d.tables(2))
    if backend == XNNPACK_BACKEND_ID:
        xnn = _decode_xnnpack(payload, ctx)
    elif ctx.allow_unknown:
        xnn = None
    else:
        raise UnsupportedError(f"delegate backend {backend!r} is not supported; qexact reads "
                               f"{XNNPACK_BACKEND_ID!r} delegates (pass "
                               "allow_unknown_backends=True to keep the payload undecoded)")
    return PteDelegate(backend_id=backend, compile_specs=specs,
                       location=("inline", "segment")[location], index=index, payload=payload,
                       xnnpack=xnn)


def _decode_xnnpack(payload: bytes, ctx: _Ctx) -> XnnGraph:
    magic = payload[4:8]
    if magic == b"XH00":
        hlen, fb_off, fb_size, c_off, c_size = struct.unpack_from("<HIIIQ", payload, 8)
        if hlen < 30 or fb_off + fb_size > len(payload) or c_off + c_size > len(payload):
            raise FormatError(f"XNNPACK header (length {hlen}, flatbuffer {fb_size} bytes at "
                              f"{fb_off}, constants {c_size} bytes at {c_off}) does not fit "
                              f"the {len(payload)}-byte payload")
        fb = payload[fb_off:fb_off + fb_size]
        consts = payload[c_off:c_off + c_size]
    elif magic in (b"XN00", b"XN01"):
        fb, consts = payload, b""
    else:
        raise FormatError(f"XNNPACK delegate payload starts with {payload[:8]!r}: neither the "
                          "XNNPACK header 'XH00' nor an XNNGraph flatbuffer 'XN00'/'XN01'")
    ident = fb[4:8].decode("latin-1")
    if ident not in ("XN00", "XN01"):
        raise FormatError(f"XNNPACK flatbuffer identifier {ident!r}, expected 'XN00'/'XN01'")
    g = _Table.root(fb)
    # XNNGraph slots: 0 version, 1 xnodes, 2 xvalues, 3 num_externs, 4 input_ids,
    # 5 output_ids, 6 constant_buffer (XN00 only), 7 mem_buffer_sizes, 8 constant_data
    inline_buffers = g.tables(6)
    constant_data = [(c.scalar(0, "Q"), c.scalar(1, "Q"), c.string(2) or "")
                     for c in g.tables(8)]

    def constant(idx: int) -> bytes:
        if constant_data:
            if idx >= len(constant_data):
                raise FormatError(f"XNNPACK constant {idx} out of range "
                                  f"({len(constant_data)} entries)")
            off, size, key = constant_data[idx]
            if key:
                blob = ctx.named_blob(key)
                if len(blob) < size:
                    raise FormatError(f"XNNPACK constant {key!r}: {len(blob)} bytes, "
                                      f"need {size}")
                return blob[:size]
            if off == _UINT64_MAX or off + size > len(consts):
                raise FormatError(f"XNNPACK constant {idx}: {size} bytes at offset {off} "
                                  f"outside the {len(consts)}-byte constant data")
            return consts[off:off + size]
        if idx < len(inline_buffers):
            return inline_buffers[idx].blob(0)
        raise FormatError(f"XNNPACK constant {idx}: the graph has no constant data")

    values = tuple(_decode_xvalue(v, constant) for v in g.tables(2))
    nodes = tuple(_decode_xnode(n) for n in g.tables(1))
    return XnnGraph(version=g.string(0) or "", identifier=ident, values=values, nodes=nodes,
                    num_externs=g.scalar(3, "I"), input_ids=g.ints(4), output_ids=g.ints(5))


def _decode_xvalue(v: _Table, constant) -> XnnTensor:
    kind, t = v.union(0)
    if kind == 1:
        tv, quant = t, None
    elif kind == 2:
        # XNNQuantizedTensorValue slots: 0 tensor_value, 1 quant_params_type, 2 quant_params
        tv = t.table(0)
        quant = _decode_quant(*t.union(1), constant)
    else:
        raise UnsupportedError(f"unknown XNNPACK value type {kind} (known: 1 XNNTensorValue, "
                               "2 XNNQuantizedTensorValue)")
    # XNNTensorValue slots: 0 datatype, 1 num_dims, 2 dims, 3 constant_buffer_idx,
    # 4 external_id, 5 flags, 6 id_out, 7 dq_datatype (XN00 only)
    code = tv.scalar(0, "h")
    if code not in _XNN_DATATYPES:
        raise UnsupportedError(f"unknown XNNPACK datatype {code}")
    dtype_name, np_dtype = _XNN_DATATYPES[code]
    dims = tv.ints(2)
    cidx = tv.scalar(3, "I")
    data = None
    if cidx:
        raw = constant(cidx)
        if dtype_name in ("qcint4", "qbint4") or np_dtype is None:
            data = np.frombuffer(raw, np.uint8).copy()     # packed nibbles: raw bytes
        else:
            dt, n = np.dtype(np_dtype), math.prod(dims)
            if len(raw) < n * dt.itemsize:
                raise FormatError(f"XNNPACK constant for value {tv.scalar(6, 'I')} "
                                  f"({dtype_name}{list(dims)}) has {len(raw)} bytes, "
                                  f"needs {n * dt.itemsize}")
            data = np.frombuffer(raw, dt, n).reshape(dims).copy()
        data = _readonly(data)
    return XnnTensor(id=tv.scalar(6, "I"), datatype=dtype_name, dims=dims,
                     flags=tv.scalar(5, "I"), external_id=tv.scalar(4, "I"),
                     constant_buffer_idx=cidx, quant=quant,
                     dq_datatype=_XNN_DATATYPES.get(tv.scalar(7, "h"), ("?",))[0], data=data)


def _decode_quant(kind: int, q: _Table | None, constant) -> XnnQuant:
    if q is None:
        return None
    if kind == 1:    # PerChannelQuant: 0 scale, 1 channel_dim, 2 scale_buffer_idx, 3 num_scales
        scales = q.array(0, "<f4")
        if scales.size == 0 and q.scalar(3, "I"):
            n = q.scalar(3, "I")
            scales = _readonly(np.frombuffer(constant(q.scalar(2, "I")), "<f4", n).copy())
        return XnnPerChannelQuant(scales=scales, channel_dim=q.scalar(1, "i"))
    if kind == 2:    # PerTensorQuant: 0 scale, 1 zero_point
        return XnnPerTensorQuant(scale=q.scalar(0, "f", 0.0), zero_point=q.scalar(1, "i"))
    if kind == 3:    # PerTokenDynamicQuant: 0 num_nonbatch_dims
        return XnnPerTokenDynamicQuant(num_nonbatch_dims=q.scalar(0, "i"))
    if kind == 4:    # PerChannelGroupQuant: 0 scale, 1 channel_dim, 2 group_size,
        #              3 scale_bf16 (deprecated), 4 scale_buffer_idx, 5 num_scales
        scales = q.array(0, "<f4")
        if scales.size == 0 and q.scalar(5, "I"):
            n = q.scalar(5, "I")
            bf16 = np.frombuffer(constant(q.scalar(4, "I")), "<u2", n)
            scales = _readonly((bf16.astype(np.uint32) << 16).view(np.float32))
        return XnnPerChannelGroupQuant(scales=scales, channel_dim=q.scalar(1, "i"),
                                       group_size=q.scalar(2, "i"))
    raise UnsupportedError(f"unknown XNNPACK quantization type {kind} (known: 1 PerChannel, "
                           "2 PerTensor, 3 PerTokenDynamic, 4 PerChannelGroup)")


def _decode_xnode(n: _Table) -> XnnNode:
    # XNode slots: 0 xnode_union_type, 1 xnode_union, 2 debug_handle, 3 output_min_max
    kind, t = n.union(0)
    if not 1 <= kind <= len(_XNODE_UNION) or t is None:
        raise UnsupportedError(f"unknown XNNPACK node type {kind}; this reader knows "
                               f"1..{len(_XNODE_UNION)} ({_XNODE_UNION[0][0]} .. "
                               f"{_XNODE_UNION[-1][0]}) of backends/xnnpack/serialization/"
                               "schema.fbs (executorch 1.5.1)")
    op, cls = _XNODE_UNION[kind - 1]
    kwargs: dict[str, Any] = {}
    for slot, f in enumerate(f for f in fields(cls) if f.name not in _BASE_FIELDS):
        ann = f.type if isinstance(f.type, str) else f.type.__name__
        if ann.startswith("tuple"):
            kwargs[f.name] = t.ints(slot)
        elif ann == "float":
            kwargs[f.name] = t.scalar(slot, "f", 0.0)
        else:
            kwargs[f.name] = t.scalar(slot, "I")
    mm = n.table(3)
    lo = hi = None
    if mm is not None:
        lo, hi = mm.scalar(0, "f", 0.0), mm.scalar(1, "f", 0.0)
    return cls(op=op, debug_handle=n.scalar(2, "I"), output_min=lo, output_max=hi, **kwargs)
