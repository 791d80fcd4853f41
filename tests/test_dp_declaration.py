"""``remote-kernel datasite add-dataset --dp FILE``: DP metadata given with the dataset.

Checked with the DP tier's own parser and against the new table's columns before
anything is written; then it is the dataset's ``dp:`` section in ``policy.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from remote_kernel.checks.policy import load_policy
from remote_kernel.datasite.config import DatasiteConfig

from .conftest import heart_source
from .test_tokens_and_tls import cli

GOOD = {
    "bounds": {"age": [20, 80], "chol": [100, 600]},
    "public_categories": {"sex": [0, 1]},
    "privacy_unit": "row",
}


def site_and_source(tmp_path: Path) -> tuple[Path, list[str]]:
    directory = tmp_path / "cleveland"
    assert cli("datasite", "init", str(directory), "--name", "cleveland").returncode == 0
    source, columns = heart_source("cleveland", tmp_path)
    args = ["--private", str(source)]
    if columns:
        args += ["--columns", ",".join(columns), "--na", "?"]
    return directory, args


def add(directory: Path, source_args: list[str], dp: Path) -> object:
    return cli("datasite", "add-dataset", str(directory), "heart", *source_args, "--dp", str(dp))


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): p.read_bytes().hex()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.suffix not in {".db", ".db-wal", ".db-shm"}
    }


def test_the_declaration_becomes_the_datasets_dp_policy(tmp_path: Path) -> None:
    directory, source = site_and_source(tmp_path)
    (directory / "policy.yaml").write_text("# the owner's notes\npreset: strict\n")
    dp = tmp_path / "heart-dp.yaml"
    dp.write_text(yaml.safe_dump({"dp": GOOD}))
    done = add(directory, source, dp)
    assert done.returncode == 0, done.stderr
    metadata = load_policy(directory).datasets["heart"].dp
    assert metadata is not None and metadata.bounds_of("age") == (20.0, 80.0)
    assert metadata.categories_of("sex") == (0, 1) and metadata.privacy_unit.is_row
    assert load_policy(directory).preset == "strict"  # the rest of the policy is kept
    assert (directory / "policy.yaml.bak").read_text().startswith("# the owner's notes")


def test_a_bad_declaration_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    directory, source = site_and_source(tmp_path)
    before = snapshot(directory)
    cases = {
        "unknown column": {**GOOD, "bounds": {"agee": [20, 80]}},
        "reversed bounds": {**GOOD, "bounds": {"age": [80, 20]}},
        "bad unit": {**GOOD, "privacy_unit": {"id": "age"}},
        "unit column missing": {**GOOD, "privacy_unit": {"id": "pid", "max_contributions": 2}},
    }
    for case, raw in cases.items():
        dp = tmp_path / f"{case}.yaml"
        dp.write_text(yaml.safe_dump(raw))
        refused = add(directory, source, dp)
        assert refused.returncode == 2, (case, refused.stdout)
        assert refused.stderr.startswith("error: "), (case, refused.stderr)
        assert snapshot(directory) == before, case
        assert "heart" not in DatasiteConfig.load(directory).datasets, case
    unknown = tmp_path / "unknown column.yaml"
    message = add(directory, source, unknown).stderr
    assert "agee" in message and "age" in message  # names the typo and the real columns


def test_a_dataset_whose_policy_already_declares_dp_is_refused(tmp_path: Path) -> None:
    directory, source = site_and_source(tmp_path)
    (directory / "policy.yaml").write_text(yaml.safe_dump({"datasets": {"heart": {"dp": GOOD}}}))
    dp = tmp_path / "heart-dp.yaml"
    dp.write_text(yaml.safe_dump(GOOD))
    refused = add(directory, source, dp)
    assert refused.returncode == 2 and "already declares DP metadata" in refused.stderr
    assert "heart" not in DatasiteConfig.load(directory).datasets
