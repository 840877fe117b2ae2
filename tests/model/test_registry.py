"""The method registry: names, settings and published figures without torch; model code on first use."""

from __future__ import annotations

import pytest

from model.methods import available_methods, declaration, get_method_class, method_config_class, register_method
from model.methods.base import ContinualMethod
from model.methods.config import MethodConfig
from process_helpers import heavy_imports_of


def test_settings_published_figures_and_results_import_no_torch():
    code = (
        "from model.methods import available_methods, declaration, method_config_class\n"
        "from model.methods.results import EvalRow, StepResult\n"
        "from model import TrainSpec, REFERENCE_DOWN_SCALE\n"
        "for name in available_methods():\n"
        "    method_config_class(name)(); declaration(name).published\n"
        "TrainSpec(lr=1e-3)\n"
        "StepResult.from_dict(StepResult(eval=[EvalRow(task=0, test=0.5, count=2)]).to_dict())\n"
    )
    assert heavy_imports_of(code) == []


def test_public_names_of_the_packages_still_import():
    code = "from model import create_backbone, create_method, ContinualViT\nfrom model.methods import ContinualMethod, Step\n"
    assert "torch" in heavy_imports_of(code)
    import model

    assert set(model.__all__) <= set(dir(model))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        model.nothing  # noqa: B018


@pytest.mark.parametrize("name", available_methods())
def test_every_declared_method_registers_its_model_code_with_the_declared_settings(name):
    cls = get_method_class(name)
    assert cls.name == name and cls.config_class is method_config_class(name)
    assert declaration(name).module == cls.__module__


def test_unknown_and_mismatched_methods_are_refused():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known methods: \['cl_lora'"):
        method_config_class("nope")

    class Mismatched(ContinualMethod):
        name = "inflora"
        config_class = MethodConfig

    with pytest.raises(TypeError, match="method 'inflora' is declared with InfLoRAConfig, but Mismatched takes MethodConfig"):
        register_method(Mismatched)

    class Undeclared(ContinualMethod):
        name = "undeclared"

    with pytest.raises(ValueError, match="unknown method 'undeclared'"):
        register_method(Undeclared)
