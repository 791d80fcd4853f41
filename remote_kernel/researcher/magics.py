"""``%%remote``: run a cell on the mock here, then at every chosen datasite at once.

A cell tagged ``remote`` runs the same way with any ordinary run command: the
frontend sends the cell's metadata (its tags) with the execute request, and an
input transformer (:class:`TaggedCells`) turns such a cell into ``%%remote`` in
the kernel, so its visible source is never changed.

The cell first runs in this kernel against the mock (labelled "mock"); if it
raises, nothing is sent. Then its source text goes to each chosen datasite
concurrently (:func:`remote_kernel.researcher.fanout.run_everywhere`). The cell shows a
table with one row per site — queued, running, pending review, released,
denied, failed — and its elapsed time (an ipywidgets widget where widgets
render, the same table as HTML/text elsewhere), and a placeholder per output
("pending review at cleveland"). When a reviewer decides later, the
placeholder is replaced in place (``update_display_data`` with its
``display_id``). ``rk.last().values()`` gives the released values as objects.
"""

from __future__ import annotations

import ast
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display, update_display

from remote_kernel.protocol.errors import RemoteKernelError
from remote_kernel.protocol.names import NAME_PATTERN
from remote_kernel.researcher.client import Datasite, RemoteOutput, RemoteRequest, sites
from remote_kernel.researcher.data import mock_schemas as local_mock_schemas
from remote_kernel.researcher.display import (
    Bundle,
    display_id,
    fanout_bundle,
    fanout_metadata,
    fanout_table_html,
    mock_label,
    output_bundle,
    status_bundle,
)
from remote_kernel.researcher.fanout import RemoteResult, datasets_named, remember, run_everywhere

#: ``show(bundle, metadata, display_id, update)``: where rendered bundles go. The magic
#: uses IPython's display machinery; the proxy kernel sends iopub messages itself.
Show = Callable[[Bundle, dict[str, Any], str, bool], None]


#: The cell tag that makes a cell run remotely (the JupyterLab extension's "remote" tag).
REMOTE_TAG = "remote"
_OWN_REMOTE_LINE = re.compile(r"^\s*%%remote(?:\s|$)")


class TaggedCells:
    """An input transformer: a cell tagged ``remote`` runs as ``%%remote`` at ``sites``.

    JupyterLab (like every frontend built on its ``CodeCell.execute``) sends a cell's
    metadata, tags included, with its ``execute_request``; ipykernel keeps that request
    as the shell's parent while IPython transforms the cell. The JupyterLab extension
    sets ``sites`` (the notebook's targets) right before each tagged cell runs; ``None``
    means every connected site. A cell with its own ``%%remote`` line runs as written,
    and nothing is transformed while ``%%remote`` itself runs (its mock run transforms
    the cell body again, under the same parent).
    """

    has_side_effects = True  # IPython's completeness check leaves it out

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.sites: list[str] | None = None
        self.running_remote = False

    def tagged(self) -> bool:
        parent = _current_request(self.shell)
        if parent.get("header", {}).get("msg_type") != "execute_request":
            return False
        tags = (parent.get("metadata") or {}).get("tags")
        return isinstance(tags, list) and REMOTE_TAG in tags

    def __call__(self, lines: list[str]) -> list[str]:
        if self.running_remote or not lines or not self.tagged():
            return lines
        if _OWN_REMOTE_LINE.match(lines[0]):
            return lines
        if self.sites is not None and not self.sites:
            message = (
                "remote_kernel: this notebook runs remote cells at no datasite: "
                "choose sites in the Datasites panel"
            )
            return [f"print({message!r})\n"]
        options = " ".join(f"--site {site}" for site in self.sites or [])
        return [f"%%remote {options}".rstrip() + "\n", *lines]


def _current_request(shell: Any) -> dict[str, Any]:
    """The message being handled (ipykernel's shell parent); {} outside a kernel."""
    get_parent = getattr(getattr(shell, "kernel", None), "get_parent", None)
    try:
        parent = get_parent() if callable(get_parent) else getattr(shell, "parent_header", None)
    except Exception:
        return {}
    return parent if isinstance(parent, dict) else {}


