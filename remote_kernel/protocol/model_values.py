"""Fitted models as data: the ``model`` kind of a value payload, never a pickle.

A fitted scikit-learn estimator travels as its class (from :data:`ALLOWED`), its
hyper-parameters (JSON scalars and number lists) and its fitted arrays (numeric
JSON lists with dtype and shape, or lists of strings for labels and feature
names). Nothing in a payload is ever run or imported: the class path is looked up
in an allow-list of classes imported by name here, the parameters are checked
against that class's own list, and every array against the shapes the class
implies (``coef_`` is ``classes x features``; a tree's children point inside the
tree). So the datasite can read all of it, scan it for private values and judge it
(:mod:`remote_kernel.checks.models`), and the researcher's kernel can rebuild a
working estimator from exactly what was checked (:func:`build_model`).

Estimators outside the allow-list travel as a *description* only (``supported:
false``: the class and the names of its fitted attributes, no values), so the
filter can say why it blocks them (a k-NN model *is* its training rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from remote_kernel.protocol.errors import InputError
from remote_kernel.protocol.model_trees import (
    MISSING,
    TREE_ARRAYS,
    build_tree,
    tree_arrays_of,
    tree_problem,
)

MODEL_KIND = "model"
#: Most numbers all the fitted arrays of one model may hold together.
MAX_MODEL_CELLS = 200_000
#: Most classes a classifier may have, and most features a model may take.
MAX_CLASSES = 100
MAX_FEATURES = 2_000
#: Most fitted-attribute names an unsupported model's description lists.
MAX_ATTRIBUTES = 100

_LINEAR = ("coef_", "intercept_")


@dataclass(frozen=True)
class ModelClass:
    """One allow-listed class: what it may carry and how the rules treat it."""

    path: str
    family: str  # "linear", "naive-bayes", "tree" or "forest"
    params: tuple[str, ...]
    arrays: tuple[str, ...]
    classifier: bool = False
    #: diffprivlib: differentially private by construction, given explicit bounds.
    dp: bool = False
    #: The parameters that must be given explicitly (never read from the data).
    bounds: tuple[str, ...] = ()


_LINEAR_PARAMS = ("fit_intercept", "tol", "max_iter")
_TREE_PARAMS = ("criterion", "max_depth", "min_samples_leaf", "min_samples_split",
                "max_leaf_nodes", "ccp_alpha")  # fmt: skip
_FOREST_PARAMS = ("n_estimators", "bootstrap", "max_features", *_TREE_PARAMS)
#: Most trees a forest may have.
MAX_TREES = 500
ALLOWED: dict[str, ModelClass] = {
    c.path: c
    for c in (
        ModelClass(
            "sklearn.linear_model.LogisticRegression", "linear",
            ("C", "penalty", "solver", "l1_ratio", *_LINEAR_PARAMS), ("classes_", *_LINEAR),
            classifier=True,
        ),
        ModelClass("sklearn.linear_model.LinearRegression", "linear",
                   ("fit_intercept", "positive"), _LINEAR),
        ModelClass("sklearn.linear_model.Ridge", "linear",
                   ("alpha", "solver", "positive", *_LINEAR_PARAMS), _LINEAR),
        ModelClass("sklearn.linear_model.Lasso", "linear",
                   ("alpha", "positive", "selection", *_LINEAR_PARAMS), _LINEAR),
        ModelClass("sklearn.naive_bayes.GaussianNB", "naive-bayes", ("var_smoothing",),
                   ("classes_", "class_count_", "class_prior_", "theta_", "var_", "epsilon_"),
                   classifier=True),
        ModelClass("sklearn.tree.DecisionTreeClassifier", "tree", _TREE_PARAMS,
                   ("classes_", *TREE_ARRAYS), classifier=True),
        ModelClass("sklearn.tree.DecisionTreeRegressor", "tree", _TREE_PARAMS, TREE_ARRAYS),
        ModelClass("sklearn.ensemble.RandomForestClassifier", "forest", _FOREST_PARAMS,
                   ("classes_",), classifier=True),
        ModelClass("sklearn.ensemble.RandomForestRegressor", "forest", _FOREST_PARAMS, ()),
        ModelClass("diffprivlib.models.LogisticRegression", "linear",
                   ("epsilon", "data_norm", "C", *_LINEAR_PARAMS), ("classes_", *_LINEAR),
                   classifier=True, dp=True, bounds=("data_norm",)),
        ModelClass("diffprivlib.models.LinearRegression", "linear",
                   ("epsilon", "bounds_X", "bounds_y", "fit_intercept"), _LINEAR,
                   dp=True, bounds=("bounds_X", "bounds_y")),
        ModelClass("diffprivlib.models.GaussianNB", "naive-bayes",
                   ("epsilon", "bounds", "var_smoothing"),
                   ("classes_", "class_count_", "class_prior_", "theta_", "var_", "epsilon_"),
                   classifier=True, dp=True, bounds=("bounds",)),
    )
}  # fmt: skip
#: A forest's trees are described like this (their node arrays only).
TREE = ModelClass("tree", "tree", (), TREE_ARRAYS)
#: Arrays that may hold labels (strings) instead of numbers.
_LABEL_ARRAYS = frozenset({"classes_"})


class ModelDecodeError(InputError):
    """A model payload that is malformed, forged or too large."""


def supported_list() -> str:
    return ", ".join(sorted(ALLOWED))


@dataclass(frozen=True)
class ModelSpec:
    """A checked model payload: everything the researcher would receive, as plain data."""

    cls: ModelClass
    params: dict[str, Any]
    n_features: int
    feature_names: tuple[str, ...] | None
    arrays: dict[str, Any] = field(default_factory=dict)  # name -> numpy array
    #: A forest's trees, each as its node arrays (``TREE_ARRAYS``).
    trees: tuple[dict[str, Any], ...] = ()

    def tree_arrays(self) -> list[dict[str, Any]]:
        """The node arrays of every tree (one for a tree, none for other models)."""
        return [self.arrays] if self.cls.family == "tree" else list(self.trees)

    def leaf_sizes(self) -> list[int]:
        """Training rows in each leaf of every tree (empty for models without trees)."""
        sizes = []
        for tree in self.tree_arrays():
            left, counts = tree["children_left"].tolist(), tree["n_node_samples"].tolist()
            sizes += [int(n) for n, child in zip(counts, left, strict=True) if child < 0]
        return sizes

    def texts(self) -> list[tuple[str, str]]:
        """Every number and label the payload carries, as text for the leak scan."""
        lines = [f"{k} {v}" for k, v in sorted(self.params.items())]
        if self.feature_names:
            lines.append(" ".join(self.feature_names))
        texts = [("model parameters", "\n".join(lines))]
        texts += _array_texts("model", self.arrays)
        for i, tree in enumerate(self.trees):
            texts += _array_texts(f"model tree {i}", tree)
        return texts


def _array_texts(where: str, arrays: dict[str, Any]) -> list[tuple[str, str]]:
    """Arrays as lines of numbers: a matrix by rows, a tree's node arrays one node a line."""
    texts = []
    for name, array in sorted(arrays.items()):
        rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
        if array.ndim == 1 and name in TREE_ARRAYS:
            rows = array.reshape(-1, 1)
        text = "\n".join(" ".join(str(v) for v in row) for row in rows.tolist())
        texts.append((f"{where} {name}", text))
    return texts


