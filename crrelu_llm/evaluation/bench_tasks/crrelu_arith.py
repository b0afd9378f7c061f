"""Dataset loader for the ``crrelu_arith_mc`` lm-eval task (imported by lm-eval through
``!function``, by file path: no package-relative imports here)."""

from pathlib import Path


def load(**_ignored):
    import datasets

    data = str(Path(__file__).with_name("crrelu_arith_mc.jsonl"))
    rows = datasets.load_dataset("json", data_files={"items": data})["items"]
    return datasets.DatasetDict({split: rows.filter(lambda r, s=split: r["split"] == s) for split in ("test", "train")})
