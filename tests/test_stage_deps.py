"""dvc.yaml sees every file a stage's code comes from: the import closure of each stage script.

A library module a stage imports but does not list is a dependency DVC cannot see: editing it
leaves stale cached outputs. One it lists but does not import re-runs the stage for nothing.
The closure is computed statically (``ast``) over stages/ and pipeline/, with imports inside
functions counted (they run when the function does) and imports under a library module's
``if __name__ == "__main__":`` left out (they run only when that module is itself the command).
dvc.yaml's ``foreach``/``matrix`` templates are expanded with params.yaml, chain.yaml and each
stage's own ``vars``, as DVC does (YAML anchors and ``<<:`` merges resolve on loading); an empty list (a baseline switched off) still gets one stand-in item, so switched-off
stages are checked too.
"""

from __future__ import annotations

import ast
import itertools
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
TEMPLATE = re.compile(r"\$\{([^}]+)\}")
STAND_IN = "_item_"  # the item of a template whose list is empty
# The only imports whose module name is computed at run time: each maps a stage's arguments to
# the module it loads. A new importlib call fails test_every_dynamic_import_is_declared.
DYNAMIC = {
    "stages/baseline.py": lambda argv: [f"pipeline.baselines.{argv[0]}"],  # the method's module
}
DYNAMIC_SITES = {"pipeline/baselines/__init__.py"}  # where importlib.import_module is called
SIBLING_FILE = re.compile(r"^\w+\.py$")  # a library file read as text (sandbox_guard.py), not imported


def module_file(name: str) -> Path | None:
    """pipeline.x.y -> pipeline/x/y.py or pipeline/x/y/__init__.py (None outside the packages)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def walk(tree: ast.AST, skip_main: bool):
    """Every node, leaving out the body of ``if __name__ == "__main__":`` when ``skip_main``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not (skip_main and is_main_guard(child)))


