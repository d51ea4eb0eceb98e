from __future__ import annotations

import numpy as np
import pytest

from snncc.errors import PassError, PipelineSyntaxError
from snncc.ir import ops, to_text
import snncc.targets.nir.legalize  # noqa: F401  (registers the nir-* passes, as any import of snncc.targets.nir)
from snncc.passes import PASSES, PassContext, parse_pipeline, pipeline_text, run_pipeline
from snncc.targets.loihi import legalize  # noqa: F401  (registers the Loihi passes, whatever runs first)
from tests.passes.test_sew import two_block_net


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


def test_the_record_of_the_pipeline_keeps_what_ran_before(cnn, inputs):
    """A graph compiled, then legalized, says how it was compiled as well as how it was legalized."""
    compiled = run_pipeline(cnn, "canonicalize,normalize", PassContext(calibration=inputs))
    assert compiled.attrs["pipeline"] == "canonicalize,normalize"
    converted = run_pipeline(compiled, "convert-rate")
    assert converted.attrs["pipeline"] == "canonicalize,normalize,convert-rate"
    assert parse_pipeline(converted.attrs["pipeline"])  # the record is itself a pipeline


def test_normalize_without_calibration_data_says_what_to_pass(cnn):
    with pytest.raises(PassError, match="--calib"):
        run_pipeline(cnn, "normalize", PassContext())


def _same_graph(a, b) -> bool:
    """The same text form and, node by node, the same op with the same array values (neuron parameters too)."""
    return to_text(a) == to_text(b) and all(a.op(n).same_as(b.op(n)) for n in a.topological_order())


#: Per registered pass: the pipeline that prepares a graph it applies to, and the error of a second application
#: (None: the pass is idempotent).
IDEMPOTENCE = {
    "canonicalize": ("", None),
    "normalize": ("canonicalize", None),
    # The conversions map the ANN level to the SNN level, so a second run meets an SNN-level graph.
    "convert-rate": ("canonicalize,normalize", "needs a graph at the ann level"),
    "convert-fs": ("canonicalize,normalize", "needs a graph at the ann level"),
    "convert-amos": ("canonicalize,normalize", "needs a graph at the ann level"),
    # Values on a power-of-two grid stay on it (a smaller step of the rounded values still divides them).
    "quantize-neurons{bits=3}": ("canonicalize,normalize,convert-fs{steps=4}", None),
    # SEW blocks are no longer residual Adds of a current and a shortcut; the pass refuses to run on its output.
    "sew": ("canonicalize,normalize,convert-rate", "already in SEW form"),
    # The Loihi legalization (targets/loihi/legalize.py): quantize maps the snn level to the hw level.
    "loihi-fold": ("canonicalize,normalize,convert-rate", None),
    "loihi-gates": ("canonicalize,normalize,convert-rate", None),
    "loihi-reset{variant=loihi1}": ("canonicalize,normalize,convert-rate", None),
    "loihi-quantize": ("canonicalize,normalize,convert-rate,loihi-fold", "needs a graph at the snn level"),
    "loihi-partition": ("canonicalize,normalize,convert-rate,loihi-fold,loihi-quantize", None),
    # NIR's legalization (snncc.targets.nir.legalize): the padding value, the reset and the initial membrane.
    "nir-input-padding": ("canonicalize,normalize,convert-rate", None),
    "nir-reset": ("canonicalize,normalize,convert-rate", None),
    "nir-initial-membrane{mode=bias,timesteps=16}": ("canonicalize,normalize,convert-rate", None),
}


@pytest.mark.parametrize("name", sorted(IDEMPOTENCE))
def test_every_registered_pass_is_idempotent_or_refuses_a_second_run(name, cnn, inputs):
    assert {parse_pipeline(text)[0].name for text in IDEMPOTENCE} == set(PASSES), \
        "every registered pass needs an idempotence case"
    context = PassContext(calibration=inputs)
    ann = two_block_net() if name == "sew" else cnn
    # An input normalization in front, so that canonicalize has an Affine to fold.
    ann.insert_after("input", ops.Affine(scale=np.asarray(2.0), shift=np.asarray(-0.5)), name="input_norm")
    prepare, refusal = IDEMPOTENCE[name]
    graph = run_pipeline(ann, prepare, context) if prepare else ann
    (p,) = parse_pipeline(name)
    once, changed = p.apply(graph, context)
    assert changed and not _same_graph(graph, once), f"{name} must do something on its first run here"
    if refusal is not None:
        with pytest.raises(PassError, match=refusal):
            p.apply(once, context)
        return
    twice, changed = p.apply(once, context)
    assert not changed, f"{name} reported a change on its second run"
    assert _same_graph(once, twice), f"{name} changed the graph on its second run"


def test_pass_options_with_a_known_cost_carry_their_note():
    from snncc.passes import pipeline_notes
    from snncc.passes.convert_rate import ConvertRate

    assert ConvertRate().notes() == [] and ConvertRate(maxpool="count").notes() == []
    (note,) = ConvertRate(maxpool="avg").notes()
    assert note.startswith("convert-rate{maxpool=avg}: average pooling of spikes stands in for the model's max")
    assert pipeline_notes("canonicalize,normalize{percentile=99.9},convert-rate{maxpool=avg,signed=true}") == [
        ConvertRate(maxpool="avg", signed=True).notes()[0]]
    assert pipeline_notes("canonicalize,normalize,convert-rate") == []
