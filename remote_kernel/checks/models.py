"""Rules for fitted models: what a model value carries about the people it was fitted on.

Pure functions of a ``model`` payload (:mod:`remote_kernel.protocol.model_values`),
the researcher's thresholds and where the model was made. No I/O.

* Instance-based models (k-NN, SVMs, kernel density, anything that keeps training
  rows to predict) *are* their training data: blocked, with what to use instead.
* Classes the datasite cannot describe as data are blocked: nobody could check
  what they carry, and the researcher could not rebuild them anyway.
* Trees: a leaf with fewer training rows than ``min_cell_count`` describes those few
  people (its prediction, and the split thresholds around it): held for review,
  with every small leaf's size in the finding.
* Naive Bayes: a class with fewer rows than the threshold has its per-feature means
  and variances of those few people: held for review.
* Linear models and the rest take the usual path of their origin (kernel output is
  reviewed unless the policy trusts it).
* diffprivlib models fitted *in the kernel* are reviewed like any other: the kernel
  could have written any coefficients under a DP class name, and a fitted model
  cannot show whether its bounds were given or read from the data. The datasite
  releases DP models it fitted itself (``rk.fit_dp``; origin ``query``), charged to
  the budget.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from remote_kernel.checks.policy import Thresholds
from remote_kernel.protocol.model_values import (
    ModelDecodeError,
    ModelSpec,
    read_description,
    read_model,
    supported_list,
)
from remote_kernel.protocol.models import Finding, Verdict

#: Classes that keep training rows to predict (matched on the class name).
INSTANCE_BASED = frozenset(
    {
        "KNeighborsClassifier", "KNeighborsRegressor", "KNeighborsTransformer",
        "RadiusNeighborsClassifier", "RadiusNeighborsRegressor", "NearestNeighbors",
        "SVC", "NuSVC", "SVR", "NuSVR", "OneClassSVM", "KernelDensity", "KernelRidge",
        "GaussianProcessClassifier", "GaussianProcessRegressor", "LocalOutlierFactor",
        "LabelPropagation", "LabelSpreading", "Isomap", "TSNE", "KernelPCA",
        "SpectralEmbedding", "DBSCAN", "AffinityPropagation",
    }
)  # fmt: skip
#: Fitted attributes that hold training rows, whatever the class is called.
ROW_ATTRIBUTES = frozenset(
    {"support_vectors_", "_fit_X", "X_fit_", "X_train_", "X_", "embedding_", "fit_X_", "_tree"}
)
INSTEAD = (
    "fit a model that summarises the data instead: LogisticRegression, LinearRegression, "
    "GaussianNB, a decision tree with min_samples_leaf of at least {threshold}, or a "
    "differentially private model the datasite fits for you (rk.fit_dp)"
)


def model_findings(
    payload: dict[str, Any], thresholds: Thresholds, origin: str = "kernel"
) -> list[Finding]:
    """The findings for one model value (see the module docstring)."""
    if payload.get("supported") is not True:
        return _unsupported(payload, thresholds)
    try:
        spec = read_model(payload)
    except ModelDecodeError as exc:
        return [Finding("model-malformed", Verdict.BLOCK, f"a malformed model: {exc}", "model")]
    findings = _tree_findings(spec, thresholds) + _class_findings(spec, thresholds)
    if spec.cls.dp:
        findings += _dp_findings(spec, origin)
    return findings


def _unsupported(payload: dict[str, Any], thresholds: Thresholds) -> list[Finding]:
    try:
        path, attributes = read_description(payload)
    except ModelDecodeError as exc:
        return [Finding("model-malformed", Verdict.BLOCK, f"a malformed model: {exc}", "model")]
    name = path.rsplit(".", 1)[-1]
    rows = sorted(ROW_ATTRIBUTES & set(attributes))
    instead = INSTEAD.format(threshold=thresholds.min_cell_count)
    if name in INSTANCE_BASED or rows:
        held = f" (in {', '.join(rows)})" if rows else ""
        return [
            Finding(
                "model-instance-based",
                Verdict.BLOCK,
                f"a fitted {name} keeps training rows{held} and predicts by comparing new "
                f"rows with them: releasing it releases private records. Blocked; {instead}.",
                "model",
            )
        ]
    return [
        Finding(
            "model-unsupported",
            Verdict.BLOCK,
            f"a fitted {name} cannot leave this datasite: only these models are carried as "
            f"data the datasite can check ({supported_list()}), with one output each (a "
            f"multi-output model is not); {instead}.",
            "model",
        )
    ]


def _tree_findings(spec: ModelSpec, thresholds: Thresholds) -> list[Finding]:
    leaves = spec.leaf_sizes()
    small = sorted(n for n in leaves if n < thresholds.min_cell_count)
    if not small:
        return []
    counts = Counter(small)
    shown = ", ".join(f"{size} x{counts[size]}" for size in sorted(counts))
    return [
        Finding(
            "model-small-leaves",
            Verdict.REVIEW,
            f"{len(small)} of {len(leaves)} leaves hold fewer than {thresholds.min_cell_count} "
            f"training rows (leaf size x how many: {shown}); a small leaf's prediction and "
            "the split thresholds around it describe those few patients (refit with a larger "
            "min_samples_leaf)",
            "model leaves",
        )
    ]


def _class_findings(spec: ModelSpec, thresholds: Thresholds) -> list[Finding]:
    if spec.cls.family != "naive-bayes" or spec.cls.dp:
        return []
    counts = spec.arrays["class_count_"].tolist()
    small = [int(c) for c in counts if c < thresholds.min_cell_count]
    if not small:
        return []
    return [
        Finding(
            "model-small-class",
            Verdict.REVIEW,
            f"{len(small)} class(es) have fewer than {thresholds.min_cell_count} training rows "
            f"(counts: {', '.join(map(str, small))}); their means and variances describe "
            "those few patients",
            "model class_count_",
        )
    ]


def _dp_findings(spec: ModelSpec, origin: str) -> list[Finding]:
    missing = [name for name in spec.cls.bounds if spec.params.get(name) is None]
    if missing:
        return [
            Finding(
                "dp-model-no-bounds",
                Verdict.BLOCK,
                f"a {spec.cls.path} without {', '.join(missing)}: diffprivlib then reads them "
                "from the private data, which is not differentially private. Give them "
                "explicitly.",
                "model",
            )
        ]
    if origin == "query":
        return []  # fitted by the datasite itself; its own finding says what it cost
    return [
        Finding(
            "dp-model-in-kernel",
            Verdict.REVIEW,
            "a differentially private model fitted in the researcher's kernel: the datasite "
            "cannot verify that these numbers came from diffprivlib with the bounds shown "
            "(a kernel can write anything). rk.fit_dp(model, dataset, features, target) has "
            "the datasite fit it, charge ε to your budget and release it without a reviewer.",
            "model",
        )
    ]
