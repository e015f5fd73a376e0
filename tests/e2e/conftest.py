import pytest

from tests.e2e.procs import BackendProcess, Router, write_config


@pytest.fixture
def backend_process(processes):
    backend = BackendProcess()
    processes.append(backend)
    return backend


@pytest.fixture
def start_router(processes, tmp_path):
    def start(settings, **kwargs):
        router = Router(write_config(tmp_path / "config.json", settings), **kwargs)
        processes.append(router)
        return router

    return start
