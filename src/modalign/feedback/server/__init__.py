"""The annotation web app: people label pairwise / ranking / rating / critique tasks in a browser.

    from modalign.feedback.server import create_account, create_tasks, serve
    token = create_account(store, "alice")
    create_tasks(store, "pairwise", [("ex-1", (3, 4))], overlap=2, annotators=["alice", "bob"])
    serve("sqlite:///runs/x/feedback.db")
"""

from modalign.feedback.server.accounts import Account, create_account, reset_token
from modalign.feedback.server.app import create_app, serve
from modalign.feedback.server.tasks import TaskItem, create_tasks, next_task_id

__all__ = ["Account", "TaskItem", "create_account", "create_app", "create_tasks", "next_task_id", "reset_token",
           "serve"]
