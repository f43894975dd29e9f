"""Question-answer datasets from a JSONL file, a folder of splits or the Hugging Face hub (GSM8K, MATH…).

Each row gives a question (``question_field``) and a reference (``answer_field``). The reference answer
is what follows the last ``####`` (GSM8K's convention, commas removed), else the last ``\\boxed{}`` of a
worked solution (MATH's), else the whole field. Examples carry ``prompt``, ``answer`` and ``solution``
(the field as written, for SFT). A folder with ``train.jsonl`` and ``test.jsonl`` keeps its own splits
in file order; a single file or hub split is cut with :func:`r1lab.tasks.base.seeded_split`.

The verifier compares the response's final answer (:func:`r1lab.tasks.answers.extract_answer`) with the
reference: numbers in-process, anything else with math-verify in a worker process.

Left out: multiple-choice letters, answers with units or text (they are compared as math), and
streaming of hub datasets too large for memory.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from r1lab.tasks.answers import extract_boxed, score_answer
from r1lab.tasks.base import Task, register_task, seeded_split

R1_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
SPLIT_FILES = ("train.jsonl", "test.jsonl")


def reference_answer(solution) -> str:
    """The final answer inside a reference field.

    >>> reference_answer("She sells 9 eggs.\\n#### 1,018"), reference_answer("so $x = \\\\boxed{\\\\frac{1}{2}}$.")
    ('1018', '\\\\frac{1}{2}')
    >>> reference_answer(42), reference_answer(" 3.5 ")
    ('42', '3.5')
    """
    text = str(solution)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    boxed = extract_boxed(text)
    return boxed.strip() if boxed is not None else text.strip()


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """``(line number, JSON object)`` for each non-blank line of a JSONL (or gzipped ``.gz``) file; errors name the
    file and line. A UTF-8 byte-order mark at the start (Windows editors write one) is skipped."""
    rows = []
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({exc.msg}); "
                                 "a JSONL file holds one JSON object per line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            rows.append((line_number, row))
    return rows


def to_example(row: dict, question_field: str, answer_field: str, where: str) -> dict:
    """One row as an example; ``where`` names the row in error messages."""
    for field, option in ((question_field, "question_field"), (answer_field, "answer_field")):
        if field not in row:
            raise ValueError(f"{where}: no field {field!r}; the row has {sorted(row)}. "
                             f"Set {option}= to the field that holds it")
    return {"prompt": str(row[question_field]).strip(), "answer": reference_answer(row[answer_field]),
            "solution": str(row[answer_field])}


def _examples_from_file(path: Path, question_field: str, answer_field: str) -> list[dict]:
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return [to_example(row, question_field, answer_field, f"{path}:{n}") for n, row in rows]


def _split(examples: list[dict], test_size: int | float, seed: int, source) -> tuple[list[dict], list[dict]]:
    """:func:`seeded_split`, with an error that names the source and the option to change."""
    try:
        return seeded_split(examples, test_size, seed)
    except ValueError as exc:
        if isinstance(test_size, int) and not isinstance(test_size, bool) and test_size > len(examples):
            raise ValueError(f"{source} has {len(examples)} examples, too few for test_size={test_size}; "
                             "set test_size= to a smaller count or a fraction such as 0.1") from None
        raise ValueError(f"{source}: {exc}") from None  # not a count or a fraction


@register_task("dataset")
class DatasetTask(Task):
    """Your own question/answer data; see the module docstring for the formats it reads."""

    name = "dataset"

    def __init__(self, path: str | os.PathLike | None = None, hf_name: str | None = None,
                 hf_config: str | None = None, split: str | None = None, question_field: str = "question",
                 answer_field: str = "answer", test_size: int | float = 200, seed: int = 0,
                 limit: int | None = None, instruction: str = R1_MATH_INSTRUCTION):
        if (path is None) == (hf_name is None):
            raise ValueError("give exactly one of path= (a JSONL file or a folder with train.jsonl and "
                             "test.jsonl) and hf_name= (a Hugging Face dataset, e.g. 'openai/gsm8k')")
        self.instruction = instruction
        fields = (question_field, answer_field)
        if path is not None:
            self.name = Path(path).stem
            train, test = self._load_path(Path(path), fields, test_size, seed)
        else:
            self.name = hf_name.rsplit("/", 1)[-1]
            train, test = self._load_hub_splits(hf_name, hf_config, split, fields, test_size, seed)
        self._splits = {"train": train[:limit], "test": test[:limit]}

    @staticmethod
    def _load_path(path: Path, fields: tuple[str, str], test_size, seed) -> tuple[list[dict], list[dict]]:
        if path.is_dir():
            found = [path / name for name in SPLIT_FILES if (path / name).is_file()]
            if len(found) == 2:
                return _examples_from_file(found[0], *fields), _examples_from_file(found[1], *fields)
            if len(found) == 1:
                return _split(_examples_from_file(found[0], *fields), test_size, seed, found[0])
            present = sorted(p.name for p in path.iterdir())[:10]
            raise FileNotFoundError(f"{path} has neither train.jsonl nor test.jsonl (it has {present}); "
                                    "pass path= a JSONL file or a folder holding those two")
        if not path.is_file():
            raise FileNotFoundError(f"no such file or folder: {path}")
        return _split(_examples_from_file(path, *fields), test_size, seed, path)

    @staticmethod
    def _load_hub_splits(hf_name, hf_config, split, fields, test_size, seed) -> tuple[list[dict], list[dict]]:
        try:
            import datasets
        except ImportError:
            raise ImportError(f"hf_name={hf_name!r} needs the datasets library: pip install datasets") from None
        loaded = datasets.load_dataset(hf_name, hf_config, split=split)

        def examples(rows, source: str) -> list[dict]:
            return [to_example(row, *fields, f"{source}[{i}]") for i, row in enumerate(rows)]

        if split is not None:
            return _split(examples(loaded, f"{hf_name}[{split}]"), test_size, seed, f"{hf_name}[{split}]")
        if not {"train", "test"} <= set(loaded):
            raise ValueError(f"{hf_name} has splits {sorted(loaded)}, not train and test; pass split= to "
                             "pick one, and it is cut into train and test with test_size=")
        return examples(loaded["train"], f"{hf_name}[train]"), examples(loaded["test"], f"{hf_name}[test]")

    def verify(self, completion: str, answer: str = "", id: str | None = None, prompt: str = "",  # noqa: A002
               **_) -> float | None:
        """1.0 if the final answer equals the reference, 0.0 if not, None without a readable reference (said once,
        naming the problem by its id, or the start of its question)."""
        return score_answer(completion, answer, problem=id if id is not None else repr(prompt[:60]))


def shared_data(relative: str) -> list[Path]:
    """Where ``shared/data/<relative>`` may be: next to the current directory, then next to this repository."""
    return [base / "../shared/data" / relative for base in (Path.cwd(), Path(__file__).resolve().parents[2])]


def find_gsm8k() -> Path:
    """The ``shared/data/gsm8k`` folder next to the current directory or next to this repository."""
    candidates = shared_data("gsm8k")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c.resolve()) for c in candidates)
    raise FileNotFoundError(f"no GSM8K folder at {tried}; pass path= a folder with train.jsonl and "
                            "test.jsonl, or use task=dataset with hf_name='openai/gsm8k' hf_config='main'")


@register_task("gsm8k")
def gsm8k(path: str | os.PathLike | None = None, **kwargs) -> DatasetTask:
    """GSM8K from a local folder (its own train/test split; ``#### 42`` references)."""
    task = DatasetTask(path=path if path is not None else find_gsm8k(), **kwargs)
    task.name = "gsm8k"
    return task
