import json

import pytest
from peftlab import data
from peftlab.data import IGNORE_INDEX, DataError


def test_course_data_sizes_and_no_leak():
    train, test = data.load_course_data("train"), data.load_course_data("test")
    assert len(train) >= 150 and len(test) >= 80  # enough held-out rows for a CI narrower than the gain
    assert not set(train["input"]) & set(test["input"])


def _course_rows():
    return data.read_rows(data.course_data_path("train")), data.read_rows(data.course_data_path("test"))


@pytest.mark.parametrize("field", ["input", "output"])
def test_course_data_has_no_duplicates(field):
    train, test = _course_rows()
    texts = [r[field] for r in train + test]
    normalised = [data.normalise_text(t) for t in texts]
    exact = {t for t in texts if texts.count(t) > 1}
    assert not exact, f"{field}s written twice: {sorted(exact)}"
    same = {t for t in normalised if normalised.count(t) > 1}
    assert not same, f"{field}s equal up to case and punctuation: {sorted(same)}"
    near = [(texts[i], texts[j], s) for i, j, s in data.near_duplicates(texts)]
    assert not near, f"near-duplicate {field}s (similarity >= 0.9): {near}"


def test_held_out_inputs_are_not_near_copies_of_training_inputs():
    train, test = _course_rows()
    train_in, test_in = [r["input"] for r in train], [r["input"] for r in test]
    assert not data.near_duplicates(test_in, train_in, threshold=0.85)
    # Word overlap too: no held-out input shares 3/4 of its words with a training input.
    words = [set(data.normalise_text(t).split()) for t in train_in]
    for sentence in test_in:
        w = set(data.normalise_text(sentence).split())
        overlap = max(len(w & t) / len(w | t) for t in words)
        assert overlap < 0.75, f"held-out input {sentence!r} overlaps a training input ({overlap:.2f} of its words)"


@pytest.mark.parametrize(
    "a, b, found",
    [
        ("Where is my sister?", "where is my  sister", True),  # case, punctuation, spacing
        ("Don\u2019t go.", "Don't go!", True),  # typographic apostrophe
        ("Where is my sister?", "Where is my sister now?", True),  # similarity 0.9
        ("Where is my sister?", "Where is my father?", False),
        ("Give me your hand.", "Give me thy hand.", False),  # one word of four changed: a rewrite, not a copy
    ],
)
def test_near_duplicates(a, b, found):
    assert bool(data.near_duplicates([a], [b])) is found
    assert bool(data.near_duplicates([a, b])) is found


def test_near_duplicates_rejects_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        data.near_duplicates(["a"], threshold=0)


def test_labels_mask_the_prompt(tokenizer):
    row = {"instruction": "Rewrite.", "input": "Where are you going?", "output": "Whither goest thou?"}
    ex = data.tokenize_example(tokenizer, row, max_length=256)
    trained = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    text = tokenizer.decode(trained)
    assert text.startswith("Whither goest thou?") and "<|im_end|>" in text
    assert "Where are you going" not in text
    # every unmasked label is the token itself (causal LM shift happens in the model)
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ex["input_ids"], ex["labels"]))


def test_truncation_is_counted_and_all_masked_is_an_error(tokenizer):
    ds = data.load_course_data("train").select(range(8))
    _, stats = data.tokenize_dataset(ds, tokenizer, max_length=52)
    assert stats.truncated > 0 and stats.examples == 8
    with pytest.raises(DataError, match="every label is masked"):
        data.tokenize_dataset(ds, tokenizer, max_length=20, source="mine.jsonl")


