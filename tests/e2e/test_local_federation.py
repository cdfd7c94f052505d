"""The development federation (``tffprod.dev.local_sites``, used by the demo and these tests) on real site
processes: a port taken between choosing it and starting the site."""

from __future__ import annotations

import socket

import psutil

from tffprod.dev.local_sites import LocalFederation
from tffprod.executors.config import load_site_config

SITE = "hospital-a"


def test_a_site_whose_port_was_taken_after_prepare_starts_on_another(tmp_path, digits_data) -> None:
    fed = LocalFederation(tmp_path / "fed", {SITE: {"train": {"path": digits_data[SITE]["train"],
                                                              "task": "tffprod.examples.digits:task"}}})
    fed.prepare()
    taken = int(load_site_config(fed.site_config_path(SITE)).listen.rsplit(":", 1)[1])
    with socket.socket() as holder:  # another process got the port first (no SO_REUSEPORT: no sharing)
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        try:
            addresses = fed.start()
            pid = fed.pids()[SITE]
        finally:
            fed.stop()
    port = int(addresses[SITE].rsplit(":", 1)[1])
    assert port != taken and load_site_config(fed.site_config_path(SITE)).listen == f"127.0.0.1:{port}"
    assert f"cannot listen on 127.0.0.1:{taken}" in (fed.site_config_path(SITE).parent / "serve.log").read_text()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
