"""The compile check of the Triton conv kernels (benchmarks/kernel_compile.py): its readings of
compiled code, fed fabricated input so that each failure is seen to be caught, and the check itself
on the real kernels, compiled ahead of time for the GPUs (no GPU needed: Triton's ptxas and
cuobjdump do the work). The check runs in a subprocess, without TRITON_INTERPRET, which conftest
sets on machines without CUDA and which makes the kernels uncompilable."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_compile.py"


def _load():
    spec = importlib.util.spec_from_file_location("kernel_compile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


kc = _load()
H100 = kc.TARGETS["sm_90a"]
A100 = kc.TARGETS["sm_80"]

def _run(tmp_path, *args, timeout):
    try:
        kc.find_tools()
    except kc.ToolMissing as exc:
        pytest.skip(f"cannot compile for the GPU here: {exc}")
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert proc.returncode == (1 if result["failures"] else 0)
    for failure in result["failures"]:  # every failing row is named in the script's summary
        assert f"FAIL {failure}" in proc.stdout
    return result


def _not_spills(result):
    """Every finding but register spills."""
    return [f"{' '.join(kc.table_cells(row)[:7])}: {failure}" for row in result["rows"]
            for failure in row["failures"] if not failure.startswith("spills ")]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("quick"), "--quick", timeout=900)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("full"), timeout=3000)


# ---------------------------------------------------------------------------------------------
# The real kernels.

def test_quick_covers_every_config_the_pruners_keep(quick):
    rows = quick["rows"]
    assert {(r["target"], r["dtype"]) for r in rows} == {("sm_90a", "bf16")}
    for kind in kc.KERNEL_KINDS:
        compiled = {f"{r['block_m']}x{r['block_n']}x{r['block_k']}:{r['warps']}:{r['stages']}"
                    for r in rows if r["kernel"] == kind}
        assert compiled and compiled == set(quick["kept"][kind]), kind
    # Layer 1 (Cin = 3) takes the forward's FLAT_K path: it is covered apart.
    assert any(r["kernel"] == "fwd" and r["layers"] == [1] for r in rows)


def test_launches_are_specialised_as_at_run_time(tmp_path):
    """Aligned pointers and multiples of 16 carry tt.divisibility=16 and strides of 1 are constants,
    as JITFunction.run specialises them: H = W = 224 is a multiple of 16, 14 is not, Cin = 3 is not."""
    result = _run(tmp_path, "--targets", "sm_90a", "--dtypes", "bf16", "--kernels", "fwd", "--layers", "1,2,13",
                  "--fwd-configs", "64x64x32:4:4", "--dump", str(tmp_path / "ir"), timeout=600)
    rows = {r["layers"][0]: r for r in result["rows"]}
    assert sorted(rows) == [1, 2, 13]
    for row in rows.values():
        assert {"x_ptr", "w_ptr", "b_ptr", "y_ptr", "NB", "COUT"} <= set(row["specialised"]["divisible_by_16"])
        assert row["specialised"]["constants"] == {"sxc": 1, "syc": 1}  # channels_last
    assert {"H", "W", "CIN"} <= set(rows[2]["specialised"]["divisible_by_16"])
    assert "H" not in rows[13]["specialised"]["divisible_by_16"]
    assert not {"CIN", "sxw"} & set(rows[1]["specialised"]["divisible_by_16"])
    # ... and the compiled code carries them.
    ttgir = (tmp_path / "ir" / "sm_90a_bf16_fwd_L2_64x64x32_4_4.ttgir").read_text()
    assert "%H: i32 {tt.divisibility = 16 : i32}" in ttgir
    assert "%x_ptr: !tt.ptr<bf16> {tt.divisibility = 16 : i32}" in ttgir
    assert "%H: i32 loc(" in (tmp_path / "ir" / "sm_90a_bf16_fwd_L13_64x64x32_4_4.ttgir").read_text()


def test_a_compile_error_is_a_failing_row(tmp_path):
    result = _run(tmp_path, "--targets", "sm_80", "--dtypes", "bf16", "--kernels", "wgrad", "--layers", "5",
                  "--wgrad-configs", "128x128x48:8:3", timeout=600)
    (row,) = result["rows"]
    assert row["failures"] == [f"compile error: {row['error']}"]
    assert "power of 2" in row["error"]


def test_quick_compiles_with_tensor_cores_async_loads_and_shared_memory_that_fits(quick):
    assert not _not_spills(quick)
    assert all(r["mma"] in ("wgmma", "mma.sync") for r in quick["rows"])


def test_quick_is_clean(quick):
    assert not quick["failures"]


def _estimate_is_honest(rows):
    """The pruners' shared-memory estimate is what a wgmma kernel compiles to (sm_90a), and never less
    than what any kernel needs, so a config they keep fits."""
    for r in rows:
        if r["pruner_estimate"] is None or r["error"]:
            continue
        assert r["pruner_estimate"] >= r["shared"], r
        if r["mma"] == "wgmma" and r["loads"]["verdict"] == "async":
            assert r["pruner_estimate"] == r["shared"], r


def test_the_pruners_shared_memory_estimate_is_the_compiled_one(quick):
    _estimate_is_honest(quick["rows"])


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_full_matrix_compiles_with_tensor_cores_async_loads_and_shared_memory_that_fits(full):
    assert {(r["target"], r["dtype"]) for r in full["rows"]} == {(t, d) for t in kc.TARGETS for d in kc.DTYPES}
    assert {layer for r in full["rows"] for layer in r["layers"]} == set(range(1, 14))
    assert not _not_spills(full)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_full_matrix_is_clean(full):
    assert not full["failures"]
    _estimate_is_honest(full["rows"])


# ---------------------------------------------------------------------------------------------
# The readings, on fabricated input: each failure the check exists for is caught.

USAGE = """
Resource usage:
 Common:
  GLOBAL:0
 Function conv_bias_relu_kernel:
  REG:255 STACK:{stack} SHARED:1024 LOCAL:{local} CONSTANT[0]:640 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

