"""The R1 paper's benchmarks as Tasks: GSM8K, MATH-500, AIME 2024/2025, AMC 2023, GPQA-Diamond, MBPP and
LiveCodeBench-style code sets, any benchmark file by a name of your own, and any r1lab Task.

Each benchmark is read, in this order, from: a path you give (a JSONL or Parquet file, or a folder holding
one), the copy in ``../shared/data/`` next to the working directory or this repository (GSM8K, MATH-500),
or the Hugging Face hub through ``datasets`` (for users who can reach one). Problems keep the file's order,
so ``limit=200`` always means the same 200 problems.

A benchmark is a :class:`r1lab.tasks.Task` whose ``test`` split is the whole set; it adds what voting
needs: ``extract`` (a response's final answer) and ``equivalent`` (are two answers one vote).

- Math sets compare answers with :func:`r1lab.tasks.answers.score_answer` (numbers exactly in-process,
  the rest with math-verify in a worker process with a deadline).
- GPQA-Diamond is multiple choice: the four options are shuffled with a seed per problem, lettered A-D,
  and the response's letter (``\\boxed{C}``, ``Answer: C``) is compared with the correct one's. A choice set of
  your own may have up to 26 options (A-Z); the instruction names its letters.
- Code sets (``mbpp``; any file of MBPP/HumanEval asserts or LiveCodeBench/CodeContests tests) are judged in the
  sandbox by the ``code`` reward, on the code of the answer part only (:mod:`r1lab.rewards.code`); no cons@k.

Any other name is a benchmark of your own: ``--data '{aime25: aime25.jsonl}'`` (fields and kind detected) or
``--data '{mine: {path: f.jsonl, kind: math, question: problem, answer: solution, id: uid}}'``; kind is
``math``, ``choice`` (fields ``choices``: the correct option's first) or ``code`` (``question`` names the field
holding the task; rows without tests r1lab can judge are left out, and the log and report say how many).
Order and ids are kept.

Left out: Codeforces ratings, LiveCodeBench's compressed private tests, and GPQA's other subsets.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from r1lab.chat import final_answer_span
from r1lab.console import log
from r1lab.rewards.code import code_reward, extract_code
from r1lab.rewards.math import verify_math
from r1lab.tasks import get_task
from r1lab.tasks.answers import extract_answer, extract_boxed, score_answer
from r1lab.tasks.base import Task
from r1lab.tasks.code import CodeDatasetTask
from r1lab.tasks.dataset import R1_MATH_INSTRUCTION, read_jsonl, reference_answer, shared_data

LETTERS = "ABCD"  # GPQA's; a choice set of your own may use up to 26 (A-Z)


def choice_instruction(letters: str = LETTERS) -> str:
    """The instruction of a choice set, naming its letters.

    >>> choice_instruction("ABCDE")
    'Please reason step by step, and put the letter of your final answer (A, B, C, D or E) within \\\\boxed{}.'
    """
    return ("Please reason step by step, and put the letter of your final answer "
            f"({', '.join(letters[:-1])} or {letters[-1]}) within \\boxed{{}}.")


CHOICE_INSTRUCTION = choice_instruction()


@dataclass(frozen=True)
class Spec:
    """Where a benchmark lives and which fields hold what (the first field name present is used)."""

    hub: tuple[str, str | None, str]  # (dataset name, config, split)
    question: tuple[str, ...]
    answer: tuple[str, ...] = ()
    local: str | None = None  # under shared/data/
    choices: tuple[str, ...] = ()  # multiple choice: the correct option's field first
    ids: tuple[str, ...] = ("unique_id", "id", "ID", "Record ID", "task_id", "question_id", "problem_id")
    kind: str = "math"  # math | choice | code


BENCHMARKS: dict[str, Spec] = {
    "gsm8k": Spec(hub=("openai/gsm8k", "main", "test"), question=("question",), answer=("answer",),
                  local="gsm8k/test.jsonl"),
    "math500": Spec(hub=("HuggingFaceH4/MATH-500", None, "test"), question=("problem",), answer=("answer", "solution"),
                    local="math500/test.jsonl"),
    "aime24": Spec(hub=("HuggingFaceH4/aime_2024", None, "train"), question=("problem", "Problem", "question"),
                   answer=("answer", "Answer", "solution")),
    "aime25": Spec(hub=("math-ai/aime25", None, "test"), question=("problem", "Problem", "question"),
                   answer=("answer", "Answer", "solution"), local="aime25/test.jsonl"),
    "amc23": Spec(hub=("math-ai/amc23", None, "test"), question=("question", "problem", "Problem"),
                  answer=("answer", "Answer", "solution"), local="amc23/test.jsonl"),
    "mbpp": Spec(hub=("google-research-datasets/mbpp", "sanitized", "test"), question=("prompt", "text"),
                 local="mbpp/sanitized.jsonl", kind="code"),
    "gpqa-diamond": Spec(hub=("Idavidrein/gpqa", "gpqa_diamond", "train"), question=("Question", "question"),
                         choices=("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"),
                         kind="choice"),
}
KINDS = ("math", "choice", "code")
_QUESTION_FIELDS = ("problem", "question", "Problem", "Question", "prompt", "text", "question_content")
_ANSWER_FIELDS = ("answer", "Answer", "final_answer", "expected_answer", "solution")


def default_k(n_problems: int) -> int:
    """Samples per problem by the set's size, as the paper chooses "between 4 and 64": small sets need more
    samples for a stable pass@1 (AIME's 30 problems get 64; GSM8K's 1,319 get 4).

    >>> [default_k(n) for n in (30, 198, 500, 1319)]
    [64, 16, 8, 4]
    """
    for most, k in ((64, 64), (250, 16), (600, 8)):
        if n_problems <= most:
            return k
    return 4


class Benchmark(Task):
    """A fixed test set with a verifier; ``examples("test")`` is the whole set in file order."""

    instruction = R1_MATH_INSTRUCTION

    def __init__(self, name: str, examples: list[dict], instruction: str | None = None, source: str = "",
                 notes: tuple[str, ...] = ()):
        self.name, self._examples, self.source = name, examples, source  # source: where the problems came from
        self.notes = notes  # what the report should say about how the set was read (rows left out)
        if instruction is not None:
            self.instruction = instruction

    def examples(self, split: str = "test") -> list[dict]:
        if split != "test":
            raise ValueError(f"benchmark {self.name} has only a test split")
        return [dict(e) for e in self._examples]

    def verify(self, completion: str, answer: str = "", id: str | None = None, **_) -> float | None:  # noqa: A002
        return score_answer(completion, answer, problem=id)

    def extract(self, completion: str) -> str | None:
        return extract_answer(completion)

    def equivalent(self, a: str, b: str) -> bool:
        return verify_math(a, b)


class CodeBenchmark(Benchmark):
    """Code: each example's tests run in the sandbox on the code of the answer part; pass@k only (no votes)."""

    instruction = ("Write your solution in Python inside a ```python code block. For a program that reads input, "
                   "read stdin and print the answer.")
    equivalent = None  # no cons@k: two programs are not one vote because their text matches

    def verify(self, completion: str, **example) -> float | None:
        return code_reward(completion, **example)

    def extract(self, completion: str) -> str | None:
        return extract_code(completion)


