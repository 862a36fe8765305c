"""The door of ``deepcrate sql``: a statement runs only if Spark's own plan of it is read-only.

Decided by allow-lists, never by looking for bad names: a statement is refused unless

1. its *parsed* plan is made only of the plan nodes a query or a SHOW/DESCRIBE/EXPLAIN
   needs (:data:`PARSED_NODES`). This runs before the analyser, because the analyser
   itself would expand ``EXECUTE IMMEDIATE`` and similar statement-in-a-string routes;
2. its *analysed* plan, walked at every depth (subqueries, CTEs, window specs, lambdas,
   generators, the statement EXPLAIN or DESCRIBE QUERY names), holds only the nodes of
   :data:`ANALYSED_NODES`, reads only the warehouse's registered tables, and only
   expressions of Spark's built-in function groups in :data:`FUNCTION_GROUPS` (less
   :data:`LEFT_OUT`: reflection, XML parsers, class loading), what they build
   (:data:`BUILT`) or what SQL syntax makes (:data:`SYNTAX`).

Anything else is refused in one line naming the node or function. A new Spark release's
new node or function is refused until it is added here on purpose.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from pyspark.sql import SparkSession

from deepcrate.errors import InputError, spark_error_line

ALLOWED = "one read-only query (SELECT, WITH, VALUES, SHOW, DESCRIBE, EXPLAIN) over the warehouse's tables"

# The parser's nodes of a query, a SHOW or a DESCRIBE: nothing that writes, sets, declares or
# runs a statement held in a string (EXECUTE IMMEDIATE parses to a node not listed here).
PARSED_NODES = frozenset({
    "Project", "Filter", "Join", "Aggregate", "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail",
    "Union", "Intersect", "Except", "Distinct", "SubqueryAlias", "UnresolvedRelation", "OneRowRelation",
    "LocalRelation", "UnresolvedInlineTable", "UnresolvedWith", "WithWindowDefinition", "Generate",
    "UnresolvedTableValuedFunction", "UnresolvedTVFAliases", "Sample", "Pivot", "Unpivot", "GroupingSets",
    "UnresolvedHaving", "UnresolvedQualify", "UnresolvedHint", "RepartitionByExpression", "Repartition",
    "UnresolvedSubqueryColumnAliases", "LateralJoin", "PipeOperator", "UnresolvedTableOrView",
    "ShowTables", "ShowTablesExtended", "ShowViews", "ShowColumns", "ShowFunctions", "ShowNamespaces",
    "DescribeRelation", "DescribeColumn", "DescribeFunction", "DescribeQueryCommand", "ExplainCommand",
    "ShowNamespacesCommand", "ShowTableProperties", "ShowCatalogsCommand", "ShowCurrentNamespaceCommand",
    "UnresolvedNamespace", "CurrentNamespace$", "UnresolvedFunctionName", "UnresolvedAttribute", "LimitAll",
})

# The analyser's nodes of the same statements. A relation is read only through a registered
# table's view (View over LogicalRelation); files by path or other catalogs never get here.
ANALYSED_NODES = frozenset({
    "Project", "Filter", "Join", "Aggregate", "Window", "Sort", "GlobalLimit", "LocalLimit", "Offset",
    "Tail", "Union", "Intersect", "Except", "Distinct", "Deduplicate", "SubqueryAlias", "View",
    "LocalRelation", "OneRowRelation", "Range", "Generate", "Expand", "Sample", "RepartitionByExpression",
    "Repartition", "ResolvedHint", "WithCTE", "CTERelationDef", "CTERelationRef", "UnionLoop",
    "UnionLoopRef", "PipeOperator", "LogicalRelation", "LateralJoin", "LimitAll",
    "ShowTables", "ShowTablesCommand", "ShowViewsCommand", "ShowNamespacesCommand", "ShowColumnsCommand",
    "ShowTablePropertiesCommand", "ShowCatalogsCommand", "ShowCurrentNamespaceCommand",
    "ShowFunctionsCommand", "DescribeTableCommand", "DescribeColumnCommand", "DescribeFunctionCommand",
    "DescribeQueryCommand", "ExplainCommand", "ResolvedNamespace", "ResolvedTempView",
})

# Spark's built-in functions by group (DESCRIBE FUNCTION's "group"). Left out as groups:
# xml_funcs (an XML parser can be pointed at other files), avro_funcs and protobuf_funcs
# (they load classes by name and read descriptor files).
FUNCTION_GROUPS = frozenset({
    "agg_funcs", "array_funcs", "bitwise_funcs", "collection_funcs", "conditional_funcs", "conversion_funcs",
    "csv_funcs", "datetime_funcs", "generator_funcs", "hash_funcs", "json_funcs", "lambda_funcs",
    "map_funcs", "math_funcs", "misc_funcs", "predicate_funcs", "sketch_funcs", "st_funcs", "string_funcs",
    "struct_funcs", "url_funcs", "variant_funcs", "vector_funcs", "window_funcs",
})
# Inside those groups: the functions that call any Java method the statement names.
LEFT_OUT = frozenset({"CallMethodViaReflection", "TryReflect"})

# What SQL syntax makes without naming a function: columns, literals, aliases, subqueries,
# window specifications, lambdas, field access, interval arithmetic, shared subexpressions.
SYNTAX = frozenset({
    "AttributeReference", "Alias", "Literal", "SortOrder", "AggregateExpression", "WindowExpression",
    "WindowSpecDefinition", "SpecifiedWindowFrame", "UnspecifiedFrame$", "CurrentRow$", "UnboundedPreceding$",
    "UnboundedFollowing$", "ScalarSubquery", "Exists", "InSubquery", "ListQuery", "LateralSubquery",
    "OuterReference", "LambdaFunction", "NamedLambdaVariable", "GetStructField", "GetArrayItem", "GetMapValue",
    "GetArrayStructFields", "PivotFirst", "UpCast", "ResolvedCollation", "With", "CommonExpressionDef",
    "CommonExpressionRef", "NullIfResult", "TimeAdd", "DateAddInterval", "DateAddYMInterval",
    "TimestampAddYMInterval", "TimestampAddInterval", "SubtractTimestamps", "SubtractDates", "DatetimeSub",
    "MultiplyYMInterval", "MultiplyDTInterval", "DivideYMInterval", "DivideDTInterval",
    "ExtractANSIIntervalYears", "ExtractANSIIntervalMonths", "ExtractANSIIntervalDays",
    "ExtractANSIIntervalHours", "ExtractANSIIntervalMinutes", "ExtractANSIIntervalSeconds",
})
# What built-in functions of those groups build under another class name (``lpad`` builds
# StringLPad, ``try_add`` wraps TryEval, ``sql_keywords()`` is a generator, ...).
BUILT = frozenset({
    "StringLPad", "StringRPad", "BinaryPad", "BinaryPredicate", "StringDecode", "StringInstrWithOccurrence",
    "RoundCeil", "RoundFloor", "MaxMinByK", "TryEval", "TimestampAdd", "TimestampDiff", "SecondWithFraction",
    "MakeTimestampFromDateTime", "TryMakeTimestampFromDateTime", "PreciseTimestampConversion", "KnownNullable",
    "CounterDiffWithStartTime", "Explode", "PosExplode", "Inline", "SQLKeywords", "Collations",
})


def check_read_only(spark: SparkSession, query: str, *, tables: Collection[str],
                    register: Callable[[set[str] | None], None] | None = None) -> None:
    """Refuse ``query`` unless it is :data:`ALLOWED`, reading only ``tables`` (registered views).

    ``register`` is called between the two checks with the table names the statement reads
    (None: it lists the tables, SHOW TABLES), so that those views exist when Spark analyses it.

    Raises
    ------
    InputError
        One line: what was refused and why, the parse error, or the analyser's error
        (an unknown table or column).
    """
    with quiet_query_errors():
        _Guard(spark, frozenset(t.lower() for t in tables), register=register).check(query_text=query)


@contextlib.contextmanager
def quiet_query_errors() -> Iterator[None]:
    """pyspark logs a failed statement's whole Java stack as JSON (~10 KB, logger SQLQueryContextLogger)
    before raising it; the user gets the one line of the InputError instead."""
    from pyspark.logger import PySparkLogger

    logger = PySparkLogger.getLogger("SQLQueryContextLogger")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


class _Guard:
    def __init__(self, spark: SparkSession, tables: frozenset[str], *,
                 register: Callable[[set[str] | None], None] | None = None) -> None:
        jvm = spark._jvm
        self._register = register or (lambda names: None)
        self._state = spark._jsparkSession.sessionState()
        self._tracker = lambda: jvm.org.apache.spark.sql.catalyst.QueryPlanningTracker(jvm.scala.Option.empty())
        self._tables = tables
        self._builtins = _Builtins.of(spark)
        self._logical = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.plans.logical.LogicalPlan")
        self._subquery = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.expressions.SubqueryExpression")

    def check(self, *, query_text: str | None = None, parsed=None) -> None:
        if parsed is None:
            try:
                parsed = self._state.sqlParser().parsePlan(query_text)
            except Exception as exc:  # ParseException: its first line says where
                raise InputError(f"query failed: {spark_error_line(exc)}") from None
        self._register(self._check_parsed(parsed))
        try:
            analysed = self._state.analyzer().executeAndCheck(parsed, self._tracker())
        except Exception as exc:  # AnalysisException: an unknown table, column or function
            raise InputError(f"query failed: {spark_error_line(exc)} "
                             f"(tables: {', '.join(sorted(self._tables)) or 'none'})") from None
        self._check_analysed(analysed)

    def _check_parsed(self, plan) -> set[str] | None:
        """Before the analyser runs: it evaluates constant expressions (VALUES rows, IDENTIFIER(),
        LIMIT) and expands EXECUTE IMMEDIATE, so nothing left out may reach it. Returns the
        one-part table names the statement reads, lower case (None: it lists the tables)."""
        names: set[str] | None = set()
        for node, _ in self._walk(plan):
            kind = _kind(node)
            if self._logical.isInstance(node):
                if kind not in PARSED_NODES:
                    raise InputError(_refused_statement(kind))
                if kind in ("UnresolvedRelation", "UnresolvedTableOrView"):
                    parts = _items(node.multipartIdentifier())
                    if len(parts) != 1:
                        raise InputError(f"refused: {'.'.join(parts)} is not a table of the warehouse (files by "
                                         f"path and other catalogs are not read); deepcrate sql runs {ALLOWED}")
                    if names is not None:
                        names.add(str(parts[0]).lower())
                if kind in ("ShowTables", "ShowTablesExtended", "ShowViews"):
                    names = None
            elif kind == "UnresolvedFunction":
                self._check_function_name(_items(node.nameParts())[-1])
            elif kind == "ExpressionWithUnresolvedIdentifier":
                name = node.identifierExpr()
                if _kind(name) != "Literal":
                    raise InputError(_refused_statement("PlanWithUnresolvedIdentifier"))
                self._check_function_name(str(name.value()))
        return names

    def _check_function_name(self, name: str) -> None:
        kind = self._builtins.by_name.get(name.lower())
        if kind is not None and kind not in self._builtins.allowed:
            raise InputError(self._builtins.refusal(kind))

    def _check_analysed(self, plan) -> None:
        for node, view in self._walk(plan):
            kind = _kind(node)
            if self._logical.isInstance(node):
                if kind not in ANALYSED_NODES:
                    raise InputError(_refused_statement(kind))
                if kind == "View" and node.desc().identifier().table().lower() not in self._tables:
                    raise InputError(f"refused: {node.desc().identifier().table()} is not a table of the "
                                     f"warehouse; deepcrate sql runs {ALLOWED}")
                if kind == "LogicalRelation" and view is None:
                    raise InputError(f"refused: files read by path are not a table of the warehouse; "
                                     f"deepcrate sql runs {ALLOWED}")
                if kind in ("ExplainCommand", "DescribeQueryCommand"):  # the statement they name is a field
                    self.check(parsed=node.logicalPlan() if kind == "ExplainCommand" else node.plan())
            elif kind not in self._builtins.allowed and kind not in SYNTAX and kind not in BUILT:
                raise InputError(self._builtins.refusal(kind))

    def _walk(self, root):
        """Every node under ``root`` with the registered table's view above it (or None): plan
        children and inner children, a plan's expressions, an expression's children and the
        plans of subqueries."""
        pending = [(root, None)]
        while pending:
            node, view = pending.pop()
            yield node, view
            if _kind(node) == "View":
                view = node
            below = _items(node.children())
            if self._logical.isInstance(node):
                below += _items(node.innerChildren()) + _items(node.expressions())
            if self._subquery.isInstance(node):
                below.append(node.plan())
            pending += [(child, view) for child in below]


@dataclasses.dataclass(frozen=True)
class _Builtins:
    """Spark's built-in functions, once per process: from the list packaged for this Spark
    version (:data:`FUNCTION_LIST`), else from the JVM's registry (~1 s of py4j calls)."""

    by_class: dict[str, tuple[str, str]]  # simple class name -> (a SQL name, its group)
    by_name: dict[str, str]  # SQL name -> simple class name
    allowed: frozenset[str]  # the classes of FUNCTION_GROUPS, less LEFT_OUT

    @classmethod
    def of(cls, spark: SparkSession) -> _Builtins:
        global _builtins
        if _builtins is None:
            functions = packaged_functions(spark.version) or registry_functions(spark)
            by_class: dict[str, tuple[str, str]] = {}
            by_name: dict[str, str] = {}
            for name, kind, group in functions:
                by_class.setdefault(kind, (name, group))
                by_name[name.lower()] = kind
            # A class is allowed only if every name it is registered under is in an allowed group.
            outside = {kind for _, kind, group in functions if group not in FUNCTION_GROUPS}
            allowed = frozenset(k for k, (_, group) in by_class.items() if group in FUNCTION_GROUPS) - outside - LEFT_OUT
            _builtins = cls(by_class, by_name, allowed)
        return _builtins

    def refusal(self, kind: str) -> str:
        name, group = self.by_class.get(kind, (None, ""))
        if kind in LEFT_OUT:
            name, why = ("reflect" if kind == "CallMethodViaReflection" else name), "calls a Java method by name"
        else:
            why = _GROUPS_LEFT_OUT.get(group, "is not one of Spark's built-in functions")
        return f"refused: {f'{name}()' if name else kind} {why}; deepcrate sql runs {ALLOWED}"


