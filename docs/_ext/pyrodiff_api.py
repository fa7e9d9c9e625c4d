"""The API reference, generated from the package's ``__all__`` lists at every build.

Each public module gets one page, ``api/<module>.rst``, with a summary table of its ``__all__``
and an entry for each name. An object exported by several modules (``pyrodiff.Diffusion`` is
``pyrodiff.models.Diffusion``) is documented once, on the page of the public module closest to
where it is defined, and the other pages link to that entry. Cross-references and type hints
that name an object by another path (its defining module, or another module that re-exports
it) are resolved to that one entry, so nitpicky mode fails only on names that truly do not
exist.

This file imports no Sphinx at module level, so the test suite can check the generated
sources without the docs extra installed.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "pyrodiff"

# The public modules, in the order the reference lists them. Every subpackage of pyrodiff must
# be here or in INTERNAL (a test enforces it), so a new subpackage is never silently left out.
PUBLIC = (
    "pyrodiff",
    "pyrodiff.models",
    "pyrodiff.guides",
    "pyrodiff.infer",
    "pyrodiff.schedules",
    "pyrodiff.gaussian",
    "pyrodiff.likelihoods",
    "pyrodiff.networks",
    "pyrodiff.sampling",
    "pyrodiff.data",
    "pyrodiff.train",
    "pyrodiff.optim",
    "pyrodiff.config",
    "pyrodiff.checkpoint",
    "pyrodiff.plots",
    "pyrodiff.baselines",
    "pyrodiff.distributed",
    "pyrodiff.cli",
)

# Modules whose names are not part of the public surface. Everything inside a subpackage
# (pyrodiff.train.step, pyrodiff.infer.bounds, ...) is internal too: its public names are
# re-exported by the subpackage, which is where users import them from.
INTERNAL = (
    "pyrodiff.__main__",
    "pyrodiff.errors",
    "pyrodiff.modules",
    "pyrodiff.validation",
    "pyrodiff.devices",
    "pyrodiff.progress",
)


@dataclass(frozen=True)
class Entry:
    """One name of one public module's ``__all__`` and where its documentation lives."""

    module: str
    name: str
    canonical: str  # the full name of the one documented entry (or the module page)
    kind: str  # "module", "class", "exception", "function" or "data"

    @property
    def full_name(self) -> str:
        return f"{self.module}.{self.name}"


def _kind(obj: object) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if inspect.isroutine(obj) or (callable(obj) and hasattr(obj, "__wrapped__")):
        return "function"  # functools.cache wrappers included
    return "data"


def _home(obj: object, exporters: list[str]) -> str:
    """The public module whose page documents ``obj``: the exporter closest to its definition."""
    defined_in = getattr(obj, "__module__", None)
    if _kind(obj) in ("class", "exception", "function"):
        prefixes = [m for m in exporters if defined_in == m or defined_in.startswith(m + ".")]
        if prefixes:
            return max(prefixes, key=len)
    return exporters[0]


def public_names(modules: tuple[str, ...] = PUBLIC) -> list[Entry]:
    """Every name of every public module's ``__all__``, each with its documented home."""
    exporters: dict[int, list[str]] = {}
    objects: dict[int, object] = {}
    listed: list[tuple[str, str, object]] = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            listed.append((module_name, name, obj))
            if _kind(obj) in ("module", "data"):
                continue
            exporters.setdefault(id(obj), []).append(module_name)
            objects[id(obj)] = obj
    entries = []
    for module_name, name, obj in listed:
        kind = _kind(obj)
        if kind == "module":
            canonical = obj.__name__
        elif kind == "data":
            canonical = f"{module_name}.{name}"
        else:
            canonical = f"{_home(obj, exporters[id(obj)])}.{obj.__name__}"
        entries.append(Entry(module_name, name, canonical, kind))
    return entries


def _directive(entry: Entry, obj: object) -> list[str]:
    if entry.kind in ("class", "exception"):
        return [
            f".. auto{entry.kind}:: {entry.canonical}",
            "   :members:",
            "   :undoc-members:",
            "   :show-inheritance:",
        ]
    return [f".. auto{entry.kind}:: {entry.canonical}"]