class ChoiceBenchmark(Benchmark):
    """Multiple choice: the answer is a letter, and two answers are one vote when their letters match."""

    instruction = CHOICE_INSTRUCTION
    letters = LETTERS

    def __init__(self, *args, letters: str = LETTERS, **kwargs):
        super().__init__(*args, **kwargs)
        if letters != LETTERS:
            self.letters, self.instruction = letters, choice_instruction(letters)

    def verify(self, completion: str, answer: str = "", **_) -> float | None:
        if not answer:
            return None
        return float(choice_letter(completion, self.letters) == answer)

    def extract(self, completion: str) -> str | None:
        return choice_letter(completion, self.letters)

    def equivalent(self, a: str, b: str) -> bool:
        return a == b


def choice_letter(completion: str, letters: str = LETTERS) -> str | None:
    """The letter a response picks: from its last ``\\boxed{}``, else its last "answer is X" / "Answer: X",
    else a final span that is just a letter. Text inside the thinking never counts.

    >>> choice_letter("<think>maybe A</think> So the answer is \\\\boxed{C}."), choice_letter("Answer: (B) 4 m/s")
    ('C', 'B')
    >>> choice_letter("\\\\boxed{\\\\text{D}}"), choice_letter("A great question."), choice_letter(" D ")
    ('D', None, 'D')
    """
    span = final_answer_span(completion)
    boxed = extract_boxed(span, nonempty=True)
    if boxed is not None:
        match = re.match(r"^\s*\(?\s*(?:\\text\{\s*)?([" + letters + r"])\s*\}?\s*\)?(?:[.:)\s]|$)", boxed)
        return match.group(1) if match else None
    found = re.findall(r"answer\s*(?:is|:)?\s*[:\-]?\s*\(?\s*\**\s*([" + letters + r"])\b(?!\w)", span, re.IGNORECASE)
    if found:
        return found[-1].upper()
    bare = span.strip().strip("().")
    return bare if len(bare) == 1 and bare in letters else None


