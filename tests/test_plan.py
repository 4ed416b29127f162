import pytest
from torch import nn

from mgtool.errors import MgtoolError
from mgtool.plan import TemplatePlan, make_plan


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),  # 0: alone
        nn.Conv2d(8, 8, 3),  # 1: pairs with 2
        nn.Conv2d(8, 8, 3),  # 2
        nn.Conv2d(8, 8, 3),  # 3: pairs with 5 (next of the same shape after 2 is taken)
        nn.Conv2d(8, 16, 1),  # 4: alone
        nn.Conv2d(8, 8, 3),  # 5
        nn.Linear(8, 4),  # 6
    )


def _groups(plan: TemplatePlan) -> list[list[str]]:
    return [[la.name for la in plan.layers_of(b.name)] for b in plan.banks]


def test_pairs_pair_each_layer_with_the_next_of_identical_shape():
    plan = make_plan(_net(), templates_per_layer=2, share="pairs")
    assert _groups(plan) == [["0"], ["1", "2"], ["3", "5"], ["4"], ["6"]]
    assert [b.templates_per_set for b in plan.banks] == [2, 4, 4, 2, 2]
    assert [la.name for la in plan.layers] == [str(i) for i in range(7)]  # module order


def test_share_none_gives_every_layer_its_own_bank():
    plan = make_plan(_net(), templates_per_layer=3, share="none")
    assert all(len(g) == 1 for g in _groups(plan)) and len(plan.banks) == 7
    assert all(b.templates_per_set == 3 for b in plan.banks)


def test_plan_json_round_trip_and_shapes():
    plan = make_plan(_net())
    again = TemplatePlan.from_dict(plan.to_dict())
    assert again == plan
    layer = plan.layers[1]
    assert plan.coefficient_shape(layer) == (1, 1, 4)
    assert plan.weight_shape(layer) == (8, 8, 3, 3)


def test_plan_rejects_unknown_keys_and_bad_sets():
    data = make_plan(_net()).to_dict()
    data["layers"][0]["colour"] = "red"
    with pytest.raises(MgtoolError, match="unknown keys"):
        TemplatePlan.from_dict(data)
    data = make_plan(_net()).to_dict()
    data["layers"][0]["row_sets"] = [[3]]
    with pytest.raises(MgtoolError, match="outside"):
        TemplatePlan.from_dict(data)


def test_grouped_convolution_is_refused_with_its_name():
    net = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(MgtoolError, match=r"layer 1 .*groups=4"):
        make_plan(net)