def module_page(module_name: str, entries: list[Entry]) -> str:
    """The reST source of one public module's page."""
    module = importlib.import_module(module_name)
    mine = [e for e in entries if e.module == module_name]
    lines = [
        module_name,
        "=" * len(module_name),
        "",
        f".. automodule:: {module_name}",
        "   :no-members:",
        "",
        f".. currentmodule:: {module_name}",
        "",
        ".. list-table::",
        "   :header-rows: 0",
        "   :widths: 35 65",
        "",
    ]
    for e in sorted(mine, key=lambda e: e.name.lower()):
        role = {"module": "mod", "data": "data"}.get(e.kind, "obj")
        summary = _summary(getattr(module, e.name))
        lines += [f"   * - :{role}:`{e.name} <{e.canonical}>`", f"     - {summary}"]
    lines.append("")
    for e in mine:
        if e.kind == "module" or e.canonical != f"{module_name}.{e.name}":
            continue  # documented on its own page, linked from the table above
        lines += _directive(e, getattr(module, e.name)) + [""]
    return "\n".join(lines)


def _summary(obj: object) -> str:
    """The first line of a docstring, for the table of names (empty for plain data)."""
    if _kind(obj) == "data":
        return ""
    doc = inspect.getdoc(obj) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    # Roles relative to the object (":meth:`sample`") cannot resolve in the module's table.
    first = _ROLE.sub(_absolute_role_or_literal, first)
    return _escape_line(first)


def _absolute_role_or_literal(match: re.Match) -> str:
    target = match.group(1).lstrip("~")
    return match.group(0) if target.startswith(PACKAGE + ".") else f"``{target}``"


_ROLE = re.compile(r":(?:py:)?\w+:`(?:[^`<]*<)?([^`>]+)>?`")


def index_page() -> str:
    lines = [
        "API reference",
        "=============",
        "",
        "One page per public module; each lists the module's ``__all__``. A name exported by",
        "several modules is documented once and linked from the others.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    lines += [f"   {m}" for m in PUBLIC]
    return "\n".join(lines) + "\n"


def generate(outdir: Path) -> dict[str, str]:
    """Write ``index.rst`` and one page per public module into ``outdir``; return the sources.

    A file is rewritten only when its text changed, so incremental builds stay incremental.
    """
    entries = public_names()
    sources = {"index": index_page()}
    for module_name in PUBLIC:
        sources[module_name] = module_page(module_name, entries)
    outdir.mkdir(parents=True, exist_ok=True)
    for stem, text in sources.items():
        path = outdir / f"{stem}.rst"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    for stale in outdir.glob("*.rst"):
        if stale.stem not in sources:
            stale.unlink()
    return sources


def aliases() -> dict[str, str]:
    """Other full names of each documented object, mapped to its documented entry.

    Includes where it is defined (``pyrodiff.models.diffusion.Diffusion``: what type hints
    name) and every public module that re-exports it.
    """
    table: dict[str, str] = {}
    for entry in public_names():
        if entry.kind == "module":
            continue
        table[entry.full_name] = entry.canonical
        obj = getattr(importlib.import_module(entry.module), entry.name)
        defined_in = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if entry.kind != "data" and defined_in and qualname:
            table[f"{defined_in}.{qualname}"] = entry.canonical
    return {k: v for k, v in table.items() if k != v}


def subpackages() -> list[str]:
    """Every subpackage of pyrodiff (what PUBLIC and INTERNAL must cover between them)."""
    root = importlib.import_module(PACKAGE)
    return [m.name for m in pkgutil.walk_packages(root.__path__, PACKAGE + ".") if m.ispkg]


def _import(dotted: str) -> object:
    """The object a dotted name names; raises ImportError or AttributeError if none."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _defined_name(obj: object) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def _resolve_alias(app, env, node, contnode):
    """``missing-reference`` handler for Python references into pyrodiff.

    A name of a documented object under another path (a re-export, its defining module, a
    short name imported into the module whose docstring uses it) links to its entry. A name
    that imports but is documented nowhere (a private helper or internal module) is shown
    unlinked. A name that does not import at all is left missing, so nitpicky mode fails on
    it: that is what catches a reference to a renamed class.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    table = env.pyrodiff_aliases
    domain = env.get_domain("py")
    candidates = [target]
    # the module whose source holds the docstring: its imports are what short names mean
    source = (node.source or "").split(":docstring of")[0]
    if source.endswith(".py") and f"/{PACKAGE}/" in source:
        relative = source.rsplit(f"/{PACKAGE}/", 1)[1][: -len(".py")].replace("/", ".")
        home = f"{PACKAGE}.{relative}".removesuffix(".__init__")
        candidates.append(f"{home}.{target}")
    module, cls = node.get("py:module"), node.get("py:class")
    if module and cls:
        candidates.append(f"{module}.{cls}.{target}")
    if module:
        candidates.append(f"{module}.{target}")

    def resolve(name):
        return domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], name, node, contnode
        )

    for candidate in candidates:
        if not candidate.startswith(PACKAGE + "."):
            continue
        # a renamed or removed name does not import: it stays missing and fails the build
        parts = candidate.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in table:
                found = resolve(".".join([table[prefix], *parts[cut:]]))
                if found is not None:
                    return found
        try:
            obj = _import(candidate)
        except (ImportError, AttributeError):
            continue
        defined = _defined_name(obj)
        if defined in table:
            found = resolve(table[defined])
            if found is not None:
                return found
        return contnode  # real, but documented nowhere here: shown as code without a link
    return None