# --------------------------------------------------------------------------------------------- loading
def load_benchmark(name: str, path=None, seed: int = 0) -> Benchmark:
    """A benchmark by name, from ``path`` if given (a file, or ``{path, kind, question, answer, id, choices}``), else
    the shared local copy, else the hub. A name r1lab does not know needs a ``path``."""
    given = _given(name, path)
    if name not in BENCHMARKS and not given.get("path"):
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}, task:NAME for an r1lab task, "
                       f"or a file of your own under any name: --data '{{{name}: FILE.jsonl}}'")
    if given.get("path"):
        rows, source = read_rows(Path(given["path"])), str(given["path"])
    elif (spec := BENCHMARKS[name]).local and (local := find_shared(spec.local)) is not None:
        rows, source = read_rows(local), str(local)
    else:
        rows, source = _hub_rows(name, spec), f"hub:{spec.hub[0]}"
    if not rows:
        raise ValueError(f"{source} holds no rows for benchmark {name}")
    spec = _custom_spec(name, rows[0], given, source) if name not in BENCHMARKS or len(given) > 1 else BENCHMARKS[name]
    if spec.kind == "code":
        return _code_benchmark(name, spec, rows, source, "question" in given)
    examples = [_example(name, spec, row, i, source, seed) for i, row in enumerate(rows)]
    if spec.kind == "choice":
        return ChoiceBenchmark(name, examples, source=source, letters=_LETTERS[:len(spec.choices)])
    return Benchmark(name, examples, source=source)


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_KEYS = ("path", "kind", "question", "answer", "id", "choices")


def _given(name: str, path) -> dict:
    """``--data``'s entry for ``name`` as ``{path, kind, question, answer, id, choices}``, each checked."""
    if path is None:
        return {}
    if isinstance(path, (str, os.PathLike)):
        path = {"path": os.fspath(path)}
    if not isinstance(path, dict):
        raise ValueError(f"--data {name}: give a file path or {{path: FILE, kind: ..., question: FIELD, ...}}, not "
                         f"{type(path).__name__} {path!r}")
    unknown = set(path) - set(_KEYS)
    if unknown:
        raise ValueError(f"--data {name}: unknown keys {sorted(unknown)}; use path, kind ({' | '.join(KINDS)}), "
                         "question, answer, id, choices")
    for key in ("path", "kind", "question", "answer", "id"):
        if key in path and not (isinstance(path[key], str) and path[key].strip()):
            raise ValueError(f"--data {name}: {key} must be a {'file path' if key == 'path' else 'field name'} (a "
                             f"string), got {path[key]!r}")
    choices = path.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)
                                    and 2 <= len(choices) <= len(_LETTERS)):
        raise ValueError(f"--data {name}: choices must be a list of 2 to {len(_LETTERS)} field names, the correct "
                         f"option's first, e.g. [correct, wrong1, wrong2]; got {choices!r}")
    return path


