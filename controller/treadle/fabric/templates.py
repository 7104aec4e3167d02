"""File templates: sandboxed Jinja2, strict undefined, read only from the fabric's ``templates/``.

Why so strict: a template is code from the fabric repository running inside
the controller. The immutable sandbox refuses unsafe attribute access and any
change to ``data`` (which is shared between nodes); StrictUndefined
turns a misspelt ``data.ntp.sevrers`` into an error instead of an empty file;
the loader serves only ``templates/<name>`` of the same source (no absolute
names, no ``..``), so ``{% include %}`` cannot read anything else.

Conditions are strict too: a string used as a condition (``{% if %}``,
``{% elif %}``, ``x if c else y``, ``not``, ``and``/``or`` inside a condition,
a ``for`` loop's ``if``) is an error, not "true". A fabric value ``"no"`` is
a non-empty string, so Python and Jinja read it as true, while the admin who
wrote it meant false (YAML 1.1, Puppet and Ansible read it so). Compare text
explicitly (``x == "yes"``, ``x != ""``) or make the value a boolean.

Time: each render runs under ``limits.max_template_ms`` of fabric.yaml
(:mod:`treadle.fabric.deadline`); a template that loops past it is an error
at the line it was running, like any other template error.

Speed: a template is compiled once per blob (the code is kept in the
:class:`~treadle.fabric.cache.ParseCache`), and a template that never mentions
``node`` renders once per distinct ``data`` object, which the copy-on-write
merge shares between all nodes of a cluster that do not override ``data``.
A template that mentions ``node`` only as printed values (``{{ node.address }}``,
nothing computed from them: no filter, test, condition or loop over them)
renders once per ``data`` object too, with markers in place of the node's
values, and each node's text is the markers' text spliced with its own values
(what ``{{ }}`` prints is ``str(value)``, the same bytes either way:
tests/fabric/test_fastpaths.py pins it against plain Jinja).
"""

from __future__ import annotations

import posixpath
import re
import secrets
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from treadle.fabric.cache import ParseCache
from treadle.fabric.deadline import RenderTimeout, time_limit
from treadle.fabric.source import Source
from treadle.fabric.yamlload import Limits

TEMPLATE_DIR = "templates/"
#: The dependency of a template that computes the name of what it includes or imports
#: (``{% include "site_" ~ node.site ~ ".j2" ignore missing %}``): any file under templates/,
#: including one that does not exist yet. Kept in a node's sources and the dependency index
#: as this directory path; :func:`feeds` matches it against every template path.
ANY_TEMPLATE = TEMPLATE_DIR
#: Names a plain dict answers as attributes (its methods): ``data.items`` must stay the method, as in Jinja.
_DICT_ATTRIBUTES = frozenset(dir(dict))
#: The members of ``node`` a template sees (see treadle.fabric.render): the only ones a spliced render prints.
NODE_KEYS = ("name", "site", "cluster", "address", "labels", "lifecycle")
#: A marker per node member, unguessable by a fabric's content (a new nonce per process): ``\x00<nonce>:<key>\x00``.
_NONCE = secrets.token_hex(16)
_MARKERS = {key: f"\x00{_NONCE}:{key}\x00" for key in NODE_KEYS}
_MARKER_RE = re.compile("\x00" + _NONCE + ":(" + "|".join(NODE_KEYS) + ")\x00")


class TemplateProblem(Exception):
    """A template that is missing, does not compile or fails to render: where (template file, line) and why."""

    def __init__(self, path: str, line: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.path, self.line, self.message, self.hint = path, line, message, hint


@dataclass(frozen=True, slots=True)
class _Compiled:
    code: Any
    references: tuple[
        str | None, ...
    ]  # templates it includes/imports/extends; None = computed at render time
    uses_node: bool
    #: ``node`` appears only as printed members (``{{ node.address }}``) and nothing is included: spliceable.
    prints_node_only: bool = False


def feeds(dependencies: frozenset[str], paths: frozenset[str] | set[str]) -> bool:
    """Whether a change of ``paths`` can change what a template with ``dependencies`` renders."""
    if not dependencies.isdisjoint(paths):
        return True
    return ANY_TEMPLATE in dependencies and any(p.startswith(TEMPLATE_DIR) for p in paths)


def template_path(name: str) -> str:
    """``templates/<name>`` for a valid template name.

    Raises:
        TemplateProblem: the name is absolute, not normalized or leaves templates/.
    """
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or posixpath.normpath(name) != name
        or ".." in name.split("/")
    ):
        raise TemplateProblem(
            TEMPLATE_DIR + name,
            0,
            f"template name {name!r} leaves templates/",
            "name templates relative to templates/, e.g. chrony.conf.j2",
        )
    return TEMPLATE_DIR + name