# Google-style attribute docstrings read "type: description"; pyrodiff's attribute and enum
# member docstrings are prose ("σ_t² = β_t: DDPM's choice"), so napoleon reads them as it
# reads any other docstring instead of taking the text before the colon as a type.
def _napoleon_prose_attributes(app, what, name, obj, options, lines):
    from sphinx.ext.napoleon import _process_docstring

    if what in ("attribute", "data", "property"):
        what = "object"
    _process_docstring(app, what, name, obj, options, lines)


# Docstrings are plain text with math in it. "shape (T + 1, num_samples, *event_shape)": a
# star that opens no emphasis is escaped, so docutils does not warn of an unclosed one (a star
# closed later on the line is left alone); "log |det scale|" is an absolute value, not a
# substitution, outside table rows.
_LONE_STAR = re.compile(r"(?<![\w*\\`])\*(?=[A-Za-z_])(?![^\n]*\S\*(?!\*))")


def _escape_line(line: str) -> str:
    table_row = line.lstrip().startswith(("|", "+"))
    pieces = line.split("``")
    for i in range(0, len(pieces), 2):
        piece = _LONE_STAR.sub(r"\\*", pieces[i])
        pieces[i] = piece if table_row else piece.replace("|", r"\|")
    return "``".join(pieces)


_TABLE_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _table_spans(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of each simple table (``=====  =====`` borders)."""
    spans = []
    i = 0
    while i < len(lines):
        if _TABLE_BORDER.match(lines[i]):
            end = i + 1
            while end < len(lines) and not (
                _TABLE_BORDER.match(lines[end])
                and (end + 1 == len(lines) or not lines[end + 1].strip())
            ):
                end += 1
            spans.append((i, min(end, len(lines) - 1)))
            i = end
        i += 1
    return spans


def _escape_plain_text(app, what, name, obj, options, lines):
    """Docstrings are plain text with math in it; make docutils read them as such.

    Simple tables are shown preformatted: they are aligned by eye for reading in the source,
    with Unicode math whose width docutils counts differently from a terminal.
    """
    out: list[str] = []
    i = 0
    for first, last in [*_table_spans(lines), (len(lines), len(lines))]:
        out += [_escape_line(line) for line in lines[i:first]]
        if first < len(lines):
            out += ["", ".. code-block:: text", ""]
            out += ["   " + line for line in lines[first : last + 1]]
            out.append("")
        i = last + 1
    lines[:] = out


# attributes every torch.nn.Module declares; a PyroModule's page would list them as its own
_TORCH_MODULE_ATTRIBUTES = frozenset({"training", "dump_patches", "call_super_init"})


def _skip_torch_attributes(app, what, name, obj, skip, options):
    return True if name in _TORCH_MODULE_ATTRIBUTES else None


def _generate(app) -> None:
    generate(Path(app.srcdir) / "api")
    app.env.pyrodiff_aliases = aliases()


def setup(app):
    from sphinx.ext.napoleon import _process_docstring

    app.setup_extension("sphinx.ext.napoleon")
    listeners = app.events.listeners["autodoc-process-docstring"]
    for listener in list(listeners):
        if listener.handler is _process_docstring:
            app.disconnect(listener.id)
    # before sphinx_autodoc_typehints, which reads napoleon's output
    app.connect("autodoc-process-docstring", _escape_plain_text, priority=300)
    app.connect("autodoc-process-docstring", _napoleon_prose_attributes, priority=400)
    app.connect("autodoc-skip-member", _skip_torch_attributes)
    app.connect("builder-inited", _generate)
    app.connect("missing-reference", _resolve_alias)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
