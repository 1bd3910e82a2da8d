"""One home per option domain: precisions, dtypes, targets, graph roles, providers and build
modes are tabled once, and every other module (and every CLI's ``choices=``, ``--threads``,
``--provider`` and ``--max-seq``) takes them from there.

The scan reads the package sources with ``ast``: a tuple / list / set literal equal (as a set)
to a home table, a dict literal keyed by exactly a home table's values, or a ``choices=``
literal drawn from one, outside the table's home module, fails with its file and line. A map
keyed by a domain that belongs to its own module (validation tolerances, operator allow-lists,
ONNX Runtime's execution providers) is listed in ``MAPS`` and must cover exactly that domain.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from feather.build.engines import BUILD_MODES
from feather.manifest import BOUNDS, DTYPES, PRECISION_DTYPE, PRECISIONS, ROLES, SEGMENT_INPUTS, TARGETS, graphs
from feather.runtime.backends import MAX_THREADS, ORT_PROVIDERS, PROVIDERS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("src/feather",)
"""The package's folder (scripts/ are stdlib-only at import: not scanned)."""
SCHEMA = "src/feather/manifest/schema.py"
GRAPHS = "src/feather/manifest/graphs.py"
DOMAINS = {
    "precisions": (PRECISIONS, SCHEMA),
    "dtypes": (DTYPES, SCHEMA),
    "targets": (TARGETS, SCHEMA),
    "segment input roles": (SEGMENT_INPUTS, GRAPHS),
    "segment output roles": (tuple(ROLES["segment"][1]), GRAPHS),
    "providers": (PROVIDERS, "src/feather/providers.py"),
    "ONNX Runtime providers": (ORT_PROVIDERS, "src/feather/providers.py"),
    "build modes": (BUILD_MODES, "src/feather/build/engines.py"),
}
"""Domain -> (its one table, the module that holds it)."""
MAPS = {
    ("src/feather/export/validate.py", "TOLERANCE"): "precisions",
    ("src/feather/export/manifest_build.py", "TOLERANCES"): "precisions",
    ("src/feather/export/onnx_io.py", "TARGET_OPS"): "targets",
    ("src/feather/runtime/backends/onnxruntime.py", "EPS"): "ONNX Runtime providers",
}
"""Dicts keyed by a domain that hold their own module's knowledge -> the domain they must cover."""


def _sources(root: Path = ROOT) -> list[tuple[str, ast.Module]]:
    files = sorted(p for d in PACKAGE_DIRS for p in (root / d).rglob("*.py"))
    assert root != ROOT or len(files) > 50, files  # the scan sees the package
    return [(p.relative_to(root).as_posix(), ast.parse(p.read_text(), str(p))) for p in files]


def _strings(nodes) -> list[str] | None:
    """The values of a literal's elements when every one is a string constant, else None."""
    values = [n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) else None for n in nodes]
    return None if None in values else values


def _domain_of(values: list[str]) -> str | None:
    """The domain whose table equals ``values`` as a set (two values or more: one word is no table)."""
    if len(set(values)) < 2:
        return None
    return next((name for name, (table, _) in DOMAINS.items() if set(values) == set(table)), None)


def _dict_names(tree: ast.Module) -> dict[int, str]:
    """id(dict literal) -> the name it is assigned to at module level."""
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    names[id(node.value)] = target.id
    return names


def _scan(root: Path = ROOT) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """(violations, the keys of every ``MAPS`` entry found)."""
    bad, maps = [], {}
    for path, tree in _sources(root):
        named = _dict_names(tree)
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = _strings(node.elts)
                domain = values and _domain_of(values)
                if domain and path != DOMAINS[domain][1]:
                    bad.append(f"{where}: {values} types out the {domain}; import them from {DOMAINS[domain][1]}")
            elif isinstance(node, ast.Dict) and None not in node.keys:
                keys = _strings(node.keys)
                domain = keys and _domain_of(keys)
                name = named.get(id(node))
                if (path, name) in MAPS:
                    maps[(path, name)] = keys or []
                elif domain and path != DOMAINS[domain][1]:
                    bad.append(f"{where}: a dict keyed by the {domain} ({keys}); build it from {DOMAINS[domain][1]}'s "
                               "table, or list it in MAPS if it is this module's own knowledge")
            elif isinstance(node, ast.keyword) and node.arg == "choices":
                values = isinstance(node.value, (ast.Tuple, ast.List, ast.Set)) and _strings(node.value.elts)
                for domain, (table, home) in DOMAINS.items():
                    if values and set(values) <= set(table):
                        bad.append(f"{where}: choices={values} is a literal; use the {domain} table from {home}")
                        break
    return bad, maps