# --- reading a payload (the datasite and the researcher both do this) --------------------------
def read_model(payload: Any) -> ModelSpec:
    """The checked content of a ``model`` payload; :class:`ModelDecodeError` for anything off.

    Refuses classes outside :data:`ALLOWED` (listing them), keys and arrays the class
    does not have, parameters that are not JSON scalars or number lists, arrays of the
    wrong dtype or shape, and more than :data:`MAX_MODEL_CELLS` numbers in all.
    """
    if not isinstance(payload, dict) or payload.get("kind") != MODEL_KIND:
        raise ModelDecodeError("not a model payload")
    path = payload.get("class")
    cls = ALLOWED.get(path) if isinstance(path, str) else None
    if cls is None or payload.get("supported") is not True:
        raise ModelDecodeError(
            f"{str(path)[:200]!r} is not a model this datasite describes as data "
            f"(supported: {supported_list()})"
        )
    keys = {"kind", "type", "class", "supported", "params", "n_features", "feature_names",
            "arrays"} | ({"trees"} if cls.family == "forest" else set())  # fmt: skip
    extra = set(payload) - keys
    if extra:
        raise ModelDecodeError(f"unexpected key(s) in a model payload: {_names(extra)}")
    params = _params(cls, payload.get("params"))
    n_features = payload.get("n_features")
    if not _count(n_features) or not 1 <= n_features <= MAX_FEATURES:
        raise ModelDecodeError(f"n_features must be a whole number from 1 to {MAX_FEATURES}")
    names = payload.get("feature_names")
    if names is not None and (
        not isinstance(names, list)
        or len(names) != n_features
        or not all(isinstance(n, str) and len(n) <= 200 for n in names)
    ):
        raise ModelDecodeError("feature_names must be one short string per feature, or null")
    total = [0]
    arrays = _arrays(cls.path, cls.arrays, payload.get("arrays"), total, cls.family == "tree")
    trees = _forest(cls, payload.get("trees"), total) if cls.family == "forest" else ()
    spec = ModelSpec(cls, params, n_features, tuple(names) if names else None, arrays, trees)
    _check_shapes(spec)
    return spec


