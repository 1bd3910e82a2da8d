"""A run leaves $HOME byte-for-byte unchanged: ONNX Runtime's telemetry files are switched off."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

# onnxruntime also stays quiet when it believes it runs in CI (its own list of variables), which
# would make both tests below pass for the wrong reason in CI: a user's machine has none of them
_QUIETING = ("ORT_DISABLE_TELEMETRY", "ORT_TELEMETRY_DISABLED", "CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI",
             "CIRCLECI", "TRAVIS", "JENKINS_URL", "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR",
             "BITBUCKET_BUILD_NUMBER", "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _QUIETING}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    return env


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def test_feather_run_leaves_home_untouched(export_feather, tmp_path):
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (home / ".config" / "keep.txt").write_text("a user's file\n")
    before = _snapshot(home)
    env = _env(home)
    exe = Path(sys.executable).with_name("feather-run")
    proc = subprocess.run([str(exe), str(export_feather), "--max-new-tokens", "2"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _snapshot(home) == before


def test_onnxruntime_alone_would_write_there(tmp_path):
    """The control: without the switch, importing onnxruntime writes under ~/.cache (so the test
    above can fail). If a later onnxruntime stops doing it, this says so."""
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home)
    subprocess.run([sys.executable, "-c", "import onnxruntime"], check=True, env=env, cwd=tmp_path, timeout=120)
    written = [str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()]
    assert any("onnxruntime" in w for w in written), written