class ConditionError(jinja2.TemplateRuntimeError):
    """A string used as a condition in a template."""


_CONDITION_FILTER = "treadle_condition"


def _condition(value: Any) -> Any:
    """The value of a condition, unless it is text: ``{% if "no" %}`` would be true."""
    if isinstance(value, str):
        raise ConditionError(
            f"the text {value[:40]!r} is used as a condition: any non-empty text is true, "
            "even 'no' or 'false'"
        )
    return value


def _strict(expr: nodes.Expr) -> nodes.Expr:
    """``expr`` as a condition: each operand of and/or/not is checked, the rest through :func:`_condition`."""
    if isinstance(expr, nodes.And | nodes.Or):
        expr.left, expr.right = _strict(expr.left), _strict(expr.right)
        return expr
    if isinstance(expr, nodes.Not):
        expr.node = _strict(expr.node)
        return expr
    return nodes.Filter(expr, _CONDITION_FILTER, [], [], None, None, lineno=expr.lineno)


def strict_conditions(ast: nodes.Template) -> nodes.Template:
    """Rewrite every condition of a parsed template so that a string in it raises :class:`ConditionError`."""
    for n in list(ast.find_all((nodes.If, nodes.CondExpr, nodes.For, nodes.Not))):
        if isinstance(n, nodes.Not):
            n.node = _strict(n.node)
        elif isinstance(n, nodes.CondExpr):
            n.test = _strict(n.test)
        elif isinstance(n, nodes.If | nodes.For) and n.test is not None:
            n.test = _strict(cast(nodes.Expr, n.test))  # a condition is always an expression
    return ast


class _SourceLoader(jinja2.BaseLoader):
    def __init__(self, templates: Templates) -> None:
        self.templates = templates

    def load(
        self, environment: jinja2.Environment, name: str, globals: Any = None
    ) -> jinja2.Template:
        try:
            compiled = self.templates.compiled(name)
        except TemplateProblem as e:
            if e.line == 0:
                raise jinja2.TemplateNotFound(name, e.message) from e
            raise
        # A flat dict instead of make_globals' ChainMap: Jinja copies the globals
        # into every render context, and copying a ChainMap costs more than the render.
        flat = dict(environment.make_globals(globals))
        return environment.template_class.from_code(environment, compiled.code, flat, lambda: True)


class _FabricSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a bound on what ``*`` and ``**`` may build.

    Jinja's sandbox already caps ``range``; ``"x" * 10**9`` would still
    allocate a gigabyte inside the controller, so repetition and powers are
    refused beyond the size one manifest may have.
    """

    intercepted_binops = frozenset({"*", "**"})
    max_result_bytes = Limits().max_rendered_bytes

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > self.max_result_bytes
                ):
                    raise jinja2.sandbox.SecurityError(
                        f"repetition builds more than {self.max_result_bytes} items"
                    )
        elif (
            operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1
        ):
            if right * max(abs(left).bit_length(), 1) > 8 * self.max_result_bytes:
                raise jinja2.sandbox.SecurityError("power too large")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``data.ntp.servers`` on plain dicts without the sandbox's failed attribute lookup first.

        Same result as the sandbox: a dict has no attributes but its methods,
        so for any other name Jinja falls back to the item, and to undefined.
        The failed lookup raises (and discards) an AttributeError per dot,
        which costs more than the rest of the access.
        """
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