def _code_benchmark(name: str, spec: Spec, rows: list[dict], source: str, question_given: bool) -> CodeBenchmark:
    """A code set: each row's task (the ``question`` field, when given) and tests; rows without tests r1lab can
    judge are left out, and said so."""
    examples, dropped = [], []
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        if question_given:  # the field the user named holds the task, whatever else the row has
            row = {**row, "prompt": _field(row, spec.question, where, "question")}
        try:
            example = CodeDatasetTask._example(row, where)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: {_bad_json_field(row)} is not valid JSON ({exc.msg})") from None
        problem_id = _problem_id(spec, row, i, where)
        if example["tests"]:
            examples.append({**example, "id": problem_id})
        else:
            dropped.append(problem_id)
    if not examples:
        raise ValueError(f"{source}: no row has tests r1lab can judge (assert lines, or input/output tests)")
    notes = ()
    if dropped:
        shown = ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        note = (f"{len(dropped)} of {len(rows)} rows were left out: they have no tests r1lab can judge (ids "
                f"{shown}).")
        log(f"{name}: {note}")
        notes = (note,)
    return CodeBenchmark(name, examples, source=source, notes=notes)


def _bad_json_field(row: dict) -> str:
    """Which test-case field of a LiveCodeBench row fails to parse as JSON (its name and case)."""
    for key in ("metadata", "public_test_cases", "private_test_cases"):
        raw = row.get(key)
        try:
            value = json.loads(raw) if isinstance(raw, str) and raw else raw
        except ValueError:
            if key != "private_test_cases":  # the compressed private tests are skipped, not read
                return key
            continue
        for j, case in enumerate(value if isinstance(value, list) else []):
            for field in ("input", "output"):
                text = str(case.get(field, "")) if isinstance(case, dict) else ""
                try:
                    [json.loads(line) for line in (text.splitlines() if field == "input" else [text]) if line.strip()]
                except ValueError:
                    return f"{key}[{j}].{field} (a functional test's {field}: one JSON value per line)"
    return "a test case field"


def _problem_id(spec: Spec, row: dict, index: int, where: str) -> str:
    """The row's id: the first id field present; one named with ``id`` must be there."""
    if len(spec.ids) == 1 and row.get(spec.ids[0]) is None:
        raise ValueError(f"{where}: no id field {spec.ids[0]!r} (the row has {sorted(row)}); name another with "
                         "id: FIELD, or leave id out to number the rows")
    return next((str(row[k]) for k in spec.ids if row.get(k) is not None), str(index))


def _custom_spec(name: str, row: dict, given: dict, source: str) -> Spec:
    """The fields and kind of a benchmark file: as given, else detected from its first row."""
    base = BENCHMARKS.get(name)
    kind = given.get("kind") or (base.kind if base else None)
    if kind is None:
        code = any(k in row for k in ("test_list", "test", "tests", "public_test_cases"))
        kind = "code" if code else "choice" if "choices" in given else "math"
    if kind not in KINDS:
        raise ValueError(f"--data {name}: kind {kind!r} is not one of {', '.join(KINDS)}")
    question = (given["question"],) if given.get("question") else base.question if base else _QUESTION_FIELDS
    answer = (given["answer"],) if given.get("answer") else base.answer if base else _ANSWER_FIELDS
    ids = (given["id"],) if given.get("id") else Spec.ids
    choices = tuple(given.get("choices") or (base.choices if base else ()))
    if kind == "choice" and len(choices) < 2:
        raise ValueError(f"--data {name}: a choice benchmark needs choices: [correct field, wrong field, ...]")
    if kind == "math" and not any(f in row for f in answer):
        raise ValueError(f"{source}: no answer field in its first row (looked for {', '.join(answer)}; it has "
                         f"{sorted(row)}); name it: --data '{{{name}: {{path: ..., answer: FIELD}}}}'")
    return Spec(hub=("", None, ""), question=question, answer=answer, choices=choices, ids=ids, kind=kind)


