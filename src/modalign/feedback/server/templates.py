"""The HTML pages, as Jinja2 templates kept in Python strings (nothing to package, no build step).

Autoescaping is on: prompt and answer texts are shown as text, never as markup. The only script
is the inline keyboard handler, allowed by a per-response CSP nonce.
"""

from __future__ import annotations

import jinja2

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f6f4}
header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:#24292f;color:#fff}
header form{margin-left:auto}header a{color:#fff}
main{max-width:1100px;margin:1em auto;padding:0 1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin:.6em 0}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:.8em}
.answer{white-space:pre-wrap}.label{font-weight:600;color:#555}
.error{background:#fde8e8;border:1px solid #e0a0a0;padding:.6em 1em;border-radius:6px}
.notice{background:#e8f1fd;border:1px solid #a0bde0;padding:.6em 1em;border-radius:6px}
.media img{height:192px;image-rendering:pixelated;cursor:zoom-in;border:1px solid #ccc;background:#fff}
.media img.zoomed{position:fixed;inset:0;width:100vw;height:100vh;object-fit:contain;background:rgba(0,0,0,.85);
  z-index:10;cursor:zoom-out;border:0}
fieldset{border:1px solid #ddd;border-radius:6px}fieldset.current{border-color:#0969da;background:#eef5ff}
kbd{border:1px solid #bbb;border-bottom-width:2px;border-radius:3px;padding:0 .3em;font-size:.85em;background:#fafafa}
textarea{width:100%;min-height:8em;font:inherit}input[type=text]{width:100%;font:inherit}
#help{position:fixed;right:1em;bottom:1em;max-width:380px;z-index:5;box-shadow:0 2px 12px rgba(0,0,0,.2)}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
.version{font-family:monospace;background:#eee;padding:0 .3em;border-radius:3px}
"""

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{ title }} · modalign annotate</title><style>{{ style }}</style></head>
<body><header><b>modalign annotate</b>
{% if account %}<span id="who">{{ account.name }}{% if account.is_admin and not account.name.startswith("(") %} (admin){% endif %}</span>
{% if progress %}<span id="progress">{{ progress.done }} of {{ progress.total }} done</span>{% endif %}
{% if account.is_admin %}<a href="/admin">dashboard</a>{% endif %}
<form method="post" action="/logout"><button type="submit">log out</button></form>{% endif %}
</header><main>{% block main %}{% endblock %}</main></body></html>"""

LOGIN = """{% extends "base" %}{% block main %}
<h1>Log in</h1>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="/login" class="card">
<label for="token">Your access token</label>
<input type="password" id="token" name="token" autocomplete="current-password" autofocus required>
<p><button type="submit">Log in</button></p></form>{% endblock %}"""

MESSAGE = """{% extends "base" %}{% block main %}
<h1>{{ title }}</h1><p class="{{ css or 'notice' }}" role="alert">{{ message }}</p>
<p><a href="/next">Go to my next task</a></p>{% endblock %}"""

TASK = """{% extends "base" %}{% block main %}
<h1>Task {{ task.id }} <small>({{ task.kind }})</small></h1>
{% if error %}<p class="error" role="alert" id="error">{{ error }}</p>{% endif %}
<details class="card" id="guidelines" open><summary>Guidelines <span class="version">{{ guideline.version }}</span></summary>
{% for paragraph in guideline.text.split("\\n\\n") %}<p>{{ paragraph }}</p>{% endfor %}</details>
<section class="card" id="prompt">{% for message in prompt %}
<p><span class="label">{{ message.role }}:</span> {{ message.text }}</p>{% endfor %}
<div class="media">{% for item in media %}{% if item.kind == "image" %}
<img src="{{ item.url }}" alt="image {{ loop.index }} of the example" title="click to zoom">
{% else %}<audio controls preload="metadata" src="{{ item.url }}"></audio>{% endif %}{% endfor %}</div></section>
{% if status == "done" %}<p class="notice" id="answered">You have answered this task. <a href="/next">Next task</a></p>
{% elif status is none %}<p class="notice">Viewing as admin: this task is not assigned to you.</p>
{% else %}
<form method="post" action="/tasks/{{ task.id }}" id="answer" data-kind="{{ task.kind }}">
<input type="hidden" name="guideline_version" value="{{ guideline.version }}">
{% include task.kind %}
<p><button type="submit">Submit <kbd>Enter</kbd></button> · <kbd>?</kbd> shortcuts</p></form>
<div id="help" class="card" hidden><b>Keyboard shortcuts</b><ul>{% include "help_" + task.kind %}
<li><kbd>Enter</kbd> submit (in a text box: <kbd>Ctrl</kbd>+<kbd>Enter</kbd>; <kbd>Esc</kbd> leaves it)</li>
<li><kbd>?</kbd> show / hide this help</li></ul></div>
<script nonce="{{ nonce }}">{% include "script" %}</script>{% endif %}
{% endblock %}"""

PAIRWISE = """<div class="cols">{% for cid, text in task.candidates %}
<div class="card"><div class="label">{{ "AB"[loop.index0] }}</div><div class="answer" id="answer-{{ "ab"[loop.index0] }}">{{ text }}</div></div>
{% endfor %}</div>
<fieldset><legend>Which answer is better?</legend>
{% for value, text in [("a", "A is better"), ("b", "B is better"), ("tie", "Tie")] %}
<label><input type="radio" name="choice" value="{{ value }}" {% if values.get("choice") == value %}checked{% endif %}>
<kbd>{{ loop.index }}</kbd> {{ text }}</label>{% endfor %}</fieldset>
<p><label for="reason">Reason (optional, <kbd>r</kbd>)</label>
<input type="text" id="reason" name="reason" value="{{ values.reason or '' }}" maxlength="2000"></p>"""

RANKING = """<div class="cols">{% for cid, text in task.candidates %}
<div class="card"><div class="label">{{ loop.index }}</div><div class="answer">{{ text }}</div></div>{% endfor %}</div>
<p><label for="ranking">Your ranking, best first (answer numbers, e.g. 2,1,3):</label>
<input type="text" id="ranking" name="ranking" value="{{ values.ranking or '' }}" autocomplete="off"></p>
<p>Order so far: <span id="order">{{ values.ranking or "(none yet)" }}</span></p>"""

RATING = """<div class="card"><div class="answer" id="rated">{{ task.candidates[0][1] }}</div></div>
{% for axis in task.settings.axes %}<fieldset class="axis"><legend>{{ axis }}</legend>
{% for point in range(1, task.settings.scale + 1) %}<label><input type="radio" name="rating.{{ axis }}" value="{{ point }}"
{% if values.get("rating." + axis) == point|string %}checked{% endif %}> {{ point }}</label>
{% endfor %}</fieldset>{% endfor %}"""

CRITIQUE = """<div class="card"><div class="label">Answer</div><div class="answer" id="original">{{ task.candidates[0][1] }}</div></div>
<p><label for="corrected_text">Corrected answer (<kbd>e</kbd> to edit)</label>
<textarea id="corrected_text" name="corrected_text">
{{ values.get("corrected_text", task.candidates[0][1]) }}</textarea></p>
<p><label for="critique">What was wrong (optional)</label>
<input type="text" id="critique" name="critique" value="{{ values.critique or '' }}"></p>"""

HELP = {
    "help_pairwise": "<li><kbd>1</kbd> A better · <kbd>2</kbd> B better · <kbd>3</kbd> tie</li><li><kbd>r</kbd> reason</li>",
    "help_ranking": "<li>digits: add that answer to the ranking, best first</li><li><kbd>Backspace</kbd> undo</li>",
    "help_rating": "<li>digits: rate the highlighted axis, then move to the next</li>"
                   "<li><kbd>↑</kbd>/<kbd>↓</kbd> change axis</li>",
    "help_critique": "<li><kbd>e</kbd> edit the answer</li>",
}

SCRIPT = """(function () {
  const form = document.getElementById("answer"), kind = form.dataset.kind, help = document.getElementById("help");
  const axes = Array.from(form.querySelectorAll("fieldset.axis")), order = [];
  let axis = 0;
  const markAxis = () => axes.forEach((f, i) => f.classList.toggle("current", i === axis));
  const showOrder = () => {
    document.getElementById("ranking").value = order.join(",");
    document.getElementById("order").textContent = order.length ? order.join(" > ") : "(none yet)";
  };
  markAxis();
  document.querySelectorAll(".media img").forEach(img => img.addEventListener("click", () => img.classList.toggle("zoomed")));
  const keys = {
    pairwise(e) {
      const value = {"1": "a", "2": "b", "3": "tie"}[e.key];
      if (value) { form.querySelector('input[name=choice][value="' + value + '"]').checked = true; return true; }
      if (e.key === "r") { document.getElementById("reason").focus(); return true; }
    },
    ranking(e) {
      const n = Number(e.key), count = form.querySelectorAll(".cols .card").length;
      if (n >= 1 && n <= count && !order.includes(n)) { order.push(n); showOrder(); return true; }
      if (e.key === "Backspace") { order.pop(); showOrder(); return true; }
    },
    rating(e) {
      const point = axes[axis] && axes[axis].querySelector('input[value="' + e.key + '"]');
      if (point) { point.checked = true; axis = Math.min(axis + 1, axes.length - 1); markAxis(); return true; }
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        axis = Math.max(0, Math.min(axes.length - 1, axis + (e.key === "ArrowDown" ? 1 : -1))); markAxis(); return true;
      }
    },
    critique(e) { if (e.key === "e") { document.getElementById("corrected_text").focus(); return true; } },
  };
  document.addEventListener("keydown", e => {
    const t = e.target, tag = t.tagName;
    const typing = tag === "TEXTAREA" || (tag === "INPUT" && !["radio", "checkbox", "hidden"].includes(t.type));
    if (typing) {
      if (e.key === "Enter" && (tag === "INPUT" || e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
      else if (e.key === "Escape") t.blur();
      return;
    }
    if (e.altKey || e.ctrlKey || e.metaKey || (tag === "BUTTON" && t.form !== form)) return;
    if (e.key === "?") { help.hidden = !help.hidden; e.preventDefault(); return; }
    if (e.key === "Escape") { help.hidden = true; document.querySelectorAll(".zoomed").forEach(i => i.classList.remove("zoomed")); return; }
    if (e.key === "Enter") { e.preventDefault(); form.requestSubmit(); return; }
    if (keys[kind](e)) e.preventDefault();
  });
})();"""

DONE = """{% extends "base" %}{% block main %}
<h1>All done</h1><p class="notice" id="all-done">You have finished all {{ progress.total }} of your tasks. Thank you!</p>
{% endblock %}"""

ADMIN = """{% extends "base" %}{% block main %}
<h1>Dashboard</h1>
<section class="card"><h2>Progress</h2>
<p id="overall">Tasks complete: {{ tasks_done }} of {{ tasks_total }} · judgments stored: {{ judgments }}</p>
<table id="annotators"><tr><th>annotator</th><th>done</th><th>assigned</th></tr>
{% for row in annotators %}<tr><td>{{ row.name }}</td><td>{{ row.done }}</td><td>{{ row.assigned }}</td></tr>{% endfor %}
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
<section class="card"><h2>Accounts</h2><p>{% for a in accounts %}{{ a.name }} ({{ a.role }}){% if not loop.last %}, {% endif %}{% endfor %}</p>
</section>{% endblock %}"""

TEMPLATES = {"base": BASE, "login": LOGIN, "message": MESSAGE, "task": TASK, "pairwise": PAIRWISE,
             "ranking": RANKING, "rating": RATING, "critique": CRITIQUE, "script": SCRIPT, "done": DONE,
             "admin": ADMIN, **HELP}

environment = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True)


def render(name: str, **context: object) -> str:
    """Render a page; `style` and the defaults every page expects are filled in here."""
    context = {"account": None, "progress": None, "error": None, "values": {}, "style": STYLE, **context}
    return environment.get_template(name).render(**context)
