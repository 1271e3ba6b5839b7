"""benchmarks/ssl_quality.py --quick: every row and output file of the quality table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ssl_quality.py"


def test_quick_run_writes_json_markdown_and_chart(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--objectives",
                           "masked-patch,dino", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["tasks"]["builtin:digits"]
    assert list(rows) == ["masked-patch", "dino", "random init", "raw pixels"]
    assert "finetune_top1" in rows["dino"] and "finetune_top1" not in rows["raw pixels"]
    assert all(0 <= v <= 100 for row in rows.values() for k, v in row.items()
               if k.endswith("_top1"))
    assert "| raw pixels |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