def test_every_option_domain_is_tabled_once():
    bad, _ = _scan()
    assert not bad, "\n".join(bad)


def test_maps_keyed_by_a_domain_cover_exactly_that_domain():
    _, maps = _scan()
    assert set(maps) == set(MAPS), f"MAPS entries not found in the sources: {sorted(set(MAPS) - set(maps))}"
    for key, domain in MAPS.items():
        assert set(maps[key]) == set(DOMAINS[domain][0]), (key, maps[key], DOMAINS[domain][0])
    assert list(PRECISION_DTYPE) == list(PRECISIONS) and set(PRECISION_DTYPE.values()) == set(DTYPES)


def test_the_scan_catches_a_retyped_table(tmp_path):
    """The scan itself: a retyped table, a literal choices= and an unlisted map are caught; one
    word, a subset, or a table in its own home is not."""
    (tmp_path / "src" / "feather" / "manifest").mkdir(parents=True)
    (tmp_path / "src" / "feather" / "bad.py").write_text(
        'TARGETS = ("onnxruntime", "portable")\nparser.add_argument("--precision", choices=["fp16"])\n'
        'TOL = {"fp32": 1, "fp16": 2}\nfeeds = [r for r in ["hidden", "keep_index", "position_ids", "past_len"]]\n'
        'ok = ("fp32",), {"hidden", "logits"}, ("cpu", "gpu")\n')
    (tmp_path / SCHEMA).write_text('PRECISIONS = ("fp32", "fp16")\n')
    bad, _ = _scan(tmp_path)
    assert sorted(int(b.split(":")[1]) for b in bad) == [1, 2, 3, 4], bad


ROLE_NAMES = {graphs.KEEP_INDEX, graphs.POSITION_IDS, graphs.PAST_LEN, graphs.HIDDEN_OUT, graphs.IMAGE_FEATURES,
              graphs.EMBEDS, *graphs.KV_NAMES.values()}
"""Tensor names and KV templates of the graph I/O contract that only ``graphs`` may spell out. Not
listed: ``hidden``, ``logits`` and ``score`` (common words: timings, results) and ``input_ids`` /
``pixel_values`` (also transformers' own processor keys, which the reference reads)."""


def _role_literals(root: Path = ROOT) -> list[str]:
    """'file:line: literal' for each string constant (docstrings aside) naming a graph role's
    tensor or a KV template outside ``GRAPHS``."""
    bad = []
    for path, tree in _sources(root):
        if path == GRAPHS:
            continue
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ROLE_NAMES and id(node) not in docs:
                bad.append(f"{path}:{node.lineno}: {node.value!r}; use feather.manifest.graphs")
    return bad


def test_graph_role_names_are_spelled_only_in_the_contract():
    bad = _role_literals()
    assert not bad, "\n".join(bad)


def test_the_role_scan_catches_a_literal_name(tmp_path):
    (tmp_path / "src" / "feather" / "manifest").mkdir(parents=True)
    (tmp_path / "src" / "feather" / "bad.py").write_text(
        '"""past_len in a docstring is prose."""\nfeeds = {"past_len": 1}\nkv = "cache.%d.key" % 3\n'
        'ok = ("hidden", "logits", "score", "input_ids")\n')
    (tmp_path / GRAPHS).write_text('PAST_LEN = "past_len"\n')
    assert _role_literals(tmp_path) == ["src/feather/bad.py:2: 'past_len'; use feather.manifest.graphs",
                                        "src/feather/bad.py:3: 'cache.%d.key'; use feather.manifest.graphs"]


