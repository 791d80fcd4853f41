"""``rk.fit_dp(model, dataset, features, target)``: the datasite fits a DP model itself.

Why the datasite and not the kernel: a model the kernel fitted is whatever numbers
the kernel wrote under a diffprivlib class name, and a fitted diffprivlib model
cannot show whether its bounds were given or read from the private data. So the
kernel only *asks* (like ``rk.query``): it sends the unfitted estimator as data
(an allow-listed diffprivlib class and its parameters), a dataset and column names.
The datasite checks the request (DP class, explicit bounds, declared classes for a
classifier, a row privacy unit, columns that exist), charges ε to the researcher's
budget on that dataset (committed and audited before anything is fitted), fits on
the private table in its own process, and records the model, as data, as a
datasite-made output released without a reviewer. The kernel gets the same payload
back and rebuilds a working model from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import warnings
from typing import TYPE_CHECKING, Any

import pandas as pd

from remote_kernel.checks.dp.metadata import DPMetadata
from remote_kernel.datasite.dp_tier import metadata_of
from remote_kernel.protocol.errors import InputError
from remote_kernel.protocol.model_values import (
    ALLOWED,
    MODEL_KIND,
    ModelClass,
    ModelDecodeError,
    check_params,
    describe_model,
    make_estimator,
)
from remote_kernel.protocol.models import Finding, OutputItem, Verdict
from remote_kernel.protocol.values import VALUE_MIME

if TYPE_CHECKING:
    from remote_kernel.datasite.core import DatasiteCore
    from remote_kernel.datasite.store import Charge

#: The most features one DP model may take here.
MAX_DP_FEATURES = 100
#: The most solver iterations a DP model may ask the datasite for.
MAX_ITER = 1000


async def fit_dp_model(core: DatasiteCore, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Check, charge, fit, release (see the module docstring); refusals cost nothing."""
    request = core.running_request(session_id)
    user = core.store.user_name(request.user_id)
    cls, params = _estimator(body.get("model"))
    dataset, features, target = _columns(body)
    metadata = metadata_of(core, dataset)
    table = core.private_tables()[dataset]
    classes = _check_against(cls, metadata, table, features, target)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    charge = core.store.charge_budget(
        user, dataset, float(params["epsilon"]), 0.0, what=f"request:{request.id} model:{digest}"
    )
    payload = await asyncio.to_thread(_fit, cls, params, table, features, target, classes)
    finding = Finding("dp-model", Verdict.RELEASE, cost_line(charge, cls))
    item = model_output_item(payload, charge, cls)
    output = core.record_datasite_output(request, item, (finding,))
    return {
        "output_id": output.id,
        "summary": output.summary,
        "model": payload,
        "epsilon": charge.epsilon,
        "epsilon_left": charge.epsilon_left,
    }


def _estimator(raw: Any) -> tuple[ModelClass, dict[str, Any]]:
    """The DP class and its parameters; diffprivlib must not read bounds from the data."""
    if not isinstance(raw, dict) or raw.get("kind") != MODEL_KIND:
        raise InputError("'model' must be an unfitted estimator described as data")
    cls = ALLOWED.get(str(raw.get("class")))
    if cls is None or not cls.dp:
        dp = ", ".join(sorted(p for p, c in ALLOWED.items() if c.dp))
        raise InputError(
            f"the datasite fits differentially private models only ({dp}); "
            f"{str(raw.get('class'))[:200]!r} is not one"
        )
    try:
        params = check_params(cls, raw.get("params"))
    except ModelDecodeError as exc:
        raise InputError(f"{exc} (parameters: {', '.join(cls.params)})") from None
    missing = [name for name in cls.bounds if params.get(name) is None]
    if missing:
        raise InputError(
            f"give {', '.join(missing)} explicitly: without them diffprivlib reads the bounds "
            "from the private data, which is not differentially private"
        )
    max_iter = params.get("max_iter", 100)
    if type(max_iter) is not int or not 1 <= max_iter <= MAX_ITER:
        raise InputError(f"max_iter must be a whole number from 1 to {MAX_ITER}")
    epsilon = params.get("epsilon")
    if not isinstance(epsilon, int | float) or isinstance(epsilon, bool) or not 0 < epsilon <= 10:
        raise InputError("epsilon must be a number in (0, 10]")
    try:
        make_estimator(cls, params)  # the parameters must at least build the estimator
    except ModelDecodeError as exc:
        raise InputError(str(exc)) from None
    return cls, dict(params)


def _columns(body: dict[str, Any]) -> tuple[str, list[str], str]:
    dataset, features, target = body.get("dataset"), body.get("features"), body.get("target")
    if not isinstance(dataset, str) or not isinstance(target, str):
        raise InputError("'dataset' and 'target' must be names")
    if (
        not isinstance(features, list)
        or not 1 <= len(features) <= MAX_DP_FEATURES
        or not all(isinstance(f, str) for f in features)
        or len(set(features)) != len(features)
        or target in features
    ):
        raise InputError(f"'features' must be 1 to {MAX_DP_FEATURES} distinct column names")
    return dataset, features, target


def _check_against(
    cls: ModelClass, metadata: DPMetadata, table: pd.DataFrame, features: list[str], target: str
) -> list[Any] | None:
    """Columns exist and are numeric; one row is one person; a classifier's classes are public."""
    if not metadata.privacy_unit.is_row:
        raise InputError(
            "this dataset's privacy unit is a person with several rows; DP models here "
            "protect one row, so they are refused on it"
        )
    for column in [*features, target]:
        if column not in table.columns:
            raise InputError(f"the dataset has no column {column!r}")
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise InputError(f"column {column!r} is not numeric")
    if not cls.classifier:
        return None
    classes = metadata.categories_of(target)
    if not classes or len(classes) < 2:
        raise InputError(
            f"a classifier's classes must be public: the data owner declares them under "
            f"public_categories: {{{target}: [...]}} in the dataset's dp metadata"
        )
    return sorted(classes)


def _fit(
    cls: ModelClass,
    params: dict[str, Any],
    table: pd.DataFrame,
    features: list[str],
    target: str,
    classes: list[Any] | None,
) -> dict[str, Any]:
    """Fit on the private rows (complete rows; a classifier's rows of the declared classes)."""
    rows = table[[*features, target]].dropna()
    if classes is not None:
        rows = rows[rows[target].isin(classes)]
    model = make_estimator(cls, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffprivlib warns when it clips to the given bounds
        try:
            model.fit(rows[features], rows[target])
        except Exception as exc:  # a fixed message: the reason could quote private values
            raise InputError(
                f"the datasite could not fit this model ({type(exc).__name__})"
            ) from None
    if classes is not None and [_label(c) for c in model.classes_] != [_label(c) for c in classes]:
        raise InputError("a declared class has no rows here, so the model is not released")
    return describe_model(model)


def _label(value: Any) -> Any:
    """A class label compared by value (the column's 1.0 is the declared 1)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def cost_line(charge: Charge, cls: ModelClass) -> str:
    return (
        f"a {cls.path} fitted by the datasite with differential privacy: "
        f"ε={charge.epsilon:g} spent on {charge.dataset}; ε={charge.epsilon_left:g} left"
    )


def model_output_item(payload: dict[str, Any], charge: Charge, cls: ModelClass) -> OutputItem:
    """The released model: a line of text and the model as data (the value mime type)."""
    text = cost_line(charge, cls)
    data = {"text/plain": text, VALUE_MIME: {"type": cls.path, **payload}}
    return OutputItem("display_data", {"data": data, "metadata": {}, "transient": {}})
