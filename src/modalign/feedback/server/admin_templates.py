"""The admin's pages (dashboard, disagreements, one task, judgments, account tokens, reassignments), as
Jinja2 templates in Python strings; `templates.py` renders them with the annotators' pages."""

ADMIN = """{% extends "base" %}{% block main %}
<h1>Dashboard</h1>
<section class="card"><h2>Progress</h2>
<p id="overall">Tasks complete: {{ tasks_done }} of {{ tasks_total }} · judgments stored: {{ judgments }}</p>
<table id="annotators"><tr><th>annotator</th><th>done</th><th>assigned</th><th>skipped / flagged</th></tr>
{% for row in annotators %}<tr><td><a href="/admin/judgments?annotator={{ row.name|urlencode }}">{{ row.name }}</a></td><td>{{ row.done }}</td>
<td>{{ row.assigned }}</td><td>{{ row.set_aside }}</td></tr>{% endfor %}
</table></section>
<section class="card"><h2>Agreement</h2>
<table id="agreement"><tr><th>kind</th><th>shared units</th><th>raters</th><th>Krippendorff's α</th><th>Cohen's κ</th></tr>
{% for row in agreement %}<tr><td>{{ row.kind }}</td><td>{{ row.units }}</td><td>{{ row.raters }}</td>
<td>{{ fmt(row.alpha) }}</td><td>{{ fmt(row.kappa) }} <small>({{ row.kappa_note }})</small></td></tr>{% endfor %}
</table>
<h3>Agreement with the majority of the other annotators</h3>
<table id="majority"><tr><th>kind</th><th>annotator</th><th>share</th></tr>
{% for row in agreement %}{% for name, share in row.with_majority|dictsort %}
<tr><td>{{ row.kind }}</td><td>{{ name }}</td><td>{{ fmt(share) }}</td></tr>{% endfor %}{% endfor %}
</table></section>
<section class="card"><h2>Exports</h2><ul>
<li><a href="/admin/export/trl.jsonl">TRL preference pairs (JSONL)</a></li>
<li><a href="/admin/export/judgments.jsonl">All judgments (JSONL)</a></li>
<li><a href="/admin/export/preferences.parquet">Preference pairs for <code>datasets</code> (Parquet)</a></li>
</ul></section>
<section class="card" id="review"><h2>Review</h2><ul>
<li><a href="/admin/disagreements" id="disagreements-link">Items the annotators disagree on</a> ({{ disputed }})</li>
<li><a href="/admin/judgments">Individual judgments</a> (<a href="/admin/export/judgments.jsonl">JSONL</a>)</li></ul>
<h3>Skipped and flagged</h3>{% if set_aside %}
<table id="set-aside"><tr><th>task</th><th>annotator</th><th>action</th><th>reason</th><th>note</th><th>at (UTC)</th></tr>
{% for item in set_aside %}<tr><td><a href="/admin/tasks/{{ item.task_id }}">{{ item.task_id }}</a></td><td>{{ item.annotator }}</td>
<td>{{ item.action }}</td><td>{{ item.reason }}</td><td>{{ item.note }}</td><td>{{ item.created_at }}</td></tr>{% endfor %}
</table>{% else %}<p>None.</p>{% endif %}</section>
<section class="card" id="accounts"><h2>Accounts</h2>
<table id="account-list"><tr><th>name</th><th>role</th><th>state</th><th></th></tr>
{% for a in accounts %}<tr><td>{{ a.name }}</td><td>{{ a.role }}</td><td>{{ "deactivated" if a.name in inactive else "active" }}</td>
<td><form method="post" action="/admin/accounts/reset" class="inline"><input type="hidden" name="name" value="{{ a.name }}">
<button type="submit">new token</button></form>
{% if a.name in inactive %}<form method="post" action="/admin/accounts/activate" class="inline"><input type="hidden" name="name" value="{{ a.name }}">
<button type="submit">activate</button></form>{% elif a.name != account.name %}<form method="post" action="/admin/accounts/deactivate" class="inline">
<input type="hidden" name="name" value="{{ a.name }}"><button type="submit">deactivate</button></form>{% endif %}</td></tr>{% endfor %}</table>
<form method="post" action="/admin/accounts/create" id="create-account"><p>New account: <input name="name" required maxlength="200">
<select name="role"><option>annotator</option><option>admin</option></select> <button type="submit">create</button></p></form>
</section>
<section class="card" id="stalled"><h2>Stalled assignments</h2>
<p>{{ stalled }} assignment(s) queued for more than {{ stall_minutes }} minutes.</p>
<form method="post" action="/admin/reassign" id="reassign">Reassign assignments queued for more than
<input type="number" name="older_than_minutes" value="{{ stall_minutes }}" min="0" style="width:6em"> minutes,
of <select name="annotator"><option value="">anyone</option>{% for a in accounts %}<option>{{ a.name }}</option>{% endfor %}</select>,
to <select name="to"><option value="">the pool (shortest queue)</option>{% for a in accounts if a.role == "annotator" and a.name not in inactive %}
<option>{{ a.name }}</option>{% endfor %}</select> <button type="submit">reassign</button></form></section>
{% endblock %}"""