_builtins: _Builtins | None = None
_GROUPS_LEFT_OUT = {"xml_funcs": "parses XML", "avro_funcs": "loads classes by name",
                    "protobuf_funcs": "loads classes by name and reads descriptor files"}
# Spark's registry read once per Spark release and packaged (``python -m deepcrate.query.sql_guard``
# writes it); tests/test_sql_guard.py checks it against the registry of the Spark installed.
FUNCTION_LIST = Path(__file__).with_name("spark_functions.json")


def registry_functions(spark: SparkSession) -> list[tuple[str, str, str]]:
    """(SQL name, simple class name, group) of every built-in function, sorted by name.

    A builder's class stands for what it builds (MaxByBuilder builds MaxBy).
    """
    registry = getattr(spark._jvm.org.apache.spark.sql.catalyst.analysis,
                       "FunctionRegistry$").__getattr__("MODULE$").builtin()
    names = registry.listFunction()
    functions = []
    for i in range(names.size()):
        info = registry.lookupFunction(names.apply(i))
        if not info.isEmpty():
            kind = re.sub(r"(Expression)?Builder$", "", info.get().getClassName().rsplit(".", 1)[-1])
            functions.append((names.apply(i).funcName(), kind, str(info.get().getGroup())))
    return sorted(functions)


