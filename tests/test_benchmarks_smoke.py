"""The benchmark scripts still run: each with `--quick` (toy shapes, seconds), ending in its summary line."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_runs_and_prints_its_summary():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "smoke.py")],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for summary in ("train_step overhead:", "inference throughput vs stock HF ViT:", "jigsaw_op share of a step",
                    "data_loading speed-up of undecoded bytes:", "busy_machine adaptive threads:",
                    "main_job_levers time per image vs fp32 eager:"):
        assert summary in result.stdout
