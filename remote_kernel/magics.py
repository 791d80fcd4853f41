"""``%%remote``: run a cell on the mock here, then at the datasite(s).

The cell first runs in this kernel against the mock (labelled "mock"); if it
raises, nothing is sent. Then its source text goes to each chosen datasite.
While the remote kernels run, this cell shows a status line per site and a
placeholder per output ("pending review at cleveland"). When a reviewer
decides later, the placeholder is replaced in place (``update_display_data``
with the placeholder's ``display_id``).
"""

from __future__ import annotations

import ast
import threading
import time
from typing import Any

from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display, update_display

from .client import Datasite, RemoteKernelError, RemoteOutput, RemoteRequest, sites
from .display import display_id, mock_label, output_bundle, status_bundle


class RequestDisplay:
    """Keeps one remote request's status line and output placeholders up to date."""

    def __init__(self, request: RemoteRequest) -> None:
        self.request = request
        self.started = time.monotonic()
        self.shown: dict[int, str] = {}
        self.last_key: tuple[Any, ...] = ()
        self.last_update = 0.0
        self._lock = threading.Lock()
        bundle, metadata = status_bundle(request, 0.0)
        display(bundle, raw=True, metadata=metadata, display_id=display_id(request))

    def sync(self, new_outputs_allowed: bool = True) -> None:
        with self._lock:
            request = self.request
            for output in request.outputs:
                self._sync_output(output, new_outputs_allowed)
            key = (request.status, request.message, tuple((o.id, o.state) for o in request.outputs))
            now = time.monotonic()
            if key != self.last_key or (not request.finished and now - self.last_update > 1.0):
                bundle, metadata = status_bundle(request, now - self.started)
                update_display(bundle, raw=True, metadata=metadata, display_id=display_id(request))
                self.last_key, self.last_update = key, now

    def _sync_output(self, output: RemoteOutput, new_outputs_allowed: bool) -> None:
        previous = self.shown.get(output.id)
        if previous == output.state:
            return
        bundle, metadata = output_bundle(self.request, output)
        if previous is None:
            if not new_outputs_allowed:
                return
            display(
                bundle, raw=True, metadata=metadata, display_id=display_id(self.request, output)
            )
        else:
            update_display(
                bundle, raw=True, metadata=metadata, display_id=display_id(self.request, output)
            )
        self.shown[output.id] = output.state

    def follow_later(self) -> None:
        """After the cell returns, keep replacing placeholders as decisions arrive."""
        self.request.on_update(lambda _request, _output: self.sync(new_outputs_allowed=False))
        self.sync(new_outputs_allowed=False)


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


@magics_class
class RemoteMagics(Magics):
    @magic_arguments()
    @argument("--site", action="append", help="datasite to run at (repeatable; default: all)")
    @argument("--no-local", action="store_true", help="skip the local run on the mock")
    @argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for the remote run (not the review) before returning",
    )
    @cell_magic
    def remote(self, line: str, cell: str) -> None:
        """Run this cell on the mock here, then at the datasite(s); see ``rk`` docs."""
        args = parse_argstring(self.remote, line)
        try:
            targets = choose_sites(args.site)
        except RemoteKernelError as exc:
            print(f"remote_kernel: {exc}")
            return
        if not args.no_local:
            display(mock_label(), raw=True)
            if not run_locally(self.shell, cell):
                names = ", ".join(s.name for s in targets)
                print(f"remote_kernel: the cell failed on the mock, so nothing was sent to {names}")
                return
        views: list[RequestDisplay] = []
        for site in targets:
            try:
                views.append(RequestDisplay(site.run(cell)))
            except RemoteKernelError as exc:
                print(f"remote_kernel: {site.name}: {exc}")
        self._follow(views, targets, args.timeout)

    def _follow(self, views: list[RequestDisplay], targets: list[Datasite], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            while views and not all(v.request.finished for v in views):
                for view in views:
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
        for view in views:
            view.sync()
            view.follow_later()
