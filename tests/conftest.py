import pytest
import sys
from pathlib import Path

# Tests share small builders (e.g. `test_tinyvlm.make_policy`).
sys.path.insert(0, str(Path(__file__).parent))
from shared_runs import media_sft  # noqa: E402,F401  (one media-aware SFT for test_sft and test_reward_model)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    """A tiny SFT policy on a tiny ShapesWorld: (model folder, data folder), shared by the RL tests."""
    from modalign.data.shapes import build_shapes_dataset
    from modalign.recipes.sft import SFTConfig, run_sft

    root = tmp_path_factory.mktemp("tiny_sft")
    data = build_shapes_dataset(root / "data", n_train=30, n_test=4, seed=0, caption_noise=0.3)
    run_sft(SFTConfig(out=str(root / "sft"), data=str(data), hidden_size=32, num_layers=1, num_heads=2,
                      encoder_layers=1, vocab_size=300, batch_size=8, max_steps=20, eval_examples=1, lr=3e-3))
    return root / "sft" / "model", data


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the whole session (tests/pg_server.py), stopped at the end;
    tests using it skip with the reason when none can be started."""
    from pg_server import postgres_or_skip

    yield from postgres_or_skip()


_databases = iter(range(10**6))


@pytest.fixture
def postgres_url(postgres):
    """The SQLAlchemy URL of a new, empty database on the session's PostgreSQL server."""
    return postgres.create_database(f"test_{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request, tmp_path):
    """A new feedback store's URL: a feedback.db in tmp_path, then a PostgreSQL database (same tests on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_url")


# ---- CPU time per test: MODALIGN_CPU_DURATIONS=file appends "seconds<TAB>test id" lines (setup, call and
# teardown; this process and the subprocesses it waited for). Wall-clock durations mislead on a shared machine.

def _cpu_seconds() -> float:
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    import os

    path = os.environ.get("MODALIGN_CPU_DURATIONS")
    start = _cpu_seconds() if path else 0.0
    yield
    if path:
        with open(path, "a") as out:
            out.write(f"{_cpu_seconds() - start:.2f}\t{item.nodeid}\n")


# ---- pytest-xdist (`make test`: -n 2) -----------------------------------------------------------------------
# A work unit is a file (its module fixtures built once), but test_hf_any.py is one unit per architecture (its
# session fixture builds one tiny model per architecture) and the two files on the `media_sft` session run are
# one unit (that SFT runs once). Units go out in collection order, so the longest go first: a long unit
# taken last would leave the other worker idle at the end. (Scopes by node id in our own scheduler: xdist's
# `--dist loadgroup` ignores xdist_group marks with this pytest.)
SHARED_UNITS = {"test_sft.py": "media_sft", "test_reward_model.py": "media_sft"}
LONGEST_FIRST = ("test_multiprocess.py", "media_sft", "test_fsdp.py", "test_ppo.py", "test_annotation_load.py",
                 "test_your_data.py", "test_loop.py")


def work_unit(nodeid: str) -> str:
    """'tests/test_hf_any.py::test_x[aria]' -> 'hf_any-aria'; 'tests/test_sft.py::test_y' -> 'media_sft'."""
    name = nodeid.split("::")[0].rsplit("/", 1)[-1]
    if name == "test_hf_any.py" and nodeid.endswith("]"):
        return "hf_any-" + nodeid[nodeid.rindex("[") + 1 : -1]
    return SHARED_UNITS.get(name, name)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # collection order (longest first), not the most tests first
    return WorkUnits(config, log)


def pytest_collection_modifyitems(config, items):
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):  # one process: collection order
        rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))  # stable: file order otherwise