def test_template_mismatch_is_an_error(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}|{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    row = {"instruction": "x", "input": "", "output": "y"}
    with pytest.raises(DataError, match="template mismatch"):
        data.tokenize_example(tokenizer, row, 64)


def test_dynamic_padding(tokenizer):
    ds = data.load_course_data("train").select(range(4))
    tok, _ = data.tokenize_dataset(ds, tokenizer, 256)
    rows = [tok[i] for i in range(4)]
    batch = data.make_collator(tokenizer)(rows)
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in rows)
    fixed = data.make_collator(tokenizer, pad_to=128)(rows)
    assert fixed["input_ids"].shape[1] == 128
    assert (fixed["labels"][fixed["attention_mask"] == 0] == IGNORE_INDEX).all()


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


MALFORMED = [
    ("a.jsonl", '{"instruction": "x", "output": "y"}\n{not json}\n', r"a\.jsonl:2: not valid JSON"),
    ("b.jsonl", '{"instruction": "x", "output": "y"}\n\n{"instruction": "x"}\n', r"b\.jsonl:3: missing field\(s\) output"),
    ("c.jsonl", '{"instruction": "x", "output": 5}\n', r"c\.jsonl:1: field 'output' must be text"),
    ("d.jsonl", '{"instruction": "x", "output": "  "}\n', r"d\.jsonl:1: field 'output' is empty"),
    ("e.jsonl", '["x", "y"]\n', r"e\.jsonl:1: expected an object"),
    ("f.csv", "instruction,text\nx,y\n", r"f\.csv:1: header lacks column\(s\) output"),
    ("g.csv", "instruction,input,output\nx,y,z\nx,y\n", r"g\.csv:3: wrong number of columns"),
    ("h.txt", "hello\n", "unsupported extension"),
    ("i.jsonl", "\n\n", "holds no rows"),
]


@pytest.mark.parametrize("name,text,needle", MALFORMED)
def test_malformed_files_name_file_and_line(tmp_path, name, text, needle):
    with pytest.raises(DataError, match=needle):
        data.read_rows(_write(tmp_path, name, text))


def test_csv_and_jsonl_load(tmp_path):
    rows = [{"instruction": "Rewrite.", "input": "Hello there.", "output": "Good morrow."}]
    j = _write(tmp_path, "ok.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    c = _write(tmp_path, "ok.csv", "instruction,input,output\nRewrite.,Hello there.,Good morrow.\n")
    assert data.load_dataset_file(j)[0] == data.load_dataset_file(c)[0] == rows[0]


def test_echo_rows_answer_with_the_input():
    rows = [{"instruction": "Rewrite.", "input": "Hello.", "output": "Good morrow."},
            {"instruction": "Say hi.", "input": "", "output": "Hi."}]
    assert data.echo_rows(rows) == [{"instruction": "Rewrite.", "input": "Hello.", "output": "Hello."}]


def test_non_utf8_file_names_the_line_and_byte(tmp_path):
    # "café" in Latin-1 on line 3: byte 0xE9 is not valid UTF-8.
    good = '{"instruction": "x", "output": "y"}\n'
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((good * 2 + '{"instruction": "x", "output": "caf\u00e9"}\n').encode("latin-1"))
    offset = len(good.encode()) * 2 + len('{"instruction": "x", "output": "caf')
    with pytest.raises(DataError, match=rf"latin1\.jsonl:3: not UTF-8 text \(byte {offset}, byte 36 of the line"):
        data.read_rows(path)


def test_tiny_model_is_built_from_the_first_pairs_only():
    from peftlab import tiny

    # The data set grows; the tiny model (and every number computed with it) does not change.
    train, test = _course_rows()
    n_train, n_test = tiny.TINY_CORPUS_ROWS["shakespeare_train.jsonl"], tiny.TINY_CORPUS_ROWS["shakespeare_test.jsonl"]
    assert len(train) > n_train and len(test) > n_test
    corpus = tiny._course_corpus()
    assert len(corpus) == 5 + 3 * (n_train + n_test)
    assert train[n_train - 1]["output"] in corpus and test[n_test - 1]["output"] in corpus
    assert not {train[n_train]["input"], test[n_test]["input"]} & set(corpus)
