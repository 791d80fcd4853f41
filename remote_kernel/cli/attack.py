"""``remote-kernel review attack OUTPUT_ID --datasite DIR --target COLUMN``: SACRO-ML's attacks
on a model held for review, run at the datasite (it needs the private rows).

SACRO-ML (``sacroml``) is an optional extra (``models-attacks``): it imports torch, so
install ``torch==2.13.0`` first (the CPU wheel; otherwise pip brings a CUDA build of
several GB). Without it the command says so and runs nothing.

What it does: rebuilds the held model from its stored payload (data only, the same
code the researcher's kernel uses; no pickle), takes the dataset's complete rows for
the model's features (``feature_names_in_``) and the target column, splits them
(70/30, seeded: the rows the model was really fitted on are not recorded, so the
membership attacks are an approximation), and runs the chosen attacks with their
output in a temporary directory that is deleted afterwards. Only the attacks' summary
metrics are printed. SACRO-ML's *release* folder writes the training data beside its
report: this command never writes one, and none may ever be released.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

from remote_kernel.cli.common import CliError, Subparsers

ATTACKS = ("structural", "worst_case", "lira")
MISSING = (
    "SACRO-ML is not installed at this datasite, so no attack ran (skipped). To run its "
    "attacks: pip install torch==2.13.0 (first: the CPU wheel; otherwise pip pulls a CUDA "
    "build of several GB), then pip install 'remote_kernel[models-attacks]'."
)


def add_attack_parser(cmds: Subparsers) -> None:
    p = cmds.add_parser("attack", help="SACRO-ML attacks on a held model (at the datasite)")
    p.add_argument("output_id", type=int)
    p.add_argument("--datasite", required=True, metavar="DIR", help="the datasite directory")
    p.add_argument("--target", required=True, help="the column the model predicts")
    p.add_argument("--dataset", help="the dataset it was fitted on (default: the only one)")
    p.add_argument(
        "--attacks", default="structural", help=f"comma-separated, of {', '.join(ATTACKS)}"
    )
    p.set_defaults(func=cmd_review_attack)


def sacroml_installed() -> bool:
    return importlib.util.find_spec("sacroml") is not None


def cmd_review_attack(args: argparse.Namespace) -> None:
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = set(attacks) - set(ATTACKS)
    if unknown or not attacks:
        raise CliError(f"unknown attack(s) {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    if not sacroml_installed():
        raise CliError(MISSING)
    model, table = _model_and_rows(Path(args.datasite), args.output_id, args.dataset)
    features = [str(f) for f in getattr(model, "feature_names_in_", [])]
    if not features:
        raise CliError("the model has no feature names, so its columns are unknown")
    if args.target not in table.columns or not set(features) <= set(table.columns):
        raise CliError(f"the dataset lacks {args.target!r} or one of {features}")
    rows = table[[*features, args.target]].dropna()
    print(json.dumps(_run(model, rows, features, args.target, attacks), indent=2))


def _model_and_rows(directory: Path, output_id: int, dataset: str | None) -> tuple[Any, Any]:
    from remote_kernel.datasite.config import DatasiteConfig
    from remote_kernel.datasite.datasets import load_private_tables
    from remote_kernel.datasite.store import Store
    from remote_kernel.protocol.errors import RemoteKernelError
    from remote_kernel.protocol.model_values import build_model, read_model
    from remote_kernel.protocol.values import VALUE_MIME

    config = DatasiteConfig.load(directory)
    store = Store(config.database_url)
    try:
        output = store.get_output(output_id)
    except RemoteKernelError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    payload = (output.item.content.get("data") or {}).get(VALUE_MIME)
    try:
        model = build_model(read_model(payload))
    except RemoteKernelError as exc:
        raise CliError(
            f"output {output_id} holds no model this command can rebuild: {exc}"
        ) from None
    tables = load_private_tables(config)
    if dataset is None and len(tables) != 1:
        raise CliError(f"name the dataset with --dataset (this site has {', '.join(tables)})")
    name = dataset or next(iter(tables))
    if name not in tables:
        raise CliError(f"no dataset {name!r} here")
    return model, tables[name]


def _run(model: Any, rows: Any, features: list[str], target: str, attacks: list[str]) -> dict:
    """The attacks' summary metrics; their files go to a temporary directory, then away."""
    from sacroml.attacks.likelihood_attack import LIRAAttack
    from sacroml.attacks.structural_attack import StructuralAttack
    from sacroml.attacks.target import Target
    from sacroml.attacks.worst_case_attack import WorstCaseAttack
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        rows[features].to_numpy(), rows[target].to_numpy(), test_size=0.3, random_state=0
    )
    target_model = Target(
        model=model, X_train=x_train, y_train=y_train, X_test=x_test, y_test=y_test
    )
    kinds = {
        "structural": lambda out: StructuralAttack(output_dir=out, write_report=False),
        "worst_case": lambda out: WorstCaseAttack(n_reps=10, output_dir=out, write_report=False),
        "lira": lambda out: LIRAAttack(n_shadow_models=20, output_dir=out, write_report=False),
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="rk-attack-") as out:
        for name in attacks:
            report = kinds[name](out).attack(target_model)
            results[name] = _metrics(report)
    return results


def _metrics(report: Any) -> Any:
    """Scalars only (numbers, booleans, short strings): never arrays of rows or predictions."""
    if isinstance(report, dict):
        kept = {str(k): _metrics(v) for k, v in report.items()}
        return {k: v for k, v in kept.items() if v is not None}
    if isinstance(report, bool | int | float) or (isinstance(report, str) and len(report) < 200):
        return report
    return None