def test_calls_to_add_argument_for_threads_and_provider_live_in_feather_cli():
    """Every CLI takes --threads and --provider from ``feather.cli``'s helpers, so the rules below
    cover them all."""
    bad = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in ("--threads", "--provider") and path != "src/feather/cli.py"):
                bad.append(f"{path}:{node.lineno}: {node.args[0].value}; use cli.add_threads_arg / add_provider_arg")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- the CLIs take their bounds from the tables
def _refused_in_one_line(capsys, run, flag: str) -> str:
    code = run()
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1 and "Traceback" not in err, (code, out, err)
    assert f"error: argument {flag}: got " in lines[0], lines[0]
    return lines[0]


def test_max_seq_beyond_the_manifest_bound_is_refused_before_anything_is_exported(tmp_path, capsys):
    from feather.export.cli import build_parser, main

    low, high = BOUNDS["max_seq"]
    out = tmp_path / "out"
    for value in (300000, high + 1, low - 1):
        line = _refused_in_one_line(capsys, lambda v=value: main(["--model", "tiny", "-o", str(out),
                                                                  "--max-seq", str(v)]), "--max-seq")
        assert line == f"feather-export: error: argument --max-seq: got {value}, expected an integer in {low}..{high}"
    assert not list(tmp_path.iterdir())
    assert build_parser().parse_args(["--max-seq", str(high)]).max_seq == high


def test_max_seq_beyond_the_manifest_bound_is_refused_by_the_api(tmp_path):
    from feather.errors import ConfigError
    from feather.export import export

    with pytest.raises(ConfigError, match=r"^max_seq: got 300000, expected an integer in 16\.\.262144$"):
        export(model="tiny", output=tmp_path / "out", max_seq=300000, quiet=True)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("module", ["feather.runtime.cli", "feather.serve.cli"])
def test_help_lists_every_provider_and_a_bad_one_is_one_line(module, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps help at the terminal's width (and after hyphens)
    main = importlib.import_module(module).main
    assert main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for provider in PROVIDERS:
        assert provider in help_text
    assert "tensorrt-native (engines from feather-build)" in help_text
    code = main(["folder", "--provider", "gpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "argument --provider: invalid choice: 'gpu'" in lines[0], lines


THREADS_CLIS = {
    "feather-run": ("feather.runtime.cli", ["folder"]),
    "feather-serve": ("feather.serve.cli", ["folder"]),
    "feather-eval": ("feather.eval.cli", ["folder", "--data", "x.jsonl"]),
    "feather-bench": ("feather.bench.cli", []),
    "feather-quantize": ("feather.calibration.cli", ["folder"]),
    "soak": ("feather.bench.soak", []),
    "profile": ("feather.bench.profile", ["folder"]),
}
"""Every CLI with --threads -> (module with build_parser, its required arguments)."""


@pytest.mark.parametrize("name", list(THREADS_CLIS))
def test_threads_has_one_rule_everywhere(name, capsys):
    module, required = THREADS_CLIS[name]
    parser = importlib.import_module(module).build_parser()
    for ok in (1, MAX_THREADS):
        assert parser.parse_args([*required, "--threads", str(ok)]).threads == ok
    for bad in ("0", str(MAX_THREADS + 1), "-1", "two"):
        def parse(bad=bad):
            try:
                parser.parse_args([*required, "--threads", bad])
            except SystemExit as done:
                return done.code
            return 0

        line = _refused_in_one_line(capsys, parse, "--threads")
        assert line.endswith(f"expected an integer in 1..{MAX_THREADS}" if bad != "two" else "expected an integer")


def test_the_backend_takes_the_same_threads_bound():
    from feather.errors import BackendError
    from feather.runtime.backends.onnxruntime import OrtBackend

    OrtBackend("cpu", MAX_THREADS)
    for bad in (0, MAX_THREADS + 1):
        with pytest.raises(BackendError, match=rf"threads: got {bad}, expected an integer in \[1, {MAX_THREADS}\]"):
            OrtBackend("cpu", bad)
