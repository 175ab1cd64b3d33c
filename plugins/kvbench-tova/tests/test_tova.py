import torch
from kvbench_tova import Tova

from kvbench import KeepView, Phase, list_methods, load_method
from kvbench.testing import assert_conforms


def test_registered_through_the_entry_point():
    assert "tova" in list_methods()
    assert isinstance(load_method("tova", budget="16"), Tova)


def test_conforms():
    assert_conforms("tova", {"budget": 48})


def test_keeps_what_the_newest_query_attends_to():
    # One KV head, 6 held entries; the newest query points along key 2 and key 4.
    keys = torch.zeros(1, 6, 4)
    keys[0, 2, 0] = 5.0
    keys[0, 4, 1] = 4.0
    query = torch.tensor([1.0, 1.0, 0.0, 0.0])
    view = KeepView(
        layer=0,
        group=0,
        heads=[0],
        phase=Phase(is_decode=True),
        positions=torch.arange(6)[None],
        keys=keys,
        values=torch.zeros_like(keys),
        queries=query.view(1, 1, 1, 4),
        num_new=1,
        scaling=1.0,
    )
    assert Tova(budget=2).select(view).tolist() == [[2, 4]]
    assert Tova(budget=6).select(view) is None