@lru_cache(maxsize=None)
def direct_deps(path: Path, is_script: bool) -> frozenset[Path]:
    """Files of the packages that ``path`` imports (or reads as a sibling source file)."""
    rel = path.relative_to(ROOT)
    package = rel.parent.parts  # the package a relative import starts from
    names: set[str] = set()
    read: set[Path] = set()
    for node in walk(ast.parse(path.read_text()), skip_main=not is_script):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = list(package[:len(package) - node.level + 1]) if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pipeline import layout`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SIBLING_FILE.match(node.value):
            if (path.parent / node.value).is_file():
                read.add(path.parent / node.value)
    files = set(read)
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            found = module_file(".".join(parts[:i]))
            if found is not None:
                files.add(found)
    return frozenset(files - {path})


@lru_cache(maxsize=None)
def is_inert(path: Path) -> bool:
    """Only a docstring and constants (a package marker such as pipeline/__init__.py): nothing
    in it can change a stage's result, so it is not listed."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            continue
        return False
    return True


def closure(script: Path, argv: list[str]) -> frozenset[str]:
    """Repo-relative paths of everything ``python -m stages.X argv`` runs or reads from the packages."""
    rel = str(script.relative_to(ROOT))
    return _closure(script, tuple(DYNAMIC.get(rel, lambda a: [])(argv)))


@lru_cache(maxsize=None)
def _closure(script: Path, dynamic: tuple[str, ...]) -> frozenset[str]:
    rel = str(script.relative_to(ROOT))
    todo = [(script, True)] + [(module_file(m), False) for m in dynamic]
    seen: set[Path] = set()
    while todo:
        path, is_script = todo.pop()
        assert path is not None, f"{rel} {dynamic}: a declared dynamic import names no module"
        if path in seen:
            continue
        seen.add(path)
        todo.extend((p, False) for p in direct_deps(path, is_script))
    return frozenset(str(p.relative_to(ROOT)) for p in seen if not is_inert(p))


# --- dvc.yaml, expanded as DVC expands it -------------------------------------------------

def lookup(name: str, context: dict):
    node = context
    for part in name.split("."):
        node = node[part]
    return node


def substitute(text: str, context: dict) -> str:
    return TEMPLATE.sub(lambda m: str(lookup(m.group(1), context)), text)


def resolve(value, context: dict) -> list:
    """A foreach/matrix list given inline or as ``${name}``: a list's items, a dict's
    (key, value) pairs; an empty one becomes one stand-in item."""
    if isinstance(value, str):
        value = lookup(TEMPLATE.fullmatch(value).group(1), context)
    items = list(value.items()) if isinstance(value, dict) else list(value)
    return items or [STAND_IN]


def stage_vars(body: dict) -> dict:
    """A stage's own ``vars:`` (inline mappings, as dvc.yaml writes them), added to its context."""
    local: dict = {}
    for entry in body.get("vars", []):
        assert isinstance(entry, dict), f"stage vars other than inline mappings are not expanded here: {entry!r}"
        local.update(entry)
    return local


def stage_instances() -> list[tuple[str, str, str, list[str]]]:
    """(stage definition, instance name, cmd, deps) of every stage instance of dvc.yaml."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    context: dict = yaml.safe_load((ROOT / "params.yaml").read_text())
    for var_file in dvc.get("vars", []):
        context.update(yaml.safe_load((ROOT / var_file).read_text()))
    out = []
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:  # a list: ${item}; a dict: ${key} and ${item} (its value)
            pairs = [entry if isinstance(entry, tuple) else (entry, entry) for entry in resolve(stage["foreach"], context)]
            items = [({**context, "key": key, "item": item}, f"{name}@{key}") for key, item in pairs]
            body = stage["do"]
        elif "matrix" in stage:  # a dict axis iterates over its keys
            axes = {axis: [e[0] if isinstance(e, tuple) else e for e in resolve(values, context)]
                    for axis, values in stage["matrix"].items()}
            items = [({**context, "item": dict(zip(axes, combo))}, f"{name}@{'-'.join(map(str, combo))}")
                     for combo in itertools.product(*axes.values())]
            body = stage
        else:
            items, body = [(context, name)], stage
        local = stage_vars(body)
        for ctx, instance in items:
            ctx = {**ctx, **local}
            deps = [substitute(str(d), ctx) for d in body.get("deps", [])]
            out.append((name, instance, substitute(body["cmd"], ctx), deps))
    return out


def script_of(cmd: str) -> tuple[Path, list[str]]:
    """``python -m stages.x a b`` -> (stages/x.py, [a, b])."""
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"] and words[2].startswith("stages."), f"unexpected command {cmd!r}"
    return module_file(words[2]), words[3:]


INSTANCES = stage_instances()
DEFINITIONS = sorted({i[0] for i in INSTANCES})


def code_dep_problems(deps: list[str], cmd: str) -> list[str]:
    """What is wrong with one stage instance's code deps (empty when they are exact)."""
    script, argv = script_of(cmd)
    code_deps = {d for d in deps if d.split("/")[0] in PACKAGES}
    needed = closure(script, argv)
    problems = [f"lists the folder {d}, not its files" for d in sorted(code_deps) if (ROOT / d).is_dir()]
    problems += [f"runs {d}, not listed" for d in sorted(needed - code_deps)]
    problems += [f"lists {d}, never run" for d in sorted(code_deps - needed) if not (ROOT / d).is_dir()]
    return problems


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_every_stage_lists_exactly_the_code_it_runs(definition):
    """Each stage instance's code deps are its script's import closure, no more, no less.
    Rejects a stage that misses a module it imports (directly, through another module or
    inside a function: the frontier once missed adapter.py, loading.py and data.py), one that
    lists a module it never imports, and a whole package folder in place of its files (each
    checked by editing dvc.yaml)."""
    problems = {}
    for name, instance, cmd, deps in INSTANCES:
        if name == definition and (found := code_dep_problems(deps, cmd)):
            problems[instance] = found
    assert not problems, problems


def test_every_dynamic_import_is_declared():
    """An import whose module name is computed is invisible to the closure: every call of
    importlib.import_module (or __import__) in the packages must be one of DYNAMIC_SITES."""
    sites = set()
    for path in itertools.chain.from_iterable((ROOT / p).rglob("*.py") for p in PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called in ("import_module", "__import__"):
                    sites.add(str(path.relative_to(ROOT)))
    assert sites == DYNAMIC_SITES


def test_the_closure_sees_imports_inside_functions_and_skips_main_blocks():
    """The checker itself: stages/baseline.py imports the runner inside main(), and the chain
    reads the offline registry only under its __main__ guard (a stage importing the chain
    through layout must not depend on pipeline/core/materialize.py)."""
    baseline = closure(ROOT / "stages/baseline.py", ["sft", "toy"])
    assert {"pipeline/baselines/runner.py", "pipeline/baselines/sft.py"} <= baseline
    assert "pipeline/baselines/kd.py" not in baseline
    pair = closure(ROOT / "stages/pair.py", ["toy"])
    assert "pipeline/core/chain.py" in pair and "pipeline/core/materialize.py" not in pair
    assert "pipeline/evaluation/sandbox_guard.py" in closure(ROOT / "stages/evaluate.py", ["source", "toy"])


def test_source_passes_wait_for_the_vocabulary_check():
    """Every stage that runs the source model's weights depends on the vocab stage's record,
    so DVC runs the (seconds-long) tokenizer check first and a mismatched pair never reaches a
    source pass. align checks the vocabularies itself; evaluating the source alone needs no
    match. Rejects extract or attribute without the dependency (the late check of before)."""
    runs_source = {(name, instance) for name, instance, _, deps in INSTANCES if "models/source" in deps}
    assert {name for name, _ in runs_source} >= {"extract", "attribute", "vocab", "align"}
    waiting = {instance for _, instance, _, deps in INSTANCES if "artifacts/vocab.json" in deps}
    missing = {instance for name, instance in runs_source if instance not in waiting
               and name not in ("align", "vocab") and not instance.startswith("evaluate-reference@source")}
    assert not missing, missing
    outs = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["vocab"]["outs"]
    assert outs == ["artifacts/vocab.json"]
