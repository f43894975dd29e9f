"""The layer diagram of STYLE.md (../shared/STYLE.md beside the repo; README.md "Layout") as a test: imports only point down, and no modules import each other in a circle.

Pure AST (nothing from r1lab is imported), so it takes well under a second. Every `import r1lab...` and `from r1lab...
import` counts, at module level and inside functions (an import in a function that only dodges a cycle is still a
dependency), relative imports too."""
import ast
import re
from pathlib import Path

# Bottom (0) to top. A module belongs to the longest entry that is its name or a dotted prefix of its name
# ("r1lab" itself is the package's __init__ only). Place a new module here on purpose.
LAYERS = {
    0: ["r1lab", "r1lab.files", "r1lab.console", "r1lab.config", "r1lab.chat", "r1lab.models", "r1lab.plots",
        "r1lab.packing", "r1lab.tracking"],  # packing: pure torch (sequence packing, log-probs), used by SFT, GRPO and
    # reward models; tracking: experiment trackers (--report-to), used by every command that trains or evaluates
    1: ["r1lab.sandbox", "r1lab.rewards", "r1lab.tasks"],
    2: ["r1lab.engine"],
    3: ["r1lab.rollout", "r1lab.optim", "r1lab.runs", "r1lab.distributed", "r1lab.sharding", "r1lab.options",
        "r1lab.policy"],  # options: the command line (argparse, help from field metadata and the registries);
    # policy: what the GRPO loop trains (one process, replicated or FSDP2)
    4: ["r1lab.rl", "r1lab.sft", "r1lab.evaluate", "r1lab.serve", "r1lab.rm", "r1lab.export"],
    5: ["r1lab.cli", "r1lab.__main__", "r1lab.pipeline"],
}
LAYER = {unit: layer for layer, units in LAYERS.items() for unit in units}
# Inside layers 0 and 1 the order is explicit: what each may import from its own layer (files, console < the rest).
SAME_LAYER_OK = {
    "r1lab": set(), "r1lab.files": set(), "r1lab.console": set(), "r1lab.packing": set(),
    **dict.fromkeys(["r1lab.chat", "r1lab.plots", "r1lab.models"], {"r1lab.files", "r1lab.console"}),
    "r1lab.tracking": {"r1lab.files", "r1lab.console"},
    "r1lab.config": {"r1lab.files", "r1lab.console", "r1lab.chat", "r1lab.tracking"},
    "r1lab.sandbox": set(),  # untrusted code runs here: it knows nothing about rewards or tasks
    "r1lab.rewards": {"r1lab.sandbox"}, "r1lab.tasks": {"r1lab.rewards", "r1lab.sandbox"},
}

# Beyond the layers: who may not import what. The GRPO stage sees how training is laid out (one process, replicas,
# FSDP shards) only through r1lab.policy (STYLE.md, principle 9: a narrow interface between control and compute).
FORBIDDEN = {"r1lab.rl": ("r1lab.sharding", "r1lab.distributed")}


def unit_of(module: str) -> str | None:
    """The LAYERS entry a module belongs to, or None when it is in none."""
    hits = [u for u in LAYER if module == u or (u != "r1lab" and module.startswith(u + "."))]
    return max(hits, key=len, default=None)