def packaged_functions(spark_version: str) -> list[tuple[str, str, str]] | None:
    """The packaged list when it was read from ``spark_version``'s registry; None otherwise."""
    try:
        packaged = json.loads(FUNCTION_LIST.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if packaged.get("spark") != spark_version:
        return None
    return [tuple(entry) for entry in packaged["functions"]]


def _refused_statement(kind: str) -> str:
    return f"refused: {_statement(kind)} is not read-only; deepcrate sql runs {ALLOWED}"


def _kind(node) -> str:
    return node.getClass().getSimpleName()


def _items(seq) -> list:
    """A Scala Seq's elements."""
    return [seq.apply(i) for i in range(seq.size())]


def _statement(kind: str) -> str:
    """A plan node's name as the statement it came from: ``CreateTableAsSelect`` -> ``CREATE TABLE AS SELECT``."""
    special = {"CompoundBody": "a BEGIN ... END block", "UnresolvedExecuteImmediate": "EXECUTE IMMEDIATE",
               "ScriptTransformation": "TRANSFORM ... USING (an external program)",
               "PlanWithUnresolvedIdentifier": "IDENTIFIER() of a computed name"}
    if kind in special:
        return special[kind]
    for suffix in ("Statement", "Command"):
        kind = kind.removesuffix(suffix)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", kind.removeprefix("Unresolved")).upper()


if __name__ == "__main__":  # after a Spark upgrade: python -m deepcrate.query.sql_guard
    from deepcrate.config import resolve_settings
    from deepcrate.spark.session import spark_session

    session = spark_session(resolve_settings().spark, quiet=True)
    listed = registry_functions(session)
    rows = ",\n".join(json.dumps(list(function)) for function in listed)  # one a line: a diff shows what changed
    FUNCTION_LIST.write_text(f'{{"spark": {json.dumps(session.version)}, "functions": [\n{rows}\n]}}\n',
                             encoding="utf-8")
    print(f"{FUNCTION_LIST}: {len(listed)} functions of Spark {session.version}")
