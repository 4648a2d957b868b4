"""The service process stays free of torch and friends, even with its scheduler running."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("torch", "whisperx", "ctranslate2", "transformers", "faster_whisper", "pyannote")


def test_service_imports_and_runs_without_heavy_modules(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import asyncio, sys, time
        started = time.perf_counter()
        import vsrt_service, vsrt_service.cli, vsrt_service.jobs.pipeline
        from vsrt_service import Service, load_settings

        async def main():
            settings = load_settings(env={{}}, data_dir={str(tmp_path / "data")!r})
            async with Service(settings) as svc:
                await svc.pool.wait_ready(120)
                await asyncio.sleep(0.5)  # the scheduler has looped
                print("startup", round(time.perf_counter() - started, 3))
        asyncio.run(main())
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print("heavy", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "heavy []" in out.stdout, out.stdout