DISAGREEMENTS = """{% extends "base" %}{% block main %}
<h1>Disagreements</h1><p>Tasks answered by two or more annotators who did not all give the same answer, the most split first.</p>
{% if disputed %}<table id="disputed"><tr><th>task</th><th>kind</th><th>example</th><th>votes</th></tr>
{% for item in disputed %}<tr><td><a href="/admin/tasks/{{ item.task_id }}">task {{ item.task_id }}</a></td><td>{{ item.kind }}</td>
<td>{{ item.example_id }}</td><td class="split">{{ item.answers }} answers from {{ item.votes|length }} annotators:
{% for vote in item.votes %}{{ vote.annotator }}: {{ vote.answer }}{% if not loop.last %}; {% endif %}{% endfor %}</td></tr>{% endfor %}
</table>{% else %}<p id="none">No split votes.</p>{% endif %}{% endblock %}"""

ADMIN_TASK = """{% extends "base" %}{% block main %}
<h1>Task {{ detail.task.id }} <small>({{ detail.task.kind }}, example {{ detail.task.example.id }})</small></h1>
<section class="card" id="prompt">{% for message in prompt %}<p><span class="label">{{ message.role }}:</span> {{ message.text }}</p>{% endfor %}
<div class="media">{% for item in media %}{% if item.kind == "image" %}<img src="{{ item.url }}" alt="image {{ loop.index }}">
{% else %}<audio controls preload="metadata" src="{{ item.url }}"></audio>{% endif %}{% endfor %}</div></section>
<div class="cols">{% for cid, text in detail.task.candidates %}<div class="card"><div class="label">candidate {{ cid }}</div>
<div class="answer">{{ text }}</div></div>{% endfor %}</div>
<section class="card"><h2>Judgments</h2>{% if detail.votes %}<table id="votes"><tr><th>annotator</th><th>answer</th><th>reason / critique</th><th>at (UTC)</th></tr>
{% for vote in detail.votes %}<tr class="vote"><td>{{ vote.annotator }}</td><td>{{ vote.answer }}</td><td>{{ vote.detail }}</td><td>{{ vote.created_at }}</td></tr>{% endfor %}
</table>{% else %}<p>None yet.</p>{% endif %}
<h3>Assignments</h3><p id="assignments">{% for name, status in detail.assignments %}{{ name }}: {{ status }}{% if not loop.last %} · {% endif %}{% endfor %}</p>
{% if detail.history %}<h3>Replaced or withdrawn answers</h3><table id="history"><tr><th>annotator</th><th>change</th><th>at (UTC)</th><th>answer before</th></tr>
{% for who, change, at, answer in detail.history %}<tr><td>{{ who }}</td><td>{{ change }}</td><td>{{ at }}</td><td>{{ answer }}</td></tr>{% endfor %}</table>{% endif %}
{% if detail.set_aside %}<h3>Skipped or flagged</h3><ul id="task-set-aside">{% for item in detail.set_aside %}
<li>{{ item.annotator }}: {{ item.action }} ({{ item.reason }}) {{ item.note }}</li>{% endfor %}</ul>{% endif %}</section>
<p><a href="/admin/disagreements">All disagreements</a> · <a href="/admin">dashboard</a></p>{% endblock %}"""

JUDGMENTS = """{% extends "base" %}{% block main %}
<h1>Judgments{% if annotator %} by {{ annotator }}{% endif %}</h1>
<form method="get" action="/admin/judgments">Annotator: <select name="annotator"><option value="">everyone</option>
{% for a in accounts %}<option{% if a.name == annotator %} selected{% endif %}>{{ a.name }}</option>{% endfor %}</select>
<button type="submit">show</button> · <a href="/admin/export/judgments.jsonl{% if annotator %}?annotator={{ annotator|urlencode }}{% endif %}">download JSONL</a></form>
<table id="judgments"><tr><th>task</th><th>kind</th><th>annotator</th><th>answer</th><th>reason / critique</th><th>guidelines</th><th>at (UTC)</th></tr>
{% for task_id, kind, version, vote in rows %}<tr><td>{% if task_id %}<a href="/admin/tasks/{{ task_id }}">{{ task_id }}</a>{% endif %}</td>
<td>{{ kind }}</td><td>{{ vote.annotator }}</td><td>{{ vote.answer }}</td><td>{{ vote.detail }}</td><td>{{ version }}</td><td>{{ vote.created_at }}</td></tr>{% endfor %}
</table>{% endblock %}"""

TOKEN = """{% extends "base" %}{% block main %}
<h1>{{ title }}</h1><p class="notice" role="alert">{{ message }}</p>
{% if token %}<p>Token for <b>{{ account_name }}</b> (shown only now: hand it over safely):</p>
<p><input type="text" id="new-token" readonly value="{{ token }}"></p>{% endif %}
<p><a href="/admin">Back to the dashboard</a></p>{% endblock %}"""

MOVES = """{% extends "base" %}{% block main %}
<h1>Reassigned</h1>{% if moves %}<table id="moves"><tr><th>task</th><th>from</th><th>to</th></tr>
{% for move in moves %}<tr><td>{{ move.task_id }}</td><td>{{ move.from_annotator }}</td>
<td>{{ move.to_annotator or "(nobody eligible: left as it was)" }}</td></tr>{% endfor %}</table>
{% else %}<p id="none">No assignment was stalled that long.</p>{% endif %}<p><a href="/admin">Back to the dashboard</a></p>{% endblock %}"""
