"""benchmarks/ is a package run as modules (`python -m benchmarks.NAME`): no file in it edits the import path,
and every script answers --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.efficientnet_lite0 import import_from_wheel

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def scripts() -> list[str]:
    return sorted(path.stem for path in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__":' in path.read_text())


def test_no_file_under_benchmarks_edits_the_import_path():
    offenders = [str(path.relative_to(ROOT)) for path in sorted(BENCHMARKS.iterdir())
                 if path.is_file() and "sys.path" in path.read_text(errors="replace")]
    assert offenders == []
    assert (BENCHMARKS / "__init__.py").is_file()


def test_every_benchmark_script_answers_help():
    names = scripts()
    assert {"published", "transfer", "digits_e2e", "real_training", "gpu_common"} <= set(names)
    # one interpreter for all of them: each module run as `python -m benchmarks.NAME --help` would run it
    program = """
import contextlib, io, json, runpy, sys
done = {}
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=True)
        code = "returned"
    except SystemExit as exit:
        code = exit.code
    done[name] = [code, out.getvalue()]
print(json.dumps(done))
"""
    ran = subprocess.run([sys.executable, "-c", program, *names], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    for name, (code, text) in json.loads(ran.stdout.strip().splitlines()[-1]).items():
        assert code in (0, None), f"{name}: exit {code}"
        assert text.startswith("usage: ") and "-h, --help" in text, f"{name}: {text[:200]}"


def test_a_package_imports_straight_from_a_wheel_without_touching_the_import_path(tmp_path):
    import zipfile

    wheel = tmp_path / "demo_pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo_wheel_pkg/__init__.py",
                         "from .core import VALUE\nfrom demo_wheel_pkg.core import twice\n")
        archive.writestr("demo_wheel_pkg/core.py", "VALUE = 21\n\ndef twice():\n    return 2 * VALUE\n")
    before = list(sys.path)
    try:
        module = import_from_wheel(wheel, "demo_wheel_pkg")
        assert (module.VALUE, module.twice()) == (21, 42) and sys.path == before
        assert import_from_wheel(wheel, "demo_wheel_pkg") is module
    finally:
        for name in ("demo_wheel_pkg", "demo_wheel_pkg.core"):
            sys.modules.pop(name, None)
