"""``rk.fit_dp(model, dataset, features, target)``: a differentially private model the
datasite fits, charges to your budget and releases without a reviewer.

At the datasite the kernel only asks (see :mod:`remote_kernel.datasite.dp_models`):
it sends the unfitted diffprivlib estimator as data and gets back the fitted model,
rebuilt here from the numbers the datasite released. On the mock (your own kernel)
the same call fits the same estimator on the mock data, without a budget, and says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from remote_kernel.protocol.model_values import build_model, describe_model, read_model
from remote_kernel.researcher.data import at_datasite, data
from remote_kernel.researcher.kernel_api import post_to_datasite


def fit_dp(
    model: Any, dataset: str, features: Sequence[str], target: str, site: str | None = None
) -> Any:
    """Fit ``model`` (a diffprivlib LogisticRegression, LinearRegression or GaussianNB with
    explicit bounds) on ``dataset[features]`` against ``dataset[target]``.

    At the datasite: fitted there with differential privacy, ε charged to your budget on
    the dataset, released at once. Here: fitted on the mock, no noise budget spent.
    """
    features = list(features)
    if at_datasite():
        return _ask_datasite(model, dataset, features, target)
    mock = data(dataset, site=site)
    rows = mock[[*features, target]].dropna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(rows[features], rows[target])
    print(
        f"(mock data: fitted here, no budget spent; at the datasite: DP with ε={model.epsilon:g})"
    )
    return model


def _ask_datasite(model: Any, dataset: str, features: list[str], target: str) -> Any:
    body = {
        "model": describe_model(model, fitted=False),
        "dataset": dataset,
        "features": features,
        "target": target,
    }
    answer = post_to_datasite("/kernel/fit_dp", body)
    fitted = build_model(read_model(answer["model"]))
    # The datasite already shows the released model as an output of the cell (with its
    # cost); ending the cell with it adds no second, kernel-made copy to review, so
    # request.value() finds the released one. A copy of it (clone) displays as usual.
    fitted._ipython_display_ = _shown_by_the_datasite
    return fitted


def _shown_by_the_datasite() -> None:
    return None
