"""The proxy kernel "Remote: <site>": a real Jupyter kernel that runs every cell at a datasite.

Any frontend (JupyterLab, Notebook 7, VS Code, nbclient/papermill) talks to it
as to any kernel. Each execute request is forwarded to the researcher's kernel
at the datasite; only released outputs come back, as labelled display_data,
with pending placeholders replaced in place (``update_display_data``) when a
reviewer decides. Interrupt (SIGINT, the default interrupt mode) interrupts
the remote kernel; restart and shutdown end the remote session, so a
restarted proxy starts from a fresh remote kernel.

Lines starting with ``%rk`` are handled here, never sent:

* ``%rk requests``: past requests at this site, released outputs shown again;
* ``%rk review-wait SECONDS``: after each cell, also wait up to SECONDS for
  reviewers (for batch runs with nbclient/papermill, which keep only what
  arrives while a cell runs).

The kernelspec (``remote-kernel connect``) names the saved connection in
``REMOTE_KERNEL_PROXY_SITE``; the token stays in the connections file.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel

from remote_kernel._version import __version__
from remote_kernel.protocol.errors import DatasiteUnreachable, NotFound, RemoteKernelError
from remote_kernel.researcher.client import Datasite, RemoteRequest
from remote_kernel.researcher.connections import load_connections
from remote_kernel.researcher.display import Bundle
from remote_kernel.researcher.fanout import RemoteResult, SiteRun, preflight
from remote_kernel.researcher.magics import FanoutView, show_history

SITE_ENV = "REMOTE_KERNEL_PROXY_SITE"
LOCAL_PREFIX = "%rk"


class RemoteProxyKernel(Kernel):
    implementation = "remote_kernel"
    implementation_version = __version__
    language = "python"
    language_version = ".".join(map(str, sys.version_info[:3]))
    language_info = {
        "name": "python",
        "version": language_version,
        "mimetype": "text/x-python",
        "file_extension": ".py",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
    }
    banner = "remote_kernel proxy: every cell runs at the datasite; only released outputs return"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site_name = os.environ.get(SITE_ENV, "")
        self._site: Datasite | None = None
        self.review_wait = 0.0
        self._interrupted = False

    def _on_sigint(self, _signum: int, _frame: Any) -> None:
        self._interrupted = True

    # --- the datasite ---------------------------------------------------------------------------
    def site(self) -> Datasite:
        if self._site is None:
            saved = load_connections()
            connection = saved.get(self.site_name)
            if connection is None:
                raise NotFound(
                    f"no saved connection named {self.site_name!r} "
                    f"(saved: {', '.join(saved) or 'none'}); run "
                    f"`remote-kernel connect URL --token T --name {self.site_name or 'NAME'}`"
                )
            self._site = Datasite.from_connection(connection)
        return self._site

    # --- sending to the frontend ------------------------------------------------------------
    def _shower(self, parent: dict[str, Any]) -> Any:
        """A ``show`` for RequestDisplay/FanoutView that sends iopub messages to ``parent``'s cell.

        Late updates (a reviewer decides after the cell finished) come from the
        client's reader thread; the iopub socket is thread-safe in ipykernel.
        """

        def show(bundle: Bundle, metadata: dict[str, Any], ident: str, update: bool) -> None:
            content = {"data": bundle, "metadata": metadata, "transient": {"display_id": ident}}
            msg_type = "update_display_data" if update else "display_data"
            self.session.send(
                self.iopub_socket, msg_type, content, parent, ident=self._topic(msg_type)
            )

        return show

    def _print(self, text: str, name: str = "stdout") -> None:
        self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    # --- execution --------------------------------------------------------------------------
    async def do_execute(  # type: ignore[override]
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        **_: Any,
    ) -> dict[str, Any]:
        self._interrupted = False
        # ipykernel sets SIGINT to raise KeyboardInterrupt around each request; a flag is
        # safer inside the event loop, and lets the remote kernel be interrupted cleanly.
        signal.signal(signal.SIGINT, self._on_sigint)
        if not code.strip():
            return self._ok()
        if code.lstrip().startswith(LOCAL_PREFIX):
            return self._local_command(code.strip())
        # What run_everywhere does for one site, but keeping the error itself (its class
        # names the error in the frontend), not only its message.
        try:
            site = self.site()
            warnings = await asyncio.to_thread(preflight, site, code, {})
            request = await asyncio.to_thread(site.run, code)
        except RemoteKernelError as exc:
            return self._failed(exc)
        result = RemoteResult(code, {site.name: SiteRun(site.name, request, warnings=warnings)})
        view = FanoutView(result, show=self._shower(self.get_parent()), widgets=False)
        await self._follow(view, request, until_decided=False)
        if self.review_wait > 0:
            await self._follow(view, request, until_decided=True, limit=self.review_wait)
        view.sync()
        view.follow_later()
        if self._interrupted:
            return self._error("KeyboardInterrupt", f"interrupted the kernel at {site.name}")
        if request.connection_lost and not request.finished:
            message = f"lost the connection to {site.name}; run '%rk requests' when it is back"
            return self._failed(DatasiteUnreachable(message))
        if request.status != "completed":
            return self._error(
                "RemoteCellError", f"{request.status} at {site.name}: {request.message}"
            )
        return self._ok()

    async def _follow(
        self, view: FanoutView, request: RemoteRequest, until_decided: bool, limit: float = 1e9
    ) -> None:
        deadline = time.monotonic() + limit
        while not (request.decided if until_decided else request.finished):
            view.sync()
            if request.connection_lost:
                return
            if self._interrupted:
                try:
                    await asyncio.to_thread(self.site().interrupt)
                except RemoteKernelError as exc:
                    self._print(f"remote_kernel: could not interrupt: {exc}\n", "stderr")
                if not until_decided:
                    # Give the remote kernel a moment to report the interruption.
                    await asyncio.to_thread(request.wait, 10.0, "finished")
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)

    def _local_command(self, line: str) -> dict[str, Any]:
        words = shlex.split(line)[1:]
        if words[:1] == ["review-wait"] and len(words) == 2:
            try:
                self.review_wait = max(0.0, float(words[1]))
            except ValueError:
                return self._error("ValueError", f"not a number of seconds: {words[1]!r}")
            self._print(f"remote_kernel: each cell waits up to {self.review_wait:g} s for review\n")
            return self._ok()
        if words[:1] == ["requests"]:
            try:
                requests = self.site().requests()
                self.site().follow()
            except RemoteKernelError as exc:
                return self._failed(exc)
            show_history(requests[:20], self._shower(self.get_parent()))
            return self._ok()
        return self._error(
            "UsageError", "proxy commands: '%rk requests', '%rk review-wait SECONDS'"
        )

    def _ok(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "execution_count": self.execution_count,
            "payload": [],
            "user_expressions": {},
        }

    def _failed(self, exc: RemoteKernelError) -> dict[str, Any]:
        """One of our errors as one line named by its own class (AuthenticationError, …)."""
        return self._error(type(exc).__name__, str(exc))

    def _error(self, ename: str, evalue: str) -> dict[str, Any]:
        content = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    # --- life cycle -------------------------------------------------------------------------
    async def do_shutdown(self, restart: bool) -> dict[str, Any]:  # type: ignore[override]
        """Restart or shutdown ends the remote session, so the next start is fresh there too."""
        if self._site is not None:
            await asyncio.to_thread(self._site.close, True)
            self._site = None
        return {"status": "ok", "restart": restart}

    def do_is_complete(self, code: str) -> dict[str, Any]:
        return {"status": "complete"}


def kernelspec_name(site: str) -> str:
    return f"remote-{site}"


def install_kernelspec(site: str, prefix: str | None = None) -> str:
    """Install the kernelspec ``remote-<site>`` ("Remote: <site>"); returns where it went.

    Installed for this user (the Jupyter data dir), or under ``prefix`` (e.g.
    ``sys.prefix`` in a virtualenv). The spec holds no token: the kernel reads
    the saved connection named in its environment.
    """
    import json
    import tempfile

    from jupyter_client.kernelspec import KernelSpecManager

    spec = {
        "argv": [
            sys.executable,
            "-m",
            "remote_kernel.researcher.proxy_kernel",
            "-f",
            "{connection_file}",
        ],
        "display_name": f"Remote: {site}",
        "language": "python",
        "env": {SITE_ENV: site},
        "metadata": {"remote_kernel": {"site": site}},
    }
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "kernel.json").write_text(json.dumps(spec, indent=2))
        return str(
            KernelSpecManager().install_kernel_spec(
                folder, kernelspec_name(site), user=prefix is None, prefix=prefix
            )
        )


def remove_kernelspec(site: str) -> bool:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().remove_kernel_spec(kernelspec_name(site))
    except (NoSuchKernel, KeyError):
        return False
    return True


def main() -> None:
    IPKernelApp.launch_instance(kernel_class=RemoteProxyKernel)


if __name__ == "__main__":
    main()
