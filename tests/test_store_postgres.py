"""`store=` everywhere: a path is SQLite, a URL is that database (a real PostgreSQL server here), and a
store that cannot be opened is one error naming the setting and the URL with its password masked."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from modalign.cli import app
from modalign.feedback.judgments import PairwiseJudgment
from modalign.feedback.store import FeedbackStore
from modalign.feedback.store_spec import StoreError, masked, open_store, store_url

SECRET = "s3cret-Pa55"


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_path_is_sqlite_a_folder_its_feedback_db_and_a_url_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store_url("runs/x/feedback.db") == f"sqlite:///{tmp_path / 'runs' / 'x' / 'feedback.db'}"
    assert (tmp_path / "runs" / "x").is_dir()  # made for a new store
    assert store_url("runs/x") == f"sqlite:///{tmp_path / 'runs' / 'x' / 'feedback.db'}"
    assert store_url("", default_path=tmp_path / "out" / "feedback.db") == f"sqlite:///{tmp_path / 'out' / 'feedback.db'}"
    # libpq-style URLs get the driver of the postgres extra (psycopg 3); explicit drivers are kept
    assert store_url("postgresql://ann@db.example/labels") == "postgresql+psycopg://ann@db.example/labels"
    assert store_url("postgres://ann@db.example/labels") == "postgresql+psycopg://ann@db.example/labels"
    assert store_url("postgresql+psycopg://ann@h/l") == "postgresql+psycopg://ann@h/l"
    with pytest.raises(StoreError, match="loop_store is empty"):
        store_url("", key="loop_store")
    with pytest.raises(FileNotFoundError, match="'gone.db': no feedback store there"):
        store_url("gone.db", must_exist=True)


def test_password_is_masked_even_in_urls_sqlalchemy_cannot_parse():
    assert masked(f"postgresql+psycopg://ann:{SECRET}@h:5432/db") == "postgresql+psycopg://ann:***@h:5432/db"
    assert masked(f"postgresql://ann:{SECRET}@h:port/db") == "postgresql://ann:***@h:port/db"
    assert masked("postgresql://ann:p@ss@h:port/db") == "postgresql://ann:***@h:port/db"
    assert masked("sqlite:////tmp/feedback.db") == "sqlite:////tmp/feedback.db"


@pytest.mark.parametrize("url, says", [
    (f"postgresql://ann:{SECRET}@127.0.0.1:{closed_port()}/labels", "Connection refused"),
    (f"postgresql://ann:{SECRET}@127.0.0.1:port/labels", "is not an SQLAlchemy URL"),
    (f"nosuchdb://ann:{SECRET}@127.0.0.1/labels", "knows no such database kind"),
    (f"mysql://ann:{SECRET}@127.0.0.1/labels", "driver is not installed"),
], ids=["refused", "bad-url", "unknown-kind", "no-driver"])  # stable ids: the refused port differs per collection
def test_a_store_that_cannot_be_opened_is_one_error_naming_key_and_url(url, says):
    with pytest.raises(StoreError) as caught:
        open_store(url, key="store")
    message = str(caught.value)
    assert message.startswith("store '") and says in message and ":***@127.0.0.1" in message
    assert SECRET not in message


def test_password_from_pgpassword_keeps_it_out_of_the_url(postgres, monkeypatch):
    url = postgres.url("postgres").replace(f":{postgres.password}@", "@")
    with pytest.raises(StoreError, match="no password supplied"):
        open_store(url)
    monkeypatch.setenv("PGPASSWORD", postgres.password)  # libpq reads it (and ~/.pgpass)
    assert open_store(url).count_judgments() == 0


def test_wrong_password_and_missing_database_on_a_real_server(postgres):
    wrong = postgres.url("postgres").replace(postgres.password, SECRET)
    with pytest.raises(StoreError, match="password authentication failed") as caught:
        open_store(wrong)
    assert SECRET not in str(caught.value) and postgres.password not in str(caught.value)
    with pytest.raises(StoreError, match='database "no_such_db" does not exist') as caught:
        open_store(postgres.url("no_such_db"))
    assert postgres.password not in str(caught.value)


def test_cli_commands_take_a_postgres_url(postgres_url, tmp_path, monkeypatch):
    """add-annotator, reset-token and export on a PostgreSQL store; a wrong password is an `error:` line, exit 2."""
    monkeypatch.setenv("COLUMNS", "400")
    runner = CliRunner()
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")  # as psql and hosting pages write it
    made = runner.invoke(app, ["add-annotator", "--store", plain, "--name", "ann"])
    assert made.exit_code == 0, made.output
    reset = runner.invoke(app, ["reset-token", "--store", plain, "--name", "ann"])
    assert reset.exit_code == 0, reset.output
    from modalign.feedback.server.accounts import authenticate

    store = FeedbackStore(postgres_url)
    assert authenticate(store, reset.output.strip().splitlines()[-1]).name == "ann"

    _one_pair(store, tmp_path)
    written = runner.invoke(app, ["export", plain, "--out", str(tmp_path / "pairs.jsonl")])
    assert written.exit_code == 0, written.output
    (row,) = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert row["chosen"][0]["content"][0]["text"] == "a red circle"

    password = postgres_url.split(":")[2].split("@")[0]
    wrong = plain.replace(password, SECRET)
    failed = runner.invoke(app, ["add-annotator", "--store", wrong, "--name", "bob"])
    assert failed.exit_code == 2 and "error:" in failed.output
    assert "--store 'postgresql+psycopg://modalign:***@127.0.0.1" in failed.output
    assert "password authentication failed" in failed.output and SECRET not in failed.output

    row = {"id": "q9", "prompt": [{"role": "user", "content": "which?"}], "chosen": "a", "rejected": "b"}
    (tmp_path / "prefs.jsonl").write_text(json.dumps(row) + "\n")  # `modalign import --store` takes the URL too
    imported = runner.invoke(app, ["import", str(tmp_path / "prefs.jsonl"), "--out", str(tmp_path / "media"),
                                   "--store", plain])
    assert imported.exit_code == 0 and password not in imported.output, imported.output
    assert "q9" in {pair.example_id for pair in store.preference_pairs()}


def test_reward_and_dpo_count_pairs_in_a_postgres_store(postgres_url, tmp_path):
    from modalign.validate import check_store

    _one_pair(FeedbackStore(postgres_url), tmp_path)
    assert check_store(postgres_url) == 1 and check_store(postgres_url, decided=True) == 1


def _one_pair(store: FeedbackStore, tmp_path) -> None:
    from modalign.data.records import Completion, Example, assistant_turn, user_turn

    store.add_examples([Example("e1", (user_turn("describe.", 0, 0), assistant_turn("a red circle")))], root=tmp_path)
    a, b = store.add_candidates([Completion("e1", "a red circle", "sft"), Completion("e1", "a blue square", "sft")])
    store.add_judgment(PairwiseJudgment(example_id="e1", annotator="ann", candidate_a=a, candidate_b=b, choice="a"))


def test_rounds_count_their_judgments_from_what_a_named_store_held_at_the_start(postgres_url, tmp_path):
    from modalign.feedback.store_spec import judgments_at_start

    store = FeedbackStore(postgres_url)
    _one_pair(store, tmp_path)  # someone else's judgment, there before the run
    for run in ("run", "old-run"):
        (tmp_path / run).mkdir()
    assert judgments_at_start(tmp_path / "run", store, new_run=True) == 1
    _one_pair(store, tmp_path / "more")  # the run's first round stores one
    assert judgments_at_start(tmp_path / "run", store, new_run=False) == 1  # resumed: read back, not counted again
    assert json.loads((tmp_path / "run" / "store.json").read_text())["store"] == store.display_url
    assert judgments_at_start(tmp_path / "old-run", store, new_run=False) == 0  # a folder from before store.json


def test_loop_refuses_a_store_it_cannot_open_before_making_its_folder(sft_model, tmp_path):
    from modalign.recipes.loop import LoopConfig, run_loop

    model, data = sft_model
    url = f"postgresql://ann:{SECRET}@127.0.0.1:{closed_port()}/labels"
    with pytest.raises(StoreError, match=r"store 'postgresql\+psycopg://ann:\*\*\*@127.0.0.1"):
        run_loop(LoopConfig(out=str(tmp_path / "loop"), policy=str(model), data=str(data), store=url))
    assert not (tmp_path / "loop").exists()


def test_iterative_dpo_collects_its_rounds_in_a_postgres_store_that_held_judgments(postgres_url, sft_model, tmp_path):
    from test_iterative_dpo import config

    from modalign.recipes.iterative_dpo import run_iterative_dpo

    store = FeedbackStore(postgres_url)
    _one_pair(store, tmp_path)  # an earlier judgment: the round's are counted from it
    summary = run_iterative_dpo(config(tmp_path / "run", sft_model, rounds=1, store=postgres_url))
    assert summary["judgments"] > 0 and store.count_judgments() == 1 + summary["judgments"]
    assert json.loads((tmp_path / "run" / "store.json").read_text())["judgments_at_start"] == 1
    assert not (tmp_path / "run" / "feedback.db").exists() and summary["feedback"] == store.display_url
    rerun = run_iterative_dpo(config(tmp_path / "run", sft_model, rounds=1, store=postgres_url))  # done: nothing added
    assert rerun["judgments"] == summary["judgments"] and store.count_judgments() == 1 + summary["judgments"]
