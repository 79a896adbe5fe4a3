"""Griffe extension: the reStructuredText bits of jaxdescent's docstrings, as Markdown.

The docstrings are Google style with a little reStructuredText, which reads well in
``help()``: ``:func:`fit``` style roles and ``.. math::`` directives. For the site, a role
becomes a cross-reference when its target is documented (else inline code) and a math
directive becomes a ``$$`` block for arithmatex.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?([^`]+)`")
_MATH = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<rest>.*)$")
_DOCTEST = re.compile(r"^(?P<indent>[ \t]*)>>>")
_BULLET = re.compile(r"^(?P<indent> *)(?:[-*+]|\d+\.) ")


def _indent_lists(text: str) -> str:
    """Indent a list item's continuation lines by 4 rather than 2 spaces, as Markdown needs
    for a second paragraph (or a math block) inside the item."""
    out: list[str] = []
    bullet: int | None = None
    loose = False  # the current item has a blank line inside: the next needs one before it
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip(" "))
        m = _BULLET.match(line)
        if m and (bullet is None or indent <= bullet):
            if loose and out and out[-1].strip():
                out.append("")
            bullet, loose = indent, False
        elif bullet is not None and not line.strip():
            loose = True
        elif bullet is not None:
            if indent <= bullet:
                bullet = None  # text back at the bullet's level ends the list
            elif indent >= bullet + 2:
                line = "  " + line
        out.append(line)
    return "\n".join(out)


def _fence_doctests(text: str) -> str:
    """Put each run of doctest lines (``>>>`` to the next blank line) in a pycon fence."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _DOCTEST.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m["indent"]
        out += ["", f"{indent}```pycon"]
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out += [f"{indent}```", ""]
    return "\n".join(out)


def _math(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m["indent"]
        body = [m["rest"].strip()] if m["rest"].strip() else []
        i += 1
        while i < len(lines):
            line = lines[i]
            deeper = len(line) - len(line.lstrip()) > len(indent)
            if line.strip() and not deeper:
                break
            if not line.strip() and body and i + 1 < len(lines):
                nxt = lines[i + 1]
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= len(indent):
                    break
            if line.strip():
                body.append(line.strip())
            i += 1
        out += ["", f"{indent}$$", *(f"{indent}{b}" for b in body), f"{indent}$$", ""]
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite roles and math directives in every docstring of the package."""

    def __init__(self) -> None:
        self._objects: list[griffe.Object] = []

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            self._objects.append(obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._collection = pkg.modules_collection
        self._documented = self._public(pkg)
        for obj in self._objects:
            obj.docstring.value = self._rewrite(obj, obj.docstring.value)
        self._objects.clear()

    def _canonical(self, path: str) -> str | None:
        try:
            found = self._collection.get_member(path)
        except Exception:  # no such object
            return None
        try:
            found = found.final_target if found.is_alias else found
        except Exception:  # an alias to something outside the package
            return None
        if found.is_module and found.name in found.members:
            # ``jaxdescent.multistart`` is both a submodule and the function it exports;
            # griffe sees the module, the reader means the function
            inner = found.members[found.name]
            if inner.path in getattr(self, "_documented", ()):
                return inner.path
        return found.path

    def _public(self, pkg: griffe.Module) -> set[str]:
        """Canonical paths of what the API pages render: the public modules, their
        ``__all__`` and the public members of those classes."""
        documented = {pkg.path}
        modules = [pkg] + [
            pkg[name] for name in pkg.exports or () if name in pkg.members and pkg[name].is_module
        ]
        for module in modules:
            documented.add(module.path)
            for name in module.exports or ():
                path = self._canonical(f"{module.path}.{name}")
                if path is None:
                    continue
                target = self._collection.get_member(path)
                if not target.docstring:  # not rendered, so no anchor to link to
                    continue
                documented.add(path)
                if target.is_module and name in target.members:  # jaxdescent.multistart
                    documented.add(f"{path}.{name}")
                if target.is_class:
                    documented |= {
                        f"{path}.{m}"
                        for m, member in target.members.items()
                        if not m.startswith("_") and member.docstring
                    }
        return documented

    def _target(self, obj: griffe.Object, name: str) -> str | None:
        head, *rest = name.split(".")
        scope = obj if obj.is_module or obj.is_class else obj.parent
        path = None
        while scope is not None and path is None:
            try:
                path = ".".join([scope.resolve(head), *rest])
            except Exception:  # not resolvable from this scope
                scope = scope.parent
        if path is None:
            path = name
        canonical = self._canonical(path)
        return canonical if canonical in self._documented else None

    def _rewrite(self, obj: griffe.Object, text: str) -> str:
        def role(m: re.Match) -> str:
            name = m[1]
            label = name.rsplit(".", 1)[-1] if m[0].find("~") >= 0 else name
            target = self._target(obj, name)
            if target:
                return f"[`{label}`][{target}]"
            return f"`{label}`"

        parts = re.split(
            r"(```pycon\n.*?```)", _fence_doctests(_math(_indent_lists(text))), flags=re.S
        )
        return "".join(p if p.startswith("```") else _ROLE.sub(role, p) for p in parts)