def tagged_cells(shell: Any) -> TaggedCells:
    """This shell's transformer for tagged cells, installed once."""
    for transform in shell.input_transformers_cleanup:
        if isinstance(transform, TaggedCells):
            return transform
    transform = TaggedCells(shell)
    shell.input_transformers_cleanup.append(transform)
    return transform


def prepare_tagged_cells(shell: Any, sites: list[str] | None) -> None:
    """What the JupyterLab extension runs (silently) right before a tagged cell.

    Loads the extension if needed and sets the notebook's target sites.
    """
    shell.extension_manager.load_extension("remote_kernel")
    if sites is not None and not all(NAME_PATTERN.match(site) for site in sites):
        raise RemoteKernelError(f"invalid datasite names {sites!r}")
    tagged_cells(shell).sites = None if sites is None else list(sites)


def ipython_show(bundle: Bundle, metadata: dict[str, Any], ident: str, update: bool) -> None:
    if update:
        update_display(bundle, raw=True, metadata=metadata, display_id=ident)
    else:
        display(bundle, raw=True, metadata=metadata, display_id=ident)


class RequestDisplay:
    """Keeps one remote request's output placeholders (and optionally a status line) current."""

    def __init__(
        self, request: RemoteRequest, show_status: bool = True, show: Show = ipython_show
    ) -> None:
        self.request = request
        self.started = time.monotonic()
        self.shown: dict[int, str] = {}
        self.last_key: tuple[Any, ...] = ()
        self.last_update = 0.0
        self.show_status = show_status
        self.show = show
        self._lock = threading.Lock()
        if show_status:
            bundle, metadata = status_bundle(request, 0.0)
            show(bundle, metadata, display_id(request), False)

    def sync(self, new_outputs_allowed: bool = True) -> None:
        with self._lock:
            request = self.request
            for output in sorted(request.outputs, key=lambda o: o.seq):
                self._sync_output(output, new_outputs_allowed)
            if not self.show_status:
                return
            key = (request.status, request.message, tuple((o.id, o.state) for o in request.outputs))
            now = time.monotonic()
            if key != self.last_key or (not request.finished and now - self.last_update > 1.0):
                bundle, metadata = status_bundle(request, now - self.started)
                self.show(bundle, metadata, display_id(request), True)
                self.last_key, self.last_update = key, now

    def _sync_output(self, output: RemoteOutput, new_outputs_allowed: bool) -> None:
        previous = self.shown.get(output.id)
        if previous == output.state:
            return
        if previous is None and not new_outputs_allowed:
            return
        bundle, metadata = output_bundle(self.request, output)
        self.show(bundle, metadata, display_id(self.request, output), previous is not None)
        self.shown[output.id] = output.state

    def follow_later(self) -> None:
        """After the cell returns, keep replacing placeholders as decisions arrive."""
        self.request.on_update(lambda _request, _output: self.sync(new_outputs_allowed=False))
        self.sync(new_outputs_allowed=False)


