"""`chatsrv serve`'s options are Config's fields, with Config's defaults."""

from __future__ import annotations

import inspect
from dataclasses import fields

from chatsrv import cli
from chatsrv.config import Config


def test_every_config_field_is_an_option_with_its_default():
    params = dict(inspect.signature(cli.serve).parameters)
    assert params.pop("ctx") and params.pop("config_file").default.default is None
    assert set(params) == {f.name for f in fields(Config)}
    defaults = Config()
    for name, param in params.items():
        assert param.default.default == getattr(defaults, name), name
