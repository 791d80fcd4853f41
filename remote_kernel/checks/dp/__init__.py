"""The DP tier (engine): aggregate queries answered with differential privacy, as pure code.

The exact tier (:mod:`remote_kernel.checks.sqltier`) must hold for a person any
query with a WHERE, a computed key, a CASE/FILTER or a quantile, because exact
answers to such queries can be differenced down to one patient. This engine
answers them with calibrated noise instead, so they can be released without a
reviewer once the datasite has charged the researcher's budget.

**What is done.** :func:`dp_query` ``(sql, tables, metadata, epsilon, delta=0)``
returns a :class:`DPAnswer`: the noisy table (the SQL's own column names and
order), per-cell error bars ("57.3 ± 4.1 at 95%", :meth:`DPAnswer.error_bars`),
the ``(epsilon, delta)`` actually spent (OpenDP's privacy map of the
measurement), OpenDP's summary of the mechanisms, and notes (clipping bounds,
how keys were chosen). It accepts WHERE; group keys that are columns or
expressions (``num > 0 AS disease``, ``FLOOR(age / 10) * 10`` for histograms);
COUNT(*), COUNT(x), SUM(x), AVG(x), MEDIAN(x), QUANTILE_CONT/QUANTILE_DISC/
QUANTILE(x, q), where x may be an expression with CASE, and any aggregate may
carry FILTER (WHERE ...); ORDER BY result columns and LIMIT (applied to the noisy
table). DP metadata (:class:`DPMetadata`, :func:`parse_metadata`): bounds,
public categories, the privacy unit (a row, or an id column with a maximum of
contributions), ``max_rows`` and ``max_groups``, all declared by the owner.

Joins of two datasets over a declared privacy unit (:mod:`.join`): both declare an
``id`` unit of the same ``name``, the query joins ON those ids, and each person's
joined rows are truncated to the product of the declared maxima; other joins are
refused. Budgets, audit and the wiring into ``rk.query`` are the datasite's
(:mod:`remote_kernel.datasite.dp_tier`), which still reads one dataset per query.

Limits per query: epsilon in (0, 10], delta in [0, 1e-5]. Errors never quote
private values: DuckDB runtime failures and release failures get fixed messages,
OpenDP's messages come from building the measurement over zero rows, and
categorical columns reach DuckDB as plain values (an ENUM's type name lists them).

**Design.**

1. *Shape* (:mod:`.shape`): the query minus its aggregates is checked by
   :func:`remote_kernel.querylang.check_query` itself (each aggregate replaced by
   ``COUNT(*)`` under its alias: one flat SELECT over one dataset, no joins,
   subqueries, windows, HAVING, ROLLUP...). The aggregates are checked here:
   arguments and FILTERs are row-wise expressions of real columns (querylang's
   ``check_expression``); MIN/MAX/MODE/DISTINCT are refused (one person's value).
2. *Sensitivity follows the query* (:mod:`.bounds`): each aggregate's input gets
   an interval by interval arithmetic over the declared bounds (``chol * 1e6`` →
   [1e8, 6e8]; CASE → hull of its branches; conditions → [0, 1]; division by a
   range holding 0, unknown functions, undeclared columns → refused with a
   message). OpenDP clips every value to that interval, so data that breaks the
   declaration is clipped, never trusted.
3. *Row stage in DuckDB* (:mod:`.rows`): querylang's locked-down in-memory DuckDB
   computes, per private row passing WHERE, the key values and each aggregate's
   input (``CASE WHEN <filter> THEN <arg> END`` and a 0/1 "counts" indicator).
   It is a row-wise map and filter (stability 1), so a guarantee over the derived
   frame is a guarantee over the dataset. With an id privacy unit each person is
   truncated to ``max_contributions`` rows, chosen by the rows' own values.
4. *Keys* (:mod:`.keys`): public when they follow from the metadata alone --
   a condition is {false, true}; other keys are evaluated by DuckDB over a public
   grid (declared categories, points spanning declared bounds). Public keys are
   joined in with OpenDP's ``with_keys`` (every key released, no delta). Other
   keys: OpenDP's thresholded key release when delta > 0 (``max_groups``
   declared), else refused naming what to declare. Nothing is read from the
   private rows to choose keys or bounds.
5. *Aggregation in OpenDP* (:mod:`.measure`, :mod:`.engine`): one measurement
   at exactly ``epsilon``, checked by OpenDP's privacy map (the datasite's ledger,
   not an OpenDP ``Context``, carries budgets across calls: a Context locks after
   one failed query and cannot survive a restart), for the whole query (OpenDP
   splits epsilon across the aggregates): counts are ``.dp.sum((0, 1))`` of the indicator, sums
   ``.dp.sum`` over the bounds widened to hold 0, a mean is a *centred* sum
   (bounds shifted by their midpoint: sensitivity half the range, not the
   largest bound) over a noisy count, quantiles
   ``.dp.quantile`` over a public grid of 201 candidates. All noise is OpenDP's
   (integer/float Laplace, exponential mechanism; no numpy or ``random`` noise:
   Mironov 2012). :func:`plan_dp_query` runs the row stage and gets the
   measurement -- built over zero rows from public facts only, its noise scale
   computed from one measurement at scale 1 rather than OpenDP's binary search,
   cached (~50 ms cold; OpenDP's ``resolve`` took ~1.5 s); :meth:`DPPlan.release`
   invokes it on the rows as a memory-mapped Arrow scan (~10 ms at 20k rows, ~0.1 s
   at 1M; benchmarks/dp.py).
6. *Error bars* (:mod:`.tables`): counts and sums use OpenDP's accuracy
   (``summarize_polars_measurement``); a mean's bar is the range of
   centre + S/N when S and N are each within their accuracy at half the alpha (a
   union bound: conservative); quantiles have none in OpenDP (reported as such).
   Bars describe the noise around the answer on the *clipped* data: clipping
   bias from too-tight declared bounds is not in them. Post-processing (counts
   floored at 0, means clamped to their bounds, ORDER BY, LIMIT) cannot weaken
   the guarantee.

The row stage never fails on the private data: every expression it evaluates there
is under DuckDB's ``TRY`` (a row whose cast fails counts as NULL), because a refusal
that depends on whether some patient's value fails would be a free bit about them.

Known limits: OpenDP offers no seed, so tests are statistical; rows whose key is
NULL or off the public grid are counted in no group.
"""

# No re-exports here: OpenDP takes seconds to import, and the policy reads DP metadata
# (``checks.dp.metadata``, no OpenDP) whenever a datasite or the CLI starts. Import
# from the modules: ``engine`` (plan_dp_query, dp_query, DPPlan), ``metadata``
# (DPMetadata, parse_metadata, PrivacyUnit, DPMetadataError), ``answer`` (DPAnswer),
# ``shape`` (check_dp_query).