class Templates:
    """The templates of one source, rendered for many nodes."""

    def __init__(
        self,
        source: Source,
        entries: Mapping[str, str],
        cache: ParseCache,
        limits: Limits | None = None,
    ) -> None:
        self.source, self.entries, self.cache = source, entries, cache
        self.limits = limits or Limits()
        self.env = _FabricSandbox(
            loader=_SourceLoader(self),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )
        self.env.max_result_bytes = self.limits.max_rendered_bytes
        self.env.filters[_CONDITION_FILTER] = _condition
        self._rendered: dict[tuple[str, int], tuple[Any, str]] = {}
        self._spliced_text: dict[tuple[str, int], tuple[Any, list[str] | None]] = {}
        self._deps: dict[str, frozenset[str]] = {}
        self._node_use: dict[str, bool] = {}
        self._compiled: dict[str, _Compiled] = {}
        self._loaded: dict[str, jinja2.Template] = {}

    def names(self) -> list[str]:
        """Every template in the source."""
        return sorted(p[len(TEMPLATE_DIR) :] for p in self.entries if p.startswith(TEMPLATE_DIR))

    def compiled(self, name: str) -> _Compiled:
        """The compiled template ``name``.

        Raises:
            TemplateProblem: unknown, not UTF-8, or a syntax error (with its line).
        """
        hit = self._compiled.get(name)
        if hit is not None:
            return hit
        path = template_path(name)
        blob = self.entries.get(path)
        if blob is None:
            raise TemplateProblem(
                path, 0, f"unknown template {name!r}", f"add {path} or fix the name"
            )
        hit = self._compiled[name] = self.cache.template_code(
            f"{blob}:{path}", lambda: self._compile(name, path)
        )
        return hit

    def _compile(self, name: str, path: str) -> _Compiled:
        raw = self.source.read(path)
        if len(raw) > self.limits.max_file_bytes:
            raise TemplateProblem(
                path,
                1,
                f"template is {len(raw)} bytes, more than limits.max_file_bytes {self.limits.max_file_bytes}",
                "split it, or raise limits.max_file_bytes in fabric.yaml",
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TemplateProblem(
                path, 1, f"template is not UTF-8 text: {e.reason}", "save it as UTF-8"
            ) from e
        try:
            ast = strict_conditions(self.env.parse(text, name, path))
            code = self.env.compile(ast, name, path)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateProblem(
                path, e.lineno or 1, f"template syntax error: {e.message}", "fix the Jinja2 syntax"
            ) from e
        except (
            RecursionError,
            MemoryError,
            SyntaxError,
        ) as e:  # Jinja's parser and code generator recurse per level
            raise TemplateProblem(
                path,
                1,
                f"template nests too deeply to compile ({type(e).__name__})",
                "split the expression or the blocks into smaller ones",
            ) from e
        except (
            Exception
        ) as e:  # anything else Jinja trips on, e.g. ValueError for a literal of 5,000 digits
            raise TemplateProblem(
                path,
                getattr(e, "lineno", None) or 1,
                f"template cannot be compiled: {type(e).__name__}: {str(e)[:200]}",
                "fix the expression on that line",
            ) from e
        refs = tuple(jinja2.meta.find_referenced_templates(ast))
        return _Compiled(
            code,
            refs,
            "node" in jinja2.meta.find_undeclared_variables(ast),
            not refs and _prints_node_only(ast),
        )

    def dependencies(self, name: str) -> frozenset[str]:
        """Paths of ``name`` and every template it may include, transitively.

        A template that computes a name may include any template, one added
        later included: its dependencies are every template and
        :data:`ANY_TEMPLATE`, never narrower (a change under templates/ must
        reach every node using it, in the plan and the controller alike).
        """
        if name not in self._deps:
            seen: set[str] = set()
            computed = False
            todo = [name]
            while todo:
                current = todo.pop()
                if current in seen:
                    continue
                seen.add(current)
                try:
                    refs = self.compiled(current).references
                except TemplateProblem:
                    continue
                if None in refs:
                    computed = True
                    todo.extend(self.names())
                todo.extend(r for r in refs if r is not None)
            self._deps[name] = frozenset(TEMPLATE_DIR + n for n in seen) | (
                {ANY_TEMPLATE} if computed else frozenset()
            )
        return self._deps[name]

    def _uses_node(self, name: str) -> bool:
        if name not in self._node_use:
            deps = [p[len(TEMPLATE_DIR) :] for p in self.dependencies(name) if p in self.entries]
            self._node_use[name] = any(self.compiled(d).uses_node for d in deps)
        return self._node_use[name]

    def render(self, name: str, data: Any, node: Mapping[str, Any]) -> str:
        """Template ``name`` rendered with context ``data`` and ``node``.

        Raises:
            TemplateProblem: the template is missing, does not compile, or fails
                while rendering (undefined value, sandbox violation, error raised
                by the template), located at the innermost template line.
        """
        compiled = self.compiled(name)
        key = (name, id(data))
        cacheable = not self._uses_node(name)
        if cacheable:
            hit = self._rendered.get(key)
            if hit is not None and hit[0] is data:
                return hit[1]
        elif compiled.prints_node_only:
            spliced = self._spliced(name, data)
            if spliced is not None:
                return "".join(
                    part if i % 2 == 0 else str(node[part]) for i, part in enumerate(spliced)
                )
        return self._render(name, data, node, key if cacheable else None)

    def _spliced(self, name: str, data: Any) -> list[str] | None:
        """The text of ``name`` for ``data`` split at the node markers: literal, key, literal, key, ..., literal.

        None when that render fails: each node then renders in full, so it
        reports its own error exactly as without splicing.
        """
        key = (name, id(data))
        hit = self._spliced_text.get(key)
        if hit is None or hit[0] is not data:
            try:
                parts: list[str] | None = _MARKER_RE.split(self._render(name, data, _MARKERS, None))
            except TemplateProblem:
                parts = None
            hit = self._spliced_text[key] = (data, parts)
        return hit[1]

    def _render(
        self, name: str, data: Any, node: Mapping[str, Any], key: tuple[str, int] | None
    ) -> str:
        """Render through Jinja under the time limit; remembered under ``key`` when given."""
        try:
            template = self._loaded.get(name)
            if template is None:
                template = self._loaded[name] = self.env.get_template(name)
            with time_limit(self.limits.max_template_ms / 1000):
                text = template.render(data=data, node=node)
        except RenderTimeout as e:
            path, line = self._timeout_frame(e, TEMPLATE_DIR + name)
            raise TemplateProblem(
                path,
                line,
                f"template ran longer than {self.limits.max_template_ms} ms "
                "(limits.max_template_ms in fabric.yaml)",
                "look for loops nested over large ranges or lists; raise the limit only for a "
                "template that really needs the time",
            ) from None
        except TemplateProblem:
            raise
        except jinja2.TemplateNotFound as e:
            raise TemplateProblem(
                TEMPLATE_DIR + name,
                1,
                f"unknown template {e.name!r} included",
                "add it under templates/",
            ) from e
        except jinja2.TemplateSyntaxError as e:
            raise TemplateProblem(
                e.filename or TEMPLATE_DIR + name,
                e.lineno or 1,
                f"template syntax error: {e.message}",
            ) from e
        except Exception as e:  # anything a template raises: StrictUndefined, SecurityError, TypeError, ZeroDivisionError...
            path, line = _template_frame(e, TEMPLATE_DIR + name)
            raise TemplateProblem(path, line, f"template error: {_describe(e)}", _hint(e)) from e
        if key is not None:
            self._rendered[key] = (data, text)
        return text

    def _timeout_frame(self, e: RenderTimeout, default: str) -> tuple[str, int]:
        """Where a render was interrupted: Jinja maps lines of the code it generated back to template lines
        only for an Exception, so a RenderTimeout's innermost template frame is mapped here."""
        path, line = _template_frame(e, default)
        try:
            return path, self.env.get_template(path[len(TEMPLATE_DIR) :]).get_corresponding_lineno(
                line
            )
        except (jinja2.TemplateError, TemplateProblem):
            return path, 1


def _prints_node_only(ast: nodes.Template) -> bool:
    """Whether every use of ``node`` in the template is a printed member of it, ``{{ node.<key> }}``.

    Printed alone, a member becomes ``str(value)`` and nothing else depends
    on it, so the text can be made once and spliced per node. Any other use
    (a filter, a test, a condition, an index, ``node`` bound anew) needs the
    real value while rendering. Text that is captured or transformed before
    it is printed (macros, call and filter blocks, block assignments) could
    change the markers too, so a template with any of them renders in full.
    """
    if any(
        True
        for _ in ast.find_all(
            (
                nodes.Macro,
                nodes.CallBlock,
                nodes.FilterBlock,
                nodes.AssignBlock,
                nodes.Block,
                nodes.Extends,
                nodes.Include,
                nodes.Import,
                nodes.FromImport,
            )
        )
    ):
        return False
    printed: set[int] = set()
    for output in ast.find_all(nodes.Output):
        for n in output.nodes:
            if (
                isinstance(n, nodes.Getattr)
                and isinstance(n.node, nodes.Name)
                and n.node.name == "node"
                and n.attr in NODE_KEYS
            ):
                printed.add(id(n.node))
    return all(id(n) in printed for n in ast.find_all(nodes.Name) if n.name == "node")


def _template_frame(e: BaseException, default: str) -> tuple[str, int]:
    """The innermost template file and line in the traceback (Jinja2 rewrites frames to template lines)."""
    found = (default, 1)
    for frame in traceback.extract_tb(e.__traceback__):
        if frame.filename.startswith(TEMPLATE_DIR):
            found = (frame.filename, frame.lineno or 1)
    return found


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, jinja2.TemplateError) else f"{type(e).__name__}: {e}"


def _hint(e: BaseException) -> str:
    if isinstance(e, ConditionError):
        return 'compare it (x == "yes", x != ""), or make the value a boolean (true/false)'
    if isinstance(e, jinja2.UndefinedError):
        return (
            "define the value under data: in an overlay, or guard it with {% if ... is defined %}"
        )
    if isinstance(e, jinja2.sandbox.SecurityError):
        return "templates run sandboxed: use data and node only"
    return ""
