"""Shared fixtures: a live emulator on loopback and a client pointed at it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from keyapi_async import KeyAPIClient
from keyapi_async.testing import Emulator, EmulatorConfig, run_emulator


@pytest.fixture
def api_key() -> str:
    """An obviously fake key, made at run time so no key-shaped literal is committed."""
    return "sk_test_" + secrets.token_hex(16)


@pytest.fixture
def emulator_config(api_key: str) -> EmulatorConfig:
    return EmulatorConfig(api_keys=frozenset({api_key}))


@pytest.fixture
async def emulator(emulator_config: EmulatorConfig) -> AsyncIterator[Emulator]:
    async with run_emulator(emulator_config) as emu:
        yield emu


@pytest.fixture
def make_client(api_key: str) -> Callable[..., KeyAPIClient]:
    """Build a client for an emulator; fast retries so failure paths stay quick."""

    def factory(emu: Emulator, **overrides: object) -> KeyAPIClient:
        options: dict[str, object] = {
            "base_url": emu.base_url,
            "qps": None,
            "backoff_base": 0.01,
            "backoff_cap": 0.05,
            "timeout": 5.0,
        }
        options.update(overrides)
        return KeyAPIClient(api_key, **options)  # type: ignore[arg-type]

    return factory


EmulatorFactory = Callable[..., AbstractAsyncContextManager[Emulator]]
