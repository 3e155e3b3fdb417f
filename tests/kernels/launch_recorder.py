"""Record every Triton kernel launch of one bf16-autocast training step of the built-in model (for
``test_launch_dtypes.py``, which runs this in a fresh subprocess and compiles what it records for sm_90).

    TRITON_INTERPRET=1 MULTIMODAL_KERNELS=triton python -m tests.kernels.launch_recorder OUT.json

The model is the ``shapes-demo`` training preset's architecture (``Trainer.model_config``: the ``tiny``
backbone with the preset's overrides, its flow heads, 16 latent channels), plus one Engram layer with a small
table so that ``engram_gather``'s kernels are launched too (the preset has none). One step = the four media
losses (``generation_loss`` and ``caption_loss`` for images and for videos) and the text loss (LM + MTP,
``TextTask.loss``) under ``torch.autocast("cpu", dtype=torch.bfloat16)``, then one backward, as
``Trainer.train_step`` does it; the batch is small (2 samples, 2-frame videos) so that the interpreter is quick.

CUDA's autocast is not CPU's: on a GPU ``sum``, ``softmax``, ``exp``, ``rsqrt``, the norms... run in fp32 (a
compressor's softmax-weighted sum of bf16 projections comes out fp32 there, bf16 on the CPU), and ``mv``,
``einsum``... in bf16. :func:`emulate_cuda_autocast` registers CPU-autocast kernels for exactly the ops the
installed torch's CUDA autocast handles and its CPU autocast does not (read from the dispatcher), with CUDA's
policy for each, so the CPU step passes the kernels the dtypes a GPU step would. Checked on an H200 (torch 2.11,
triton 3.6): the same step run there in CUDA autocast launched exactly the 26 (kernel, argument dtypes) patterns
recorded here, no more, no fewer.

Only dtypes and constexprs are recorded: the values are not trusted (the interpreter multiplies bf16 operands of
``tl.dot`` as raw 16-bit integers and truncates fp32 -> bf16 stores). Where this install's interpreter cannot run
the kernels at all (Triton 3.6 with NumPy 2), the JSON says so (``interpreter_error``) and nothing is recorded.

Recording patches the interpreter's launch entry point (``InterpretedFunction.run``: what ``kernel[grid](...)``
calls under ``TRITON_INTERPRET=1``), so no op file changes. The ops' tile-size functions are patched to
return their CUDA tiles (the interpreter would otherwise get the small CPU tiles), so the records are what a
GPU would compile, and sparse attention splits its index lists as it would on an H200 (132 multiprocessors: the
small batch leaves them idle, so its split-K forward and combine kernels run, as they did in a real H200 step).
Each distinct launch is written once, with how often it occurred:

    {"kernel": "multimodal.kernels.indexer.triton:indexer_scores_kernel", "count": 4,
     "args": {"q_ptr": {"kind": "tensor", "dtype": "bfloat16"}, "C": {"kind": "int", "bits": 32},
              "scale": {"kind": "float"}, ..., "BS": {"kind": "constexpr", "value": 32}, ...},
     "options": {}}                                   # launch options passed (num_warps when the op sets it)
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: (module, function) choosing each op's tile sizes (or launch split) from a device; patched to answer for a CUDA
#: device, an H100 / H200 with 132 multiprocessors (``_sm_count``)
TILE_FUNCTIONS = [
    ("multimodal.kernels.indexer.op", "_tiles"),
    ("multimodal.kernels.sparse_attention.op", "_blocks"),
    ("multimodal.kernels.sparse_attention.op", "_num_splits"),
    ("multimodal.kernels.mhc.op", "_tiles"),
    ("multimodal.kernels.engram.op", "_tiles"),
    ("multimodal.kernels.moe.op", "_block_config"),
]
SM90_MULTIPROCESSORS = 132
#: added to the preset's architecture so that engram_gather runs too (small table: the step stays quick)
ENGRAM = {"layers": [1], "table_size": 1009, "n_heads": 2, "d_mem": 64}
#: public ops (package, name) and their references (module, name), for a launch the interpreter rejects
OPS = [
    ("multimodal.kernels.moe", "moe_ffn", "multimodal.kernels.moe.naive", "naive_moe_ffn"),
    ("multimodal.kernels.indexer", "indexer_topk", "multimodal.kernels.indexer.naive", "naive_indexer_topk"),
    ("multimodal.kernels.sparse_attention", "sparse_mqa", "multimodal.kernels.sparse_attention.naive",
     "naive_sparse_mqa"),
    ("multimodal.kernels.mhc", "mhc_pre", "multimodal.kernels.mhc.naive", "naive_mhc_pre"),
    ("multimodal.kernels.mhc", "mhc_post", "multimodal.kernels.mhc.naive", "naive_mhc_post"),
    ("multimodal.kernels.engram", "engram_gather", "multimodal.kernels.engram.naive", "naive_engram_gather"),
]
#: the step's batch: samples per loss, latent rows and columns, query tokens per visual kind (the preset has
#: 16 image and 32 video queries and 8 x 8 latents: fewer tokens only make the interpreted step quicker)
BATCH, LATENT_SIDE, QUERIES = 2, 4, 4
#: blocks kept of the preset's six: its first three are one of each attention kind (sliding window, CSA with the
#: indexer, HCA) and of each FFN kind (hash-routed MoE, then MoE); the last three repeat them
LAYERS = 3


#: CUDA autocast policies of the ops CPU autocast leaves alone (PyTorch's autocast_mode.cpp); every other op
#: registered for AutocastCUDA only is in its fp32 list (exp, log, rsqrt, pow, softplus, the norms, upsampling...)
CUDA_LOWER_PRECISION = {"_convolution", "convolution", "cudnn_convolution", "cudnn_convolution_transpose", "_cudnn_rnn",
                        "addmv", "addr", "mv", "chain_matmul", "linalg_multi_dot", "einsum", "vdot", "lstm_cell",
                        "gru_cell", "rnn_tanh_cell", "rnn_relu_cell", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell",
                        "_scaled_dot_product_flash_attention"}
CUDA_PROMOTE = {"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sampler", "index_put", "scatter_add",
                "tensordot"}
CUDA_FP32_SET_OPT_DTYPE = {"sum", "prod", "cumsum", "cumprod", "softmax", "log_softmax", "linalg_vector_norm",
                           "linalg_matrix_norm"}


def emulate_cuda_autocast() -> Any:
    """Make ``torch.autocast("cpu", dtype=torch.bfloat16)`` cast like CUDA autocast; returns the library to keep.

    For each op with an AutocastCUDA kernel and no AutocastCPU kernel in this torch, an AutocastCPU kernel
    applies CUDA's policy: fp32 (float args other than fp64 to fp32), fp32_set_opt_dtype (``dtype=float32``
    unless given), promote (float args to their widest dtype), lower precision (float args to bf16).
    """
    import torch

    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    lib = torch.library.Library("aten", "IMPL")
    below = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def convert(value: Any, dtype: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
            return value.to(dtype)
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v, dtype) for v in value)
        return value

    def floats(values: Any) -> list[Any]:
        out = []
        for v in values:
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                out.append(v.dtype)
            elif isinstance(v, (list, tuple)):
                out += floats(v)
        return out

    def kernel_for(op: Any, policy: str) -> Any:
        names = [a.name for a in op._schema.arguments]

        def kernel(*args: Any, **kwargs: Any) -> Any:
            with torch._C._ExcludeDispatchKeyGuard(below):
                if policy == "fp32_set_opt_dtype":
                    i = names.index("dtype")
                    given = kwargs.get("dtype") if "dtype" in kwargs else (args[i] if len(args) > i else None)
                    if given is None and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                        args, kwargs = args[:i], {**kwargs, "dtype": torch.float32}
                else:
                    dtype = {"fp32": torch.float32, "lower": torch.get_autocast_dtype("cpu")}.get(policy)
                    if policy == "promote":
                        found = floats(list(args) + list(kwargs.values()))
                        dtype = functools.reduce(torch.promote_types, found) if found else None
                    if dtype is not None:
                        args, kwargs = convert(args, dtype), {k: convert(v, dtype) for k, v in kwargs.items()}
                return op(*args, **kwargs)

        return kernel

    for qualname in torch._C._dispatch_get_all_op_names():
        if not qualname.startswith("aten::") or not has_kernel(qualname, "AutocastCUDA") \
                or has_kernel(qualname, "AutocastCPU"):
            continue
        name, _, overload = qualname[len("aten::"):].partition(".")
        op = getattr(getattr(torch.ops.aten, name), overload or "default")
        policy = ("lower" if name in CUDA_LOWER_PRECISION else "promote" if name in CUDA_PROMOTE
                  else "fp32_set_opt_dtype" if name in CUDA_FP32_SET_OPT_DTYPE
                  and "dtype" in [a.name for a in op._schema.arguments] else "fp32")
        lib.impl(qualname[len("aten::"):], kernel_for(op, policy), "AutocastCPU")
    return lib


def use_cuda_tiles() -> None:
    """Make every op pick the tile sizes it would pick for CUDA tensors."""
    import torch

    cuda = torch.device("cuda")  # a device object only: nothing is allocated on it
    for module_name, name in TILE_FUNCTIONS:
        module = importlib.import_module(module_name)
        original = getattr(module, name, None)
        if original is None:
            raise AttributeError(f"{module_name}.{name} is gone: update TILE_FUNCTIONS in {__file__} to the "
                                 f"function that now picks that op's tile sizes from the device")

        def cuda_tiles(*args: Any, _original=original) -> Any:
            return _original(*[cuda if isinstance(a, torch.device) else a for a in args])

        setattr(module, name, cuda_tiles)
    importlib.import_module("multimodal.kernels.sparse_attention.op")._sm_count = lambda device: SM90_MULTIPROCESSORS


def describe(value: Any, constexpr: bool) -> dict[str, Any]:
    """What a kernel argument is: a tensor's dtype, an int's width, "float", or a constexpr's value.

    Sizes and strides are runtime ints whose values do not change what compiles (only their width does), so a
    record keeps one entry per dtype pattern, not per shape.
    """
    import torch

    if constexpr:
        return {"kind": "constexpr", "value": value if isinstance(value, (bool, int, float, str, type(None)))
                else repr(value)}
    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, bool):
        return {"kind": "bool"}
    if isinstance(value, int):
        return {"kind": "int", "bits": 32 if -2 ** 31 <= value < 2 ** 31 else 64}
    if isinstance(value, float):
        return {"kind": "float"}
    return {"kind": type(value).__name__, "value": repr(value)}


def _is_constexpr(annotation: Any) -> bool:
    """``x: tl.constexpr`` (a string under ``from __future__ import annotations``)."""
    import triton.language as tl

    return annotation is tl.constexpr or (isinstance(annotation, str) and annotation.split(".")[-1] == "constexpr")


def record_launches() -> dict[str, dict[str, Any]]:
    """Patch the interpreter's launch entry point; returns the dict it fills (JSON key -> record)."""
    import inspect

    from triton.runtime.interpreter import InterpretedFunction

    records: dict[str, dict[str, Any]] = {}
    original = InterpretedFunction.run

    def run(self, *args: Any, **kwargs: Any) -> Any:  # kernel[grid](...) calls run(*args, grid=, warmup=, **kwargs)
        signature = inspect.signature(self.fn).parameters
        params = dict(zip(self.arg_names, args))
        params.update({k: v for k, v in kwargs.items() if k in signature})
        options = {k: v for k, v in kwargs.items() if k not in signature and k not in ("grid", "warmup")}
        record = {"kernel": f"{self.fn.__module__}:{self.fn.__name__}",
                  "args": {name: describe(params[name], _is_constexpr(signature[name].annotation))
                           for name in self.arg_names if name in params},
                  "options": {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}}
        key = json.dumps(record, sort_keys=True)
        if key in records:
            records[key]["count"] += 1
        else:
            records[key] = {**record, "count": 1}
        try:
            return original(self, *args, **kwargs)
        except Exception as exc:  # e.g. mixed dtypes in a tl.dot: the interpreter checks what the compiler checks
            records[key]["error"] = f"{type(exc).__name__}: {exc}"[:500]
            raise

    InterpretedFunction.run = run
    return records