def scan(pkg: Path) -> tuple[dict[str, Path], list[tuple[str, str, str]]]:
    """({module: file}, [(where, importer, imported)]) for every r1lab import in the .py files under pkg."""
    modules, edges = {}, []
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                # relative level 1 is our package; `from r1lab.sft import filters` imports module r1lab.sft.filters
                up = package.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(filter(None, [up, node.module]))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif name.startswith("r1lab.sandbox") and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"r1lab\.tasks(\.\w+)*", node.value):  # importlib.import_module("r1lab.tasks")
                targets = [node.value]
            else:
                continue
            where = f"{path.relative_to(pkg.parent)}:{node.lineno}"
            edges += [(where, name, t) for t in dict.fromkeys(targets) if t == "r1lab" or t.startswith("r1lab.")]
    return modules, edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] per back edge of a depth-first search; none exactly when the graph is acyclic."""
    found, seen, stack = [], set(), []

    def visit(node: str) -> None:
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:  # a back edge: report the loop starting from its smallest name
                loop = stack[stack.index(nxt):]
                i = loop.index(min(loop))
                found.append(loop[i:] + loop[:i + 1])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    return found


def problems(pkg: Path) -> list[str]:
    """Every broken rule under the package folder pkg, one line each, saying file:line and which rule."""
    modules, edges = scan(pkg)
    found = [f"{modules[m].relative_to(pkg.parent)}: module {m} is in no layer: add it to LAYERS in "
             f"tests/test_layers.py where it belongs (see STYLE.md)" for m in modules if unit_of(m) is None]
    module_graph, unit_graph, first_at = {m: set() for m in modules}, {}, {}
    for where, src, dst in edges:
        said = f"{where}: {src} imports {dst}"
        if dst not in modules:
            found.append(f"{said}, which does not exist (renamed or moved?)")
            continue
        module_graph[src].add(dst)
        first_at.setdefault((src, dst), where)
        a, b = unit_of(src), unit_of(dst)
        found += [f"{said}: {owner} may not import {dst}; it sees how training is laid out only through r1lab.policy"
                  for owner, banned in FORBIDDEN.items() if src == owner or src.startswith(owner + ".")
                  if any(dst == x or dst.startswith(x + ".") for x in banned)]
        if a is None or b is None or a == b:
            continue
        unit_graph.setdefault(a, set()).add(b)
        first_at.setdefault((a, b), where)
        if a == "r1lab.sandbox" and b == "r1lab.tasks":
            found.append(f"{said}: r1lab.sandbox must know nothing about tasks (the judge lives outside the sandbox)")
        elif LAYER[b] > LAYER[a]:
            found.append(f"{said}: upward import, {a} is in layer {LAYER[a]} and {b} in layer {LAYER[b]}")
        elif LAYER[b] == LAYER[a] and a in SAME_LAYER_OK and b not in SAME_LAYER_OK[a]:
            allowed = f"only {', '.join(sorted(SAME_LAYER_OK[a]))}" if SAME_LAYER_OK[a] else "nothing"
            found.append(f"{said}: in layer {LAYER[a]}, {a} may import {allowed} of its own layer")
    for kind, graph in (("module", module_graph), ("package", unit_graph)):
        for cycle in cycles(graph):
            steps = " -> ".join(f"{a} ({first_at[a, b]})" for a, b in zip(cycle, cycle[1:], strict=False))
            found.append(f"{kind} import cycle: {steps} -> {cycle[-1]}")
    return found


def test_imports_follow_the_layers():
    found = problems(Path(__file__).resolve().parents[1] / "r1lab")
    if found:  # raised rather than asserted, so pytest prints the list once, one problem a line
        raise AssertionError(f"{len(found)} layering problems (the diagram is in STYLE.md):\n" + "\n".join(found))


def test_the_checker_catches_what_it_should(tmp_path):  # a clean tree passes; each planted problem is reported
    def tree(files):  # writes files (adding to what the last call wrote) and checks the whole tree
        for rel, text in files.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
        return problems(tmp_path / "r1lab")

    assert tree({"r1lab/__init__.py": "", "r1lab/files.py": "", "r1lab/config.py": "from r1lab import files\n",
                 "r1lab/tasks/__init__.py": "from r1lab.sandbox import run\nfrom . import base\n",
                 "r1lab/tasks/base.py": "import r1lab.rewards\n", "r1lab/sandbox/run.py": "",
                 "r1lab/rewards/__init__.py": "from r1lab.sandbox import run\n",
                 "r1lab/cli.py": "def main():\n    from r1lab.tasks import base\n    import r1lab.config\n"}) == []
    found = "\n".join(tree({
        "r1lab/files.py": "def f():\n    from r1lab import cli\n",  # upward, inside a function; with cli.py a cycle
        "r1lab/chat.py": "from .config import Y\n",  # relative, and config is above chat inside layer 0
        "r1lab/sandbox/run.py": "import importlib\nM = importlib.import_module('r1lab.tasks.base')\n",
        "r1lab/rewards/__init__.py": "import r1lab.gone\n", "r1lab/mystery.py": "",
        "r1lab/tasks/__init__.py": "from r1lab.sandbox import run\nfrom r1lab.rl import loop\n",
        "r1lab/rl/__init__.py": "", "r1lab/rl/loop.py": "from r1lab import tasks\n",  # with tasks: a package cycle
        "r1lab/sharding.py": "", "r1lab/rl/grpo.py": "def train():\n    from r1lab import sharding\n",  # the loop
    }))
    assert "r1lab/files.py:2: r1lab.files imports r1lab.cli: upward import, r1lab.files is in layer 0" in found
    assert "r1lab/chat.py:1: r1lab.chat imports r1lab.config: in layer 0, r1lab.chat may import only" in found
    assert "r1lab/sandbox/run.py:2: r1lab.sandbox.run imports r1lab.tasks.base: r1lab.sandbox must know" in found
    assert "r1lab/rewards/__init__.py:1: r1lab.rewards imports r1lab.gone, which does not exist" in found
    assert "module r1lab.mystery is in no layer: add it to LAYERS" in found
    assert "module import cycle: r1lab.cli (r1lab/cli.py:3) -> r1lab.config (r1lab/config.py:1) -> r1lab.f" in found
    assert "package import cycle: r1lab.rl (r1lab/rl/loop.py:1) -> r1lab.tasks (r1lab/tasks/__init__.py:2)" in found
    assert "r1lab/rl/grpo.py:2: r1lab.rl.grpo imports r1lab.sharding: r1lab.rl may not import r1lab.sharding" in found
