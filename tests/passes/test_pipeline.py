from __future__ import annotations

import pytest

from snncc.errors import PassError, PipelineSyntaxError
from snncc.passes import PASSES, PassContext, parse_pipeline, pipeline_text, run_pipeline


def test_pipeline_text_round_trips():
    text = "canonicalize,normalize{percentile=99.9,granularity=layer},convert-rate{maxpool=avg}"
    passes = parse_pipeline(text)
    assert [p.name for p in passes] == ["canonicalize", "normalize", "convert-rate"]
    assert passes[1].percentile == 99.9 and passes[1].granularity == "layer"
    assert pipeline_text(passes) == text
    assert pipeline_text(parse_pipeline(pipeline_text(passes))) == text


def test_defaults_are_not_printed():
    assert pipeline_text(parse_pipeline("normalize{percentile=99.99}")) == "normalize"


@pytest.mark.parametrize("text, message", [
    ("canonicalize,fold-everything", "unknown pass 'fold-everything'"),
    ("normalize{percentil=99}", "no option 'percentil'"),
    ("normalize{percentile=high}", "not a valid float"),
    ("normalize{percentile=120}", "percentile must be in"),
    ("convert-rate{maxpool=min}", "maxpool must be one of"),
    ("normalize{percentile}", "not key=value"),
    ("", "empty pipeline"),
    ("canonicalize;normalize", "cannot parse"),
])
def test_bad_pipelines_give_clear_errors(text, message):
    with pytest.raises(PipelineSyntaxError, match=message):
        parse_pipeline(text)


def test_failures_name_the_pass_and_what_ran_before(cnn):
    with pytest.raises(PassError, match=r"pass 'convert-rate' \(after canonicalize\).*run normalize first"):
        run_pipeline(cnn, "canonicalize,convert-rate")


def test_normalize_without_calibration_data_says_what_to_pass(cnn):
    with pytest.raises(PassError, match="--calib"):
        run_pipeline(cnn, "normalize", PassContext())


def test_every_registered_pass_is_idempotent(cnn, inputs):
    context = PassContext(calibration=inputs)
    graph = cnn
    for name in ["canonicalize", "normalize", "convert-rate"]:
        p = PASSES[name]()
        once, _ = p.apply(graph, context)
        if name == "convert-rate":
            # Converting twice is not a no-op but an error: the second run sees an SNN-level graph.
            with pytest.raises(PassError, match="needs a graph at the ann level"):
                p.apply(once, context)
        else:
            twice, changed = p.apply(once, context)
            assert not changed, f"{name} changed the graph on its second run"
        graph = once


def test_pass_options_with_a_known_cost_carry_their_note():
    from snncc.passes import pipeline_notes
    from snncc.passes.convert_rate import ConvertRate

    assert ConvertRate().notes() == [] and ConvertRate(maxpool="count").notes() == []
    (note,) = ConvertRate(maxpool="avg").notes()
    assert note.startswith("convert-rate{maxpool=avg}: average pooling of spikes has no compiled kernel")
    assert pipeline_notes("canonicalize,normalize{percentile=99.9},convert-rate{maxpool=avg,signed=true}") == [
        ConvertRate(maxpool="avg", signed=True).notes()[0]]
    assert pipeline_notes("canonicalize,normalize,convert-rate") == []
