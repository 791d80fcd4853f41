"""Decision trees as arrays: what a tree carries, how it is checked and rebuilt.

Part of the safe model encoding (:mod:`remote_kernel.protocol.model_values`): a tree is
its node arrays (children, split feature and threshold, per-node value and training
sample count), read from scikit-learn's own node record and written back into it,
never pickled. :func:`tree_problem` says what is wrong with arrays that claim to be a
tree (a forged payload), so nothing can ride along in them.
"""

from __future__ import annotations

from typing import Any

TREE_ARRAYS = ("children_left", "children_right", "feature", "threshold", "value", "n_node_samples")
MISSING = "missing_go_to_left"
#: sklearn's node record calls the children left_child / right_child.
NODE_FIELD = {"children_left": "left_child", "children_right": "right_child"}


def tree_arrays_of(model: Any) -> dict[str, Any]:
    """A fitted tree's node arrays, from sklearn's own node record."""
    import numpy as np

    state = model.tree_.__getstate__()
    nodes = state["nodes"]
    values = {n: nodes[NODE_FIELD.get(n, n)] for n in TREE_ARRAYS if n != "value"}
    values["value"] = np.asarray(state["values"])
    if MISSING in (nodes.dtype.names or ()):
        values[MISSING] = nodes[MISSING]
    return values


def tree_problem(a: dict[str, Any], n_features: int, n_classes: int) -> str | None:
    """What is wrong with node arrays that should form one tree over the model's features
    with counts adding up from the leaves, or None."""
    import numpy as np

    nodes = a["children_left"].shape[0] if a["children_left"].ndim == 1 else -1
    if nodes < 1:
        return "a tree needs a 1-d children_left with at least one node"
    for name in TREE_ARRAYS[:4] + ("n_node_samples",) + ((MISSING,) if MISSING in a else ()):
        if a[name].shape != (nodes,):
            return f"{name} must hold one entry per node ({nodes})"
    outputs = max(n_classes, 1)
    if a["value"].shape != (nodes, 1, outputs):
        return f"value must be {nodes} x 1 x {outputs}"
    left, right = a["children_left"], a["children_right"]
    leaf = left < 0
    if not np.array_equal(leaf, right < 0) or not np.all(leaf | ((left > 0) & (right > 0))):
        return "a node has one child only, or a child before the root"
    if np.any(left >= nodes) or np.any(right >= nodes):
        return "a child index points outside the tree"
    children = np.concatenate([left[~leaf], right[~leaf]])
    if len(np.unique(children)) != len(children) or len(children) != nodes - 1:
        return "the nodes do not form one tree"
    feature = a["feature"]
    if np.any(feature[~leaf] < 0) or np.any(feature >= n_features):
        return "a split names a feature the model does not have"
    sizes = a["n_node_samples"]
    if np.any(sizes < 1) or np.any(sizes[~leaf] != sizes[left[~leaf]] + sizes[right[~leaf]]):
        return "node sample counts do not add up from the leaves"
    return None


def build_tree(model: Any, n_features: int, classes: Any, arrays: dict[str, Any]) -> None:
    """Write checked node arrays into a fresh sklearn tree of ``model`` (predict works)."""
    import numpy as np
    from sklearn.tree._tree import NODE_DTYPE, Tree

    nodes = np.zeros(len(arrays["children_left"]), dtype=NODE_DTYPE)
    for name in TREE_ARRAYS:
        if name != "value":
            nodes[NODE_FIELD.get(name, name)] = arrays[name]
    nodes["weighted_n_node_samples"] = arrays["n_node_samples"]
    if MISSING in (NODE_DTYPE.names or ()) and MISSING in arrays:
        nodes[MISSING] = arrays[MISSING]
    n_classes = len(classes) if classes is not None else 1
    tree = Tree(n_features, np.array([n_classes], dtype=np.intp), 1)
    levels = tree_depth(arrays["children_left"], arrays["children_right"])
    values = np.ascontiguousarray(arrays["value"], dtype=np.float64)
    state = {"max_depth": levels, "node_count": len(nodes), "nodes": nodes, "values": values}
    tree.__setstate__(state)
    model.tree_ = tree
    model.n_outputs_ = 1
    model.max_features_ = n_features
    if classes is not None:
        model.classes_, model.n_classes_ = classes, n_classes


def tree_depth(left: Any, right: Any) -> int:
    """The tree's depth, walking from the root (the arrays are checked to form a tree)."""
    depth, frontier = 0, [0]
    while frontier:
        frontier = [c for n in frontier for c in (int(left[n]), int(right[n])) if c >= 0]
        depth += 1 if frontier else 0
    return depth