def _forest(cls: ModelClass, raw: Any, total: list[int]) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TREES:
        raise ModelDecodeError(f"a forest's trees must be a list of 1 to {MAX_TREES} trees")
    return tuple(_arrays(f"{cls.path} tree", TREE_ARRAYS, tree, total, True) for tree in raw)


def read_description(payload: Any) -> tuple[str, tuple[str, ...]]:
    """``(class path, fitted attribute names)`` of an unsupported model's description."""
    if not isinstance(payload, dict) or set(payload) - {"kind", "type", "class", "supported",
                                                         "attributes"}:  # fmt: skip
        raise ModelDecodeError("a model description holds its class and attribute names only")
    path, names = payload.get("class"), payload.get("attributes", [])
    if not isinstance(path, str) or len(path) > 200 or not isinstance(names, list):
        raise ModelDecodeError("a model description needs a class path and a list of attributes")
    if len(names) > MAX_ATTRIBUTES or not all(isinstance(n, str) and len(n) <= 100 for n in names):
        raise ModelDecodeError(f"a model description lists at most {MAX_ATTRIBUTES} short names")
    return path, tuple(names)


def _names(keys: Any) -> str:
    return ", ".join(sorted(str(k)[:50] for k in keys)[:10])


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_params(cls: ModelClass, raw: Any) -> dict[str, Any]:
    """``raw`` as parameters of ``cls``: its own names only, plain numbers, strings and lists."""
    return _params(cls, raw)


