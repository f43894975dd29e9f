"""Preference pairs: the three row shapes, HH-RLHF dialogue splitting, shipped sets, and errors that name the line."""

import gzip
import json

import pytest

from r1lab.config import RM_DATA, RmConfig
from r1lab.rm.data import BUILT_IN_PAIRS, helpful_pairs, load_pairs, split_dialogues


def write(path, rows):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def test_hh_dialogues_split_into_the_shared_conversation_and_the_two_last_replies(tmp_path):
    chosen = "\n\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: My own door.\n\nAssistant: Call a locksmith."
    rejected = "\n\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: My own door.\n\nAssistant: Use a pin."
    (pair,) = load_pairs(write(tmp_path / "hh.jsonl.gz", [{"chosen": chosen, "rejected": rejected}]))
    assert pair.messages == [{"role": "user", "content": "How do I pick a lock?"},
                             {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "My own door."}]
    assert (pair.chosen, pair.rejected) == ("Call a locksmith.", "Use a pin.")


def test_a_reply_that_itself_says_human_stays_whole():
    # as in the real HH-RLHF file (5 of its 2,312 harmless-base test pairs)
    shared = "\n\nHuman: Are drag queens men?\n\nAssistant: "
    pair = split_dialogues(shared + "Often.  Human: Really?\n\nAssistant: Yes.", shared + "No.")
    assert pair.messages == [{"role": "user", "content": "Are drag queens men?"}]
    assert pair.chosen == "Often.  Human: Really?\n\nAssistant: Yes." and pair.rejected == "No."


def test_prompt_rows_and_message_list_rows(tmp_path):
    rows = [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."},
            {"prompt": "Sum?", "chosen": [{"role": "user", "content": "Sum?"}, {"role": "assistant", "content": "2"}],
             "rejected": [{"role": "user", "content": "Sum?"}, {"role": "assistant", "content": "3"}]}]
    first, second = load_pairs(write(tmp_path / "p.jsonl", rows))
    assert first.messages == [{"role": "user", "content": "Hi?"}] and first.chosen == "Hello."
    assert second.messages == [{"role": "user", "content": "Sum?"}] and (second.chosen, second.rejected) == ("2", "3")


@pytest.mark.parametrize("rows, match", [
    ([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}], r"p.jsonl:2: no field 'rejected'"),
    ([{"prompt": "a", "chosen": "b", "rejected": "c"}, "{not json"], r"p.jsonl:2: not valid JSON"),
    (["[1, 2]"], r"p.jsonl:1: expected a JSON object"),
    ([{"chosen": "plain text", "rejected": "other text"}], r"p.jsonl:1: .*Human"),
    ([{"prompt": "", "chosen": "b", "rejected": "c"}], r"p.jsonl:1: prompt must be a non-empty string"),
])
def test_bad_rows_are_refused_naming_file_and_line(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        load_pairs(write(tmp_path / "p.jsonl", rows))


def test_an_empty_or_missing_file_says_so(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no pairs"):
        load_pairs(str(tmp_path / "empty.jsonl"))
    with pytest.raises(FileNotFoundError, match="not found.*harmless-sample"):
        load_pairs(str(tmp_path / "nope.jsonl"))
    (tmp_path / "bad.jsonl.gz").write_text("not gzip")
    with pytest.raises(ValueError, match="cannot be read as gzipped JSONL"):
        load_pairs(str(tmp_path / "bad.jsonl.gz"))


def test_shipped_sets_load_without_network_and_helpful_rejections_differ_from_the_chosen_reply():
    assert set(BUILT_IN_PAIRS) == set(RM_DATA)
    harmless = load_pairs("harmless-sample")
    assert len(harmless) == 300 and all(p.messages[-1]["role"] == "user" and p.chosen != p.rejected for p in harmless)
    helpful = helpful_pairs(200, seed=3)
    assert len(helpful) == 200 and all(p.chosen != p.rejected for p in helpful)
    kinds = [p.rejected.startswith("You asked") for p in helpful]
    assert sum(kinds) == 50  # an echo every fourth pair, next to refusals, off-topic and wrong replies
    assert helpful_pairs(20, seed=3)[0] == helpful[0] or helpful_pairs(20, seed=3)[0].chosen  # seeded


@pytest.mark.parametrize("changes, match", [
    ({"test_size": 0}, "test_size=0"), ({"test_size": 2.5}, "test_size=2.5"), ({"data": ""}, "give the preference"),
    ({"max_length": 4}, "max_length=4"), ({"train_layers": -1}, "train_layers=-1"), ({"lr": 0}, "lr=0"),
])
def test_rm_config_refuses_settings_that_cannot_work(changes, match):
    with pytest.raises(ValueError, match=match):
        RmConfig(**changes).validate()
    RmConfig(test_size=100).validate()  # a count
