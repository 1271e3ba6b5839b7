"""``python -m vitssl.tools.compile_check``: the kernels compiled for real GPUs on this
CPU-only machine, and the check's rules. Compiles run in a subprocess without
TRITON_INTERPRET (the test session interprets kernels, which cannot be compiled)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from vitssl.tools import aot  # noqa: E402
from vitssl.tools.compile_check import Job, findings  # noqa: E402


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def table_rows(stdout: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| kernel")]


def test_forward_on_sm90_compiles_to_wgmma_with_async_loads(tmp_path) -> None:  # noqa: ANN001
    from vitssl.kernels.attention_configs import tile, tuned_configs

    done = run(["-m", "vitssl.tools.compile_check", "--arch", "90", "--head-dims", "64",
                "--dtypes", "bf16", "--kernels", "fwd", "--jobs", "1", "--dump", str(tmp_path)])
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table_rows(done.stdout)
    wanted = {c.name for n in (197, 257, 577, 1025)
              for c in tuned_configs("fwd", tile(n), tile(64), 2, 90)}
    assert {r[1].removeprefix("d64-bf16-") for r in rows} == wanted
    for _, config, arch, regs, spills, smem, mma, loads, status in rows:
        assert (arch, mma, status, spills) == ("sm_90", "wgmma", "ok", "0")
        assert "cp.async" in loads or "tma" in loads
        assert 0 < int(regs) <= 255 and 0 < float(smem) <= 227
        for suffix in (".cubin", ".ptx"):
            assert (tmp_path / f"fwd-{config}-sm90{suffix}").stat().st_size > 0


def test_a_spilling_config_is_reported_and_fails() -> None:
    # 4 warps on a 128 x 128 tile at D = 128 cannot hold the accumulators in registers.
    code = ("import json; from vitssl.tools.compile_check import Job, run_job; "
            "r = run_job(Job('fwd', 90, 128, 'bf16', 'm128n128w4s2', ('packed',), 197), None); "
            "print(json.dumps([r.res.spill_bytes, r.res.registers, list(r.problems)]))")
    done = run(["-c", code])
    assert done.returncode == 0, done.stderr
    spills, regs, problems = json.loads(done.stdout.strip().splitlines()[-1])
    assert spills > 0 and regs == 255
    assert any("spills" in p for p in problems)


PTX_LOOP = """
$L__BB0_1:
    cp.async.cg.shared.global [%r1], [%rd1], 16, %r2;
    wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f1}, %rd2, %rd3, 1, 1, 1, 0, 1;
    @%p1 bra $L__BB0_1;
    bra.uni $L__BB0_2;
$L__BB0_2:
    ret;
"""


def test_ptx_reading_finds_the_main_loop_its_loads_and_mma() -> None:
    assert aot.mma_kind(PTX_LOOP) == "wgmma"
    assert aot.main_loop_loads(PTX_LOOP) == "cp.async"
    # the same instructions outside any loop: the loop loads synchronously
    moved = PTX_LOOP.replace("    cp.async.cg", "    ld.global.v4").replace(
        "    ret;", "    cp.async.cg.shared.global [%r1], [%rd1], 16, %r2;\n    ret;")
    assert aot.main_loop_loads(moved) == "sync"
    assert aot.main_loop_loads(PTX_LOOP.replace("@%p1 bra $L__BB0_1;", "")) == "no loop"
    assert aot.mma_kind(PTX_LOOP.replace("wgmma.mma_async", "mma")) == "mma.sync"
    assert aot.mma_kind(PTX_LOOP.replace("wgmma.mma_async.sync.aligned", "fma.rn")) == "none"


@pytest.mark.parametrize(("res", "expected"), [
    (aot.Resources(200, 0, 100_000, "wgmma", "cp.async"), []),
    (aot.Resources(255, 16, 100_000, "wgmma", "tma"), ["spills"]),
    (aot.Resources(200, 0, 240_000, "wgmma", "cp.async"), ["shared memory"]),
    (aot.Resources(200, 0, 100_000, "mma.sync", "cp.async"), ["no wgmma"]),
    (aot.Resources(200, 0, 100_000, "wgmma", "sync"), ["not asynchronous"]),
])
def test_rules_on_sm90(res: aot.Resources, expected: list[str]) -> None:
    got = findings(Job("fwd", 90, 64, "bf16", "m64n64w4s3", ("packed",), 197), res)
    assert len(got) == len(expected)
    assert all(e in g for e, g in zip(expected, got, strict=True))


def test_sm80_needs_no_wgmma_but_has_less_shared_memory() -> None:
    job = Job("fwd", 80, 64, "bf16", "m64n64w4s3", ("packed",), 197)
    assert findings(job, aot.Resources(200, 0, 100_000, "mma.sync", "cp.async")) == []
    assert findings(job, aot.Resources(200, 0, 200_000, "mma.sync", "cp.async"))


@pytest.mark.slow
def test_full_grid_passes() -> None:
    done = run(["-m", "vitssl.tools.compile_check"], timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 failed" in done.stdout