PTX_LOOP = """
.extern .shared .align 16 .b8 global_smem[];
	cp.async.cg.shared.global [ %r1 + 0 ], [ %rd1 + 0 ], 0x10, %r2;
	@%p2 bra 	$L__BB0_3;
$L__BB0_2:                              // =>This Inner Loop Header: Depth=1
{body}
	@%p3 bra 	$L__BB0_2;
$L__BB0_3:
	ld.global.b16 {{ %rs1 }}, [ %rd9 + 0 ];
	ret;
"""
WGMMA = "	wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1}, %rd1, %rd2, %p1, 1, 1, 0, 1;"
MMA_SYNC = "	mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1}, {%r1}, {%r2}, {%f2};"
CP_ASYNC = "	cp.async.cg.shared.global [ %r114 + 0 ], [ %rd6 + 0 ], 0x10, %r115;"
LD_GLOBAL = "	@%p12 ld.global.b16 { %rs1 }, [ %rd24 + 0 ];"
TMA = "	cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd1, {%r2, %r3}], [%r4];"

SASS = """
        /*0c90*/              @!P1 BRA 0x0ce0 ;                                  /* 0x0 */
        /*0ca0*/                   {load} ;                                      /* 0x0 */
        /*0cb0*/                   {mma} ;                                       /* 0x0 */
        /*0cc0*/              @!P1 BRA 0x0ca0 ;                                  /* 0x0 */
        /*0cd0*/                   LDG.E R2, desc[UR4][R2.64] ;                   /* 0x0 */
        /*0ce0*/                   EXIT ;                                        /* 0x0 */
        /*0cf0*/                   BRA 0xcf0;                                    /* 0x0 */
"""


def _row(**changes):
    """A clean sm_90a row, as compile_and_analyse makes it, with ``changes``."""
    row = dict(error=None, layers=[5, 6], regs=128, stack=0, local=0, spill=0, shared=98304, static_shared=1024,
               smem_total=99328, blocks_per_sm=2, mma="wgmma", sass_mma="HGMMA",
               loads=kc._loads(0, 12, 0), sass_loads=kc._loads(0, 48, 0))
    row.update(changes)
    return row


def test_a_clean_row_passes():
    assert kc.judge(_row(), H100) == ([], [])


def test_spills_are_read_from_cuobjdump_and_fail():
    usage = kc.parse_resource_usage(USAGE.format(stack=24, local=8))["conv_bias_relu_kernel"]
    assert (usage["REG"], usage["STACK"], usage["LOCAL"], usage["SHARED"]) == (255, 24, 8, 1024)
    failures, _ = kc.judge(_row(stack=24, local=8, spill=32), H100)
    assert failures == ["spills 32 B/thread (stack 24, local 8)"]
    assert kc.parse_resource_usage(USAGE.format(stack=0, local=0))["conv_bias_relu_kernel"]["STACK"] == 0


def test_shared_memory_over_the_device_limit_fails():
    over = _row(shared=A100.smem_per_block + 1, static_shared=0, smem_total=A100.smem_per_block + 1, mma="mma.sync",
                sass_mma="HMMA")
    assert any("shared memory" in f for f in kc.judge(over, A100)[0])
    assert not kc.judge(_row(shared=A100.smem_per_block + 1, smem_total=A100.smem_per_block + 1025), H100)[0]


def test_a_kernel_without_tensor_core_mma_fails():
    ptx = PTX_LOOP.format(body="	fma.rn.f32 %f1, %f2, %f3, %f1;\n" + CP_ASYNC)
    assert kc.mma_kind(ptx) == ("none", "")
    assert kc.main_loop_loads(ptx)["verdict"] == "no loop"
    row = _row(mma="none", sass_mma="none", loads=kc.main_loop_loads(ptx), sass_loads=kc.main_loop_loads(ptx))
    failures, _ = kc.judge(row, H100)
    assert "no tensor-core MMA (none)" in failures
    assert any("no loop main-loop loads" in f for f in failures)