class FanoutView:
    """A remote cell's view: one status row per site, then each site's outputs.

    The rows are one table (one display, updated in place), in the order the sites
    were chosen; where ipywidgets is installed it is an ``HTML`` widget whose elapsed
    times tick every second, and the same display also carries the table as
    text/HTML (updated on every state change), which is what nbclient, nbconvert and
    frontends without widgets show. Below it come the outputs, grouped by site in
    the same order and by their number within a site: a site's outputs are shown
    once every site before it has finished (the first unfinished site's outputs
    stream as they come), so that arrival order never interleaves them.
    """

    def __init__(self, result: RemoteResult, show: Show = ipython_show, widgets: bool = True):
        self.result = result
        self.show = show
        self.ident = f"rk-fanout-{uuid.uuid4().hex[:12]}"
        self.finished_at: dict[str, float] = {}
        self.last_key: tuple[Any, ...] = ()
        self._lock = threading.Lock()
        self.widget = _html_widget() if widgets else None
        elapsed = self.elapsed()
        show(self._bundle(elapsed), fanout_metadata(result, elapsed), self.ident, False)
        # In the sites' order (the result's runs keep the order they were chosen in).
        self.requests = [
            RequestDisplay(request, show_status=False, show=show)
            for request in result.requests.values()
        ]
        for request in result.requests.values():
            request.on_update(lambda _request, _output: self.refresh())
        if self.widget is not None:
            threading.Thread(target=self._tick, daemon=True, name="rk-fanout-ticker").start()

    def elapsed(self) -> dict[str, float]:
        now = time.monotonic()
        out = {}
        for name, run in self.result.runs.items():
            if run.request is None:
                continue
            if run.request.finished and name not in self.finished_at:
                self.finished_at[name] = now
            out[name] = self.finished_at.get(name, now) - self.result.started
        return out

    def _bundle(self, elapsed: dict[str, float]) -> Bundle:
        bundle = fanout_bundle(self.result, elapsed)
        if self.widget is not None:
            self.widget.value = bundle["text/html"]
            bundle["application/vnd.jupyter.widget-view+json"] = {
                "model_id": self.widget.model_id,
                "version_major": 2,
                "version_minor": 0,
            }
        return bundle

    def refresh(self) -> None:
        with self._lock:
            elapsed = self.elapsed()
            metadata = fanout_metadata(self.result, elapsed)
            rows = metadata["remote_kernel"]["rows"]
            key = tuple((r["site"], r["state"], r["outputs"], r["detail"]) for r in rows)
            if key == self.last_key:
                return
            self.last_key = key
            self.show(self._bundle(elapsed), metadata, self.ident, True)

    def _tick(self) -> None:
        """Elapsed time in the widget, once a second, while any site is still running.

        Once every site has finished, elapsed times are frozen and later changes
        (decisions) arrive through :meth:`refresh`.
        """
        deadline = time.monotonic() + 86400
        while time.monotonic() < deadline:
            time.sleep(1.0)
            with self._lock:
                if self.widget is not None:
                    self.widget.value = fanout_table_html(self.result, self.elapsed())
            requests = self.result.requests.values()
            if all(r.finished or r.connection_lost for r in requests):
                return

    def sync(self, flush: bool = False) -> None:
        """Shows what changed; new outputs only in site order (all of them if ``flush``)."""
        in_order = True
        for view in self.requests:
            view.sync(new_outputs_allowed=in_order or flush)
            request = view.request
            if not (request.finished or request.connection_lost):
                in_order = False
        self.refresh()

    def follow_later(self) -> None:
        self.sync(flush=True)
        requests = self.result.requests.values()
        if self.widget is not None and all(r.finished or r.connection_lost for r in requests):
            # Nothing ticks any more: the table stays as plain HTML, which a saved or
            # reopened notebook can show (a widget's model dies with its kernel).
            with self._lock:
                self.widget, self.last_key = None, ()
        for view in self.requests:
            view.follow_later()
        self.refresh()


def _html_widget() -> Any:
    try:
        import ipywidgets
    except ImportError:
        return None
    try:
        return ipywidgets.HTML()
    except Exception:  # no comm support (e.g. not an IPython kernel)
        return None


def run_locally(shell: Any, cell: str) -> bool:
    """Run the cell in this kernel (against the mock); False if it raised."""
    source = shell.transform_cell(cell)
    try:
        tree = ast.parse(source, filename="<remote cell, mock run>")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<remote cell, mock run>", "exec"), shell.user_ns)  # noqa: S102
        if last is not None:
            expression = ast.Expression(last.value)
            value = eval(compile(expression, "<remote cell, mock run>", "eval"), shell.user_ns)  # noqa: S307
            if value is not None:
                display(value)
    except Exception:
        shell.showtraceback()
        return False
    return True


def choose_sites(names: list[str] | None) -> list[Datasite]:
    connected = sites()
    if not connected:
        raise RemoteKernelError("no datasite connected: run rk.connect(url, token=..., name=...)")
    if not names:
        return list(connected.values())
    unknown = [n for n in names if n not in connected]
    if unknown:
        raise RemoteKernelError(
            f"not connected to {', '.join(unknown)} (connected: {', '.join(connected)})"
        )
    return [connected[n] for n in names]