def fall_back_when_rejected(failures: list[dict[str, str]]) -> None:
    """A public op whose forward launch the interpreter rejects runs its reference for that call, so that the
    step goes on and records every other launch; the failing launch keeps its record (marked "error")."""
    from triton.runtime.errors import InterpreterError

    for package, name, ref_module, ref_name in OPS:
        module = importlib.import_module(package)
        original, reference = getattr(module, name), getattr(importlib.import_module(ref_module), ref_name)

        def op(*args: Any, _original=original, _reference=reference, _name=name, **kwargs: Any) -> Any:
            try:
                return _original(*args, **kwargs)
            except InterpreterError as exc:
                failures.append({"op": _name, "error": str(exc)[:500]})
                return _reference(*args, **kwargs)

        setattr(module, name, op)


def build_model():
    """The unified model of the ``shapes-demo`` preset (as ``Trainer.model_config`` builds it), fp32 parameters."""
    from multimodal.config import preset
    from multimodal.model import TokenIds, UnifiedModel, model_preset
    from multimodal.training.config import train_preset

    cfg = train_preset("shapes-demo")
    backbone = preset(cfg.preset).replace(**cfg.model)
    backbone = backbone.replace(vocab_size=-(-cfg.vocab_size // 64) * 64, engram=ENGRAM, num_hidden_layers=LAYERS,
                                layer_types=backbone.layer_types[:LAYERS],
                                mlp_layer_types=backbone.mlp_layer_types[:LAYERS])
    config = model_preset(cfg.preset, TokenIds())
    channels = config.latent_channels
    heads = {f"{kind}_head": {**getattr(config, f"{kind}_head").__dict__, **cfg.flow_head_overrides(kind),
                              "latent_channels": channels} for kind in ("image", "video")}
    config = config.replace(backbone=backbone, num_image_queries=QUERIES, num_video_queries=QUERIES, **heads)
    return UnifiedModel(config).train()


def training_step(model, device: str = "cpu") -> float:
    """The four media losses and the text loss under bf16 autocast, one backward (as ``Trainer.train_step``).

    The model is on ``device``; a CUDA step (for comparing its launches with the emulated ones) draws its noise from
    the global generator."""
    import torch

    from multimodal.training.tasks import TextTask

    gen = torch.Generator().manual_seed(0)
    cfg = model.config
    vocab = cfg.backbone.vocab_size
    ids = lambda n: torch.randint(9, vocab, (n,), generator=gen).tolist()  # noqa: E731  (past the special ids)
    image = torch.randn(BATCH, cfg.latent_channels, 1, LATENT_SIDE, LATENT_SIDE, generator=gen)  # [B, C, T', h, w]
    video = torch.randn(BATCH, cfg.latent_channels, 2, LATENT_SIDE, LATENT_SIDE, generator=gen)  # 2 latent frames
    prompts = [ids(5 + 2 * i) for i in range(BATCH)]  # different lengths: padded batches
    text_ids = torch.randint(9, vocab, (BATCH, 16), generator=gen)
    text_mask = torch.ones_like(text_ids)
    text_mask[-1, 12:] = 0
    image, video, text_ids, text_mask = (t.to(device) for t in (image, video, text_ids, text_mask))
    noise = gen if device == "cpu" else None
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        losses = [
            model.generation_loss(prompts, image, "image", generator=noise),
            model.generation_loss(prompts, video, "video", generator=noise),
            model.caption_loss(list(image), "image", prompts),
            model.caption_loss(list(video), "video", prompts),
            TextTask(tokenizer=None, seq_len=64).loss(model, {"input_ids": text_ids, "attention_mask": text_mask})[0],
        ]
        loss = sum(losses)
    loss.backward()
    return float(loss.detach())


def interpreter_error() -> str | None:
    """None if this install's interpreter runs the kernels (one fp32 mhc_post and sparse_mqa, forward and backward,
    CPU tiles), else the error: some Triton / NumPy pairs cannot interpret them at all (Triton 3.6 with NumPy 2:
    'only 0-dimensional arrays can be converted to Python scalars'), which says nothing about dtypes."""
    import torch
    from triton.runtime.errors import InterpreterError

    from multimodal.kernels import mhc_post, sparse_mqa

    gen = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=gen).requires_grad_()  # noqa: E731
    try:
        out = mhc_post(r(1, 3, 16), r(1, 3, 2, 16), r(1, 3, 2), r(1, 3, 2, 2)).sum()
        out = out + sparse_mqa(r(1, 3, 2, 16), r(1, 5, 16), torch.randint(0, 5, (1, 3, 4), generator=gen), 0.25).sum()
        out.backward()
    except InterpreterError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


def main(path: str) -> None:
    if os.environ.get("TRITON_INTERPRET") != "1" or os.environ.get("MULTIMODAL_KERNELS") != "triton":
        raise SystemExit("run with TRITON_INTERPRET=1 and MULTIMODAL_KERNELS=triton set before Python starts")
    import torch

    import triton

    broken = interpreter_error()
    if broken is not None:
        Path(path).write_text(json.dumps({"interpreter_error": broken, "triton": triton.__version__}))
        return
    torch.manual_seed(0)
    autocast_kernels = emulate_cuda_autocast()  # noqa: F841  (registered while the library object lives)
    use_cuda_tiles()
    records = record_launches()
    failures: list[dict[str, str]] = []
    fall_back_when_rejected(failures)
    start = time.perf_counter()
    model = build_model()
    loss = training_step(model)
    Path(path).write_text(json.dumps({"loss": loss, "seconds": time.perf_counter() - start,
                                      "fallbacks": failures, "launches": list(records.values())}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
