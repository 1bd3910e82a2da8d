"""Every criterion through the exported chain equals the reference: stages before the LLM
(K = 0), knn's vision features from the vision graph, text-only, and paper mode (counts
that vary per image)."""

import pytest

from feather.config import CRITERIA, PruneConfig
from feather.export import export
from feather.reference import Reference
from feather.runtime import Pipeline

PROMPT = "What is in the image?"

CASES = {
    "knn-K0": PruneConfig(criterion="knn", K=(0,)),
    "knn-K8": PruneConfig(criterion="knn", K=(8,)),
    "uniform-K0": PruneConfig(criterion="uniform", K=(0,), stride=2),
    "text_only": PruneConfig(criterion="text_only"),
    "norope-K3": PruneConfig(criterion="norope", K=(3,)),
    "ensemble-paper": PruneConfig(criterion="ensemble", K=(8,), mode="paper"),
    "feather-paper": PruneConfig(criterion="feather", mode="paper"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_chain_equals_reference(name, tiny_path, tmp_path, sample_image):
    config = CASES[name]
    out = export(model="tiny", config=config, output=tmp_path / name, quiet=True)
    chain = Pipeline.load(out).generate(sample_image, PROMPT, max_new_tokens=8)
    ref = Reference.load(str(tiny_path), config).generate(sample_image, PROMPT, 8)
    assert [s["layer"] for s in chain.stages] == list(config.K)
    assert chain.stages == ref.stages and chain.tokens == ref.tokens


def test_every_criterion_has_a_chain_test():
    """A new criterion must come with a chain test (here or in test_pipeline.py)."""
    covered = {c.criterion for c in CASES.values()} | {"none", "feather", "original"}
    assert set(CRITERIA) <= covered