def test_mma_kinds_are_read_from_ptx_and_sass():
    assert kc.mma_kind(PTX_LOOP.format(body=WGMMA))[0] == "wgmma"
    assert kc.mma_kind(PTX_LOOP.format(body=MMA_SYNC)) == ("mma.sync",
                                                            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
    assert kc.sass_mma(SASS.format(load="LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64]",
                                   mma="HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24")) == "HGMMA"
    assert kc.sass_mma(SASS.format(load="NOP", mma="FFMA R1, R2, R3, R1")) == "none"
    # mma.sync on Hopper still runs on tensor cores (BLOCK_M = 32 cannot take wgmma): a note, not a failure.
    assert kc.judge(_row(mma="mma.sync", sass_mma="HMMA"), H100) == ([], ["mma.sync on sm_90a, not wgmma"])
    # A100 has no wgmma.
    assert kc.judge(_row(mma="wgmma"), A100)[0]


def test_synchronous_main_loop_loads_fail_except_on_layer_1():
    ptx = PTX_LOOP.format(body="\n".join([CP_ASYNC, LD_GLOBAL, WGMMA]))
    loads = kc.main_loop_loads(ptx)
    # The ld.global after the loop (an epilogue's) and the cp.async before it (the prologue's) do not count.
    assert loads == {"verdict": "sync", "sync": 1, "async": 1, "tma": 0}
    failures, _ = kc.judge(_row(loads=loads, sass_loads=loads), H100)
    assert failures == ["sync main-loop loads (1 ld.global, 1 cp.async, 0 TMA)"]
    failures, notes = kc.judge(_row(layers=[1], loads=loads, sass_loads=loads), H100)
    assert not failures and "allowed for layer 1" in notes[0]
    # Another layer sharing the compile gets no such pass.
    assert kc.judge(_row(layers=[1, 2], loads=loads, sass_loads=loads), H100)[0]


def test_asynchronous_and_tma_loads_pass():
    assert kc.main_loop_loads(PTX_LOOP.format(body=CP_ASYNC + "\n" + WGMMA)) == kc._loads(0, 1, 0)
    assert kc.main_loop_loads(PTX_LOOP.format(body=TMA + "\n" + WGMMA))["verdict"] == "tma"


def test_sass_main_loop_is_read_and_checked_against_the_ptx():
    sync = kc.sass_main_loop_loads(SASS.format(load="LDG.E.U16 R4, desc[UR4][R2.64]",
                                               mma="HMMA.16816.F32.BF16 R8, R4, R6, R8"))
    assert sync == kc._loads(1, 0, 0)  # the LDG after the loop is not counted
    async_ = kc.sass_main_loop_loads(SASS.format(load="@P0 LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64]",
                                                 mma="HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24"))
    assert async_ == kc._loads(0, 1, 0)
    failures, _ = kc.judge(_row(sass_loads=sync), H100)
    assert failures == ["the SASS main loop reads sync where the PTX reads async"]


def test_blocks_per_sm():
    # 255 registers round up to 256: 32 KB of registers per 4-warp block, 2 blocks.
    assert kc.blocks_per_sm(255, 4, 33792, H100) == {"by_regs": 2, "by_smem": 6, "blocks": 2}
    # 133 registers round up to 136: an 8-warp block needs 34,816 of the 65,536.
    assert kc.blocks_per_sm(133, 8, 99328, H100)["by_regs"] == 1
    # Shared memory: 164 KB per A100 SM, 1 KB kept by the driver per block.
    assert kc.blocks_per_sm(64, 4, 73728, A100)["by_smem"] == 2
    assert kc.blocks_per_sm(32, 1, 0, A100)["blocks"] == 32  # the SM's block limit


def test_default_split_is_computed_for_the_target_gpu():
    # Layer 1: one 128x128 tile of (27 rows, 64 columns), so two waves of 132 SMs want 264 splits.
    assert kc.target_split(27, 64, 64 * 224 * 224, H100.sms) == 264
    assert kc.target_split(27, 64, 64 * 224 * 224, A100.sms) == 216
    # Layer 13: 36 x 4 tiles already fill the GPU.
    assert kc.target_split(9 * 512, 512, 64 * 14 * 14, H100.sms) == 2


def test_arguments():
    args = kc.parse_args(["--quick"])
    assert (args.target_list, args.dtype_list, args.kind_list, args.layer_list) == (
        ["sm_90a"], ["bf16"], ["fwd", "dgrad", "wgrad"], list(range(1, 14)))
    args = kc.parse_args(["--layers", "1-3,13", "--targets", "sm_80", "--fwd-configs", "128x64x64:4:3"])
    assert args.layer_list == [1, 2, 3, 13] and args.target_list == ["sm_80"] and args.dtype_list == ["bf16", "fp32"]
    assert [kc.config_name(c) for c in args.fwd_config_list] == ["128x64x64:4:3"]
    for bad in (["--layers", "14"], ["--targets", "sm_75"], ["--fwd-configs", "128x64"]):
        with pytest.raises(SystemExit):
            kc.parse_args(bad)
    assert kc._layer_text([2, 3, 4, 7, 9, 10]) == "2-4,7,9-10"
