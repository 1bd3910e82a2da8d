import pytest

from feather.config import CRITERIA, PruneConfig
from feather.errors import ConfigError


def test_defaults_are_the_paper_feather_run():
    c = PruneConfig()
    assert (c.criterion, c.K, c.ratio, c.stride, c.mode) == ("feather", (8, 16), 0.7, 3, "static")
    assert [(s.layer, s.rule) for s in c.stages] == [(8, "ensemble"), (16, "topk_norope2")]
    assert c.keep_counts(576, 24) == [236, 21]


def test_static_counts_match_the_spec_on_llava_and_prismatic_grids():
    # feather-spec.md: floor(576 * 0.3) = 172, grid 8 x 8 = 64 -> 236, then floor(236 * 0.09) = 21
    assert PruneConfig(criterion="feather").keep_counts(576, 24) == [172 + 64, 21]
    assert PruneConfig(criterion="original", K=(3,), ratio=0.75).keep_counts(729, 27) == [182]
    assert PruneConfig(criterion="uniform", K=(3,), stride=2).keep_counts(729, 27) == [196]
    assert PruneConfig(criterion="text_only").keep_counts(576, 24) == [0]
    assert PruneConfig(criterion="none").keep_counts(576, 24) == []


def test_single_k_feather_is_its_first_stage():
    c = PruneConfig(criterion="feather", K=(8,))
    assert [(s.layer, s.rule) for s in c.stages] == [(8, "ensemble")]


def test_none_and_text_only_take_their_own_k_and_refuse_another():
    from feather.errors import ConfigError

    assert PruneConfig(criterion="none").K == () and PruneConfig(criterion="text_only").K == (0,)
    assert PruneConfig().K == (8, 16) and PruneConfig(criterion="none", K=()).K == ()
    with pytest.raises(ConfigError, match=r"K: got \[8, 16\], but criterion 'none' prunes nothing; leave K out"):
        PruneConfig(criterion="none", K=(8, 16))
    with pytest.raises(ConfigError, match=r"criterion 'text_only' always prunes at K = \[0\]"):
        PruneConfig(criterion="text_only", K=(8,))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"criterion": "fastvv"}, "criterion: got 'fastvv', expected one of"),
        ({"K": (16, 8)}, "K: got [16, 8], expected strictly ascending"),
        ({"K": (8, 8)}, "K: got [8, 8], expected strictly ascending"),
        ({"K": (-1,), "criterion": "uniform"}, "K[0]: got -1, expected a layer index >= 0"),
        ({"ratio": 1.0}, "ratio: got 1.0, expected a fraction pruned strictly between 0 and 1"),
        ({"ratio": 0}, "ratio: got 0"),
        ({"ratio": "0.5"}, "ratio: got '0.5', expected a number"),
        ({"stride": 0}, "stride: got 0, expected an integer >= 1"),
        ({"mode": "dynamic"}, "mode: got 'dynamic', expected one of static, paper"),
        ({"criterion": "original", "K": (3, 8)}, "criterion 'original' prunes at one layer"),
        ({"criterion": "feather", "K": (2, 4, 8)}, "prunes at 1 to 2 layers"),
        ({"criterion": "norope", "K": (0,)}, "K must be >= 1"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ConfigError) as err:
        PruneConfig(**kwargs)
    assert message in str(err.value)


def test_k_beyond_the_model_is_refused():
    with pytest.raises(ConfigError, match=r"K\[1\]: got 24, expected a layer index below the model's 24 layers"):
        PruneConfig(K=(8, 24)).check_layers(24)
    PruneConfig(K=(8, 23)).check_layers(24)


def test_every_criterion_of_the_paper_exists():
    assert {"none", "original", "norope", "uniform", "knn", "ensemble", "feather", "text_only"} <= set(CRITERIA)
