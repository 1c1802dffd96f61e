"""Locust load testing for chatsrv over raw TCP (see docs/loadtesting.md).

Importing this package does not import Locust: `loadtest.protocol` and
`loadtest.tracker` are pure and safe in any process; `loadtest.scenarios`,
`loadtest.client` and the locustfile need Locust's gevent-patched runtime.
"""
