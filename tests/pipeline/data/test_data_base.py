"""The data-set registry: names known without torch, each loader's module imported on first use."""

from __future__ import annotations

import importlib

import pytest

from pipeline.data.base import _REGISTRY, DATASETS, available_datasets
from process_helpers import heavy_imports_of


def test_data_set_names_and_the_data_section_need_no_torch():
    code = "from pipeline.data.config import DataConfig\nfrom pipeline.data import DatasetError, available_datasets\nDataConfig(name='cifar100', root='/x')\n"
    assert heavy_imports_of(code) == []


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_declared_data_set_is_registered_by_its_module(name):
    importlib.import_module(DATASETS[name])
    assert name in _REGISTRY and name in available_datasets()
