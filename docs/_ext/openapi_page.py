"""A small Sphinx extension: render an OpenAPI 3.1 document as a MyST page.

A page listed in ``openapi_pages`` (``{docname: path to the YAML, relative to
the source dir}``) contains the line ``<!-- openapi -->``; on reading that page
the line is replaced by Markdown generated from the spec: the API's description,
one section per tag with one subsection per operation (roles, parameters,
request body, responses), and one subsection per component schema. Schema names
link to their sections. MyST then parses the result like any other page, so the
operations appear in the page's table of contents and search.

Why our own: it is ~200 lines, needs only PyYAML, understands our ``x-roles``
and ``x-channel-messages`` extensions, and never warns on OpenAPI 3.1 constructs
(``type: [string, "null"]``, ``const``, ``unevaluatedProperties``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

MARKER = "<!-- openapi -->"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def schema_label(name: str) -> str:
    return f"api-schema-{name.lower()}"


def cell(text: Any) -> str:
    """One Markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def schema_link(name: str) -> str:
    return f"{{ref}}`{name} <{schema_label(name)}>`"


def type_of(schema: dict[str, Any]) -> str:
    """A short human-readable type, with links to named schemas."""
    if "$ref" in schema:
        return schema_link(ref_name(schema["$ref"]))
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    for key in ("oneOf", "anyOf", "allOf"):
        if key in schema:
            word = {"oneOf": "one of", "anyOf": "any of", "allOf": "all of"}[key]
            return f"{word}: " + ", ".join(type_of(s) for s in schema[key])
    kind = schema.get("type", "any")
    tag = schema.get("properties", {}).get("type", {})
    if kind == "object" and "const" in tag:  # a tagged message: name it by its tag
        return f"object with `type` `{json.dumps(tag['const'])}`"
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array" and "items" in schema:
        return f"array of {type_of(schema['items'])}"
    if kind == "string" and "pattern" in schema:
        return f"string (`{schema['pattern']}`)"
    return str(kind)


class Spec:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.components = data.get("components", {})

    def resolve(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Follow a local ``$ref`` to a parameter or response (schemas stay links)."""
        seen = 0
        while "$ref" in obj and seen < 10:
            parts = obj["$ref"].lstrip("#/").split("/")
            if parts[:1] != ["components"] or parts[1] == "schemas":
                return obj
            target: Any = self.data
            for part in parts:
                target = target[part]
            obj = target
            seen += 1
        return obj

    def body_type(self, holder: dict[str, Any]) -> str:
        content = holder.get("content") or {}
        kinds = []
        for media, spec in content.items():
            schema = spec.get("schema")
            kinds.append(f"`{media}`" + (f": {type_of(schema)}" if schema else ""))
        return ", ".join(kinds)

    # --- pages ---

    def markdown(self) -> str:
        info = self.data.get("info", {})
        lines = [info.get("description", "").strip(), ""]
        version = f"`{info.get('version', '')}` (OpenAPI {self.data['openapi']})"
        lines += [f"Version of the API: {version}.", ""]
        servers = self.data.get("servers") or []
        if servers:
            lines += ["| server | |", "| --- | --- |"]
            lines += [f"| `{s['url']}` | {cell(s.get('description', ''))} |" for s in servers]
            lines.append("")
        operations = self.operations()
        for tag in self.data.get("tags", []):
            ops = [op for op in operations if tag["name"] in op[2].get("tags", [])]
            if not ops:
                continue
            lines += [f"## {tag['name'].capitalize()}", "", tag.get("description", ""), ""]
            for path, method, op, path_params in ops:
                lines += self.operation(path, method, op, path_params)
        lines += ["## Schemas", ""]
        for name, schema in self.components.get("schemas", {}).items():
            lines += self.schema(name, schema)
        return "\n".join(lines) + "\n"

    def operations(self) -> list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]:
        found = []
        for path, item in self.data.get("paths", {}).items():
            path_params = item.get("parameters", [])
            for method in METHODS:
                if method in item:
                    found.append((path, method, item[method], path_params))
        return found

    def operation(
        self, path: str, method: str, op: dict[str, Any], path_params: list[dict[str, Any]]
    ) -> list[str]:
        lines = [f"### {method.upper()} `{path}`", ""]
        summary = op.get("summary", "")
        if summary:
            lines += [f"**{summary}**" if summary.endswith(".") else f"**{summary}.**", ""]
        if op.get("description"):
            lines += [op["description"].strip(), ""]
        if op.get("security") == []:
            lines += ["*Public: no token needed.*", ""]
        elif op.get("x-roles"):
            roles = ", ".join(f"`{r}`" for r in op["x-roles"])
            lines += [f"*Roles:* {roles}", ""]
        params = [self.resolve(p) for p in [*path_params, *op.get("parameters", [])]]
        if params:
            lines += [
                "| parameter | in | type | required | description |",
                "| --- | --- | --- | --- | --- |",
            ]
            for p in params:
                lines.append(
                    f"| `{p['name']}` | {p['in']} | {type_of(p.get('schema', {}))} | "
                    f"{'yes' if p.get('required') else 'no'} | {cell(p.get('description', ''))} |"
                )
            lines.append("")
        body = op.get("requestBody")
        if body:
            body = self.resolve(body)
            required = " (required)" if body.get("required") else ""
            lines += [f"Request body{required}: {self.body_type(body)}", ""]
        messages = op.get("x-channel-messages")
        if isinstance(messages, dict):
            listed = ", ".join(f"{k}: {type_of(v)}" for k, v in messages.items())
            lines += [f"Channel messages: {listed}", ""]
        responses = op.get("responses", {})
        if responses:
            lines += ["| status | meaning | body |", "| --- | --- | --- |"]
            for status, response in responses.items():
                response = self.resolve(response)
                meaning = cell(response.get("description", ""))
                lines.append(f"| {status} | {meaning} | {self.body_type(response)} |")
            lines.append("")
        return lines

    def schema(self, name: str, schema: dict[str, Any]) -> list[str]:
        lines = [f"({schema_label(name)})=", f"### {name}", ""]
        if schema.get("description"):
            lines += [schema["description"].strip(), ""]
        properties = schema.get("properties")
        if properties:
            required = set(schema.get("required", []))
            lines += ["| field | type | required | description |", "| --- | --- | --- | --- |"]
            for field, spec in properties.items():
                lines.append(
                    f"| `{field}` | {type_of(spec)} | {'yes' if field in required else 'no'} | "
                    f"{cell(spec.get('description', ''))} |"
                )
            lines.append("")
        else:
            lines += [f"Type: {type_of(schema)}", ""]
        if properties is None or any(k in schema for k in ("oneOf", "anyOf", "allOf")):
            shown = {k: v for k, v in schema.items() if k != "description"}
            text = yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, width=88)
            lines += ["```yaml", text.rstrip(), "```", ""]
        return lines


def on_source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    pages: dict[str, str] = app.config.openapi_pages
    if docname not in pages:
        return
    path = Path(app.srcdir) / pages[docname]
    app.env.note_dependency(str(path))
    if MARKER not in source[0]:
        logger.warning("openapi page %s has no %s line", docname, MARKER, location=docname)
        return
    spec = Spec(yaml.safe_load(path.read_text(encoding="utf-8")))
    source[0] = source[0].replace(MARKER, spec.markdown())


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("openapi_pages", {}, "env", types=[dict])
    app.connect("source-read", on_source_read)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