def _params(cls: ModelClass, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ModelDecodeError("params must be an object")
    unknown = set(raw) - set(cls.params)
    if unknown:
        raise ModelDecodeError(f"{cls.path} has no parameter(s) {_names(unknown)}")
    for name, value in raw.items():
        if not _param_value(value):
            raise ModelDecodeError(f"parameter {name!r} must be a number, string, bool or null")
    return dict(raw)


def _param_value(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= 100
    if isinstance(value, list) and depth < 2 and len(value) <= MAX_FEATURES:
        return all(_param_value(v, depth + 1) and not isinstance(v, str) for v in value)
    return False


def _arrays(
    what: str, names: tuple[str, ...], raw: Any, total: list[int], tree: bool
) -> dict[str, Any]:
    """Exactly the arrays ``names`` (a tree may add ``missing_go_to_left``), each checked;
    ``total`` counts the numbers of the whole model against :data:`MAX_MODEL_CELLS`."""
    if not isinstance(raw, dict):
        raise ModelDecodeError("arrays must be an object")
    unknown = set(raw) - set(names) - ({MISSING} if tree else set())
    missing = set(names) - set(raw)
    if unknown or missing:
        problem = f"unexpected {_names(unknown)}" if unknown else f"missing {_names(missing)}"
        raise ModelDecodeError(f"{what} arrays: {problem}")
    return {name: _array(name, entry, total) for name, entry in raw.items()}


def _array(name: str, entry: Any, total: list[int]) -> Any:
    """One array entry, its size counted before anything is allocated for it."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data"}:
        raise ModelDecodeError(f"array {name} must be {{dtype, shape, data}}")
    shape = entry["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > 3
        or not all(_count(n) and n >= 0 for n in shape)
    ):
        raise ModelDecodeError(f"array {name} has a bad shape")
    total[0] += math.prod(shape)
    if total[0] > MAX_MODEL_CELLS:
        raise ModelDecodeError(
            f"the model's arrays hold over {MAX_MODEL_CELLS} numbers, more than any "
            "supported model needs"
        )
    dtype = str(entry["dtype"])
    if name in _LABEL_ARRAYS and dtype == "str":
        array = _labels(name, entry["data"])
    else:
        array = _numbers(name, dtype, entry["data"])
    if list(array.shape) != shape:
        raise ModelDecodeError(f"array {name} does not have its declared shape")
    return array


def _labels(name: str, data: Any) -> Any:
    import numpy as np

    if not isinstance(data, list) or not all(isinstance(v, str) and len(v) <= 200 for v in data):
        raise ModelDecodeError(f"array {name} must be a list of short strings")
    return np.array(data, dtype=object)


def _numbers(name: str, dtype: str, data: Any) -> Any:
    import numpy as np

    kind = np.dtype(dtype).kind if dtype in _NUMERIC_DTYPES else ""
    if not kind or kind not in "biuf":
        raise ModelDecodeError(f"array {name} has dtype {dtype[:20]!r}, not a number type")
    try:
        array = np.asarray(data, dtype=np.dtype(dtype))
    except (TypeError, ValueError):
        raise ModelDecodeError(f"array {name} does not hold numbers") from None
    if kind == "f" and not bool(np.isfinite(array).all()):
        raise ModelDecodeError(f"array {name} holds NaN or infinity")
    return array


_NUMERIC_DTYPES = frozenset(
    {"<f8", "<f4", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "|b1"}
)


def _check_shapes(spec: ModelSpec) -> None:
    """The shapes the class implies: nothing can ride along in a longer array."""
    a, f = spec.arrays, spec.n_features
    n_classes = len(a["classes_"]) if "classes_" in a else 0
    if spec.cls.classifier:
        if a["classes_"].ndim != 1 or not 2 <= n_classes <= MAX_CLASSES:
            raise ModelDecodeError(f"classes_ must list 2 to {MAX_CLASSES} classes")
        if len(set(a["classes_"].tolist())) != n_classes:
            raise ModelDecodeError("classes_ repeats a class")
    if spec.cls.family == "linear":
        rows = (1 if n_classes == 2 else n_classes) if spec.cls.classifier else 1
        coef, intercept = a["coef_"], a["intercept_"]
        if coef.shape not in ((rows, f),) + (((f,),) if not spec.cls.classifier else ()):
            raise ModelDecodeError(f"coef_ must be {rows} x {f} for this model")
        if intercept.size != rows or intercept.ndim > 1:
            raise ModelDecodeError(f"intercept_ must hold {rows} number(s)")
    elif spec.cls.family == "naive-bayes":
        for name, shape in (("theta_", (n_classes, f)), ("var_", (n_classes, f)),
                            ("class_count_", (n_classes,)), ("class_prior_", (n_classes,)),
                            ("epsilon_", ())):  # fmt: skip
            if a[name].shape != shape:
                raise ModelDecodeError(f"{name} must have shape {shape}")
    for tree in spec.tree_arrays():
        problem = tree_problem(tree, spec.n_features, n_classes)
        if problem:
            raise ModelDecodeError(problem)


# --- describing an estimator (in a kernel, or at the datasite for models it fitted) ------------
def public_path(cls: type) -> str:
    """``sklearn.neighbors.KNeighborsClassifier`` for ``sklearn.neighbors._classification``'s."""
    parts = [p for p in cls.__module__.split(".") if not p.startswith("_")]
    return ".".join([*parts, cls.__qualname__])


def allowed_path(klass: type) -> str:
    """The allow-list's name for exactly this class (not a subclass), else its public path."""
    for path in ALLOWED:
        if path.rsplit(".", 1)[1] == klass.__qualname__ and _class_of(path) is klass:
            return path
    return public_path(klass)


def is_estimator(obj: Any) -> bool:
    """A scikit-learn-style estimator (sklearn's or diffprivlib's), fitted or not."""
    import sys

    base = sys.modules.get("sklearn.base")
    return base is not None and isinstance(obj, base.BaseEstimator) and not isinstance(obj, type)


def describe_model(model: Any, fitted: bool = True) -> dict[str, Any]:
    """The ``model`` payload for an estimator: data only, never a pickle.

    For a class outside :data:`ALLOWED` the payload says so (``supported: false``)
    and lists only its class and the names of its fitted attributes.
    """
    path = allowed_path(type(model))
    cls = ALLOWED.get(path)
    if cls is None:
        names = sorted(k for k in vars(model) if k.endswith("_") or k.startswith("_fit"))
        return {"kind": MODEL_KIND, "class": path, "supported": False,
                "attributes": [n[:100] for n in names[:MAX_ATTRIBUTES]]}  # fmt: skip
    params = {}
    for name in cls.params:
        value = _plain(model.get_params().get(name))
        if _param_value(value):
            params[name] = value
    payload: dict[str, Any] = {"kind": MODEL_KIND, "class": path, "supported": True,
                               "params": params}  # fmt: skip
    if not fitted:
        return payload
    names = getattr(model, "feature_names_in_", None)
    payload["n_features"] = int(model.n_features_in_)
    payload["feature_names"] = [str(n) for n in names] if names is not None else None
    payload["arrays"] = _fitted_arrays(model, cls)
    if cls.family == "forest":
        payload["trees"] = [_fitted_arrays(tree, TREE) for tree in model.estimators_]
    return payload


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fitted_arrays(model: Any, cls: ModelClass) -> dict[str, Any]:
    import numpy as np

    if cls.family == "tree":
        values = tree_arrays_of(model)
        if cls.classifier:
            values["classes_"] = model.classes_
    else:
        values = {name: np.asarray(getattr(model, name)) for name in cls.arrays}
    return {name: _array_entry(name, np.asarray(v)) for name, v in values.items()}


def _array_entry(name: str, array: Any) -> dict[str, Any]:
    if array.dtype.kind in "OUS":
        return {"dtype": "str", "shape": list(array.shape), "data": [str(v) for v in array]}
    if array.dtype.kind == "b":
        array = array.astype("|b1")
    if array.dtype.str not in _NUMERIC_DTYPES:
        array = array.astype("<f8" if array.dtype.kind == "f" else "<i8")
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tolist()}


# --- rebuilding (the researcher's kernel; the datasite for models it fits) ---------------------
def _class_of(path: str) -> type | None:
    """The allow-listed class named ``path``, imported by name here (never from a payload)."""
    if path.startswith("diffprivlib."):
        try:
            from diffprivlib import models as dp
        except ImportError:
            return None
        return {
            "diffprivlib.models.LogisticRegression": dp.LogisticRegression,
            "diffprivlib.models.LinearRegression": dp.LinearRegression,
            "diffprivlib.models.GaussianNB": dp.GaussianNB,
        }.get(path)
    from sklearn import ensemble, linear_model, naive_bayes, tree

    return {
        "sklearn.ensemble.RandomForestClassifier": ensemble.RandomForestClassifier,
        "sklearn.ensemble.RandomForestRegressor": ensemble.RandomForestRegressor,
        "sklearn.linear_model.LogisticRegression": linear_model.LogisticRegression,
        "sklearn.linear_model.LinearRegression": linear_model.LinearRegression,
        "sklearn.linear_model.Ridge": linear_model.Ridge,
        "sklearn.linear_model.Lasso": linear_model.Lasso,
        "sklearn.naive_bayes.GaussianNB": naive_bayes.GaussianNB,
        "sklearn.tree.DecisionTreeClassifier": tree.DecisionTreeClassifier,
        "sklearn.tree.DecisionTreeRegressor": tree.DecisionTreeRegressor,
    }.get(path)


def make_estimator(cls: ModelClass, params: dict[str, Any]) -> Any:
    """An unfitted estimator of an allow-listed class with checked parameters."""
    klass = _class_of(cls.path)
    if klass is None:
        raise ModelDecodeError(f"{cls.path} is not installed here (pip install diffprivlib)")
    try:
        return klass(**params)
    except (TypeError, ValueError) as exc:
        raise ModelDecodeError(f"{cls.path} does not take these parameters: {exc}") from None


def build_model(spec: ModelSpec) -> Any:
    """A working estimator (``predict`` works) from a checked payload."""
    import numpy as np

    model = make_estimator(spec.cls, spec.params)
    model.n_features_in_ = spec.n_features
    if spec.feature_names:
        model.feature_names_in_ = np.array(spec.feature_names, dtype=object)
    arrays = dict(spec.arrays)
    if "classes_" in arrays and arrays["classes_"].dtype == object:
        arrays["classes_"] = arrays["classes_"].astype(str)
    classes = arrays.get("classes_")
    if spec.cls.family == "tree":
        build_tree(model, spec.n_features, classes, arrays)
        return model
    if spec.cls.family == "forest":
        _build_forest(model, spec, classes)
        return model
    for name, array in arrays.items():
        setattr(model, name, array.item() if array.ndim == 0 else array)
    return model


def _build_forest(model: Any, spec: ModelSpec, classes: Any) -> None:
    """A forest of trees built like single trees (sklearn's forests predict from these)."""
    single = "Classifier" if spec.cls.classifier else "Regressor"
    tree_cls = ALLOWED[f"sklearn.tree.DecisionTree{single}"]
    model.estimators_ = []
    for arrays in spec.trees:
        tree = make_estimator(tree_cls, {})
        tree.n_features_in_ = spec.n_features
        build_tree(tree, spec.n_features, classes, arrays)
        model.estimators_.append(tree)
    model.estimator_ = make_estimator(tree_cls, {})
    model.n_outputs_ = 1
    if classes is not None:
        model.classes_, model.n_classes_ = classes, len(classes)
