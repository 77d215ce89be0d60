"""The report's figures read at a glance: axes of counts with one tick where every trial
shares the value, no offset or scientific notation, whole trial numbers and epochs."""

from __future__ import annotations

import pytest
from conftest import WatchedSearch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unet_search.report.data import load_report_data
from unet_search.report.figures import _value_axis, fig_best_so_far, fig_parallel


def _drawn(fig: Figure) -> Figure:
    FigureCanvasAgg(fig).draw()
    return fig


def _labels(axis) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.get_text() for t in axis.get_majorticklabels() if t.get_visible() and t.get_text()]


@pytest.mark.parametrize(
    ("values", "log", "labels"),
    [
        ([1942613.0] * 4, True, ["1,942,613"]),  # quick.yaml: every trial the same UNet
        ([23.5, 23.5], False, ["23.5"]),
    ],
)
def test_an_axis_every_trial_shares_shows_one_labelled_tick(
    values: list[float], log: bool, labels: list[str]
) -> None:
    fig = Figure()
    ax = fig.subplots()
    ax.scatter(values, range(len(values)))
    _value_axis(ax, "x", values, log)
    _drawn(fig)
    assert _labels(ax.xaxis) == labels
    assert ax.get_xscale() == "linear"


def test_close_counts_read_plainly_and_a_log_scale_only_spans_decades() -> None:
    fig = Figure()
    near, far = fig.subplots(1, 2)
    counts = [1941105.0, 1942613.0, 1942613.0]
    near.scatter(counts, [0, 1, 2])
    _value_axis(near, "x", counts, log=True)
    spread = [1.2e5, 2.4e6, 3.1e7]
    far.scatter(spread, [0, 1, 2])
    _value_axis(far, "x", spread, log=True)
    _drawn(fig)
    assert near.get_xscale() == "linear" and far.get_xscale() == "log"
    shown = _labels(near.xaxis)
    assert len(shown) >= 2 and all("," in s and "e" not in s and "10" not in s[:2] for s in shown)
    assert near.xaxis.get_offset_text().get_text() == ""  # no "1e6" at the axis' end
    assert all("\\times" not in s and "e+" not in s for s in _labels(far.xaxis))


@pytest.mark.slow
def test_trial_numbers_and_epochs_are_whole_and_the_colour_bar_has_no_offset(
    watched_search: WatchedSearch,
) -> None:
    data = load_report_data(watched_search.uri, watched_search.outcome.search_id)
    by_trial, by_epochs = _drawn(fig_best_so_far(data)).axes
    for axis in (by_trial.xaxis, by_epochs.xaxis):
        assert all(float(s.replace("\N{MINUS SIGN}", "-")).is_integer() for s in _labels(axis))
    parallel = _drawn(fig_parallel(data))
    bar = parallel.axes[-1]  # the colour bar's axes
    assert bar.yaxis.get_offset_text().get_text() == ""
    assert all("e" not in s for s in _labels(bar.yaxis))