def find_shared(relative: str) -> Path | None:
    """The file ``shared/data/<relative>`` next to the working directory or next to this repository."""
    return next((candidate.resolve() for candidate in shared_data(relative) if candidate.is_file()), None)


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL or Parquet file, or of the single such file (or ``test.*``) in a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
        tests = [p for p in files if p.stem.startswith("test")]
        if len(tests) == 1 or len(files) == 1:
            path = tests[0] if len(tests) == 1 else files[0]
        else:
            raise FileNotFoundError(f"{path}: expected one .jsonl or .parquet file (or one named test.*), found "
                                    f"{[p.name for p in files] or 'none'}; pass the file itself")
    if not path.is_file():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        return [row for _, row in read_jsonl(path)]
    raise ValueError(f"{path}: cannot read {path.suffix!r} files; give a .jsonl or .parquet file")


def _hub_rows(name: str, spec: Spec) -> list[dict]:
    hub_name, config, split = spec.hub
    try:
        import datasets

        return list(datasets.load_dataset(hub_name, config, split=split))
    except Exception as exc:  # offline, gated, renamed: all end the same way for the user
        raise FileNotFoundError(
            f"benchmark {name}: no local copy found and the hub dataset {hub_name} could not be loaded "
            f"({type(exc).__name__}: {str(exc)[:200]}). Pass a local JSONL or Parquet copy with "
            f"--data '{{{name}: PATH}}'") from None


def _field(row: dict, names: tuple[str, ...], where: str, what: str) -> str:
    for name in names:
        if name in row and row[name] is not None:
            return str(row[name])
    empty = [name for name in names if name in row]
    if empty:
        raise ValueError(f"{where}: its {what} field {empty[0]!r} is null; fill it in or leave the row out")
    raise ValueError(f"{where}: no {what} field (looked for {', '.join(names)}); the row has {sorted(row)}")


def _example(name: str, spec: Spec, row: dict, index: int, source: str, seed: int) -> dict:
    where = f"{source} row {index + 1}"
    question = _field(row, spec.question, where, "question").strip()
    problem_id = _problem_id(spec, row, index, where)
    if not spec.choices:
        answer = reference_answer(_field(row, spec.answer, where, "answer"))
        return {"id": problem_id, "prompt": question, "answer": answer}
    options = [_field(row, (f,), where, "choice").strip() for f in spec.choices]
    order = list(range(len(options)))
    random.Random(f"{seed}:{name}:{problem_id}").shuffle(order)  # a fixed shuffle per problem and seed
    lines = [f"{_LETTERS[pos]}) {options[i]}" for pos, i in enumerate(order)]
    return {"id": problem_id, "prompt": question + "\n\n" + "\n".join(lines), "answer": _LETTERS[order.index(0)]}


def task_benchmark(name: str, task_args: dict | None = None) -> Benchmark:
    """Any r1lab Task's test split as a benchmark (``task:arithmetic``), verified by the task itself."""
    task = get_task(name, **(task_args or {}))
    if not task.examples("test"):
        raise ValueError(f"task {name} with --task-args {task_args or {}} has no test problems to evaluate (a test "
                         "split of 0: raise n_test or test_size)")

    class _TaskBenchmark(Benchmark):
        def verify(self, completion: str, **example) -> float | None:
            return task.verify(completion, **example)

    examples = [{"id": str(i), **e} for i, e in enumerate(task.examples("test"))]
    return _TaskBenchmark(f"task:{name}", examples, instruction=task.instruction,
                          source=f"r1lab task {name} {task_args or {}}")
