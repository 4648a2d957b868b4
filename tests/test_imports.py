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


def _loaded_after(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after running `statement`."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_runners_protocol_loads_only_core() -> None:
    """`vsrt_service.core.protocol` (what the runner speaks) loads nothing above core and
    none of the service's third-party libraries."""
    loaded = _loaded_after("import vsrt_service.core.protocol")
    above_core = [
        m
        for m in loaded
        if m.startswith("vsrt_service.")
        and not (m == "vsrt_service.core" or m.startswith("vsrt_service.core."))
    ]
    service_libraries = [m for m in loaded if m.split(".")[0] in ("aiohttp", "aiosqlite", "ffmpeg")]
    assert not above_core, above_core
    assert not service_libraries, service_libraries


def test_the_runner_program_loads_no_service_layer() -> None:
    loaded = _loaded_after("import gpu_runner.runner")
    layers = ("jobs", "models", "runners", "web", "service", "cli")
    above_core = [
        m
        for m in loaded
        if m.split(".")[0] == "vsrt_service" and m.count(".") >= 1 and m.split(".")[1] in layers
    ]
    assert not above_core, above_core
    assert "vsrt_service.core.protocol" in loaded


def test_the_package_exports_resolve_lazily() -> None:
    """`from vsrt_service import Service` still works; `import vsrt_service` alone loads no layer."""
    loaded = _loaded_after("import vsrt_service")
    assert [m for m in loaded if m.startswith("vsrt_service.")] == []
    loaded = _loaded_after(
        "from vsrt_service import Service, Settings, load_settings, create_app\n"
        "import vsrt_service\n"
        "assert Service.__module__ == 'vsrt_service.service', Service\n"
        "assert Settings.__module__ == 'vsrt_service.core.config'\n"
        "assert create_app.__module__ == 'vsrt_service.web.app'\n"
        "assert sorted(vsrt_service.__all__) == ['Service', 'Settings', 'create_app', 'load_settings']\n"
        "try:\n    vsrt_service.nothing\nexcept AttributeError as exc:\n    assert 'nothing' in str(exc)\n"
        "else:\n    raise AssertionError('no AttributeError')"
    )
    assert "vsrt_service.service" in loaded