def push_objects(shell: Any, names: str | None) -> dict[str, Any]:
    """The local objects ``--push a,b`` names; a clear error for a name that is not defined."""
    if not names:
        return {}
    objects = {}
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name not in shell.user_ns:
            raise RemoteKernelError(f"cannot push {name!r}: no such variable in this kernel")
        objects[name] = shell.user_ns[name]
    return objects


@magics_class
class RemoteMagics(Magics):
    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        if shell is not None:
            tagged_cells(shell)  # cells tagged "remote" run as %%remote from now on

    @magic_arguments()
    @argument("--site", action="append", help="datasite to run at (repeatable; default: all)")
    @argument("--all", action="store_true", help="run at every connected datasite (the default)")
    @argument("--push", help="comma-separated local variables to send into the remote kernel")
    @argument("--no-local", action="store_true", help="skip the local run on the mock")
    @argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for the remote run (not the review) before returning",
    )
    @cell_magic
    def remote(self, line: str, cell: str) -> RemoteResult | None:
        """Run this cell on the mock here, then at the datasite(s); see ``rk`` docs."""
        transform = tagged_cells(self.shell)
        transform.running_remote = True
        try:
            return self._remote(line, cell)
        finally:
            transform.running_remote = False

    def _remote(self, line: str, cell: str) -> None:
        args = parse_argstring(self.remote, line)
        try:
            targets = choose_sites(None if args.all else args.site)
            push = push_objects(self.shell, args.push)
        except RemoteKernelError as exc:
            print(f"remote_kernel: {exc}")
            return None
        if not args.no_local:
            display(mock_label(), raw=True)
            if not run_locally(self.shell, cell):
                names = ", ".join(s.name for s in targets)
                print(f"remote_kernel: the cell failed on the mock, so nothing was sent to {names}")
                return None
        mock_schemas = {
            name: local_mock_schemas[name]
            for name in datasets_named(cell)
            if name in local_mock_schemas
        }
        result = run_everywhere(cell, targets, push=push, mock_schemas=mock_schemas)
        remember(result)
        view = FanoutView(result)
        self._follow(view, targets, args.timeout)
        return None

    def _follow(self, view: FanoutView, targets: list[Datasite], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        requests = list(view.result.requests.values())
        try:
            while requests and not all(r.finished or r.connection_lost for r in requests):
                view.sync()
                if time.monotonic() > deadline:
                    print("remote_kernel: still running remotely; outputs will appear here")
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:
            for site in targets:
                try:
                    site.interrupt()
                except RemoteKernelError as exc:
                    print(f"remote_kernel: could not interrupt {site.name}: {exc}")
            print("remote_kernel: interrupted the remote kernel(s)")
        view.sync()
        view.follow_later()


def requests(
    site: str | None = None, status: str | None = None, last: int = 20, show: bool = True
) -> list[RemoteRequest]:
    """Your past requests at every connected site (or one), newest first.

    After a kernel restart or reopening a notebook: lists each request's state,
    shows its released outputs again, and keeps pending placeholders updating
    as reviewers decide. ``last``: how many requests per site.
    """
    found: list[RemoteRequest] = []
    for target in choose_sites([site] if site else None):
        try:
            mine = target.requests(status)[:last]
        except RemoteKernelError as exc:
            print(f"remote_kernel: {target.name}: {exc}")
            continue
        found += mine
        if show and any(not r.decided for r in mine):
            try:
                target.follow()
            except RemoteKernelError as exc:
                print(f"remote_kernel: {target.name}: live updates unavailable ({exc})")
    if show:
        show_history(found)
    return found


def show_history(requests: list[RemoteRequest], show: Show = ipython_show) -> None:
    """Each request's status line and outputs again; pending ones keep updating."""
    for request in requests:
        first_line = (request.code.strip().splitlines() or [""])[0][:80]
        bundle, metadata = status_bundle(request)
        bundle = {**bundle, "text/plain": f"{bundle['text/plain']} · {first_line}"}
        show(bundle, metadata, f"rk-{request.site}-{request.id}-history", False)
        view = RequestDisplay(request, show_status=False, show=show)
        view.sync()
        if not request.decided:
            view.follow_later()
