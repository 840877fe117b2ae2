"""Settings models: ranges read from the field's own bounds, the result marker, hashing by canonical JSON."""

from __future__ import annotations

import math

import pytest

from model.methods import method_config_class
from model.settings import WIDTH, Searchable, Settings, result_payload, searchable_fields, setting
from model.training import TrainSpec


class _Example(Settings):
    rank: int = setting(4, "a rank", search=True, bound=WIDTH, ge=1)
    threshold: float = setting(0.5, "a threshold", search=True, gt=0.0, le=1.0)
    workers: int = setting(0, "processes", ge=0, affects_result=False)
    tags: list[str] = setting(["a"], "not searchable")


def test_search_ranges_come_from_the_field_bounds():
    found = searchable_fields(_Example)
    assert set(found) == {"rank", "threshold"}
    assert found["rank"] == Searchable(int, 1, math.inf, help="a rank", bound=WIDTH)
    assert found["threshold"].domain() == "(0.0, 1.0]"
    with pytest.raises(ValueError, match=r"p = 0.0 is outside the allowed values \(0.0, 1.0\]"):
        found["threshold"].check(0.0, "p")
    assert found["rank"].capped(32).high == 32


def test_result_payload_leaves_out_what_cannot_change_results():
    assert result_payload(_Example(workers=8)) == {"rank": 4, "threshold": 0.5, "tags": ["a"]}


def test_settings_hash_and_compare_by_value_and_are_frozen():
    a, b = _Example(tags=["x"]), _Example(tags=["x"])
    assert a == b and hash(a) == hash(b) and a != _Example()
    with pytest.raises(ValueError):
        a.rank = 3  # type: ignore[misc]


def test_only_the_lora_methods_declare_a_rank():
    for name in ("inflora", "inflora_ca", "seq_lora", "joint", "sd_lora"):
        assert "rank" in searchable_fields(method_config_class(name)), name
    for name in ("frozen", "l2p", "dualprompt", "coda_prompt"):
        assert "rank" not in method_config_class(name).model_fields, name
    assert set(searchable_fields(TrainSpec)) == {"lr", "epochs"}
