"""What a worker app is built from: the parts of Faust it replaces (their behaviour is tested with real workers in
tests/integration)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from faust.stores import rocksdb as faust_rocksdb
from faust.tables import TableManager as FaustTableManager

from agents.echo import EchoAgent
from infra.config import load_settings
from streams import tables
from streams.app import create_app
from streams.bounded_stop import Worker
from streams.tables import TableManager


def test_a_worker_app_uses_the_table_manager_without_the_start_pause(tmp_path: Path) -> None:
    app = create_app(load_settings(data_dir=tmp_path), [EchoAgent()])
    assert isinstance(app.tables, TableManager)
    assert app.conf.Worker is Worker
    # Ours is Faust's on_start less its pause; if Faust's changes, ours must be looked at again.
    faust_lines = [line.strip() for line in inspect.getsource(FaustTableManager.on_start).splitlines()]
    our_lines = [line.strip() for line in inspect.getsource(TableManager.on_start).splitlines()]
    assert "await self.sleep(1.0)" in faust_lines
    assert [line for line in faust_lines if line not in ('"""Call when table manager is starting."""',
                                                         "await self.sleep(1.0)")] == \
        [line for line in our_lines if not line.startswith("#")]


def test_a_worker_app_keeps_the_configured_standby_replicas(tmp_path: Path) -> None:
    embedded = create_app(load_settings(data_dir=tmp_path), [EchoAgent()])
    assert embedded.conf.table_standby_replicas == 0
    chosen = create_app(load_settings(data_dir=tmp_path, workers={"standby_replicas": 2}), [EchoAgent()])
    assert chosen.conf.table_standby_replicas == 2


def test_a_worker_app_patches_the_rocksdb_store_to_collect_garbage_only_when_needed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, upstream in tables.UPSTREAM.items():  # as in a fresh worker process
        monkeypatch.setattr(faust_rocksdb.Store, name, upstream)
    assert not tables.installed()
    create_app(load_settings(data_dir=tmp_path), [EchoAgent()])
    assert tables.installed()  # behaviour: tests/unit/test_table_store_rebalance.py
