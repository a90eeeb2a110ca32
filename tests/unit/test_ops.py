"""recsys.ops: private BentoML homes, process trees and CPU accounting (no process started)."""

from __future__ import annotations

import os

from recsys.ops.bentoml_home import model_store, private_home
from recsys.ops.cpu import cores, machine_cpu_seconds, tree_cpu_seconds
from recsys.ops.processes import process_tree


def test_model_store_follows_bentoml_home(tmp_path):
    assert model_store({"BENTOML_HOME": str(tmp_path)}) == tmp_path / "models"
    assert model_store({}).name == "models"


def test_private_homes_share_one_model_store(tmp_path):
    store = tmp_path / "store" / "models"
    homes = [private_home(tmp_path / "homes" / name, store) for name in ("a", "b")]
    assert homes[0] != homes[1]
    for home in homes:
        assert home.is_absolute()
        assert (home / "models").resolve() == store.resolve()
    (store / "x").write_text("shared")
    assert (homes[1] / "models" / "x").read_text() == "shared"
    assert private_home(tmp_path / "homes" / "a", store) == homes[0]  # idempotent


def test_a_home_moved_to_another_store_follows_it(tmp_path):
    home = private_home(tmp_path / "home", tmp_path / "old" / "models")
    private_home(home, tmp_path / "new" / "models")
    assert (home / "models").resolve() == (tmp_path / "new" / "models").resolve()


def test_process_tree_of_this_process_and_of_nothing():
    assert process_tree(os.getpid())[0].pid == os.getpid()
    assert process_tree(2**22 + 12345) == []


def test_cpu_accounting_counts_up():
    busy, total = machine_cpu_seconds()
    assert 0 < busy <= total
    before = tree_cpu_seconds([os.getpid()])
    sum(i * i for i in range(300_000))
    assert tree_cpu_seconds([os.getpid(), os.getpid()]) >= before  # each process counted once
    assert cores() >= 1
