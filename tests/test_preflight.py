"""Before a cell is sent, each site is asked whether it has the datasets the cell names.

``rk.data``, ``rk.crosstab`` and ``rk.query`` alike: a dataset a site lacks is an
error at once, and nothing is sent there (it used to wait for a reviewer as a refusal).
"""

from __future__ import annotations

import pytest

import remote_kernel as rk
from remote_kernel.protocol.errors import NotFound, UnknownDataset
from remote_kernel.researcher.client import Datasite
from remote_kernel.researcher.fanout import datasets_named, preflight

from .conftest import RunningDatasite


def test_the_names_a_cell_uses() -> None:
    cell = (
        'df = rk.data("heart")\n'
        "%time x = 1\n"
        'rk.query("SELECT sex, COUNT(*) AS n FROM hart GROUP BY sex")\n'
        'rk.crosstab("claims", index="sex")\n'
        "remote_kernel.crosstab(dataset='kw', index='sex')\n"
        'rk.query(sql="""select 1 from "Quoted" join other on true""")\n'
        "name = 'built'; rk.data(name); other.data('not_ours')\n"
    )
    assert datasets_named(cell) == ["Quoted", "claims", "hart", "heart", "kw", "other"]
    # A cell Python cannot parse still has its literal rk.data names found.
    assert datasets_named('rk.data("a") ) (') == ["a"]
    assert datasets_named("print(1)") == []


def test_a_query_or_crosstab_on_a_missing_dataset_is_not_sent(
    shared_datasite: RunningDatasite,
) -> None:
    site = Datasite(shared_datasite.url, shared_datasite.tokens["alice"], "cleveland")
    try:
        for cell in (
            'rk.query("SELECT sex, COUNT(*) AS n FROM hart GROUP BY sex")',
            'rk.crosstab("hart", index="sex")',
        ):
            result = rk.run_everywhere(cell, [site])
            run = result.runs["cleveland"]
            assert run.request is None and run.state == "not sent"
            assert "cleveland has no dataset 'hart' (available: heart)" in run.error
        ok = rk.run_everywhere('rk.crosstab("heart", index="sex")', [site])
        assert ok.runs["cleveland"].request is not None
        ok.wait(120, until="finished")
    finally:
        site.close()


def test_a_missing_dataset_is_an_unknown_dataset_naming_what_the_site_has(
    shared_datasite: RunningDatasite,
) -> None:
    site = Datasite(shared_datasite.url, shared_datasite.tokens["alice"], "cleveland")
    try:
        with pytest.raises(UnknownDataset) as caught:
            preflight(site, 'rk.data("heart"); rk.query("SELECT 1 FROM claims")', {})
        assert str(caught.value) == "cleveland has no dataset 'claims' (available: heart)"
        # The notebook catches it as the KeyError and the NotFound it also is.
        assert isinstance(caught.value, KeyError) and isinstance(caught.value, NotFound)
        assert preflight(site, 'rk.data("heart")', {}) == []
    finally:
        site.close()
