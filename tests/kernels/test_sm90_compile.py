"""Every Triton kernel compiles to PTX and a cubin for an H100/H200 (sm_90) with the GPU tile sizes.

The CPU interpreter runs the kernels but does not check what only the GPU compiler checks (tl.dot
operand shapes >= 16, dtype agreement inside dots, register-tile ranks, loop-carried types). This
test compiles each kernel ahead of time for ``GPUTarget("cuda", 90, 32)`` with bf16 activations, so
a machine without a GPU still catches those errors. It needs Triton's bundled NVIDIA backend (ptxas).
"""

from __future__ import annotations

import pytest

from multimodal.kernels.dispatch import interpreter_active

pytestmark = pytest.mark.skipif(interpreter_active(), reason="kernels are interpreted functions in this process")

BF16_EXCEPT_FP32 = {
    # kernel module, kernel name: (fp32 / int64 pointer names, float scalars, constexprs, num_warps)
    ("moe", "moe_up_kernel"): (
        {}, {"token_ptr", "blk_expert_ptr", "blk_row_ptr", "seg_end_ptr"}, {"limit"},
        dict(HAS_LIMIT=True, SAVE_GU=True, BM=64, BN=128, BK=64, PREC="tf32"), 4),
    ("moe", "grouped_gemm_kernel"): (
        {"scale_ptr"}, {"a_idx_ptr", "c_idx_ptr", "blk_expert_ptr", "blk_row_ptr", "seg_end_ptr"}, set(),
        dict(GATHER_A=True, SCATTER_C=True, HAS_SCALE=True, ACCUMULATE=True, BM=64, BN=128, BK=64, PREC="tf32"), 4),
    ("moe", "moe_down_bwd_kernel"): (
        {"wsort_ptr", "dwpart_ptr"}, {"token_ptr", "blk_expert_ptr", "blk_row_ptr", "seg_end_ptr"}, {"limit"},
        dict(HAS_LIMIT=True, BM=64, BN=128, BK=64, PREC="tf32"), 4),
    ("moe", "grouped_wgrad_kernel"): (
        {"scale_ptr"}, {"a_idx_ptr", "seg_start_ptr", "seg_end_ptr"}, set(),
        dict(GATHER_A=True, HAS_SCALE=True, BM=64, BN=128, BK=64, PREC="tf32"), 4),
    ("sparse_attention", "sparse_mqa_fwd_kernel"): (
        {"sink_ptr", "lse_ptr"}, {"idx_ptr"}, {"scale"},
        dict(HAS_SINK=True, PARTIAL=True, BH=16, BK=16, BD=512, PREC="tf32"), 8),
    ("sparse_attention", "sparse_mqa_combine_kernel"): (
        {"op_ptr", "lp_ptr", "lse_ptr"}, set(), set(), dict(BH=16, BD=512), 8),
    ("sparse_attention", "sparse_mqa_bwd_kernel"): (
        {"lse_ptr", "delta_ptr", "dkv_ptr"}, {"idx_ptr"}, {"scale"}, dict(BH=16, BK=16, BD=512, PREC="tf32"), 8),
    ("indexer", "indexer_scores_kernel"): (
        {"out_ptr"}, {"thr_ptr"}, {"scale"}, dict(BS=32, BT=64, BD=128, PREC="tf32"), 4),
    ("mhc", "mhc_pre_kernel"): (
        {"fn_ptr", "base_ptr", "scale_ptr", "post_ptr", "comb_ptr", "pre_ptr", "mix_ptr", "rstd_ptr"}, set(),
        {"hc_eps", "norm_eps"}, dict(NP=4, MP=32, BT=16, BK=128, BD=128, PREC="ieee"), 4),
    ("mhc", "mhc_coef_bwd_kernel"): (
        {"mix_ptr", "base_ptr", "scale_ptr", "dpre_ptr", "dpost_ptr", "dcomb_ptr", "dz_ptr"}, set(), {"hc_eps"},
        dict(NP=4, MP=32, BT=16), 4),
    ("mhc", "mhc_pre_bwd_dpre_kernel"): ({"dpre_ptr"}, set(), set(), dict(NP=4, BT=16, BD=128), 4),
    ("mhc", "mhc_pre_bwd_dx_kernel"): (
        {"fn_ptr", "dz_ptr", "coef_ptr", "pre_ptr"}, set(), set(), dict(MP=32, BT=16, BK=128, PREC="ieee"), 4),
    ("mhc", "mhc_post_kernel"): ({"post_ptr", "comb_ptr"}, set(), set(), dict(NS=4, NP=4, BT=16, BD=128), 4),
    ("mhc", "mhc_post_bwd_kernel"): (
        {"post_ptr", "comb_ptr", "dpost_ptr", "dcomb_ptr"}, set(), set(), dict(NS=4, NP=4, BT=16, BD=128), 4),
}


@pytest.mark.parametrize("module,name", sorted(BF16_EXCEPT_FP32))
def test_kernel_compiles_for_sm90(module, name):
    import importlib

    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("Triton's NVIDIA backend is not installed")
    fp32, int64, floats, constexprs, num_warps = BF16_EXCEPT_FP32[(module, name)]
    kernel = getattr(importlib.import_module(f"multimodal.kernels.{module}.triton"), name)
    signature = {}
    for arg in kernel.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg.endswith("_ptr"):
            signature[arg] = "*fp32" if arg in fp32 else "*i64" if arg in int64 else "*bf16"
        else:
            signature[arg] = "fp32" if arg in floats else "i32"
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0
